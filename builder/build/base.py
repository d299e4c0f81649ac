"""The golden image: find it, check it and learn its size, read-only.

These are the checks that need I/O; they run before a build writes anything and
report their problems the same way the profile's own checks do.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from vmbuild import log
from vmbuild.errors import BuildError, ImageLockedError, Problem, ProfileError
from vmbuild.golden import builder as golden
from vmbuild.golden.recipe import GoldenRecipe, golden_path
from vmbuild.host import qemuimg
from vmbuild.host.files import file_digest, stat_key
from vmbuild.model.plan import Plan
from vmbuild.model.profile import Base, DiskFormat, format_size


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
    #: False for a golden image vmbuild builds from Debian's packages and has not
    #: built yet: ``vmbuild validate`` checks what it can without the file (its
    #: virtual size is the recipe's), and ``vmbuild build`` builds it first.
    built: bool = True


def _looks_like_qcow2(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"QFI\xfb"


#: How much of a raw image is read to find a partition table or a filesystem.
RAW_SCAN = 1 << 20

#: (offset, bytes) that a whole disk or a filesystem has near its start.
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (510, b"\x55\xaa"),  # an MBR (a GPT disk's protective one too), a FAT or NTFS boot sector
    (512, b"EFI PART"),  # a GPT header on 512-byte sectors
    (4096, b"EFI PART"),  # ... and on 4096-byte sectors
    (1080, b"\x53\xef"),  # ext2, ext3, ext4
    (0, b"XFSB"),  # XFS
    (0x10040, b"_BHRfS_M"),  # btrfs
    (512, b"LABELONE"),  # an LVM physical volume
    (0, b"LUKS\xba\xbe"),  # LUKS
    (0, b"hsqs"),  # squashfs
    (1024, b"\x10\x20\xf5\xf2"),  # F2FS
    (0, b"\xfc\x4e\x2b\xa9"),  # Linux RAID (metadata 1.1)
    (4096, b"\xfc\x4e\x2b\xa9"),  # Linux RAID (metadata 1.2)
    (0x8001, b"CD001"),  # ISO 9660
)


def raw_contents_problem(path: Path) -> tuple[str, str] | None:
    """Why a raw image cannot be a golden image (no data, no partition table, no
    filesystem), as (message, hint), or None. A VM would boot from it into nothing."""
    with path.open("rb") as handle:
        start = handle.read(RAW_SCAN)
    again = "copy or build the golden image again"
    if not start:
        return "is empty (0 bytes)", again
    if not start.strip(b"\0"):
        if len(start) < RAW_SCAN:
            return f"is empty: its {len(start)} bytes are all zeros", again
        return "has no partition table or filesystem: its first MiB is all zeros", again
    for offset, magic in _SIGNATURES:
        if start[offset : offset + len(magic)] == magic:
            return None
    return (
        "has no partition table or filesystem (no MBR, GPT or filesystem signature)",
        "a golden image holds a partitioned disk or a filesystem; is base.format right?",
    )


def unreachable_problem(path: Path, shown: str) -> tuple[str, str] | None:
    """Why ``path`` cannot be opened, as (message, hint), or None when it can."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return (
                f"image {shown} is a symbolic link loop",
                "make the link point at the golden image, or point base.image at it",
            )
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"image {shown} cannot be opened: {err.strerror}", ""
        if path.is_symlink():
            target = os.readlink(path)
            if (path.parent / target).is_symlink():  # a chain: name the end that is missing
                target = os.path.realpath(path)
            return (
                f"image {shown} is a symbolic link to {target}, which does not exist",
                "make the link point at the golden image, or point base.image at it",
            )
        return (
            f"image {shown} does not exist ({path.absolute()})",
            "build one, or point --base at an existing golden image",
        )
    return None


def golden_recipe(base: Base) -> GoldenRecipe | None:
    """The recipe of a golden image vmbuild builds from Debian's packages, or None."""
    if base.golden is None:
        return None
    spec = base.golden
    return GoldenRecipe(release=spec.debian, size=spec.size, packages=spec.packages)


def image_path(base: Base, folder: Path) -> Path:
    """The golden image's path on this machine: ``base.image`` relative to the
    profile's folder, or the cache path of a golden image built from Debian's."""
    recipe = golden_recipe(base)
    if recipe is not None:
        return golden_path(recipe)
    assert base.image is not None
    image = Path(base.image)
    return image if image.is_absolute() else folder / image


def _not_built(source: Path, plan: Plan, path: Path) -> BaseImage:
    """A golden image from Debian's packages that ``vmbuild build`` has yet to build:
    check that it can be built, and the VMs' disks against its recipe's size."""
    recipe = golden_recipe(plan.base)
    assert recipe is not None
    release = recipe.release
    where = str(source)
    if golden.debootstrap_path() is None:
        raise ProfileError(
            where,
            [
                Problem(
                    "base",
                    f"the Debian {release} golden image is not built yet, and debootstrap, "
                    "which builds it, is not installed",
                    "apt-get install debootstrap",
                )
            ],
        )
    problem = golden.release_problem(release)
    if problem is not None:
        raise ProfileError(where, [Problem("base", *problem)])
    problems = _disk_size_problems(plan, recipe.size)
    if problems:
        raise ProfileError(where, problems)
    log.info(
        f"base: the Debian {release} golden image is not built yet; "
        f"`vmbuild build` will build it ({path})"
    )
    return BaseImage(path, DiskFormat.QCOW2, recipe.size, 0, "", "", built=False)


def _disk_size_problems(plan: Plan, virtual_size: int) -> list[Problem]:
    return [
        Problem(
            vm.place,
            f"disk_size {format_size(vm.disk.size)} is smaller than the "
            f"golden image's virtual size {format_size(virtual_size)}",
        )
        for vm in plan.vms
        if vm.disk.size is not None and vm.disk.size < virtual_size
    ]


def inspect_base(plan: Plan, source: Path, known: tuple[str, str] | None = None) -> BaseImage:
    """Check the golden image against the plan; every problem at once, reported
    against ``source``, the profile (paths in it are relative to its folder).

    ``known`` is (stat key, sha256) from the previous build: when the file's stat
    key is unchanged its sha256 is taken from there instead of re-reading it.

    A golden image vmbuild builds itself (``debian = ...``) that is not built yet is
    checked as far as it can be without it, and returned with ``built`` false.
    """
    base = plan.base
    path = image_path(base, source.parent)
    fmt = base.format
    shown = base.image or str(path)

    def fail(message: str, hint: str = "") -> ProfileError:
        return ProfileError(str(source), [Problem("base", message, hint)])

    unreachable = unreachable_problem(path, shown)
    if unreachable is not None:
        if base.golden is not None and not os.path.lexists(path):
            return _not_built(source, plan, path)
        raise fail(*unreachable)
    if not path.is_file():
        raise fail(f"image {shown} is not a regular file")
    if not os.access(path, os.R_OK):
        raise fail(f"image {shown} is not readable by this user")
    if fmt is DiskFormat.RAW:
        if _looks_like_qcow2(path):
            raise fail(
                f"image {shown} is a qcow2 image but base.format is raw",
                'set base.format = "qcow2"; a raw image must not start with a qcow2 header',
            )
        unusable = raw_contents_problem(path)
        if unusable is not None:
            raise fail(f"image {shown} {unusable[0]}", unusable[1])
    qemuimg.require()
    try:
        facts = qemuimg.info(path, fmt)
    except ImageLockedError:
        raise fail(
            f"image {shown} is locked: a running VM is using it",
            "shut that VM down; a golden image must not change under its clones",
        ) from None
    except BuildError as err:
        reason = err.reason if isinstance(err, qemuimg.QemuImgError) else err.message
        raise fail(
            f"image {shown} cannot be read as {fmt.value}: {reason}",
            "set base.format to the image's real format",
        ) from None
    if facts.virtual_size == 0:
        raise fail(f"image {shown} is empty: its virtual size is 0", _again(base))
    try:
        qemuimg.check(path, fmt)
    except BuildError as err:
        reason = err.reason if isinstance(err, qemuimg.QemuImgError) else err.message
        raise fail(f"image {shown} is damaged: {reason}", err.hint or _again(base)) from None
    key = stat_key(path)
    digest = known[1] if known is not None and known[0] == key else file_digest(path)
    problems = []
    if base.sha256 and base.sha256 != digest:
        problems.append(
            Problem(
                "base",
                f"image {shown} has sha256 {digest}, not the pinned {base.sha256}",
                "the image changed or the pin is wrong",
            )
        )
    problems += _disk_size_problems(plan, facts.virtual_size)
    if problems:
        raise ProfileError(str(source), problems)
    return BaseImage(path.resolve(), fmt, facts.virtual_size, facts.actual_size, digest, key)


def _again(base: Base) -> str:
    if base.golden is not None:
        return "vmbuild build builds it again"
    return "copy or build the golden image again"
