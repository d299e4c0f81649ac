"""One libguestfs appliance: drives added, launched once, every call bounded in time.

Guest filesystems are only ever opened inside the appliance, never on the host.
libguestfs calls block in C with no timeout of their own: a FIFO at a written
path or a full host disk (QEMU pauses the appliance) would hang them forever, so a
watchdog kills the appliance's QEMU when a call overruns, and the call then fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import BuildError
from .log import detail

T = TypeVar("T")

#: Default bound on one guestfs call, and on the launch (which boots a VM).
CALL_TIMEOUT = 120.0
LAUNCH_TIMEOUT = 600.0
#: vCPUs of the appliance (at most the host's).
APPLIANCE_CPUS = int(os.environ.get("VMBUILD_APPLIANCE_CPUS", "2"))
#: A working KVM boots a kernel to its panic in about a second.
KVM_PROBE_TIMEOUT = 12.0


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmbuild"


def _host_kernel() -> Path | None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    return kernels[-1] if kernels else None


def _probe_key(kernel: Path) -> str:
    kvm = os.stat("/dev/kvm")
    qemu = shutil.which("qemu-system-x86_64") or ""
    qemu_mtime = os.stat(qemu).st_mtime_ns if qemu else 0
    return f"{os.uname().release}|{kvm.st_rdev}|{qemu}|{qemu_mtime}|{kernel}"


def kvm_usable() -> tuple[bool, str]:
    """Whether KVM really runs a guest here, and why not.

    /dev/kvm can exist and still be unusable (QEMU hangs or aborts setting MSRs on
    some nested hosts), so boot the host's kernel under KVM until it panics for
    want of a root filesystem: a working KVM gets there in about a second. The
    answer is cached per host kernel and QEMU binary. VMBUILD_ACCEL=kvm|tcg skips it.
    """
    forced = os.environ.get("VMBUILD_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced == "kvm", f"VMBUILD_ACCEL={forced}"
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to this user"
    qemu = shutil.which("qemu-system-x86_64")
    kernel = _host_kernel()
    if qemu is None or kernel is None:
        return False, "no qemu-system-x86_64 or kernel in /boot to probe KVM with"
    cache = _cache_dir() / "kvm-probe.json"
    key = _probe_key(kernel)
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return bool(saved["usable"]), str(saved["reason"])
    start = time.monotonic()
    try:
        result = subprocess.run(
            [
                qemu,
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-m",
                "256",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "none",
                "-kernel",
                str(kernel),
                "-append",
                "panic=-1 console=ttyS0",
            ],
            capture_output=True,
            text=True,
            timeout=KVM_PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        usable = result.returncode == 0
        reason = (
            f"a test guest ran under KVM in {time.monotonic() - start:.1f}s"
            if usable
            else f"QEMU failed under KVM: {result.stderr.strip()[-200:]}"
        )
    except subprocess.TimeoutExpired:
        usable, reason = False, f"a test guest hung under KVM for {KVM_PROBE_TIMEOUT:.0f}s"
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "usable": usable, "reason": reason}))
    return usable, reason


def _qemu_children() -> list[int]:
    """QEMU processes this process started (the appliance, before its pid is known)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            name = (entry / "comm").read_text().strip()
            if int(fields[1]) == os.getpid() and name.startswith("qemu"):
                found.append(int(entry.name))
    return found


def guestfs_module() -> Any:
    try:
        import guestfs
    except ImportError:
        raise BuildError(
            "the libguestfs Python binding is not installed",
            hint="apt-get install python3-guestfs, and make the venv with "
            "--system-site-packages (scripts/setup does both)",
        ) from None
    return guestfs


def device_name(index: int) -> str:
    """The appliance device of the drive added ``index``-th: 0 -> /dev/sda, 26 -> /dev/sdaa."""
    letters = ""
    number = index + 1
    while number > 0:
        number, rest = divmod(number - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return "/dev/sd" + letters


class Appliance:
    """A libguestfs handle with its drives. Use as a context manager."""

    def __init__(self, call_timeout: float = CALL_TIMEOUT) -> None:
        guestfs = guestfs_module()
        self.call_timeout = call_timeout
        self.handle = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
        kvm, reason = kvm_usable()
        self.accel = "kvm" if kvm else "tcg"
        if os.environ.get("LIBGUESTFS_BACKEND") is None:
            self.handle.set_backend("direct")
        if not kvm:
            self.handle.set_backend_setting("force_tcg", "1")
        detail(f"libguestfs: {self.accel} ({reason})")
        self.handle.set_autosync(True)
        # Two vCPUs let the appliance probe its disks in parallel: with a lab's
        # worth of drives that shortens the launch by a fifth under TCG.
        self.handle.set_smp(max(1, min(APPLIANCE_CPUS, os.cpu_count() or 1)))
        self.drives: list[Path] = []
        self._devices: list[str] = []
        #: The daemon's umask once set (it lasts for the appliance's life).
        self.umask: int | None = None
        #: QEMU's pid, taken right after launch: asking the handle for it while a
        #: call hangs would wait on the handle's lock for ever.
        self._pid: int | None = None

    def __enter__(self) -> Appliance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, path: Path, fmt: str, *, readonly: bool) -> int:
        """Add a drive; returns its index (its device is known after launch)."""
        self.handle.add_drive_opts(str(path), format=fmt, readonly=readonly)
        self.drives.append(path)
        return len(self.drives) - 1

    def launch(self) -> None:
        self.call(
            f"starting the libguestfs appliance ({len(self.drives)} drives)",
            self.handle.launch,
            timeout=LAUNCH_TIMEOUT,
        )
        self._pid = self.handle.get_pid()
        # libguestfs names the drives in the order they were added, as /dev/sda,
        # /dev/sdb, ... /dev/sdz, /dev/sdaa (guestfs(3), "BLOCK DEVICE NAMING").
        # Asking the appliance (list_devices) costs a tenth of a second per drive
        # under TCG.
        self._devices = [device_name(index) for index in range(len(self.drives))]

    def device(self, index: int) -> str:
        return self._devices[index]

    def call(
        self, what: str, function: Callable[..., T], *args: Any, timeout: float | None = None
    ) -> T:
        """Run one guestfs call; kill the appliance if it overruns its time."""
        limit = self.call_timeout if timeout is None else timeout
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            for pid in [self._pid] if self._pid else _qemu_children():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

        timer = threading.Timer(limit, kill)
        timer.daemon = True
        timer.start()
        try:
            return function(*args)
        except (RuntimeError, ValueError) as err:  # the binding's errors (ClosedHandle too)
            if fired.is_set():
                raise ApplianceTimeout(f"{what}: no answer within {limit:.0f}s") from None
            raise ApplianceError(f"{what}: {err}") from None
        finally:
            timer.cancel()

    def attempt(
        self, what: str, function: Callable[..., T], *args: Any, timeout: float | None = None
    ) -> T | ApplianceError:
        """Like call, for a call that may fail: its error is returned, not raised.
        A call that overran its time still raises: the appliance is gone."""
        try:
            return self.call(what, function, *args, timeout=timeout)
        except ApplianceTimeout:
            raise
        except ApplianceError as err:
            return err

    def finish(self, what: str) -> None:
        """Shut down once every filesystem was unmounted. Unmounting wrote each one
        out to its disk, and QEMU writes its images out as it exits: the sync of
        every drive that libguestfs would add first costs a tenth of a second per
        drive under TCG, for nothing."""
        self.handle.set_autosync(False)
        self.call(what, self.handle.shutdown)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.shutdown()
        with contextlib.suppress(Exception):
            self.handle.close()


class ApplianceError(BuildError):
    """A guestfs call failed; the caller adds the VM, disk and operation."""


class ApplianceTimeout(ApplianceError):
    """A guestfs call did not answer in time; the appliance was killed."""


@contextlib.contextmanager
def appliance(call_timeout: float = CALL_TIMEOUT) -> Iterator[Appliance]:
    with Appliance(call_timeout) as handle:
        yield handle
