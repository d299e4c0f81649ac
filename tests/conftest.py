"""Shared fixtures: the guard that keeps the fast tier off the libguestfs appliance,
a small real golden image and a blank one, and the CLI run in-process.

The tiers, by marker: ``guestfs`` starts a libguestfs appliance (itself or through a
build that edits disks), ``libvirt`` needs libvirtd, ``boot`` boots a guest,
``golden_image`` builds or needs the debootstrap Debian golden image. The fast tier,
``-m "not guestfs and not libvirt and not boot and not golden_image"``, starts no
appliance: a test without one of those markers that does fails, saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from debiangolden import Built, build_once
from labs import make_image
from vmbuild import cli, log
from vmbuild.guest.appliance import kvm_usable

# Tests that open libguestfs handles themselves use the same accelerator vmbuild
# detects: KVM when it really works here, TCG otherwise.
os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
if not kvm_usable()[0]:
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")


# ------------------------------------------------------------ the appliance guard

#: The markers of the tests that may start a libguestfs appliance.
APPLIANCE_MARKERS = ("guestfs", "golden_image", "boot")
#: What an unmarked test that started an appliance is told.
_LAUNCHED = pytest.StashKey[str]()
#: Where the stand-in for QEMU records a launch from a subprocess (vmbuild run as a
#: command), which no patch in this process can see.
_RECORD = pytest.StashKey[Path]()


class _Running:
    """The test whose setup, call or teardown runs now. The guard reads it on
    vmbuild's appliance thread too, and session fixtures (a golden image made in
    the first test that needs it) count as that test's."""

    item: pytest.Item | None = None


def _may_launch(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) for name in APPLIANCE_MARKERS)


def _unmarked(item: pytest.Item, where: str) -> str:
    return (
        f"{item.nodeid} started a libguestfs appliance{where} without the guestfs marker: "
        "mark it @pytest.mark.guestfs (or its file, with pytestmark), or keep it off "
        "the appliance (blank_golden serves every check before it)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    _Running.item = item
    try:
        return (yield)
    finally:
        _Running.item = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail the phase in which an unmarked test started an appliance, also when the
    code under test caught the failure, or a subprocess turned it into a build error."""
    report = yield
    message = item.stash.get(_LAUNCHED, None)
    record = item.stash.get(_RECORD, None)
    if record is not None and record.exists() and record.stat().st_size:
        message = message or _unmarked(item, " in a subprocess")
        record.write_text("")
    if message is None:
        return report
    if _LAUNCHED in item.stash:
        del item.stash[_LAUNCHED]  # told once
    if report.failed and message in str(report.longrepr):
        return report
    report.outcome = "failed"
    report.longrepr = f"{message}\n\n{report.longrepr}" if report.longrepr else message
    return report


@pytest.fixture(scope="session", autouse=True)
def _guard_appliance_launches() -> Iterator[None]:
    """Replace the guestfs handle's launch, for every handle made in this process
    (vmbuild's Appliance, and the tests' own), with one that fails an unmarked test.
    The launch runs on vmbuild's appliance thread: pytest.fail's exception is handed
    back from there, and the report hook above catches it if vmbuild swallowed it."""
    try:
        import guestfs
    except ImportError:
        yield
        return
    launch = guestfs.GuestFS.launch

    def guarded(handle: Any) -> Any:
        item = _Running.item
        if item is not None and not _may_launch(item):
            message = item.stash[_LAUNCHED] = _unmarked(item, "")
            pytest.fail(message, pytrace=False)
        return launch(handle)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(guestfs.GuestFS, "launch", guarded)
        yield


@pytest.fixture(autouse=True)
def _guard_subprocess_launches(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """For an unmarked test, libguestfs's QEMU is a script that records being run
    and fails: a vmbuild run as a command cannot start an appliance either."""
    item = request.node
    if not isinstance(item, pytest.Item) or _may_launch(item):
        return
    folder = tmp_path_factory.getbasetemp() / "appliance-guard"
    folder.mkdir(exist_ok=True)
    record = folder / (hashlib.sha256(item.nodeid.encode()).hexdigest()[:16] + ".launches")
    script = folder / "qemu"
    if not script.exists():
        script.write_text(
            '#!/bin/sh\necho "$*" >>"$VMBUILD_TEST_LAUNCHES"\n'
            'echo "tests/conftest.py: this test may not start a libguestfs appliance" >&2\n'
            "exit 1\n"
        )
        script.chmod(0o755)
    item.stash[_RECORD] = record
    monkeypatch.setenv("LIBGUESTFS_HV", str(script))
    monkeypatch.setenv("VMBUILD_TEST_LAUNCHES", str(record))


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


@pytest.fixture
def blank_golden(tmp_path: Path) -> Path:
    """A blank 1 GiB qcow2 in place of the golden image, for tests that stop before
    the appliance: validate, plan, and builds refused before the disks are edited.
    It takes no appliance to make, so such tests stay in the fast tier."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    return make_image(tmp_path / "blank.qcow2")


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
