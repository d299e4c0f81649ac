"""What a golden image is made from, and where its image is cached.

A ``GoldenRecipe`` holds everything that decides what goes into the image; its
digest names the image in the cache (``golden_path``), so that a recipe's image is
built once and found again by any later build. Nothing here builds anything: that
is ``vmbuild.golden.builder``. Reading the host's apt sources (for the mirror) and
checking a cached image's sha256 are the only I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild.errors import UserError
from vmbuild.host.files import file_digest, user_cache
from vmbuild.model.profile import DEBIAN_PACKAGE, DEBIAN_RELEASE

#: Bump when the build steps change what ends up in the image: it is in the digest.
RECIPE_FORMAT = 1

#: Debian's packages on top of minbase, each there for a reason:
BASE_PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",  # virtio drivers, small; no AHCI (see DESIGN.md)
    "systemd-sysv",  # /sbin/init
    "udev",  # devices, and the trigger that starts qemu-guest-agent
    "cloud-init",  # applies the NoCloud seed
    "python3-cffi-backend",  # cloud-init -> cryptography needs python3-cffi-backend-api-*,
    # a virtual package that debootstrap does not resolve
    "cloud-guest-utils",  # growpart: cloud-init grows the root partition to the VM's disk
    "openssh-server",
    "qemu-guest-agent",
    "dbus",  # systemd-logind: the power button (ACPI shutdown) and the agent's shutdown
    "grub-pc",  # BIOS boot: the `pc` and `q35` machines boot SeaBIOS by default
    "ifupdown",  # the network stack cloud-init renders to on Debian 12
    "iproute2",  # ip(8), used by ifupdown and cloud-init
    "netbase",  # /etc/services, /etc/protocols
    "sudo",  # cloud-init's default user and the profile's `sudo = true`
    "e2fsprogs",  # fsck.ext4 at boot, resize2fs for cloud-init's resizefs
    "zstd",  # initramfs-tools' default compressor; without it mkinitramfs falls back to gzip
)
# isc-dhcp-client is not named: the labs use static addresses, and cloud-init
# depends on it anyway.

DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIN_SIZE = 1 << 30

_MIRROR = re.compile(r"(https?|file)://[^\s,'\"\\]+")


@dataclass(frozen=True)
class GoldenRecipe:
    """Everything that decides what goes into a golden image."""

    release: str = "bookworm"
    #: Virtual size in bytes; clones are grown from it by vmbuild.
    size: int = 4 << 30
    #: Debian packages installed on top of :data:`BASE_PACKAGES`.
    packages: tuple[str, ...] = ()
    #: The Debian mirror; None means the one this host's apt uses.
    mirror: str | None = None

    def __post_init__(self) -> None:
        if not DEBIAN_RELEASE.fullmatch(self.release):
            raise UserError(f"release {self.release!r} is not a Debian release name")
        if self.size < MIN_SIZE or self.size % 512:
            raise UserError(
                f"image size {self.size} must be a multiple of 512 bytes, at least 1 GiB"
            )
        # A list would make the recipe unhashable and its digest depend on mutation.
        object.__setattr__(self, "packages", tuple(self.packages))
        bad = [name for name in self.packages if not DEBIAN_PACKAGE.fullmatch(name)]
        if bad:
            raise UserError(f"not a Debian package name: {', '.join(map(repr, bad))}")
        if self.mirror is not None and not _MIRROR.fullmatch(self.mirror):
            raise UserError(
                f"mirror {self.mirror!r} is not an http, https or file URL",
                hint="e.g. http://deb.debian.org/debian",
            )

    def resolved_mirror(self) -> str:
        return self.mirror or host_mirror(self.release)

    def all_packages(self) -> tuple[str, ...]:
        """Base and extra packages, each once, in a fixed order."""
        return tuple(dict.fromkeys((*BASE_PACKAGES, *sorted(self.packages))))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT,
            "release": self.release,
            "size": self.size,
            "packages": list(self.packages),
            "mirror": self.resolved_mirror(),
            "base_packages": list(BASE_PACKAGES),
        }

    def digest(self) -> str:
        """sha256 over what affects the image: the order of ``packages`` does not."""
        data = {**self.to_json(), "packages": sorted(set(self.packages))}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


#: Where root keeps golden images: a system folder that libvirt's unprivileged QEMU
#: user (Debian's libvirt-qemu) can reach, unlike root's home (mode 0700), since
#: every VM disk is an overlay that reads its golden image at run time.
SYSTEM_CACHE = Path("/var/cache/vmbuild")


def default_cache() -> Path:
    """``$VMBUILD_CACHE``, else /var/cache/vmbuild for root, else the XDG cache."""
    if explicit := os.environ.get("VMBUILD_CACHE"):
        return Path(explicit)
    if os.geteuid() == 0 and not os.environ.get("XDG_CACHE_HOME"):
        return SYSTEM_CACHE
    return user_cache()


def golden_path(recipe: GoldenRecipe, cache: Path | None = None) -> Path:
    folder = (cache if cache is not None else default_cache()) / "golden"
    return folder / f"debian-{recipe.release}-{recipe.digest()[:16]}.qcow2"


# ---------------------------------------------------------------------------
# The host's mirror


def _sources_entries(text: str, deb822: bool) -> Iterator[tuple[list[str], list[str]]]:
    """(URIs, suites) of each enabled ``deb`` entry of one apt sources file."""
    if deb822:
        for paragraph in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = ""
            for line in paragraph.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            yield fields.get("uris", "").split(), fields.get("suites", "").split()
        return
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            yield [words[1]], [words[2]]


def host_mirror(release: str, root: Path = Path("/")) -> str:
    """The Debian mirror this host's apt uses for ``release``, else deb.debian.org."""
    etc = root / "etc/apt"
    files = [(etc / "sources.list", False)]
    files += [(path, False) for path in sorted(etc.glob("sources.list.d/*.list"))]
    files += [(path, True) for path in sorted(etc.glob("sources.list.d/*.sources"))]
    for path, deb822 in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for uris, suites in _sources_entries(text, deb822):
            if release not in suites:
                continue
            for uri in uris:
                if _MIRROR.fullmatch(uri):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


# ---------------------------------------------------------------------------
# The cache


def sidecar(image: Path, suffix: str) -> Path:
    """A file beside a cached image: its ``.sha256``, ``.json`` or ``.lock``."""
    return image.with_name(image.name + suffix)


def cached_golden(recipe: GoldenRecipe, cache: Path | None = None) -> tuple[Path, str] | None:
    """The cached image of ``recipe`` and its sha256, if it is there and intact."""
    image = golden_path(recipe, cache)
    try:
        recorded = sidecar(image, ".sha256").read_text().split()[0]
    except (OSError, IndexError):
        return None
    if not image.is_file() or image.is_symlink():
        return None
    return (image, recorded) if file_digest(image) == recorded else None
