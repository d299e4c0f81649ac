"""Shared fixtures: a small real golden image, and the CLI run in-process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from debiangolden import Built, build_once
from vmbuild import cli, log
from vmbuild.guest.appliance import kvm_usable

# Tests that open libguestfs handles themselves use the same accelerator vmbuild
# detects: KVM when it really works here, TCG otherwise.
os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
if not kvm_usable()[0]:
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")


@pytest.fixture(scope="session")
def debian_golden() -> Iterator[Built]:
    """A real Debian golden image from Debian's packages (slow: a few minutes), built
    once per test run and shared; skipped where it cannot be built."""
    yield from build_once()


@pytest.fixture(scope="session")
def libvirtd() -> None:
    """The system libvirtd answers (skip, or fail under .ci/run, when it does not)."""
    from libvirthelp import require_libvirtd

    require_libvirtd()


@pytest.fixture(scope="session")
def os_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Debian-like golden image (1 GiB virtual) that vmbuild can inspect and
    edit: made once per test run, in one libguestfs launch (tests/guestimages.py)."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    from guestimages import ImageSpec, make_images

    path = tmp_path_factory.mktemp("os-image") / "debian.qcow2"
    make_images({path: ImageSpec("debian-ifupdown", size="1G")})
    return path


@pytest.fixture
def golden(tmp_path: Path, os_image: Path) -> Path:
    """A private copy of the session's golden image, free to damage."""
    path = tmp_path / "golden.qcow2"
    shutil.copyfile(os_image, path)
    return path


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of ``size`` (and at most ``inodes`` files) mounted at ``path``, for a
    disk that fills up: a real filesystem, not a mock."""
    path.mkdir()
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def paused_qemu() -> list[str]:
    """A QEMU that opens its drives and takes their locks, but runs nothing."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return [qemu, "-S", "-nodefaults", "-display", "none", "-accel", "tcg"]


@contextlib.contextmanager
def qemu_holding(image: Path) -> Iterator[None]:
    """A running QEMU holding ``image`` open for writing, as a VM would, until QEMU's
    image lock is taken; killed afterwards."""
    holder = subprocess.Popen(
        [*paused_qemu(), "-drive", f"file={image},format=qcow2,if=virtio"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            probe = subprocess.run(["qemu-img", "info", str(image)], capture_output=True)
            if probe.returncode != 0:
                break
            time.sleep(0.1)
        yield
    finally:
        holder.kill()
        holder.wait()


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


RunCli = Callable[..., Result]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run `vmbuild ARGS...` through vmbuild.cli.main and capture what it printed."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()  # drop anything printed before
        log.set_verbosity(1)  # a previous `build -q` must not silence this run
        # main() installs its own handlers
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            code = cli.main([str(arg) for arg in args])
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
