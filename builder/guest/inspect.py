"""What the golden image is: distro, version, network stack, init system.

Learned once per lab by libguestfs inspection of the golden image, read-only, and
recorded in the bundle's plan as GuestFacts (``vmbuild.model.facts``, re-exported here
for plugins that import it from this module). The network stack is decided from what the image
has installed and enabled, never from a guessed interface name.
"""

from __future__ import annotations

import posixpath
import re
import stat
from collections.abc import Callable

from vmbuild.errors import BuildError
from vmbuild.guest.appliance import Appliance, ApplianceError
from vmbuild.model.facts import GuestFacts, NetStack

__all__ = ["GuestFacts", "NetStack", "device_map_for", "inspect_golden", "mount_all"]


_RHEL_LIKE = {
    "rhel",
    "centos",
    "rocky",
    "almalinux",
    "oraclelinux",
    "scientificlinux",
    "redhat-based",
    "fedora",
}


def _exists(app: Appliance, path: str, kind: str = "exists") -> bool:
    function = {"exists": app.handle.exists, "dir": app.handle.is_dir, "file": app.handle.is_file}[
        kind
    ]
    return bool(app.call(f"looking for {path}", function, path))


def _wants(app: Appliance, unit: str) -> bool:
    """Whether a systemd unit is enabled: a link to it in some *.wants folder."""
    for folder in ("/etc/systemd/system",):
        if not _exists(app, folder, "dir"):
            continue
        for entry in app.call(f"listing {folder}", app.handle.ls, folder):
            wants = f"{folder}/{entry}"
            if entry.endswith(".wants") and _exists(app, f"{wants}/{unit}"):
                return True
    return False


def detect_network(app: Appliance, distro: str, major: int) -> NetStack:
    """The stack that will configure the NIC at boot, from what is installed."""

    def has(*paths: str) -> bool:
        return any(_exists(app, path) for path in paths)

    if has("/usr/sbin/netplan", "/usr/bin/netplan") and _exists(app, "/etc/netplan", "dir"):
        return NetStack.NETPLAN
    if _wants(app, "systemd-networkd.service"):
        return NetStack.NETWORKD
    rhel_like = distro in _RHEL_LIKE
    if (
        rhel_like
        and distro != "fedora"
        and major <= 8
        and _exists(app, "/etc/sysconfig/network-scripts", "dir")
    ):
        return NetStack.IFCFG
    if has("/usr/sbin/NetworkManager", "/usr/bin/NetworkManager"):
        return NetStack.NETWORKMANAGER
    if has("/sbin/ifup", "/usr/sbin/ifup") and _exists(app, "/etc/network", "dir"):
        return NetStack.IFUPDOWN
    return NetStack.UNKNOWN


def _parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip('"').strip("'")
    return values


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        return 0, 0
    return int(match.group(1)), int(match.group(2) or 0)


#: Links followed, at most, to read one file during inspection.
_MAX_HOPS = 16


def _read(app: Appliance, path: str) -> str | None:
    """A small text file of the golden image (mounted read-only), or None.

    Release files are links on most distributions (/etc/os-release points into
    /usr/lib), so links are followed here, but by vmbuild itself: each component
    is looked at with lstat and each link resolved inside the guest's root, at most
    _MAX_HOPS of them. Only a regular file of at most 1 MiB is read, never a FIFO or
    a device. Nothing is written: the golden image is mounted read-only.
    """
    h = app.handle
    pending = [part for part in path.split("/") if part]
    current = "/"
    hops = 0
    try:
        while pending:
            part = pending.pop(0)
            if part == "..":
                current = posixpath.dirname(current)
                continue
            if part == ".":
                continue
            candidate = posixpath.join(current, part)
            info = app.call(f"looking at {candidate}", h.lstatns, candidate)
            if stat.S_ISLNK(info["st_mode"]):
                hops += 1
                if hops > _MAX_HOPS:
                    return None
                target = str(app.call(f"reading the link {candidate}", h.readlink, candidate))
                if target.startswith("/"):
                    current = "/"
                pending[:0] = [p for p in target.split("/") if p]
                continue
            if pending and not stat.S_ISDIR(info["st_mode"]):
                return None
            current = candidate
    except BuildError:
        return None  # missing, or not readable
    if stat.S_ISREG(info["st_mode"]) and info["st_size"] <= 1 << 20:
        data = app.call(f"reading {path}", h.pread, current, int(info["st_size"]), 0)
        return bytes(data).decode(errors="replace")
    return None


def _has_release(app: Appliance) -> bool:
    paths = ("/etc/os-release", "/usr/lib/os-release", "/etc/redhat-release", "/etc/debian_version")
    return any(_read(app, path) for path in paths)


def _find_root(app: Appliance, candidates: list[str]) -> str | None:
    """The one candidate that holds an operating system, left mounted read-only at
    "/" (a mount costs a fifth of a second under TCG); None when none does."""
    h = app.handle
    found = []
    mounted = None
    for device in candidates:
        if mounted is not None:
            app.call("unmounting", h.umount_all)
            mounted = None
        try:
            app.call(f"mounting {device}", h.mount_ro, device, "/")
        except BuildError:
            continue  # swap, empty or not a filesystem
        mounted = device
        if _has_release(app):
            found.append(device)
    if len(found) != 1 or mounted != found[0]:
        if mounted is not None:
            app.call("unmounting", h.umount_all)
        if len(found) > 1:
            raise BuildError(
                f"the golden image has {len(found)} operating systems ({', '.join(found)}); "
                "vmbuild needs exactly one"
            )
        if found:
            app.call(f"mounting {found[0]}", h.mount_ro, found[0], "/")
    return found[0] if found else None


#: Partition numbers looked for one by one (a missing one answers at once); the
#: appliance's full list costs a tenth of a second per drive on the handle, so it
#: is asked for only when these do not explain the image. Ubuntu's cloud images
#: use 1, 14, 15 and 16.
PROBED_PARTITIONS = 32


class _Partitions:
    """The golden image's partitions: the usual numbers first, all of them on demand."""

    def __init__(self, app: Appliance, golden: str) -> None:
        self.app = app
        self.golden = golden
        self.complete = False
        self.found: list[str] = []
        for number in range(1, PROBED_PARTITIONS + 1):
            device = f"{golden}{number}"
            answer = app.attempt(f"looking for {device}", app.handle.is_whole_device, device)
            if not isinstance(answer, ApplianceError):
                self.found.append(device)

    def everything(self) -> list[str]:
        """Every partition (``found`` holds them all afterwards)."""
        if not self.complete:
            self.found = [
                part
                for part in self.app.call("listing partitions", self.app.handle.list_partitions)
                if part.startswith(self.golden) and part[len(self.golden) :].isdigit()
            ]
            self.complete = True
        return self.found


_NOT_DISKS = ("swap", "proc", "sysfs", "tmpfs", "devpts", "nfs", "nfs4", "cifs", "none")


def _fstab_mounts(
    app: Appliance, text: str, golden: str, partitions: _Partitions
) -> tuple[dict[str, str], dict[str, str]]:
    """Mountpoints other than / from the guest's fstab, as golden-image devices, and
    the filesystem type fstab gives for each mountpoint (/ included)."""
    h = app.handle
    #: "UUID" or "LABEL" -> value -> partition, and the partitions read for it.
    tables: dict[str, dict[str, str]] = {"UUID": {}, "LABEL": {}}
    read: dict[str, set[str]] = {"UUID": set(), "LABEL": set()}

    def by(kind: str, value: str) -> str | None:
        """The partition with this UUID or label. Each is read with a process in the
        appliance, so only when fstab names a partition that way: the probed
        partitions first, all of them when those do not have it."""
        table = tables[kind]
        sources: tuple[Callable[[], list[str]], ...] = (
            lambda: partitions.found,
            partitions.everything,
        )
        for parts in sources:
            if value in table:
                break
            for part in parts():
                if part in read[kind]:
                    continue
                read[kind].add(part)
                function = h.vfs_uuid if kind == "UUID" else h.vfs_label
                answer = app.attempt(f"reading the {kind} of {part}", function, part)
                if not isinstance(answer, ApplianceError):
                    table[answer.lower() if kind == "UUID" else answer] = part
        return table.get(value)

    mounts = {}
    types = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        spec, mountpoint, fstype = fields[:3]
        if fstype not in ("auto", *_NOT_DISKS):
            types[mountpoint] = fstype
        if mountpoint in ("/", "none", "swap") or fstype in _NOT_DISKS:
            continue
        device: str | None
        if spec.startswith("UUID="):
            device = by("UUID", spec[5:].strip('"').lower())
        elif spec.startswith("LABEL="):
            device = by("LABEL", spec[6:].strip('"'))
        else:
            number = re.search(r"([0-9]+)\Z", spec)
            device = f"{golden}{number.group(1)}" if number and spec.startswith("/dev/") else None
        if device is None:
            raise BuildError(
                f"the golden image's fstab mounts {mountpoint} from {spec}, "
                "which is not on the golden image"
            )
        mounts[mountpoint] = device
    return mounts, types


def inspect_golden(app: Appliance, golden_index: int) -> GuestFacts:
    """Inspect the golden image (already added, read-only, and launched).

    Reads os-release and fstab directly: libguestfs's own inspection probes every
    filesystem of every drive on the handle, which takes seconds per clone.
    """
    h = app.handle
    golden = app.device(golden_index)
    partitions = _Partitions(app, golden)
    probed = list(partitions.found)
    root = _find_root(app, probed or [golden])
    if root is None and set(partitions.everything()) - set(probed):
        root = _find_root(app, partitions.found)
    if root is None:
        raise BuildError(
            "the golden image has no Linux system that vmbuild recognises (no os-release)",
            hint="is it a disk image of an installed Linux system? LVM roots are not supported yet",
        )
    try:
        release = _parse_os_release(
            _read(app, "/etc/os-release") or _read(app, "/usr/lib/os-release") or ""
        )
        distro = release.get("ID", "").lower()
        major, minor = _version(release.get("VERSION_ID", ""))
        debian_version = _read(app, "/etc/debian_version")
        redhat_release = _read(app, "/etc/redhat-release")
        if not distro and redhat_release:
            distro = "centos" if "CentOS" in redhat_release else "rhel"
        if not distro and debian_version:
            distro = "debian"
        if distro == "debian" and debian_version and _version(debian_version)[0]:
            major, minor = _version(debian_version)
        if distro in _RHEL_LIKE and redhat_release:
            found = re.search(r"release (\d+)(?:\.(\d+))?", redhat_release)
            if found:
                major, minor = int(found.group(1)), int(found.group(2) or 0)
        hostname = (_read(app, "/etc/hostname") or "").strip()
        fstab = _read(app, "/etc/fstab") or ""
        others, fstab_types = _fstab_mounts(app, fstab, golden, partitions)
        mounts = {"/": root, **others}
        network = detect_network(app, distro, major)
        systemd = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
        init = "systemd" if any(_exists(app, path) for path in systemd) else "other"
        cloud_init = any(
            _exists(app, path) for path in ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg")
        )
    finally:
        app.call("unmounting", h.umount_all)
    filesystems = {
        device: fstab_types.get(mountpoint) or _vfs_type(app, device)
        for mountpoint, device in mounts.items()
    }
    return GuestFacts(
        os_type="linux",
        distro=distro or "unknown",
        product_name=release.get("PRETTY_NAME") or (redhat_release or distro).strip(),
        major=major,
        minor=minor,
        hostname=hostname,
        network=network,
        init=init,
        cloud_init=cloud_init,
        mounts=tuple(sorted(mounts.items(), key=lambda item: (len(item[0]), item[0]))),
        filesystems=tuple(sorted((d, t) for d, t in filesystems.items() if t)),
    )


def _vfs_type(app: Appliance, device: str) -> str:
    """A filesystem's type ("ext4", "xfs"), or "" when it cannot be told."""
    answer = app.attempt(f"probing {device}", app.handle.vfs_type, device)
    return "" if isinstance(answer, ApplianceError) else str(answer)


def mount_all(
    app: Appliance,
    mounts: tuple[tuple[str, str], ...],
    *,
    readonly: bool,
    device_map: dict[str, str] | None = None,
    types: tuple[tuple[str, str], ...] = (),
) -> None:
    """Mount a guest's filesystems in the appliance (never on the host); ``types``
    gives filesystem types by (golden) device where they are known."""
    h = app.handle
    known = dict(types)
    for mountpoint, device in mounts:
        target = device_map.get(device, device) if device_map else device
        options = "ro" if readonly else ""
        what = f"mounting {target} at {mountpoint}"
        vfs = known.get(device, "")
        mounted = app.attempt(what, h.mount_vfs, options, vfs, target, mountpoint)
        if isinstance(mounted, ApplianceError):
            if not vfs:
                raise mounted
            # The type came from the golden image's fstab: let mount find it out.
            app.call(what, h.mount_vfs, options, "", target, mountpoint)


def device_map_for(
    app: Appliance, facts: GuestFacts, golden_index: int, drive_index: int
) -> dict[str, str]:
    """The golden image's filesystem devices, as found on one of its clones."""
    golden = app.device(golden_index)
    clone = app.device(drive_index)
    mapping = {}
    for _mountpoint, device in facts.mounts:
        if device == golden:
            mapping[device] = clone
        elif device.startswith(golden) and device[len(golden) :].isdigit():
            mapping[device] = clone + device[len(golden) :]
        else:
            raise BuildError(f"cannot find the golden image's {device} on its clone")
    return mapping
