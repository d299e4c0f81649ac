"""Room left on a host filesystem: bytes and inodes, for the messages of a build that
ran out of either."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from vmbuild.errors import BuildError

#: Below this much room, a filesystem counts as full: QEMU allocates a qcow2
#: cluster (64 KiB) or more at a time, and fails or pauses well before zero.
FULL_BELOW = 4 << 20


def free_space_problem(folder: Path) -> str | None:
    """Why a write beside ``folder`` cannot go on (no room, no inodes), or None."""
    try:
        fs = os.statvfs(folder)
    except OSError:
        return None
    blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
    if blocks * fs.f_frsize < FULL_BELOW:
        return f"the filesystem holding {folder} is full ({blocks * fs.f_frsize >> 10} KiB free)"
    inodes = fs.f_ffree if os.geteuid() == 0 else fs.f_favail
    if fs.f_files and inodes == 0:
        return f"the filesystem holding {folder} has no free inodes"
    return None


def write_error(
    err: OSError,
    what: object,
    folder: Path,
    then: str = "",
    hint: str = "free some space (or choose another --output) and build again",
) -> BuildError:
    """A failed write of ``what`` beside ``folder``, naming the cause (and ``hint``)
    when the filesystem ran out of room or inodes."""
    cause = free_space_problem(folder) if err.errno in (errno.ENOSPC, errno.EDQUOT) else None
    return BuildError(
        f"cannot write {what}: {err.strerror}" + (f" ({cause})" if cause else "") + then,
        hint=hint if cause else "",
    )
