"""What a hostile or broken golden image, or a full disk, does to a build: clear errors
in bounded time, nothing written through links, nothing published."""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import qemu_holding, small_tmpfs
from guestimages import ImageSpec, guest_entries, make_images
from labs import write_lab
from vmbuild.cli import main
from vmbuild.guest.appliance import Appliance, ApplianceError, ApplianceTimeout
from vmbuild.guest.files import GuestFiles, GuestPathError, guest_path

VMBUILD = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "vmbuild")

#: The lab of these tests: two VMs on a bridge, "victim" and "victim2" (the second
#: clone's look at the golden image is the first's, shared).
write_profile = functools.partial(
    write_lab,
    name="trap",
    domain=None,
    network={"source": "br-test", "subnet": "192.0.2.0/24"},
    vms=[{"name": "victim", "ip": "192.0.2.10"}, {"name": "victim2", "ip": "192.0.2.11"}],
)


#: Hostile golden images, made in one appliance launch: name -> what is in it.
HOSTILE = {
    # /etc/hostname links to /etc/shadow, and a FIFO sits at /etc/motd.
    "trap": ImageSpec(
        "debian-ifupdown", symlinks={"/etc/hostname": "/etc/shadow"}, fifos=("/etc/motd",)
    ),
    # The clean-up of cloud-init's state would empty the clone's /etc through it.
    "cloud-to-etc": ImageSpec("debian-ifupdown", symlinks={"/var/lib/cloud": "/etc"}),
    # New host keys would land in the guest's /tmp through it.
    "ssh-to-tmp": ImageSpec("debian-ifupdown", symlinks={"/etc/ssh": "/tmp"}),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = {name: folder / f"{name}.qcow2" for name in HOSTILE}
    make_images({paths[name]: spec for name, spec in HOSTILE.items()})
    return paths


@pytest.fixture(scope="module")
def trap_image(hostile: dict[str, Path]) -> Path:
    return hostile["trap"]


def _build(image: Path, tmp_path: Path) -> tuple[int, str, Path]:
    golden = tmp_path / image.name
    shutil.copyfile(image, golden)
    profile = write_profile(tmp_path, golden)
    out = tmp_path / "out"
    done = subprocess.run(
        [VMBUILD, str(profile), "-o", str(out), "-q"], capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stderr, out


@pytest.mark.guestfs
def test_a_folder_link_to_etc_does_not_empty_the_clones_etc(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    """/var/lib/cloud -> /etc: the clean-up of /var/lib/cloud/* is skipped, with a
    warning, and the clone's /etc keeps every entry the golden image has."""
    code, err, out = _build(hostile["cloud-to-etc"], tmp_path)
    assert code == 0, err
    assert "not removing" in err or "not looking for /var/lib/cloud/*" in err, err
    assert "/var/lib/cloud" in err and "symbolic link" in err
    disks = {
        "golden": hostile["cloud-to-etc"],
        "victim": out / "trap/vms/victim/disk.qcow2",
        "victim2": out / "trap/vms/victim2/disk.qcow2",
    }
    seen = guest_entries(disks, trees=["/etc"])
    golden = seen["golden"]
    assert len(golden) > 20
    for name in ("victim", "victim2"):
        clone = seen[name]
        # Only the golden VM's leftovers that the clean-up names go.
        assert set(golden) - set(clone) == {
            "/etc/udev/rules.d/70-persistent-net.rules",
            "/etc/udev/rules.d/70-persistent-cd.rules",
        } & set(golden), name
        for path in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/fstab"):
            assert clone[path] == golden[path], (name, path)
        assert clone["/etc/hostname"] != golden.get("/etc/hostname"), name
    assert seen["victim"]["/etc/hostname"] != seen["victim2"]["/etc/hostname"]


@pytest.mark.guestfs
def test_a_folder_link_for_the_host_keys_fails_the_build(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    """/etc/ssh -> /tmp: writing the host keys there is refused and nothing is published."""
    code, err, out = _build(hostile["ssh-to-tmp"], tmp_path)
    assert code == 3, err
    assert "Installing new SSH host keys" in err
    assert "/etc/ssh is a symbolic link to /tmp; vmbuild never follows links" in err
    assert "Traceback" not in err
    assert not (out / "trap").exists()
    assert [p.name for p in out.iterdir() if not p.name.endswith(".lock")] == []


@contextlib.contextmanager
def opened(
    image: Path, tmp_path: Path, timeout: float = 30
) -> Iterator[tuple[Appliance, GuestFiles]]:
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)],
        check=True,
    )
    with Appliance(call_timeout=timeout) as app:
        app.add(overlay, "qcow2", readonly=False)
        app.launch()
        app.handle.mount(app.device(0) + "1", "/")
        yield app, GuestFiles(app)


def test_guest_paths_are_absolute_and_normalised() -> None:
    assert guest_path("/etc//hostname") == "/etc/hostname"
    assert guest_path("/etc/./hosts") == "/etc/hosts"
    for bad in ("etc/hostname", "/etc/../shadow", "/etc/host\0name"):
        with pytest.raises(GuestPathError):
            guest_path(bad)


@pytest.mark.guestfs
def test_links_fifos_and_timeouts_inside_the_guest(trap_image: Path, tmp_path: Path) -> None:
    with opened(trap_image, tmp_path, timeout=8) as (app, guest):
        shadow = guest.read("/etc/shadow")
        assert shadow and shadow.startswith(b"root:")
        with pytest.raises(GuestPathError, match="symbolic link to /etc/shadow"):
            guest.write("/etc/hostname", b"owned\n")
        assert guest.read("/etc/shadow") == shadow  # untouched
        start = time.monotonic()
        with pytest.raises(GuestPathError, match="is a FIFO"):
            guest.write("/etc/motd", b"hello\n")
        with pytest.raises(GuestPathError, match="is a FIFO"):
            guest.read("/etc/motd")
        assert time.monotonic() - start < 5
        # A raw write to the FIFO would block forever: the watchdog ends it.
        start = time.monotonic()
        with pytest.raises(ApplianceTimeout, match="no answer within 8s"):
            app.call("writing /etc/motd", app.handle.write, "/etc/motd", b"x")
        assert time.monotonic() - start < 30


@pytest.mark.guestfs
def test_build_on_a_hostile_image_fails_clearly(
    trap_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = tmp_path / "trap.qcow2"
    shutil.copyfile(trap_image, golden)
    profile = write_profile(tmp_path, golden)
    assert main([str(profile), "-o", str(tmp_path / "out"), "-q"]) == 3
    err = capsys.readouterr().err
    assert 'vm "victim" (disk ' in err
    assert "Setting the hostname: victim: /etc/hostname is a symbolic link to /etc/shadow" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "trap").exists()
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.endswith(".lock")] == []


def test_locked_golden_image_is_reported(
    blank_golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_profile(tmp_path, blank_golden)
    with qemu_holding(blank_golden):
        assert main(["validate", str(profile)]) == 2
    assert "is locked: a running VM is using it" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount")
def test_full_disk_is_refused_up_front(
    blank_golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_profile(tmp_path, blank_golden)
    with small_tmpfs(tmp_path / "small", "20m") as out:
        start = time.monotonic()
        assert main([str(profile), "-o", str(out), "-q"]) == 3
        assert time.monotonic() - start < 30
    assert "not enough free space" in capsys.readouterr().err


@pytest.mark.guestfs
def test_disk_filling_up_mid_write_ends_in_bounded_time(golden: Path, tmp_path: Path) -> None:
    """QEMU pauses the appliance when its disk's host filesystem is full: the call
    would hang for ever without the watchdog."""
    with small_tmpfs(tmp_path / "small", "24m") as small:
        overlay = small / "overlay.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(golden),
                "-F",
                "qcow2",
                str(overlay),
            ],
            check=True,
        )
        with Appliance(call_timeout=20) as app:
            app.add(overlay, "qcow2", readonly=False)
            app.launch()
            app.handle.mount(app.device(0) + "1", "/")
            start = time.monotonic()
            with pytest.raises(ApplianceError):
                app.call("filling the disk", app.handle.fill_pattern, "x", 64 << 20, "/blob")
                app.call("syncing", app.handle.sync)
            assert time.monotonic() - start < 60
