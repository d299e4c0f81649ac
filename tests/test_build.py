"""Whole builds on real qemu-img: the bundle, its checksums, and what a failed,
interrupted or concurrent build leaves behind.

Builds that get as far as editing the disks start the appliance (``guestfs``); the
refusals before it run on a blank image (the ``blank_golden`` fixture)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labs import make_image, nodes, write_lab
from vmbuild.cli import main

REPO = Path(__file__).resolve().parent.parent
VMBUILD = [sys.executable, "-m", "vmbuild"]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(output: Path) -> list[str]:
    return sorted(p.name for p in output.iterdir() if ".staging-" in p.name or ".old-" in p.name)


@pytest.mark.guestfs
def test_bundle_layout_checksums_and_disks(
    tmp_path: Path, golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_lab(tmp_path, golden, defaults={"disk_size": "3G"})
    out = tmp_path / "out"
    assert main([str(profile), "--output", str(out)]) == 0
    bundle = out / "t"
    assert capsys.readouterr().out.strip() == str(bundle)
    names = set(digests(bundle))
    assert {"manifest.json", "SHA256SUMS", "define.sh", "plan.json", "inventory/hosts"} <= names
    for vm in ("node1", "node2"):
        assert {f"vms/{vm}/disk.qcow2", f"vms/{vm}/seed.iso", f"vms/{vm}/domain.xml"} <= names
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, check=True)
    assert os.access(bundle / "define.sh", os.X_OK)

    disk = bundle / "vms/node1/disk.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "qcow2", disk],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["backing-filename"] == os.path.relpath(golden, disk.parent)
    assert not info["backing-filename"].startswith("/")
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 3 << 30
    subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", disk], check=True)

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["root"] == str(bundle)
    assert manifest["base"]["sha256"] == hashlib.sha256(golden.read_bytes()).hexdigest()
    node2 = manifest["vms"]["node2"]
    assert node2["ip"] == "192.0.2.11/24"
    assert node2["artifacts"]["seed"]["sha256"] == digests(bundle)["vms/node2/seed.iso"]
    assert leftovers(out) == []


@pytest.mark.guestfs
def test_rebuild_is_byte_identical(tmp_path: Path, golden: Path) -> None:
    profile = write_lab(tmp_path, golden)
    assert main([str(profile), "-o", str(tmp_path / "a"), "-q"]) == 0
    first = digests(tmp_path / "a" / "t")
    assert main([str(profile), "-o", str(tmp_path / "a"), "-q"]) == 0
    second = digests(tmp_path / "a" / "t")
    for name in first:
        if name.endswith((".iso", ".xml", "plan.json", "hosts")):
            assert first[name] == second[name], name


@pytest.mark.guestfs
def test_copy_modes_are_sparse_and_grown(tmp_path: Path, golden: Path) -> None:
    profile = write_lab(
        tmp_path,
        golden,
        vms=[nodes(1)],
        defaults={"disk_mode": "copy", "disk_format": "raw", "disk_size": "2G"},
    )
    assert main([str(profile), "-o", str(tmp_path / "out"), "-q"]) == 0
    disk = tmp_path / "out/t/vms/node1/disk.raw"
    assert disk.stat().st_size == 2 << 30
    assert disk.stat().st_blocks * 512 < 64 << 20  # sparse: only the data is allocated
    xml = (tmp_path / "out/t/vms/node1/domain.xml").read_text()
    assert 'type="raw"' in xml and str(disk) in xml


@pytest.mark.guestfs
def test_missing_golden_image_keeps_previous_bundle(
    tmp_path: Path, golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_lab(tmp_path, golden)
    out = tmp_path / "out"
    assert main([str(profile), "-o", str(out), "-q"]) == 0
    before = digests(out / "t")
    capsys.readouterr()
    assert main([str(profile), "-o", str(out), "--base", str(tmp_path / "gone.qcow2")]) == 2
    err = capsys.readouterr().err
    assert "base: image" in err and "gone.qcow2 does not exist" in err
    assert "Traceback" not in err
    assert digests(out / "t") == before
    assert leftovers(out) == []


def test_sha256_pin_mismatch_is_refused(
    tmp_path: Path, blank_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_lab(tmp_path, blank_golden, base={"sha256": "0" * 64})
    assert main([str(profile), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"not the pinned {'0' * 64}" in err
    assert not (tmp_path / "out" / "t").exists()


def test_truncated_golden_image_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = make_image(tmp_path / "golden.qcow2", data_mib=2)
    size = golden.stat().st_size
    with golden.open("r+b") as handle:
        handle.truncate(size // 2)
    profile = write_lab(tmp_path, golden)
    assert main([str(profile), "-o", str(tmp_path / "out")]) == 2
    assert "is damaged" in capsys.readouterr().err


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only even for root: a read-only bind mount."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    subprocess.run(["mount", "--bind", folder, folder], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", folder, folder], check=True)
        yield
    finally:
        subprocess.run(["umount", folder], check=True)


@pytest.mark.guestfs
def test_read_only_output_keeps_previous_bundle(
    tmp_path: Path, golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_lab(tmp_path, golden)
    out = tmp_path / "out"
    assert main([str(profile), "-o", str(out), "-q"]) == 0
    before = digests(out / "t")
    capsys.readouterr()
    with read_only(out):
        code = main([str(profile), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Read-only file system" in err or "not writable" in err
    assert digests(out / "t") == before
    assert leftovers(out) == []


@pytest.fixture(scope="module")
def bulky_image(os_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden image with 48 MiB of data in it, so that copying it takes a while."""
    from vmbuild.guest.appliance import Appliance

    path = tmp_path_factory.mktemp("bulky") / "golden-data.qcow2"
    shutil.copyfile(os_image, path)
    with Appliance() as app:
        app.add(path, "qcow2", readonly=False)
        app.launch()
        app.handle.mount(app.device(0) + "1", "/")
        app.handle.fill_pattern("vmbuild", 48 << 20, "/var/blob")
        app.handle.shutdown()
    return path


@pytest.fixture(scope="module")
def data_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 MiB of random data in a qcow2 with no filesystem: copying it takes a while
    too, and a build refused before the appliance never looks inside it."""
    return make_image(tmp_path_factory.mktemp("data") / "golden-data.qcow2", data_mib=48)


def _slow_build(tmp_path: Path, bulky: Path, name: str = "slow") -> tuple[Path, Path]:
    """A lab whose disk step takes seconds: many full copies of a golden image with data."""
    golden = tmp_path / "golden-data.qcow2"
    shutil.copyfile(bulky, golden)
    profile = write_lab(
        tmp_path, golden, name=name, vms=[nodes(24)], defaults={"disk_mode": "copy"}
    )
    return profile, tmp_path / "out"


def _start(profile: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*VMBUILD, str(profile), "-o", str(out)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_for_disk_step(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:
        seen += line
        if "Creating" in line:
            return seen
    raise AssertionError(f"build ended before its disk step:\n{seen}")


@pytest.mark.slow
@pytest.mark.guestfs
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_build_keeps_previous_bundle(
    tmp_path: Path, bulky_image: Path, signum: int
) -> None:
    profile, out = _slow_build(tmp_path, bulky_image)
    # The bundle to keep: the same lab with one VM, quick to build.
    first = subprocess.run(
        [*VMBUILD, str(profile), "-o", str(out), "-q", "--set", "vm.1.count=1"], cwd=REPO
    )
    assert first.returncode == 0
    before = digests(out / "slow")
    proc = _start(profile, out)
    _wait_for_disk_step(proc)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert digests(out / "slow") == before
    assert leftovers(out) == []


@pytest.mark.slow
def test_second_concurrent_build_is_refused(tmp_path: Path, data_image: Path) -> None:
    profile, out = _slow_build(tmp_path, data_image, name="busy")
    proc = _start(profile, out)
    try:
        _wait_for_disk_step(proc)
        second = subprocess.run(
            [*VMBUILD, str(profile), "-o", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 4, second.stderr
        assert 'lab "busy" is being built by another vmbuild' in second.stderr
        assert f"pid {proc.pid}" in second.stderr
    finally:
        proc.terminate()  # no need to wait for 24 disks: the refusal is what counts
        proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert not (out / "busy").exists()
    assert leftovers(out) == []


def test_lock_held_elsewhere_is_reported(
    tmp_path: Path, blank_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_lab(tmp_path, blank_golden)
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".t.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("12345")
        handle.flush()
        assert main([str(profile), "-o", str(out)]) == 4
    assert "pid 12345" in capsys.readouterr().err
    assert not (out / "t").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(
    tmp_path: Path, blank_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = write_lab(tmp_path, blank_golden)
    precious = tmp_path / "out" / "t"
    precious.mkdir(parents=True)
    (precious / "notes.txt").write_text("mine")
    assert main([str(profile), "-o", str(tmp_path / "out")]) == 2
    assert "is not a vmbuild bundle" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "mine"


def test_symlink_at_an_output_path_is_replaced_not_followed(tmp_path: Path) -> None:
    from vmbuild.host.files import write_atomic

    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "seed.iso"
    link.symlink_to(victim)
    write_atomic(link, b"new")
    assert victim.read_text() == "keep"
    assert not link.is_symlink() and link.read_bytes() == b"new"


def test_qcow2_golden_declared_raw_is_refused(
    tmp_path: Path, blank_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read as raw, a qcow2 file would hand every VM its header as disk contents."""
    profile = write_lab(tmp_path, blank_golden, base={"format": "raw"})
    assert main([str(profile), "-o", str(tmp_path / "out")]) == 2
    assert "is a qcow2 image but base.format is raw" in capsys.readouterr().err
