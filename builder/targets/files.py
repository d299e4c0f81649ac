"""Files a target takes from the bundle as they are."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from vmbuild.host.space import write_error


def place_copy(source: Path, dest: Path) -> None:
    """``source`` at ``dest``: a hard link where both are on one filesystem (an export
    inside its bundle), else a copy. Only for files that nothing writes in place, such
    as seeds (every VM attaches its seed read-only)."""
    try:
        os.link(source, dest)
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise write_error(err, dest, dest.parent) from err
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except OSError as err:
        raise write_error(err, dest, dest.parent) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
