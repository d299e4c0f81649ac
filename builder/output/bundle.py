"""The bundle folder: built in a staging folder beside the target, published by an
atomic rename, guarded by a lock so two builds of one lab cannot overlap."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from vmbuild.errors import BuildError, LabBusyError, UserError
from vmbuild.host.interrupts import deferred
from vmbuild.host.space import write_error
from vmbuild.log import info

MANIFEST = "manifest.json"
#: The manifest's layout; a bundle with another is rebuilt whole.
MANIFEST_FORMAT = 2
SUMS = "SHA256SUMS"
_RENAME_EXCHANGE = 2


@contextlib.contextmanager
def lab_lock(output: Path, lab: str) -> Iterator[None]:
    """Hold ``output/.<lab>.lock`` for the whole build; refuse if another holds it."""
    lock_path = output / f".{lab}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UserError(
            f"cannot create the lock file {lock_path}: {err.strerror}",
            hint="is the output folder writable?",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise LabBusyError(
                f'lab "{lab}" is being built by another vmbuild (pid {holder}) in {output}',
                hint="wait for it to finish; builds of one lab never overlap",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def remove_stale(output: Path, lab: str) -> None:
    """What a killed build left, cleaned up while holding the lock: staging folders,
    and the previous bundle set aside by a fallback publish (put back when nothing
    took its place, else removed)."""
    for leftover in output.glob(f".{lab}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    final = output / lab
    olds = sorted(output.glob(f".{lab}.old-*"), key=lambda path: path.stat().st_mtime_ns)
    if olds and not final.exists() and not final.is_symlink():
        os.rename(olds.pop(), final)
        info(f"‣ put back the previous bundle {final}, set aside by a build that was killed")
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging(output: Path, lab: str, command: str = "build") -> Iterator[Path]:
    """A fresh folder beside the final one; removed unless it was published.
    ``command`` is what the user runs again once there is room."""
    path = output / f".{lab}.staging-{uuid.uuid4().hex[:12]}"
    try:
        path.mkdir(mode=0o755)
    except OSError as err:
        raise UserError(f"cannot write to the output folder {output}: {err.strerror}") from None
    try:
        yield path
    except OSError as err:
        raise write_error(
            err,
            err.filename or output,
            output,
            "; nothing was published",
            hint=f"free some space (or choose another --output) and {command} again",
        ) from None
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2). False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd = -100
    result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def check_target(final: Path, marker: str = MANIFEST, what: str = "bundle") -> None:
    """Refuse early to replace anything that is not a previous bundle (a folder with
    ``marker`` in it)."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise UserError(f"{final} exists and is not a {what} folder; move it away")
    if final.is_dir() and not (final / marker).exists() and any(final.iterdir()):
        raise UserError(
            f"{final} exists and is not a vmbuild {what}; refusing to replace it",
            hint="choose another --output or remove that folder",
        )


def _rename(source: Path, dest: Path) -> None:
    os.rename(source, dest)


def publish(stage: Path, final: Path, marker: str = MANIFEST, what: str = "bundle") -> None:
    """Put ``stage`` at ``final``. An existing bundle is swapped out in one step
    and then removed, so readers see the old bundle or the new one, never neither.

    Where the filesystem cannot swap two folders (renameat2's RENAME_EXCHANGE: NFS,
    some FUSE filesystems), the previous bundle is renamed aside first: between the
    two renames there is no bundle at ``final``. Signals wait for both renames;
    only SIGKILL can land between them, and then the next build of the lab puts the
    previous bundle back (``remove_stale``). A signal that arrives while publishing
    takes effect once the new bundle is in place, as Interrupted(published=final).
    """
    old: Path | None = None
    try:
        check_target(final, marker, what)
        with deferred(published=final):
            if not final.exists():
                _rename(stage, final)
            elif _renameat2_exchange(stage, final):
                old = stage  # now holds the previous bundle
            else:
                old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
                _rename(final, old)
                try:
                    _rename(stage, final)
                except OSError:
                    _rename(old, final)
                    old = None
                    raise
    except OSError as err:
        raise BuildError(f"cannot publish the {what} at {final}: {err.strerror}") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def sums_text(root: Path, digests: dict[str, str]) -> str:
    """SHA256SUMS in the format sha256sum -c reads, sorted by path.

    Like GNU sha256sum, a name with a backslash, newline or carriage return is
    written escaped (\\\\, \\n, \\r) on a line that starts with a backslash; every
    other name is written as it is.
    """
    lines = []
    for name in sorted(digests):
        if any(char in name for char in "\\\n\r"):
            escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{digests[name]}  {escaped}\n")
        else:
            lines.append(f"{digests[name]}  {name}\n")
    return "".join(lines)


def bundle_disks(final: Path) -> list[tuple[str, Path, str]]:
    """The VM disks a bundle holds (``vms/<vm>/disk.qcow2`` or ``.raw``, no links),
    sorted by path, each with its VM and format: those a running VM may hold open."""
    found = []
    for path in sorted(final.glob("vms/*/disk.*")):
        fmt = path.suffix.lstrip(".")
        if fmt in ("qcow2", "raw") and not path.is_symlink():
            found.append((path.parent.name, path, fmt))
    return found


def tree_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def read_sums(text: str) -> dict[str, str]:
    """SHA256SUMS as ``sums_text`` writes it, read back: path → sha256."""
    digests: dict[str, str] = {}
    for line in text.splitlines():
        escaped = line.startswith("\\")
        digest, sep, name = line.removeprefix("\\").partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"not a sha256sum line: {line!r}")
        if escaped:
            name = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), name)
        digests[name] = digest
    return digests
