"""qemu-img, the one tool vmbuild uses to make disk files.

Every call names the image format explicitly (never probed), and new files are
written beside their destination and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BuildError
from .log import detail
from .profile import DiskFormat

#: No single qemu-img call is allowed to hang a build.
TIMEOUT = 3600


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    backing_format: str | None


def require() -> None:
    """Fail with an install hint, as a build error, when qemu-img is missing."""
    _qemu_img()


def _qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise BuildError("qemu-img is not installed", hint="apt-get install qemu-utils")
    return path


def run(args: list[str], what: str, timeout: float = TIMEOUT) -> str:
    command = [_qemu_img(), *args]
    detail("$ " + " ".join(command))
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: qemu-img did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().replace(_qemu_img() + ": ", "")
        raise BuildError(f"{what}: {message or f'qemu-img exited with {result.returncode}'}")
    return result.stdout


def is_lock_error(error: BuildError) -> bool:
    text = error.message
    return "lock" in text and ("Failed to get" in text or "is locked" in text)


def info(path: Path, fmt: DiskFormat | str, *, force_share: bool = False) -> ImageInfo:
    args = ["info", "--output=json", "-f", str(fmt)]
    if force_share:
        args.append("-U")
    data: dict[str, Any] = json.loads(run([*args, str(path)], f"reading {path}"))
    return ImageInfo(
        format=data["format"],
        virtual_size=int(data["virtual-size"]),
        actual_size=int(data.get("actual-size", 0)),
        backing_file=data.get("backing-filename"),
        backing_format=data.get("backing-filename-format"),
    )


def check(path: Path, fmt: DiskFormat | str) -> None:
    """Catches what info does not, such as a truncated qcow2 file."""
    if str(fmt) != DiskFormat.QCOW2.value:
        return
    run(["check", "-q", "-f", str(fmt), str(path)], f"checking {path}")


@contextlib.contextmanager
def _replacing(dest: Path) -> Any:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def create_overlay(dest: Path, backing: str, backing_format: DiskFormat, size: int | None) -> None:
    """A qcow2 overlay whose backing path is stored exactly as ``backing`` (relative
    to ``dest``'s folder) with its format given, grown to ``size`` when set."""
    with _replacing(dest) as tmp:
        args = ["create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format.value, str(tmp)]
        if size is not None:
            args.append(str(size))
        run(args, f"creating {dest}")


def create_copy(
    dest: Path, source: Path, source_format: DiskFormat, fmt: DiskFormat, size: int | None
) -> None:
    """A standalone, sparse copy of ``source`` in ``fmt``, grown to ``size`` when set."""
    with _replacing(dest) as tmp:
        run(
            ["convert", "-q", "-f", source_format.value, "-O", fmt.value, str(source), str(tmp)],
            f"copying {source} to {dest}",
        )
        if size is not None:
            current = info(tmp, fmt).virtual_size
            if size > current:
                run(["resize", "-q", "-f", fmt.value, str(tmp), str(size)], f"growing {dest}")
