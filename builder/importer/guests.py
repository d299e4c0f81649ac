"""``vmbuild import --inspect``: each VM's hostname and static address, read from its
own disk.

Every disk is added read-only to ONE libguestfs appliance; each guest's filesystems
are mounted read-only inside it (never on the host), found as vmbuild finds a golden
image's (``vmbuild.guest.inspect``), and its files read through ``GuestFiles``, which
follows no link and reads no FIFO or device: a cloned disk is as untrusted as a
golden image. The files themselves are read by ``netfiles``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmbuild import log
from vmbuild.errors import BuildError
from vmbuild.guest.appliance import Appliance, ApplianceError, ApplianceTimeout
from vmbuild.guest.files import GuestFiles, GuestPathError
from vmbuild.guest.inspect import inspect_golden, mount_all
from vmbuild.host import qemuimg
from vmbuild.importer import netfiles
from vmbuild.importer.netfiles import GuestNet, InterfaceConfig
from vmbuild.model.facts import NetStack

#: A network file larger than this is not a network file.
MAX_FILE_BYTES = 256 << 10


@dataclass(frozen=True)
class GuestDisk:
    """A VM's disk to read, and the MAC of its NIC (its configuration is matched to it)."""

    vm: str
    path: Path
    format: str
    mac: str | None


#: Each stack's files, as glob patterns, and the reader of each.
_READERS: dict[NetStack, tuple[tuple[str, ...], Callable[[str, str], list[InterfaceConfig]]]] = {
    NetStack.IFUPDOWN: (
        ("/etc/network/interfaces", "/etc/network/interfaces.d/*"),
        netfiles.ifupdown,
    ),
    NetStack.NETPLAN: (("/etc/netplan/*.yaml", "/etc/netplan/*.yml"), netfiles.netplan),
    NetStack.NETWORKMANAGER: (
        ("/etc/NetworkManager/system-connections/*",),
        netfiles.networkmanager,
    ),
    NetStack.NETWORKD: (("/etc/systemd/network/*.network",), netfiles.networkd),
    NetStack.IFCFG: (("/etc/sysconfig/network-scripts/ifcfg-*",), netfiles.ifcfg),
}


class _Guest:
    """One mounted guest's files, read as text; what was left alone is in ``notes``."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.files = GuestFiles(app)
        self.notes: list[str] = []

    def text(self, path: str) -> str | None:
        try:
            kind = self.files.kind(path)
            if kind is None or kind == "folder":
                return None
            if kind != "file":
                self.notes.append(f"{path} is a {kind}, not a file: not read")
                return None
            size = self.app.call(f"sizing {path}", self.app.handle.filesize, path)
            if size > MAX_FILE_BYTES:
                self.notes.append(f"{path} is {size} bytes, too large for a network file: not read")
                return None
            data = self.files.read(path)
        except ApplianceTimeout:
            raise
        except (GuestPathError, ApplianceError) as err:
            self.notes.append(f"{path}: {err.message}: not read")
            return None
        return None if data is None else data.decode("utf-8", errors="replace")

    def glob(self, pattern: str) -> list[str]:
        if "*" not in pattern:
            return [pattern]
        try:
            return self.files.glob(pattern)
        except ApplianceTimeout:
            raise
        except (GuestPathError, ApplianceError) as err:
            self.notes.append(f"{err.message}: not read")
            return []

    def configs(self, stack: NetStack) -> list[InterfaceConfig]:
        patterns, reader = _READERS[stack]
        network = (self.text("/etc/sysconfig/network") or "") if stack is NetStack.IFCFG else ""
        found = []
        for pattern in patterns:
            for path in self.glob(pattern):
                text = self.text(path)
                if text is None:
                    continue
                if stack is NetStack.IFCFG:
                    found += netfiles.ifcfg(text, path, network)
                else:
                    found += reader(text, path)
        return found


def choose(configs: Sequence[InterfaceConfig], mac: str | None) -> InterfaceConfig | None:
    """The static configuration of the VM's NIC: the one matched to its MAC, else the
    only one, else the first; a DHCP one when there is no static one."""
    static = [c for c in configs if c.address is not None]
    for candidates in (static, list(configs)):
        matched = [c for c in candidates if mac is not None and c.mac == mac]
        if matched:
            return matched[0]
        if candidates:
            return candidates[0]
    return None


def read_guest(guest: _Guest, stack: NetStack, mac: str | None) -> GuestNet:
    """What a mounted guest says of itself: its network stack's files first, then
    those of every other stack vmbuild knows."""
    hostname, domain = netfiles.hostname_file(guest.text("/etc/hostname") or "")
    order = [stack, *(other for other in _READERS if other is not stack)]
    chosen = None
    for each in order:
        config = choose(guest.configs(each), mac)
        if config is not None and config.address is not None:
            chosen = config
            break
        chosen = chosen or config
    if hostname and domain is None:
        domain = netfiles.hosts_domain(guest.text("/etc/hosts") or "", hostname)
    if chosen is None:
        return GuestNet(hostname, domain)
    if chosen.address is None:
        where = f"{chosen.interface} " if chosen.interface else ""
        return GuestNet(hostname, domain, dhcp=f"{where}by DHCP ({chosen.source})")
    dns, search = chosen.dns, chosen.search
    if not dns:
        dns, resolv_search = netfiles.resolv_conf(guest.text("/etc/resolv.conf") or "")
        search = search or resolv_search
    return GuestNet(
        hostname,
        domain,
        chosen.address,
        chosen.gateway,
        dns,
        search,
        source=chosen.source,
    )


def _disk_text(message: str) -> str:
    """inspect's words for a golden image, said of a VM's disk."""
    for golden, disk in (("the golden image's", "its disk's"), ("the golden image", "its disk")):
        message = message.replace(golden, disk)
    return message


def read_guests(disks: Sequence[GuestDisk]) -> tuple[dict[str, GuestNet], list[tuple[str, str]]]:
    """Each VM's GuestNet, from its disk, all in one read-only appliance; and (VM,
    what was not read) for what was left out, one line each."""
    notes: list[tuple[str, str]] = []
    usable = []
    for disk in disks:
        if qemuimg.is_locked(disk.path, disk.format):
            notes.append(
                (disk.vm, f"its disk {disk.path} is in use by a running VM: not inspected")
            )
        else:
            usable.append(disk)
    found: dict[str, GuestNet] = {}
    if not usable:
        return found, notes
    with Appliance() as app:
        drives = [(disk, app.add(disk.path, disk.format, readonly=True)) for disk in usable]
        with log.step(f"Reading {len(usable)} disks, read-only, in one appliance"):
            app.launch()
            for disk, index in drives:
                try:
                    facts = inspect_golden(app, index)
                except ApplianceTimeout:
                    raise
                except BuildError as err:
                    notes.append((disk.vm, f"not inspected: {_disk_text(err.message)}"))
                    continue
                try:
                    mount_all(app, facts.mounts, readonly=True, types=facts.filesystems)
                    guest = _Guest(app)
                    found[disk.vm] = read_guest(guest, facts.network, disk.mac)
                    notes += [(disk.vm, note) for note in guest.notes + guest.files.skipped]
                except ApplianceTimeout:
                    raise
                except (ApplianceError, GuestPathError) as err:
                    notes.append((disk.vm, f"not inspected: {err.message}"))
                finally:
                    app.call("unmounting", app.handle.umount_all)
                log.detail(f"{disk.vm}: {found.get(disk.vm)}")
    return found, notes
