"""What a hostile or broken golden image, or a full disk, does to a build: clear errors
in bounded time, nothing written through links, nothing published."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guestimages import ImageSpec, make_images
from vmbuild.appliance import Appliance, ApplianceError, ApplianceTimeout
from vmbuild.cli import main
from vmbuild.diskops import GuestFiles, GuestPathError, guest_path

pytestmark = pytest.mark.guestfs

PROFILE = """
[lab]
name = "trap"

[base]
image = "{image}"

[network]
source = "br-test"
subnet = "192.0.2.0/24"

[[vm]]
name = "victim"
ip = "192.0.2.10"
"""


@pytest.fixture(scope="module")
def trap_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Debian-like image whose /etc/hostname links to /etc/shadow, with a FIFO at
    /etc/motd."""
    path = tmp_path_factory.mktemp("trap") / "trap.qcow2"
    make_images(
        {
            path: ImageSpec(
                "debian-ifupdown", symlinks={"/etc/hostname": "/etc/shadow"}, fifos=("/etc/motd",)
            )
        }
    )
    return path


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


def test_build_on_a_hostile_image_fails_clearly(
    trap_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = tmp_path / "trap.qcow2"
    shutil.copyfile(trap_image, golden)
    profile = tmp_path / "trap.toml"
    profile.write_text(PROFILE.format(image=golden))
    assert main([str(profile), "-o", str(tmp_path / "out"), "-q"]) == 3
    err = capsys.readouterr().err
    assert 'vm "victim" (disk ' in err
    assert "Setting the hostname: victim: /etc/hostname is a symbolic link to /etc/shadow" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "trap").exists()
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.endswith(".lock")] == []


def test_locked_golden_image_is_reported(
    golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    profile = tmp_path / "lab.toml"
    profile.write_text(PROFILE.format(image=golden))
    holder = subprocess.Popen(
        [
            qemu,
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-accel",
            "tcg",
            "-drive",
            f"file={golden},format=qcow2,if=virtio",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):  # until QEMU holds the image's lock
            probe = subprocess.run(
                ["qemu-img", "info", "-f", "qcow2", str(golden)], capture_output=True
            )
            if probe.returncode != 0:
                break
            time.sleep(0.1)
        assert main(["validate", str(profile)]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "is locked: a running VM is using it" in capsys.readouterr().err


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount")
def test_full_disk_is_refused_up_front(
    golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "lab.toml"
    profile.write_text(PROFILE.format(image=golden))
    with small_tmpfs(tmp_path / "small", "20m") as out:
        start = time.monotonic()
        assert main([str(profile), "-o", str(out), "-q"]) == 3
        assert time.monotonic() - start < 30
    assert "not enough free space" in capsys.readouterr().err


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
