"""One libguestfs appliance: drives added, launched once, every call bounded in time.

Guest filesystems are only ever opened inside the appliance, never on the host.
libguestfs calls block in C with no timeout of their own: a FIFO at a written
path or a full host disk (QEMU pauses the appliance) would hang them forever. So
each call runs on a worker thread while the main thread waits for it in Python,
where a timeout, a full disk and a signal (Ctrl-C, SIGTERM) all reach it at once:
the appliance's QEMU is then killed, and the call fails or the signal goes on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from vmbuild.errors import BuildError, ImageLockedError
from vmbuild.guest import supermin
from vmbuild.host import qemuimg
from vmbuild.host.files import user_cache
from vmbuild.host.space import free_space_problem
from vmbuild.log import detail

T = TypeVar("T")

#: Default bound on one guestfs call, and on the launch (which boots a VM).
CALL_TIMEOUT = 120.0
LAUNCH_TIMEOUT = 600.0
#: vCPUs of the appliance (at most the host's).
APPLIANCE_CPUS = int(os.environ.get("VMBUILD_APPLIANCE_CPUS", "2"))
#: A working KVM boots a kernel to its panic in about a second.
KVM_PROBE_TIMEOUT = 12.0
#: How often a waiting call looks at the free space beside its writable drives.
POLL = 1.0
#: A call that has waited this long while the filesystem beside a writable drive
#: is full is taken to be stuck: QEMU pauses the appliance on ENOSPC.
FULL_AFTER = 3.0
#: How long a killed appliance's call may take to come back.
DRAIN_TIMEOUT = 30.0


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
    cache = user_cache() / "kvm-probe.json"
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


class _Call(Generic[T]):
    """One call handed to the worker thread, and its outcome."""

    def __init__(self, function: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.function = function
        self.args = args
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function(*self.args)
        except BaseException as err:  # handed back to the waiting thread
            self.error = err
        finally:
            self.done.set()


class _Worker:
    """The one thread that talks to a handle. A daemon: a call stuck in C must not
    keep the process alive once vmbuild has given up on it."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="guestfs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()

    def submit(self, job: _Call[Any]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)


class Appliance:
    """A libguestfs handle with its drives. Use as a context manager."""

    def __init__(
        self,
        call_timeout: float = CALL_TIMEOUT,
        *,
        cpus: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``cpus``: the appliance's vCPUs (APPLIANCE_CPUS by default, at most the
        host's); ``stop``: once set, the call under way and every later one kill the
        appliance and raise ApplianceStopped (another appliance of the build failed)."""
        guestfs = guestfs_module()
        self.call_timeout = call_timeout
        self._stop = stop
        self._worker = _Worker()
        #: The call the worker runs now, if any.
        self._busy: _Call[Any] | None = None
        # Made on the worker thread, which makes every later call: libguestfs keeps
        # its error handler per thread, and the binding silences it (errors become
        # exceptions) only in the thread that made the handle.
        self.handle = self.call(
            "making a libguestfs handle",
            functools.partial(guestfs.GuestFS, python_return_dict=True, close_on_exit=False),
        )
        kvm, reason = kvm_usable()
        self.accel = "kvm" if kvm else "tcg"
        h = self.handle
        if os.environ.get("LIBGUESTFS_BACKEND") is None:
            self.call("choosing the backend", h.set_backend, "direct")
        if not kvm:
            self.call("choosing TCG", h.set_backend_setting, "force_tcg", "1")
        detail(f"libguestfs: {self.accel} ({reason.splitlines()[0] if reason else ''})")
        self.call("setting autosync", h.set_autosync, True)
        # Two vCPUs let the appliance probe its disks in parallel: with a lab's
        # worth of drives that shortens the launch by a fifth under TCG.
        wanted = APPLIANCE_CPUS if cpus is None else cpus
        self.call("setting the vCPUs", h.set_smp, max(1, min(wanted, os.cpu_count() or 1)))
        self.drives: list[Path] = []
        self._formats: list[str] = []
        self._writable: set[Path] = set()
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

    def add(self, path: Path, fmt: str, *, readonly: bool = False, scratch: bool = False) -> int:
        """Add a drive; returns its index (its device is known after launch).

        A ``scratch`` drive is a writable disk that is thrown away if the build
        fails: QEMU writes it with cache=unsafe, ignoring the guest's flushes (each
        unmount's), and the caller makes it durable once the appliance is shut down
        (``qemuimg.check`` and an fsync, before the bundle is published)."""
        options: dict[str, Any] = {"format": fmt, "readonly": readonly}
        if scratch and not readonly:
            options["cachemode"] = "unsafe"
        add = functools.partial(self.handle.add_drive_opts, **options)
        self.call(f"adding {path}", add, str(path))
        self.drives.append(path)
        self._formats.append(fmt)
        if not readonly:
            self._writable.add(path.parent)
        return len(self.drives) - 1

    def launch(self) -> None:
        what = f"starting the libguestfs appliance ({len(self.drives)} drives)"
        self._choose_appliance()
        try:
            self.call(what, self.handle.launch, timeout=LAUNCH_TIMEOUT)
        except (ApplianceTimeout, ApplianceStopped):
            raise
        except ApplianceError as err:
            raise self._launch_failure(what, err) from None
        self._pid = self.call("asking for QEMU's pid", self.handle.get_pid)
        # libguestfs names the drives in the order they were added, as /dev/sda,
        # /dev/sdb, ... /dev/sdz, /dev/sdaa (guestfs(3), "BLOCK DEVICE NAMING").
        # Asking the appliance (list_devices) costs a tenth of a second per drive
        # under TCG.
        self._devices = [device_name(index) for index in range(len(self.drives))]

    def _choose_appliance(self) -> None:
        """Boot vmbuild's layer over libguestfs's appliance (``supermin``), unless
        VMBUILD_APPLIANCE=stock or the user's own LIBGUESTFS_PATH says otherwise."""
        if os.environ.get("LIBGUESTFS_PATH") or os.environ.get("VMBUILD_APPLIANCE") == "stock":
            return
        searched = self.call("asking for the appliance path", self.handle.get_path)
        for folder in str(searched).split(":"):
            try:
                layered = supermin.layered_path(Path(folder))
            except OSError as err:
                detail(f"libguestfs: its own appliance ({err})")
                return
            if layered is not None:
                path, cache = layered
                self.call("choosing the appliance", self.handle.set_path, str(path))
                self.call("choosing its cache", self.handle.set_cachedir, str(cache))
                return

    def _launch_failure(self, what: str, err: ApplianceError) -> BuildError:
        """The cause of a failed launch, where vmbuild can tell it: libguestfs says only
        that QEMU exited, also when a drive is locked by a running VM."""
        for path, fmt in zip(self.drives, self._formats, strict=True):
            if qemuimg.is_locked(path, fmt):
                return ImageLockedError(
                    f"{what}: {path} is locked: a running VM (or another program) is using it",
                    path=path,
                    hint="shut that VM down and build again; a golden image must not "
                    "change under its clones",
                )
        first = err.message.splitlines()[0] if err.message else what
        return ApplianceError(first, hint="`vmbuild doctor` tests the appliance on this host")

    def device(self, index: int) -> str:
        return self._devices[index]

    def call(
        self, what: str, function: Callable[..., T], *args: Any, timeout: float | None = None
    ) -> T:
        """Run one guestfs call; kill the appliance if it overruns its time, if the
        disk beside a writable drive fills up, or if a signal interrupts the wait."""
        limit = self.call_timeout if timeout is None else timeout
        if self._stop is not None and self._stop.is_set():
            raise ApplianceStopped(f"{what}: stopped, another appliance failed")
        job: _Call[T] = _Call(function, args)
        self._busy = job
        start = time.monotonic()
        self._worker.submit(job)
        try:
            while not job.done.wait(POLL):
                if self._stop is not None and self._stop.is_set():
                    self._abandon(job)
                    raise ApplianceStopped(f"{what}: stopped, another appliance failed")
                waited = time.monotonic() - start
                if waited >= limit:
                    self._abandon(job)
                    raise ApplianceTimeout(f"{what}: no answer within {limit:.0f}s")
                if waited >= FULL_AFTER:
                    full = next(filter(None, map(free_space_problem, sorted(self._writable))), None)
                    if full is not None:
                        self._abandon(job)
                        raise ApplianceError(
                            f"{what}: {full}; QEMU paused the appliance",
                            hint="free some space (or choose another --output) and build again",
                        )
        except BaseException:
            if not job.done.is_set():
                self._abandon(job)  # an interrupt: nothing may keep running behind it
            raise
        if isinstance(job.error, (RuntimeError, ValueError)):  # the binding's errors
            raise ApplianceError(f"{what}: {job.error}") from None
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _abandon(self, job: _Call[Any]) -> None:
        """Kill the appliance's QEMU so that the stuck call returns, and wait for it."""
        for pid in [self._pid] if self._pid else _qemu_children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        job.done.wait(DRAIN_TIMEOUT)

    def attempt(
        self, what: str, function: Callable[..., T], *args: Any, timeout: float | None = None
    ) -> T | ApplianceError:
        """Like call, for a call that may fail: its error is returned, not raised.
        A call that overran its time still raises: the appliance is gone."""
        try:
            return self.call(what, function, *args, timeout=timeout)
        except (ApplianceTimeout, ApplianceStopped):
            raise
        except ApplianceError as err:
            return err

    def finish(self, what: str) -> None:
        """Shut down once every filesystem was unmounted. Unmounting wrote each one
        out to its disk, and QEMU writes its images out as it exits: the sync of
        every drive that libguestfs would add first costs a tenth of a second per
        drive under TCG, for nothing."""
        self.call(what, self.handle.set_autosync, False)
        self.call(what, self.handle.shutdown)

    def close(self) -> None:
        self._stop = None  # a stopped appliance is still shut down and closed
        busy = self._busy
        if busy is None or busy.done.is_set():
            with contextlib.suppress(BaseException):
                self.call("shutting the appliance down", self.handle.shutdown, timeout=60)
            with contextlib.suppress(BaseException):
                self.call("closing the handle", self.handle.close, timeout=60)
        # else a call is stuck even though its QEMU was killed: leave the handle be
        self._worker.stop()


class ApplianceError(BuildError):
    """A guestfs call failed; the caller adds the VM, disk and operation."""


class ApplianceTimeout(ApplianceError):
    """A guestfs call did not answer in time; the appliance was killed."""


class ApplianceStopped(ApplianceError):
    """The build stopped this appliance because another of its appliances failed."""


@contextlib.contextmanager
def appliance(call_timeout: float = CALL_TIMEOUT) -> Iterator[Appliance]:
    with Appliance(call_timeout) as handle:
        yield handle
