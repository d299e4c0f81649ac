"""The fault matrix (docs/reliability.md): SIGINT, SIGTERM and SIGKILL at every stage
of a rebuild, and the other faults a real host brings. Whatever happens, the lab's
folder holds the previous bundle intact or the new one complete, never a mix; the
next build leaves no staging or set-aside folder behind; nothing hangs; the message
names the cause.

Each case starts from a copy of one real bundle (built once, in one appliance) and
rebuilds it in a subprocess that sends itself the signal at the named point
(tests/faultrun.py). Two rebuilds are used: one that changes only a VM's memory (no
appliance: domain XML, lab files, publish) and one that changes a VM's address
(disks made anew, one appliance).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import paused_qemu, qemu_holding, small_tmpfs

pytestmark = [pytest.mark.guestfs, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
PYTHON = str(HERE.parent / ".venv" / "bin" / "python")
VMBUILD = str(HERE.parent / ".venv" / "bin" / "vmbuild")
LAB = "faults"
PROFILE = """
[lab]
name = "faults"

[base]
image = "golden.qcow2"

[network]
source = "br-test"
subnet = "192.0.2.0/24"
gateway = "192.0.2.1"

[defaults]
memory = "1G"

[[vm]]
name = "a"
ip = "192.0.2.10"

[[vm]]
name = "b"
ip = "192.0.2.11"
"""
#: A rebuild without an appliance, and one with.
XML_ONLY = ["--set", "vm.a.memory=2G"]
NEW_DISK = ["--set", "vm.b.ip=192.0.2.21"]


@dataclass(frozen=True)
class Case:
    folder: Path
    output: Path

    @property
    def bundle(self) -> Path:
        return self.output / LAB

    def manifest(self) -> dict[str, object]:
        return dict(json.loads((self.bundle / "manifest.json").read_text()))

    def leftovers(self) -> list[str]:
        return sorted(
            p.name for p in self.output.iterdir() if ".staging-" in p.name or ".old-" in p.name
        )


def run(
    case: Case, *args: str, point: str = "", sig: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = (
        [PYTHON, str(HERE / "faultrun.py"), point, sig, "--"]
        if point
        else [str(HERE.parent / ".venv" / "bin" / "vmbuild")]
    )
    argv = [*command, "build", str(case.folder / "lab.toml"), "-o", str(case.output), "-q", *args]
    # Output to files, not pipes: the process is then reaped as soon as it dies. A
    # SIGKILLed vmbuild left unreaped (a zombie) looks alive to libguestfs's
    # recovery process, which holds the pipes open and never kills the appliance.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(
            argv,
            stdout=out,
            stderr=err,
            text=True,
            timeout=600,
            cwd=case.folder,
            env={**os.environ, **(env or {})},
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, done.returncode, out.read(), err.read())


@pytest.fixture(scope="module")
def built(os_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Case:
    folder = tmp_path_factory.mktemp("faults")
    shutil.copy2(os_image, folder / "golden.qcow2")
    (folder / "lab.toml").write_text(PROFILE)
    case = Case(folder, folder / "out")
    done = run(case)
    assert done.returncode == 0, done.stderr
    return case


@pytest.fixture
def case(built: Case, tmp_path: Path) -> Case:
    """A private copy of the built lab, at the same place relative to its golden image
    (the overlays name it by a relative path), so its disks are kept by a rebuild."""
    shutil.copy2(built.folder / "golden.qcow2", tmp_path / "golden.qcow2")
    shutil.copy2(built.folder / "lab.toml", tmp_path / "lab.toml")
    shutil.copytree(built.output, tmp_path / "out", symlinks=True)
    return Case(tmp_path, tmp_path / "out")


def verified(case: Case) -> bool:
    """The bundle is complete: every file SHA256SUMS lists is there, as listed."""
    done = subprocess.run(
        ["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=case.bundle, capture_output=True
    )
    return done.returncode == 0


def memory_of_a(case: Case) -> str:
    xml = (case.bundle / "vms" / "a" / "domain.xml").read_text()
    return xml.split("<memory", 1)[1].split(">", 1)[1].split("<", 1)[0]


def no_appliance_left(case: Case) -> bool:
    """No QEMU still has one of this case's disks open (libguestfs's recovery
    process kills the appliance when vmbuild dies)."""
    for _ in range(40):
        found = subprocess.run(["pgrep", "-f", str(case.folder)], capture_output=True, text=True)
        if not found.stdout.strip():
            return True
        time.sleep(0.5)
    return False


#: Points before the bundle is published, and the rebuild that reaches each.
BEFORE = {
    "base": XML_ONLY,
    "disks": NEW_DISK,
    "launch": NEW_DISK,
    "operations": NEW_DISK,
    "seeds": XML_ONLY,
    "lab-files": XML_ONLY,
    "publish": XML_ONLY,
}
#: Points where the new bundle is (being) published.
AFTER = ("exchange", "fallback", "finished")
SIGNALS = ("INT", "TERM", "KILL")


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("point", list(BEFORE))
def test_a_signal_before_publishing_keeps_the_previous_bundle(
    case: Case, point: str, sig: str
) -> None:
    before = (case.bundle / "manifest.json").read_bytes()
    old_memory = memory_of_a(case)
    started = time.monotonic()
    done = run(case, *BEFORE[point], point=point, sig=sig)
    assert time.monotonic() - started < 120
    if sig == "KILL":
        assert done.returncode == -signal.SIGKILL
    else:
        assert done.returncode == 130, done.stderr
        assert "interrupted; nothing was published" in done.stderr
        assert "Traceback" not in done.stderr
        assert case.leftovers() == []
    assert (case.bundle / "manifest.json").read_bytes() == before
    assert memory_of_a(case) == old_memory
    assert verified(case)
    assert no_appliance_left(case)
    # The next build finishes the job and leaves nothing behind.
    again = run(case, *BEFORE[point])
    assert again.returncode == 0, again.stderr
    assert case.leftovers() == []
    assert verified(case)


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("point", AFTER)
def test_a_signal_while_publishing_leaves_the_new_bundle(case: Case, point: str, sig: str) -> None:
    done = run(case, *XML_ONLY, point=point, sig=sig)
    if sig == "KILL":
        assert done.returncode == -signal.SIGKILL
        if point == "fallback":
            # Killed between the fallback's two renames: the previous bundle is set
            # aside and nothing is at the lab's folder until the next build.
            assert not case.bundle.exists()
            assert [name for name in case.leftovers() if ".old-" in name]
        else:
            assert verified(case) and memory_of_a(case) == str(2 << 20)
        again = run(case, *XML_ONLY)
        assert again.returncode == 0, again.stderr
    else:
        assert done.returncode == 130, done.stderr
        assert f"interrupted after the bundle {case.bundle} was published" in done.stderr
        assert "Traceback" not in done.stderr
    assert case.leftovers() == []
    assert verified(case)
    assert memory_of_a(case) == str(2 << 20)


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_a_signal_during_the_appliance_launch_takes_effect_at_once(case: Case, sig: str) -> None:
    """The launch is one blocking call into libguestfs (10-20 s under TCG); the signal
    must not wait for it: the appliance is killed and vmbuild exits within seconds."""
    stamp = case.folder / "signalled"
    done = run(case, *NEW_DISK, point="launch", sig=sig, env={"FAULTRUN_STAMP": str(stamp)})
    ended = time.time()
    assert done.returncode == 130, done.stderr
    assert ended - float(stamp.read_text()) < 6
    assert verified(case) and case.leftovers() == []
    assert no_appliance_left(case)


def test_a_replaced_golden_image_remakes_every_disk(case: Case) -> None:
    """Another image at the golden image's path: its sha256 differs, so no overlay
    made on the old one is kept."""
    disks = {name: case.bundle / "vms" / name / "disk.qcow2" for name in ("a", "b")}
    inodes = {name: path.stat().st_ino for name, path in disks.items()}
    old_sha = json.loads((case.bundle / "manifest.json").read_text())["base"]["sha256"]
    golden = case.folder / "golden.qcow2"
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(golden), "+16M"], check=True)
    done = run(case)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((case.bundle / "manifest.json").read_text())
    assert manifest["base"]["sha256"] != old_sha
    assert all(disks[name].stat().st_ino != inodes[name] for name in disks)
    assert verified(case) and case.leftovers() == []


def test_a_plugin_that_hangs_is_stopped(case: Case) -> None:
    (case.folder / "hang.py").write_text(
        "import time\n\n\ndef vmbuild_seed_files(lab, vm):\n    time.sleep(3600)\n"
    )
    text = (case.folder / "lab.toml").read_text()
    (case.folder / "lab.toml").write_text('plugins = ["hang.py"]\n' + text)
    started = time.monotonic()
    done = subprocess.run(
        [VMBUILD, str(case.folder / "lab.toml"), "-o", str(case.output), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VMBUILD_PLUGIN_TIMEOUT": "2"},
    )
    assert time.monotonic() - started < 60
    assert done.returncode == 3, done.stderr
    assert 'plugin "hang.py" failed in vmbuild_seed_files: no answer within 2s' in done.stderr
    assert "VMBUILD_PLUGIN_TIMEOUT" in done.stderr
    assert verified(case) and case.leftovers() == []


def test_a_golden_image_changed_during_the_build_is_not_published(case: Case) -> None:
    """A lab plugin rewrites the golden image's timestamps after it was checked."""
    golden = case.folder / "golden.qcow2"
    (case.folder / "toucher.py").write_text(
        "import os\n\n\ndef vmbuild_seed_files(lab, vm):\n"
        f"    os.utime({str(golden)!r})\n    return {{}}\n"
    )
    text = (case.folder / "lab.toml").read_text()
    (case.folder / "lab.toml").write_text('plugins = ["toucher.py"]\n' + text)
    before = (case.bundle / "manifest.json").read_bytes()
    done = run(case, *XML_ONLY)
    assert done.returncode == 3, done.stderr
    assert f"the golden image {golden} changed during the build; nothing was published" in (
        done.stderr
    )
    assert (case.bundle / "manifest.json").read_bytes() == before
    assert case.leftovers() == []


def test_a_running_qemu_on_a_disk_refuses_the_rebuild(case: Case) -> None:
    """Without libvirt: QEMU's own image lock on b's disk. Changing b (new disk) and
    changing a (b's disk copied for /etc/hosts) are both refused; --force too."""
    disk = case.bundle / "vms" / "b" / "disk.qcow2"
    with qemu_holding(disk):
        inode = disk.stat().st_ino
        before = (case.bundle / "manifest.json").read_bytes()
        for args, action in (
            (NEW_DISK, "replace"),
            (["--set", "vm.a.ip=192.0.2.30"], "copy and edit"),
            (["--force"], "replace"),
        ):
            done = run(case, *args)
            assert done.returncode == 4, done.stderr
            assert (
                f'vm "b": a QEMU process holds its image lock, and this build would {action} '
                f"its disk {disk}" in done.stderr
            )
            assert "--force does not override this" in done.stderr
            assert disk.stat().st_ino == inode
            assert (case.bundle / "manifest.json").read_bytes() == before
            assert case.leftovers() == []
        # A change that leaves b's disk alone goes ahead.
        done = run(case, *XML_ONLY)
        assert done.returncode == 0, done.stderr
        assert disk.stat().st_ino == inode


# ----------------------------------------------------------- space and locks

#: A lab plugin whose disk operation fills the host's filesystem (as another program
#: could), then writes into the clone: QEMU cannot grow the disk and pauses.
FILLER = """
import os

from vmbuild.guest.diskops import Operation


class Fill(Operation):
    def apply(self, guest, context):
        with open({hog!r}, "wb") as hog:
            block = bytes(1 << 20)
            try:
                while True:
                    hog.write(block)
                    hog.flush()
            except OSError:
                pass
        guest.app.call("writing", guest.h.fill_pattern, "x", 32 << 20, "/blob")
        guest.app.call("syncing", guest.h.sync)


def vmbuild_disk_operations(lab, vm, guest):
    return [Fill()]
"""

#: A lab plugin whose disk operation uses up the host's inodes beside the bundle.
INODE_EATER = """
import os
from pathlib import Path

from vmbuild.guest.diskops import Operation


class Eat(Operation):
    def apply(self, guest, context):
        folder = Path({folder!r})
        folder.mkdir(exist_ok=True)
        number = 0
        while True:
            try:
                os.close(os.open(folder / str(number), os.O_CREAT | os.O_WRONLY))
            except OSError:
                return
            number += 1


def vmbuild_disk_operations(lab, vm, guest):
    return [Eat()]
"""


def _on_tmpfs(built: Case, mount: Path) -> Case:
    """A copy of the built lab on ``mount`` (the golden image with it)."""
    shutil.copy2(built.folder / "golden.qcow2", mount / "golden.qcow2")
    shutil.copy2(built.folder / "lab.toml", mount / "lab.toml")
    shutil.copytree(built.output, mount / "out", symlinks=True)
    return Case(mount, mount / "out")


def _with_plugin(case: Case, name: str, source: str) -> None:
    (case.folder / name).write_text(source)
    text = (case.folder / "lab.toml").read_text()
    (case.folder / "lab.toml").write_text(f'plugins = ["{name}"]\n' + text)


def test_a_disk_that_fills_during_the_build(built: Case, tmp_path: Path) -> None:
    """The up-front check passes, then the disks outgrow the filesystem: QEMU pauses
    the appliance, and the build says why within seconds, not after a timeout."""
    with small_tmpfs(tmp_path / "small", "120m") as mount:
        case = _on_tmpfs(built, mount)
        _with_plugin(case, "filler.py", FILLER.format(hog=str(mount / "hog")))
        before = (case.bundle / "manifest.json").read_bytes()
        started = time.monotonic()
        done = run(case)
        took = time.monotonic() - started
        print(done.stderr, f"took {took:.0f}s")
        assert done.returncode == 3, done.stderr
        assert f"the filesystem holding {case.output}/.faults.staging-" in done.stderr
        assert "is full" in done.stderr and "QEMU paused the appliance" in done.stderr
        assert took < 100  # an appliance launch, then seconds: not the 120 s call timeout
        (mount / "hog").unlink()
        assert (case.bundle / "manifest.json").read_bytes() == before
        assert case.leftovers() == []
        assert verified(case)


def test_inodes_run_out_before_the_build(built: Case, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "200m", inodes=64) as mount:
        case = _on_tmpfs(built, mount)
        for number in range(64):  # what the copy left free, and then some
            try:
                (mount / f"f{number}").touch()
            except OSError:
                break
        done = run(case, *NEW_DISK)
        assert done.returncode == 3, done.stderr
        assert f"not enough free inodes in {case.output}" in done.stderr
        assert verified(case) and case.leftovers() == []


def test_inodes_run_out_during_the_build(built: Case, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "200m", inodes=400) as mount:
        case = _on_tmpfs(built, mount)
        _with_plugin(case, "eater.py", INODE_EATER.format(folder=str(mount / "eaten")))
        before = (case.bundle / "manifest.json").read_bytes()
        done = run(case)
        print(done.stderr)
        assert done.returncode == 3, done.stderr
        assert "No space left on device" in done.stderr
        assert f"the filesystem holding {case.output}" in done.stderr
        assert "has no free inodes" in done.stderr
        assert "Traceback" not in done.stderr
        assert (case.bundle / "manifest.json").read_bytes() == before
        shutil.rmtree(mount / "eaten")
        assert case.leftovers() == []


#: A lab plugin that starts a QEMU holding the golden image, after vmbuild checked it.
LOCKER = """
import subprocess


def vmbuild_seed_files(lab, vm):
    if vm.index == 1:
        proc = subprocess.Popen(
            {command!r},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        open({pidfile!r}, "w").write(str(proc.pid))
        for _ in range(50):
            probe = subprocess.run(["qemu-img", "info", {golden!r}], capture_output=True)
            if probe.returncode:
                break
            __import__("time").sleep(0.1)
    return {{}}
"""


def test_a_golden_image_locked_after_the_check(case: Case) -> None:
    golden = case.folder / "golden.qcow2"
    pidfile = case.folder / "qemu.pid"
    command = [*paused_qemu(), "-drive", f"file={golden},format=qcow2,if=virtio"]
    _with_plugin(
        case,
        "locker.py",
        LOCKER.format(command=command, pidfile=str(pidfile), golden=str(golden)),
    )
    try:
        done = run(case, *NEW_DISK)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert done.returncode == 3, done.stderr
    assert f"{golden} is locked: a running VM (or another program) is using it" in done.stderr
    assert "guestfs_launch failed" not in done.stderr
    assert case.leftovers() == []
