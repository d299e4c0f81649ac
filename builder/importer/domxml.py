"""A libvirt domain's XML (``virsh dumpxml``), read into what a profile can say.

Pure: text in, a frozen `Domain` and the `Finding`s about it out. Every value is
checked with the profile's own parser for its key (``SETTINGS``), so what is read
here is what a profile accepts; what vmbuild cannot reproduce is an error, what it
does differently a warning, and what it leaves out is listed for the profile's
header. `check_lab` then compares the domains with each other.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vmbuild.errors import UserError
from vmbuild.model.profile import (
    SETTINGS,
    control_character,
    escape_controls,
    normalise_mac,
)

#: A domain XML is a few KiB; anything this large is something else.
MAX_XML_BYTES = 1 << 20
#: The namespace of the metadata vmbuild's deploy puts into its domains.
VMBUILD_NS = "https://vmbuild.dev/xmlns/lab/1"
#: The description in vmbuild's domain XML: "<lab>: <fqdn> <ip>/<prefix> (built by vmbuild)".
_BUILT_BY_VMBUILD = re.compile(r"(\S+): \S+ \S+ \(built by vmbuild\)")

_BUSES = ("virtio", "scsi", "sata", "ide")
_NET_TYPES = ("bridge", "network", "user")
#: libvirt's memory units (formatdomain.html, "Memory Allocation").
_UNITS = {
    "b": 1,
    "bytes": 1,
    "KB": 1000,
    "k": 1024,
    "KiB": 1024,
    "MB": 1000**2,
    "M": 1024**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "G": 1024**3,
    "GiB": 1024**3,
    "TB": 1000**4,
    "T": 1024**4,
    "TiB": 1024**4,
}
MIB = 1 << 20


@dataclass(frozen=True)
class Finding:
    """One thing found wrong (``error``) or done differently in one file."""

    file: str
    message: str
    hint: str = ""
    vm: str | None = None
    error: bool = True

    def __str__(self) -> str:
        where = escape_controls(self.file)
        if self.vm:
            where += f': vm "{escape_controls(self.vm)}"'
        text = f"{where}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ImportProblems(UserError):
    """The domain XML has errors: every one of them, file by file, and the warnings."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.errors = tuple(f for f in findings if f.error)
        self.warnings = tuple(f for f in findings if not f.error)
        count = len(self.errors)
        super().__init__(f"{count} {'problem' if count == 1 else 'problems'} in the domain XML")

    def lines(self) -> list[str]:
        return [str(finding) for finding in self.errors]


@dataclass(frozen=True)
class Disk:
    """The VM's boot disk: a file, in a format, on a bus."""

    path: str
    #: The driver's type: "raw", "qcow2", ...
    format: str
    bus: str
    #: The file the XML names as its backing file (<backingStore>), and its format.
    backing: str | None = None
    backing_format: str | None = None


@dataclass(frozen=True)
class Nic:
    type: str
    source: str | None
    mac: str | None
    model: str | None


@dataclass(frozen=True)
class Vnc:
    #: None when libvirt chooses the port at each start (autoport, no port given).
    port: int | None
    autoport: bool
    listen: str | None
    keymap: str | None


@dataclass(frozen=True)
class Domain:
    #: The file it was read from, as given on the command line.
    file: str
    name: str
    domain_type: str
    uuid: str | None
    vcpus: int
    #: Bytes: a whole number of MiB, as a profile's memory is.
    memory: int
    machine: str
    #: The machine as the XML gives it (pc-i440fx-7.2), where that differs.
    machine_given: str
    disk: Disk
    nic: Nic | None
    vnc: Vnc | None
    #: The lab vmbuild built this domain for, if its description or metadata says so.
    vmbuild_lab: str | None = None
    #: What the profile does not carry over, for its header: "cdrom /x.iso", ...
    dropped: tuple[str, ...] = field(default=())


def _checked(table: str, key: str, value: object) -> str | None:
    """Why a profile would refuse ``value`` for ``key``, or None when it takes it."""
    try:
        SETTINGS[table][key].parse(value)
    except ValueError as err:
        return str(err)
    return None


def _text(element: ET.Element | None) -> str:
    return "" if element is None or element.text is None else element.text.strip()


def _attr(element: ET.Element | None, name: str) -> str:
    return "" if element is None else (element.get(name) or "").strip()


def machine_type(given: str) -> str | None:
    """A QEMU machine type as a profile's machine: pc (i440FX) or q35; None for others."""
    if given in ("", "pc", "ubuntu") or given.startswith(("pc-i440fx-", "pc-0.", "pc-1.")):
        return "pc"
    if given in ("q35", "ubuntu-q35") or given.startswith("pc-q35-"):
        return "q35"
    return None


class _Reader:
    """Reads one domain, collecting findings about it."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.findings: list[Finding] = []
        self.vm: str | None = None
        self.dropped: list[str] = []

    def error(self, message: str, hint: str = "") -> None:
        self.findings.append(Finding(self.file, message, hint, self.vm))

    def warn(self, message: str, hint: str = "") -> None:
        self.findings.append(Finding(self.file, message, hint, self.vm, error=False))

    # ------------------------------------------------------------------ parts

    def root(self, data: bytes) -> ET.Element | None:
        if not data.strip():
            self.error("is empty, not domain XML", "virsh dumpxml NAME > FILE writes one")
            return None
        if len(data) > MAX_XML_BYTES:
            self.error(f"is {len(data)} bytes, too large to be a domain's XML")
            return None
        if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
            self.error("has a DOCTYPE or entity declarations, which domain XML never has")
            return None
        try:
            root = ET.fromstring(data)
        except ET.ParseError as err:
            self.error(f"is not XML: {err}", "virsh dumpxml NAME > FILE writes a domain's XML")
            return None
        if root.tag != "domain":
            self.error(
                f"is not a libvirt domain: its root element is <{escape_controls(root.tag)}>",
                "virsh dumpxml NAME > FILE writes a domain's XML",
            )
            return None
        return root

    def name(self, root: ET.Element) -> str | None:
        name = _text(root.find("name"))
        if not name:
            self.error("the domain has no <name>")
            return None
        self.vm = name
        why = _checked("vm", "name", name)
        if why is not None or "{" in name or "}" in name:
            self.error(
                f"name {escape_controls(name)!r} "
                f"{why or 'has braces, which a profile keeps for groups ({n})'}",
                "rename the domain (virsh domrename) or edit <name> in the XML",
            )
            return None
        return name

    def domain_type(self, root: ET.Element) -> str | None:
        kind = _attr(root, "type")
        if kind in ("kvm", "qemu"):
            return kind
        self.error(
            f"domain type {kind!r}: vmbuild makes kvm and qemu domains"
            if kind
            else "the domain has no type (<domain type='kvm'>)"
        )
        return None

    def memory(self, root: ET.Element) -> int | None:
        element = root.find("memory")
        amount = _text(element)
        unit = _attr(element, "unit") or "KiB"
        if not amount:
            self.error("the domain has no <memory>")
            return None
        if not amount.isdigit() or unit not in _UNITS:
            self.error(f"memory {amount!r} {unit!r} is not an amount libvirt writes")
            return None
        size = int(amount) * _UNITS[unit]
        if size % MIB:
            rounded = -(-size // MIB) * MIB
            self.warn(
                f"memory {amount} {unit} is not a whole number of MiB; "
                f"the profile gives it {rounded // MIB}M"
            )
            size = rounded
        why = _checked("vm", "memory", size)
        if why is not None:
            self.error(f"memory {amount} {unit} {why}")
            return None
        return size

    def vcpus(self, root: ET.Element) -> int | None:
        text = _text(root.find("vcpu")) or "1"
        count = int(text) if text.isdigit() else text
        why = _checked("vm", "vcpus", count)
        if why is not None:
            self.error(f"vcpu {text!r} {why}")
            return None
        assert isinstance(count, int)
        return count

    def os(self, root: ET.Element) -> tuple[str, str] | None:
        os_type = root.find("os/type")
        if _text(os_type) not in ("", "hvm"):
            self.error(
                f"os type {_text(os_type)!r}: vmbuild makes full (hvm) virtual machines",
            )
            return None
        arch = _attr(os_type, "arch")
        if arch not in ("", "x86_64"):
            self.warn(f"arch {arch}: vmbuild's domains are x86_64")
        if root.find("os/loader") is not None or _attr(root.find("os"), "firmware") == "efi":
            self.warn(
                "boots with UEFI firmware: vmbuild's domains boot with BIOS, and a guest "
                "installed for UEFI does not boot from BIOS",
                "use a golden image installed for BIOS",
            )
        given = _attr(os_type, "machine")
        machine = machine_type(given)
        if machine is None:
            self.warn(f"machine {given!r}: vmbuild makes pc and q35 machines; the profile uses pc")
            machine = "pc"
        return machine, given

    def disk(self, devices: ET.Element) -> Disk | None:
        disks = []
        for element in devices.findall("disk"):
            device = _attr(element, "device") or "disk"
            source = element.find("source")
            where = _attr(source, "file") or _attr(source, "dev") or _attr(source, "name")
            if device == "disk":
                disks.append(element)
            elif where:
                self.dropped.append(f"{device} {where}")
        if not disks:
            self.error("has no disk", "vmbuild makes each VM's disk from the golden image")
            return None
        first, *others = disks
        for other in others:
            source = other.find("source")
            where = _attr(source, "file") or _attr(source, "dev") or _attr(source, "name")
            self.warn(
                f"its disk {where or '(no source)'} is not imported: vmbuild gives each VM "
                "one disk, its first"
            )
        kind = _attr(first, "type") or "file"
        source = first.find("source")
        if kind != "file":
            named = " ".join(
                f"{key} {value}"
                for key, value in sorted((source.attrib if source is not None else {}).items())
            )
            what = {
                "block": "a block device",
                "network": "a network disk",
                "volume": "a storage pool volume",
            }.get(kind, f"a disk of type {kind!r}")
            hint = {
                "block": "copy it into a file, qemu-img convert -O qcow2 DEVICE FILE, and "
                "name that file in the XML",
                "volume": "`virsh vol-path VOLUME --pool POOL` gives its file: name that in "
                "<source file='...'/>",
            }.get(kind, "copy it into a qcow2 or raw file and name that file in the XML")
            self.error(
                f"its disk is {what} ({named or 'no source'}): vmbuild's disks are files, "
                "a qcow2 overlay on (or a copy of) the golden image file",
                hint,
            )
            return None
        path = _attr(source, "file")
        if not path:
            self.error("its disk has no source file")
            return None
        backing = first.find("backingStore")
        backing_path = _attr(backing.find("source") if backing is not None else None, "file")
        for named in (path, backing_path):
            found = control_character(named)
            if found:
                self.error(f"its disk {escape_controls(named)} has a control character ({found})")
                return None
        fmt = _attr(first.find("driver"), "type") or "raw"
        bus = _attr(first.find("target"), "bus") or "virtio"
        if bus not in _BUSES:
            self.warn(
                f"disk bus {bus!r}: vmbuild's buses are {', '.join(_BUSES)}; "
                "the profile uses virtio"
            )
            bus = "virtio"
        backing_format = _attr(backing.find("format") if backing is not None else None, "type")
        return Disk(path, fmt, bus, backing_path or None, backing_format or None)

    def nic(self, devices: ET.Element) -> Nic | None:
        interfaces = devices.findall("interface")
        if not interfaces:
            self.warn("has no network interface: vmbuild gives every VM one on the lab's network")
            return None
        first, *others = interfaces
        for other in others:
            other_mac = _attr(other.find("mac"), "address")
            self.warn(
                f"its network interface {other_mac or '(no MAC)'} is not imported: vmbuild "
                "gives each VM one NIC on the lab's network",
                "a plugin can add more: vmbuild_plugins/examples/second_nic.py",
            )
        kind = _attr(first, "type")
        source_element = first.find("source")
        source: str | None = None
        if kind in ("bridge", "network"):
            source = _attr(source_element, kind)
            if not source:
                self.error(f"its {kind} interface names no {kind}")
                return None
            why = _checked("network", "source", source)
            if why is not None or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", source):
                self.error(f"{kind} {escape_controls(source)!r} is not a name vmbuild accepts")
                return None
        elif kind != "user":
            named = _attr(source_element, "dev") or _attr(source_element, "network")
            self.error(
                f"its network interface is of type {kind!r}"
                + (f" ({named})" if named else "")
                + ": vmbuild attaches VMs to a host bridge, a libvirt network or QEMU's user "
                "networking",
                "attach it to a bridge (<interface type='bridge'>) in the XML",
            )
            return None
        mac = _attr(first.find("mac"), "address") or None
        if mac is None:
            self.warn("its network interface has no MAC: the profile derives one")
        else:
            why = _checked("vm", "mac", mac)
            if why is not None:
                self.error(f"mac {escape_controls(mac)} {why}")
                return None
            mac = normalise_mac(mac)
        model = _attr(first.find("model"), "type") or None
        if model is not None and _checked("vm", "nic_model", model) is not None:
            self.warn(
                f"NIC model {escape_controls(model)!r} is not one vmbuild can name; "
                "the profile uses virtio"
            )
            model = None
        return Nic(kind, source, mac, model)

    def vnc(self, devices: ET.Element) -> Vnc | None:
        graphics = [g for g in devices.findall("graphics") if _attr(g, "type") == "vnc"]
        if not graphics:
            others = sorted({_attr(g, "type") for g in devices.findall("graphics")} - {""})
            if others:
                self.warn(
                    f"has {' and '.join(others)} graphics: vmbuild gives every VM a VNC console"
                )
            return None
        element = graphics[0]
        autoport = _attr(element, "autoport") == "yes"
        text = _attr(element, "port")
        port: int | None = None
        if text and text != "-1":
            why = _checked("vm", "vnc_port", int(text)) if text.isdigit() else "is not a port"
            if why is not None:
                self.error(
                    f"VNC port {escape_controls(text)} {why}: vmbuild fixes VNC ports in "
                    "5900-65535",
                    "change the port in the XML, or remove it to let vmbuild derive one",
                )
                return None
            port = int(text)
        if autoport:
            self.warn(
                f"VNC port {port} is not fixed (autoport='yes'): libvirt may give the VM "
                "another port at each start; the profile keeps it as its fixed port"
                if port is not None
                else "its VNC port is not fixed (autoport='yes') and the XML gives none: "
                "the profile derives a fixed one"
            )
        listen = _attr(element, "listen")
        for child in element.findall("listen"):
            if _attr(child, "type") == "address" and _attr(child, "address"):
                listen = _attr(child, "address")
                break
            if _attr(child, "type") in ("socket", "none", "network"):
                self.warn(
                    f"VNC listens on a {_attr(child, 'type')}: vmbuild's VNC listens on an "
                    "address; the profile uses 127.0.0.1"
                )
        if listen == "localhost":
            listen = "127.0.0.1"
        elif listen in ("::", "[::]"):
            self.warn("VNC listens on '::': the profile listens on every IPv4 address, 0.0.0.0")
            listen = "0.0.0.0"
        if listen and _checked("vm", "vnc_listen", listen) is not None:
            self.warn(
                f"VNC listen {escape_controls(listen)!r} is not an IPv4 address; the profile "
                "uses 127.0.0.1"
            )
            listen = ""
        keymap = _attr(element, "keymap")
        if keymap and _checked("vm", "vnc_keymap", keymap) is not None:
            self.warn(
                f"VNC keymap {escape_controls(keymap)!r} is not one vmbuild can name; "
                "the profile leaves it out"
            )
            keymap = ""
        if _attr(element, "passwd"):
            self.warn(
                "its VNC console has a password: vmbuild sets none, so anyone who reaches "
                "its VNC port gets the console",
                "keep vnc_listen on 127.0.0.1 and tunnel through SSH",
            )
        return Vnc(port, autoport, listen or None, keymap or None)

    def vmbuild_lab(self, root: ET.Element) -> str | None:
        for element in root.iter(f"{{{VMBUILD_NS}}}lab"):
            if element.get("lab"):
                return element.get("lab")
        found = _BUILT_BY_VMBUILD.fullmatch(_text(root.find("description")))
        return found.group(1) if found else None

    def rest(self, root: ET.Element, devices: ET.Element) -> None:
        """What the profile leaves out, and what a VM then lacks."""
        emulator = _text(devices.find("emulator"))
        if emulator:
            self.dropped.append(f"emulator {emulator}")
        cpu = root.find("cpu")
        if cpu is not None and _attr(cpu, "mode"):
            self.dropped.append(f"cpu mode {_attr(cpu, 'mode')}")
        for tag in ("hostdev", "filesystem", "smartcard", "redirdev"):
            for _element in devices.findall(tag):
                self.warn(f"its <{tag}> device is not imported: vmbuild's domains have none")


def parse_domain(data: bytes, file: str) -> tuple[Domain | None, list[Finding]]:
    """One domain's XML: the domain (None when it has an error) and the findings."""
    reader = _Reader(file)
    root = reader.root(data)
    if root is None:
        return None, reader.findings
    name = reader.name(root)
    domain_type = reader.domain_type(root)
    memory = reader.memory(root)
    vcpus = reader.vcpus(root)
    machine = reader.os(root)
    devices = root.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    disk = reader.disk(devices)
    nic = reader.nic(devices)
    vnc = reader.vnc(devices)
    reader.rest(root, devices)
    if (
        name is None
        or domain_type is None
        or memory is None
        or vcpus is None
        or machine is None
        or disk is None
        or any(f.error for f in reader.findings)
    ):
        return None, reader.findings
    uuid = _text(root.find("uuid")) or None
    if uuid is not None and _checked("vm", "uuid", uuid) is not None:
        reader.warn(f"uuid {escape_controls(uuid)!r} is not a UUID: the profile derives one")
        uuid = None
    domain = Domain(
        file=file,
        name=name,
        domain_type=domain_type,
        uuid=uuid.lower() if uuid else None,
        vcpus=vcpus,
        memory=memory,
        machine=machine[0],
        machine_given=machine[1],
        disk=disk,
        nic=nic,
        vnc=vnc,
        vmbuild_lab=reader.vmbuild_lab(root),
        dropped=tuple(reader.dropped),
    )
    return domain, reader.findings


def check_lab(domains: Sequence[Domain]) -> list[Finding]:
    """What no single file shows: two VMs with one name, MAC, UUID, VNC port or disk,
    and VMs on different networks (a lab has one)."""
    findings: list[Finding] = []
    keys: dict[str, Callable[[Domain], object]] = {
        "name": lambda d: d.name.lower(),
        "mac": lambda d: d.nic.mac if d.nic else None,
        "uuid": lambda d: d.uuid,
        "VNC port": lambda d: d.vnc.port if d.vnc else None,
        "disk": lambda d: d.disk.path,
    }
    for what, key in keys.items():
        seen: dict[object, Domain] = {}
        for domain in domains:
            value = key(domain)
            if value is None:
                continue
            if value in seen:
                other = seen[value]
                shown = domain.name if what == "name" else value
                findings.append(
                    Finding(
                        domain.file,
                        f"{what} {escape_controls(str(shown))} is also used by vm "
                        f'"{escape_controls(other.name)}" in {escape_controls(other.file)}',
                        "each VM of a lab needs its own",
                        domain.name,
                    )
                )
            else:
                seen[value] = domain
    with_nic = [d for d in domains if d.nic is not None]
    if with_nic:
        first = with_nic[0]
        assert first.nic is not None
        for domain in with_nic[1:]:
            assert domain.nic is not None
            if (domain.nic.type, domain.nic.source) != (first.nic.type, first.nic.source):
                findings.append(
                    Finding(
                        domain.file,
                        f'is on {_network(domain.nic)}, but vm "{escape_controls(first.name)}" '
                        f"in {escape_controls(first.file)} is on {_network(first.nic)}: a vmbuild "
                        "lab has one network",
                        "import the VMs of each network into a profile of its own",
                        domain.name,
                    )
                )
    types = {d.domain_type for d in domains}
    if len(types) > 1:
        kvm = [d for d in domains if d.domain_type == "qemu"]
        for domain in kvm:
            findings.append(
                Finding(
                    domain.file,
                    "is a qemu domain and the others kvm: a lab has one domain type; "
                    "the profile makes them all kvm",
                    vm=domain.name,
                    error=False,
                )
            )
    return findings


def _network(nic: Nic) -> str:
    if nic.type == "user":
        return "QEMU's user networking"
    what = "bridge" if nic.type == "bridge" else "libvirt network"
    return f"{what} {nic.source}"
