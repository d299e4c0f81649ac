"""The golden image: find it, check it and learn its size, read-only.

These are the checks that need I/O; they run before a build writes anything and
report their problems the same way the profile's own checks do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import qemuimg
from .bundle import file_digest
from .errors import BuildError, Problem, ProfileError
from .plan import Plan
from .profile import DiskFormat, Profile, format_size


@dataclass(frozen=True)
class BaseImage:
    path: Path
    format: DiskFormat
    virtual_size: int
    actual_size: int
    sha256: str
    #: size, mtime and inode when the sha256 was taken; an equal key means the
    #: same file, so a rebuild need not read the whole image again.
    stat_key: str


def stat_key(path: Path) -> str:
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def _looks_like_qcow2(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"QFI\xfb"


def inspect_base(profile: Profile, plan: Plan, known: tuple[str, str] | None = None) -> BaseImage:
    """Check the golden image against the profile; every problem at once.

    ``known`` is (stat key, sha256) from the previous build: when the file's stat
    key is unchanged its sha256 is taken from there instead of re-reading it.
    """
    path = profile.base_path()
    fmt = profile.base.format
    shown = profile.base.image or str(path)

    def fail(message: str, hint: str = "") -> ProfileError:
        return ProfileError(str(profile.path), [Problem("base", message, hint)])

    if not path.exists():
        raise fail(
            f"image {shown} does not exist ({path.absolute()})",
            "build one, or point --base at an existing golden image",
        )
    if not path.is_file():
        raise fail(f"image {shown} is not a regular file")
    if not os.access(path, os.R_OK):
        raise fail(f"image {shown} is not readable by this user")
    qemuimg.require()
    if fmt is DiskFormat.RAW and _looks_like_qcow2(path):
        raise fail(
            f"image {shown} is a qcow2 image but base.format is raw",
            'set base.format = "qcow2"; a raw image must not start with a qcow2 header',
        )
    try:
        facts = qemuimg.info(path, fmt)
    except BuildError as err:
        if qemuimg.is_lock_error(err):
            raise fail(
                f"image {shown} is locked: a running VM is using it",
                "shut that VM down; a golden image must not change under its clones",
            ) from None
        raise fail(
            f"image {shown} cannot be read as {fmt.value}: {err.message}",
            "set base.format to the image's real format",
        ) from None
    try:
        qemuimg.check(path, fmt)
    except BuildError as err:
        raise fail(f"image {shown} is damaged: {err.message}") from None
    key = stat_key(path)
    digest = known[1] if known is not None and known[0] == key else file_digest(path)
    problems = []
    if profile.base.sha256 and profile.base.sha256 != digest:
        problems.append(
            Problem(
                "base",
                f"image {shown} has sha256 {digest}, not the pinned {profile.base.sha256}",
                "the image changed or the pin is wrong",
            )
        )
    for vm in plan.vms:
        if vm.disk.size is not None and vm.disk.size < facts.virtual_size:
            problems.append(
                Problem(
                    vm.place,
                    f"disk_size {format_size(vm.disk.size)} is smaller than the "
                    f"golden image's virtual size {format_size(facts.virtual_size)}",
                )
            )
    if problems:
        raise ProfileError(str(profile.path), problems)
    return BaseImage(path.resolve(), fmt, facts.virtual_size, facts.actual_size, digest, key)
