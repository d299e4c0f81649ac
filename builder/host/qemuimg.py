"""qemu-img, the one tool vmbuild uses to make disk files.

Every call names the image format explicitly (never probed), and new files are
written beside their destination and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild.errors import BuildError, ImageLockedError
from vmbuild.log import detail
from vmbuild.model.profile import DiskFormat

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


class QemuImgError(BuildError):
    """A failed qemu-img call: a short message, and all that qemu-img printed."""

    def __init__(self, what: str, reason: str, output: str = "", *, hint: str = "") -> None:
        super().__init__(f"{what}: {reason}", hint=hint)
        #: The message without the call it is about, e.g. "qemu-img check found 3 errors".
        self.reason = reason
        self.output = output


def _output_lines(text: str) -> list[str]:
    """qemu-img's lines without blanks and without its own name in front."""
    prefixes = (f"{_qemu_img()}: ", "qemu-img: ")
    lines = []
    for line in text.splitlines():
        line = line.strip()
        for prefix in prefixes:
            line = line.removeprefix(prefix)
        if line:
            lines.append(line)
    return lines


def _shorten(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _show_in_detail(lines: list[str]) -> None:
    for line in lines:
        detail("  " + line)


def _summary(lines: list[str], returncode: int) -> str:
    """The first line qemu-img printed, and how many more there are (shown under -v)."""
    if not lines:
        return f"qemu-img exited with {returncode}"
    more = len(lines) - 1
    if more == 0:
        return _shorten(lines[0])
    noun = "line" if more == 1 else "lines"
    return f"{_shorten(lines[0])} ({more} more {noun}; run with -v to see them)"


def _call(args: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    command = [_qemu_img(), *args]
    detail("$ " + " ".join(command))
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise QemuImgError(what, f"qemu-img did not finish within {timeout:.0f}s") from None


def _failure(what: str, result: subprocess.CompletedProcess[str]) -> BuildError:
    text = result.stderr.strip() or result.stdout.strip()
    lines = _output_lines(text)
    _show_in_detail(lines)
    if _is_lock_failure(text):
        return ImageLockedError(f"{what}: {_summary(lines, result.returncode)}")
    return QemuImgError(what, _summary(lines, result.returncode), text)


def _is_lock_failure(text: str) -> bool:
    """qemu-img's words for an image another process holds (QEMU's image locking)."""
    return "lock" in text and ("Failed to get" in text or "is locked" in text)


def run(args: list[str], what: str, timeout: float = TIMEOUT) -> str:
    """qemu-img's stdout; on failure a one-line error (its whole output under -v)."""
    result = _call(args, what, timeout)
    if result.returncode != 0:
        raise _failure(what, result)
    return result.stdout


def is_locked(path: Path, fmt: DiskFormat | str) -> bool:
    """Whether a running QEMU holds the image's lock: ``info`` without ``-U`` fails
    on such an image (and only then, of the ways it can fail, with a lock error)."""
    try:
        info(path, fmt)
    except ImageLockedError:
        return True
    except BuildError:
        return False
    return False


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


#: qemu-img check's exit status when it found corruptions, and when only leaked clusters.
_CORRUPT, _LEAKS = 2, 3


def check(path: Path, fmt: DiskFormat | str) -> None:
    """Catches what info does not, such as a truncated qcow2 file.

    A damaged image makes qemu-img print a line per bad cluster (thousands for a
    truncated golden image): the error says how many and shows the first; all of
    them are shown under -v.
    """
    if str(fmt) != DiskFormat.QCOW2.value:
        return
    what = f"checking {path}"
    result = _call(["check", "--output=json", "-f", str(fmt), str(path)], what, TIMEOUT)
    if result.returncode == 0:
        return
    if result.returncode not in (_CORRUPT, _LEAKS):
        raise _failure(what, result)
    try:
        counts: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        counts = {}
    lines = _output_lines(result.stderr)
    errors = int(counts.get("corruptions", 0)) + int(counts.get("check-errors", 0))
    leaks = int(counts.get("leaks", 0))
    reports = [line for line in lines if line.startswith("ERROR")]
    hint = ""
    if errors or (reports and not leaks):
        found = f"{errors or len(reports)} errors"
    elif leaks:
        found = f"{leaks} leaked clusters"
        reports = [line for line in lines if line.startswith("Leaked")]
        hint = f"qemu-img check -r leaks -f {fmt} {path} repairs them"
    else:
        raise _failure(what, result)
    _show_in_detail(lines)
    reason = f"qemu-img check found {found}"
    if reports:
        first = re.sub(r"^ERROR:?\s*", "", reports[0])
        reason += f" (first: {_shorten(first, 200)})"
    raise QemuImgError(f"{path} is damaged", reason, result.stderr, hint=hint)


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


def rebase_unsafe(path: Path, backing: str, backing_format: DiskFormat) -> None:
    """Point the qcow2 overlay ``path`` at ``backing`` (relative to its folder, as
    stored) without reading either image: only the header changes. For an overlay
    whose backing image moved, byte for byte the same."""
    run(
        ["rebase", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", backing_format.value, str(path)],
        f"pointing {path} at {backing}",
    )


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


def convert(
    dest: Path,
    source: Path,
    source_format: DiskFormat | str,
    fmt: str,
    options: tuple[str, ...] = (),
) -> None:
    """A standalone copy of ``source`` (its whole backing chain read through) in any
    format qemu-img writes, such as vhdx or vmdk, with ``options`` (``-o``) for it."""
    with _replacing(dest) as tmp:
        args = ["convert", "-q", "-f", str(source_format), "-O", fmt]
        if options:
            args += ["-o", ",".join(options)]
        run([*args, str(source), str(tmp)], f"converting {source} to {dest}")
