"""Files on the host: written whole or not at all, and their digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from vmbuild.host.space import write_error


def user_cache() -> Path:
    """vmbuild's folder in the user's XDG cache: ``$XDG_CACHE_HOME/vmbuild``, else
    ``~/.cache/vmbuild``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmbuild"


def fsync_path(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(dest: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file beside ``dest`` and rename it into place, so a reader
    sees the old bytes or the new ones, and a symlink already sitting at ``dest`` is
    replaced, never followed. A failure leaves ``dest`` as it was and names the
    folder that ran out of room, if that was why."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(err, dest, dest.parent) from err


def file_digest(path: Path) -> str:
    """The sha256 of a file, read in chunks (disk images are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stat_key(path: Path) -> str:
    """What changes when a file is replaced or written to: cheaper than its digest,
    and enough to tell that a digest taken earlier still holds."""
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"
