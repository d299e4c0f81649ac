"""What ``vmbuild import`` read, written as a commented profile.

Pure. Settings every VM shares go into ``[defaults]``; VMs that form a sequence
(slave1 … slave8, with consecutive addresses and MACs and UUIDs that the lab's seed
derives) become one group. The text is then loaded and planned as vmbuild would,
and every VM's MAC, UUID and VNC port compared with the XML's: a group that does not
reproduce them is written as single VMs, and a derived MAC that comes out otherwise
is written out, so exactness wins over brevity.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from vmbuild.errors import BuildError, ProfileError
from vmbuild.importer.domxml import Domain
from vmbuild.importer.netfiles import GuestNet
from vmbuild.model.plan import Plan, derive_mac, derive_uuid, make_plan
from vmbuild.model.profile import escape_controls, format_size, is_hostname_label, parse_profile

#: What a profile holds where an address is still to be given; validate names it.
TODO = "TODO"
#: Where inline comments start, and the widest line they may make.
COMMENT_COLUMN = 36
WIDTH = 100
#: vmbuild's defaults for what a domain's XML may leave out (docs/profile.md).
_BUILTIN = {"nic_model": "virtio", "vnc_listen": "127.0.0.1"}
_VNC_BASE = 5900


@dataclass(frozen=True)
class VmInput:
    """One domain, with what was learnt about it beyond its XML."""

    domain: Domain
    #: The disk's virtual size (qemu-img info), or None with why in ``disk_note``.
    disk_size: int | None = None
    disk_note: str = ""
    #: What --inspect read from its disk (None without --inspect, or when not read).
    guest: GuestNet | None = None
    #: Its disk is a full copy (no backing file), as hand-made clones are.
    full_copy: bool = True


@dataclass(frozen=True)
class LabInput:
    name: str
    #: Where the name came from, for its comment ("" when the user gave it).
    name_note: str
    vms: tuple[VmInput, ...]
    base_image: str
    base_format: str
    #: What the image is, for its comment.
    base_note: str
    #: --inspect was asked.
    inspected: bool = False
    #: The profile's file, for the header's next step (None: stdout).
    output: str | None = None


@dataclass(frozen=True)
class Written:
    text: str
    #: (VM, message): what the profile does that the user should know of.
    warnings: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------- TOML text


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _comment_lines(text: str, width: int = 88) -> list[str]:
    lines = textwrap.wrap(
        escape_controls(text), width - 2, break_long_words=False, break_on_hyphens=False
    )
    return ["# " + line for line in lines] or ["#"]


class _Table:
    """One table of the profile, as lines: keys with their comments, and notes."""

    def __init__(self, header: str) -> None:
        self.header = header
        self.lines: list[str] = []

    def key(self, key: str, value: Any, comment: str = "") -> None:
        self.line(f"{key} = {toml_value(value)}", comment)

    def line(self, text: str, comment: str = "") -> None:
        if not comment:
            self.lines.append(text)
            return
        comment = escape_controls(comment)
        inline = f"{text.ljust(COMMENT_COLUMN - 1)} # {comment}"
        if len(inline) <= WIDTH:
            self.lines.append(inline)
        else:
            self.lines += [*_comment_lines(comment), text]

    def note(self, text: str) -> None:
        self.lines += _comment_lines(text)

    def render(self) -> str:
        return "\n".join([self.header, *self.lines]) + "\n"


# ------------------------------------------------------------------ the choices


@dataclass
class _Vm:
    """One VM as the profile will say it."""

    name: str
    number: tuple[str, str, str] | None
    hostname: str | None
    hostname_note: str
    ip: IPv4Address | None
    ip_note: str
    #: What the plan must give it (None: anything vmbuild derives).
    want_mac: str | None
    want_uuid: str | None
    want_port: int
    #: Written out (not derived).
    mac: bool
    uuid: bool
    port: bool
    port_note: str
    #: Settings that differ from [defaults]: key -> (value, comment).
    settings: dict[str, tuple[Any, str]]
    notes: list[str]


def _most_common(values: Sequence[Any]) -> Any:
    counted = Counter(value for value in values if value is not None)
    return counted.most_common(1)[0][0] if counted else None


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{names[0]}, {names[1]} … {names[-1]}"


_NUMBERED = re.compile(r"(.*?)([0-9]+)([^0-9]*)")


def _number(name: str) -> tuple[str, str, str] | None:
    found = _NUMBERED.fullmatch(name)
    return (found.group(1), found.group(2), found.group(3)) if found else None


def _hostname_for(name: str) -> str:
    """A hostname for a VM whose name is not one (beta_1 -> beta-1)."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return text or "vm"


def _hostnames(
    vms: Sequence[VmInput], warnings: list[tuple[str, str]]
) -> list[tuple[str | None, str]]:
    """Each VM's explicit hostname (None: its name is its hostname) and its comment.
    A guest's own name is kept unless another guest or VM has it too (a disk copied
    and not renamed)."""
    guest_names = [vm.guest.hostname if vm.guest else None for vm in vms]
    defaults = [vm.domain.name.lower() if is_hostname_label(vm.domain.name) else None for vm in vms]
    out: list[tuple[str | None, str]] = []
    for index, (vm, guest, default) in enumerate(zip(vms, guest_names, defaults, strict=True)):
        name = vm.domain.name
        own = default or _hostname_for(name)
        if guest and guest != default:
            taken = [
                other.domain.name
                for at, other in enumerate(vms)
                if at != index and guest in (guest_names[at], defaults[at])
            ]
            if not taken:
                out.append((guest, "from its /etc/hostname"))
                continue
            warnings.append(
                (
                    name,
                    f"its guest calls itself {guest}, as vm {taken[0]!r} is called (its disk "
                    f"was copied and not renamed?): the profile gives it the hostname {own}",
                )
            )
        out.append((None, "") if default else (own, f"guess: the name {name} is not a hostname"))
    return out


def _addresses(
    vms: Sequence[VmInput], subnet: IPv4Network | None, warnings: list[tuple[str, str]]
) -> list[tuple[IPv4Address | None, str]]:
    """Each VM's address (None: a TODO) and its comment."""
    out: list[tuple[IPv4Address | None, str]] = []
    seen: dict[IPv4Address, str] = {}
    for vm in vms:
        name = vm.domain.name
        guest = vm.guest
        if guest is None or guest.address is None:
            if guest is not None and guest.dhcp:
                why = f"its guest takes its address {guest.dhcp}: give it a fixed one"
            elif guest is not None:
                why = "its guest's network files give no static address"
            else:
                why = f"{name}'s static address"
            out.append((None, f"TODO: {why}"))
            continue
        ip = guest.address.ip
        if ip in seen:
            warnings.append(
                (
                    name,
                    f"its guest has the address {ip} of vm {seen[ip]!r} (its disk was copied "
                    "and not changed): the profile leaves its ip as a TODO",
                )
            )
            out.append((None, f"TODO: its disk has {seen[ip]}'s address {ip} too"))
            continue
        seen[ip] = name
        if subnet is not None and ip not in subnet:
            warnings.append(
                (
                    name,
                    f"its guest's address {guest.address} is outside the lab's subnet {subnet}, "
                    "the one most of its VMs are on: vmbuild validate refuses it until it is "
                    "given one inside",
                )
            )
        out.append((ip, f"from its {guest.source}"))
    return out


def _vnc_ports(vms: Sequence[VmInput]) -> list[tuple[int, bool, str]]:
    """Each VM's port, whether it is written out, and its comment. A VM whose port
    libvirt chose at each start gets the port vmbuild derives (base + position),
    unless another VM has that one fixed: then the first free one, written out."""
    fixed = {vm.domain.vnc.port for vm in vms if vm.domain.vnc and vm.domain.vnc.port}
    used = set(fixed)
    out = []
    for index, vm in enumerate(vms, start=1):
        vnc = vm.domain.vnc
        if vnc is not None and vnc.port is not None:
            note = "was autoport='yes': now fixed" if vnc.autoport else ""
            out.append((vnc.port, True, note))
            continue
        derived = _VNC_BASE + index
        if derived not in used and derived <= 65535:
            used.add(derived)
            out.append((derived, False, ""))
            continue
        port = next(p for p in range(_VNC_BASE + 1, 65536) if p not in used)
        used.add(port)
        out.append((port, True, "guess: a free port; libvirt chose one at each start"))
    return out


_VM_KEYS = (
    "vcpus",
    "memory",
    "disk_size",
    "disk_bus",
    "machine",
    "nic_model",
    "vnc_listen",
    "vnc_keymap",
)
#: Keys that a VM cannot reset to "none" once [defaults] sets them: in [defaults]
#: only when every VM has the same value.
_ABSENT_IS_A_VALUE = ("disk_size", "vnc_keymap")


def _setting(vm: VmInput, key: str) -> Any:
    domain = vm.domain
    if key == "vcpus":
        return domain.vcpus
    if key == "memory":
        return format_size(domain.memory)
    if key == "disk_size":
        return None if vm.disk_size is None else format_size(vm.disk_size)
    if key == "disk_bus":
        return domain.disk.bus
    if key == "machine":
        return domain.machine
    if key == "nic_model":
        return (domain.nic.model if domain.nic else None) or _BUILTIN["nic_model"]
    if key == "vnc_listen":
        return (domain.vnc.listen if domain.vnc else None) or _BUILTIN["vnc_listen"]
    assert key == "vnc_keymap"
    return domain.vnc.keymap if domain.vnc else None


def _defaults(vms: Sequence[VmInput]) -> dict[str, Any]:
    """What [defaults] sets: each value most VMs share (every VM, for some keys)."""
    chosen: dict[str, Any] = {}
    for key in _VM_KEYS:
        values = [_setting(vm, key) for vm in vms]
        if key in _ABSENT_IS_A_VALUE:
            if values[0] is not None and len(set(values)) == 1:
                chosen[key] = values[0]
            continue
        common = _most_common(values)
        if len(vms) == 1 or Counter(values)[common] > 1:
            chosen[key] = common
    return chosen


def _network(vms: Sequence[VmInput], inspected: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """[network]'s keys and their comments, from the first NIC and the guests."""
    nic = next((vm.domain.nic for vm in vms if vm.domain.nic), None)
    keys: dict[str, Any] = {}
    notes: dict[str, str] = {}
    if nic is None:
        keys["type"] = "user"
        notes["type"] = "guess: no VM had a NIC; set your bridge (type, source)"
    else:
        keys["type"] = nic.type
        if nic.source:
            keys["source"] = nic.source
    addresses = [vm.guest.address for vm in vms if vm.guest and vm.guest.address]
    networks = [a.network for a in addresses if a.network.prefixlen <= 30]
    subnet: IPv4Network | None = _most_common(networks)
    if subnet is None:
        keys["subnet"] = TODO
        notes["subnet"] = "TODO: the network of the VMs' addresses, like 192.168.10.0/24" + (
            "" if inspected else " (vmbuild import --inspect reads it from the guests)"
        )
        return keys, notes
    keys["subnet"] = str(subnet)
    count = sum(network == subnet for network in networks)
    notes["subnet"] = f"from the guests' network files ({count} of {len(vms)} VMs)"
    inside = [
        vm.guest for vm in vms if vm.guest and vm.guest.address and vm.guest.address.ip in subnet
    ]
    gateway = _most_common([g.gateway for g in inside if g.gateway and g.gateway in subnet])
    if gateway is not None:
        keys["gateway"] = str(gateway)
    dns = _most_common([g.dns for g in inside if g.dns])
    if dns:
        keys["dns"] = [str(ip) for ip in dns]
    search = _most_common([g.search for g in inside if g.search])
    if search:
        keys["search"] = list(search)
    return keys, notes


def _domain(vms: Sequence[VmInput]) -> str | None:
    """The DNS domain every guest that names one agrees on."""
    found = {vm.guest.domain for vm in vms if vm.guest and vm.guest.domain}
    return found.pop() if len(found) == 1 else None


def _seed(lab: LabInput) -> str | None:
    """The seed vmbuild built these VMs with, when it names their lab and derives their
    MACs or UUIDs from it; None when the lab's name serves."""
    labs = {vm.domain.vmbuild_lab for vm in lab.vms}
    if len(labs) != 1 or None in labs:
        return None
    seed = labs.pop()
    assert seed is not None
    if seed == lab.name:
        return None
    for vm in lab.vms:
        nic = vm.domain.nic
        if (nic and nic.mac == derive_mac(seed, vm.domain.name)) or vm.domain.uuid == derive_uuid(
            seed, vm.domain.name
        ):
            return seed
    return None


# ------------------------------------------------------------------- the groups


@dataclass(frozen=True)
class _Group:
    first: int
    count: int
    pattern: str
    number: int


def _pattern(vms: Sequence[_Vm]) -> tuple[str, int] | None:
    """name = "slave{n}" and the first number, when these VMs' names count up by one."""
    parts = [vm.number for vm in vms]
    if any(part is None for part in parts):
        return None
    prefix, digits, suffix = parts[0]  # type: ignore[misc]
    if any(p is not None and (p[0], p[2]) != (prefix, suffix) for p in parts):
        return None
    numbers = [int(p[1]) for p in parts if p is not None]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))) or numbers[0] > 1_000_000:
        return None
    padded = len(digits) > 1 and digits.startswith("0")
    width = len(digits)
    placeholder = f"{{n:0{width}}}" if padded else "{n}"
    for vm, number in zip(vms, numbers, strict=True):
        expected = str(number).zfill(width) if padded else str(number)
        if vm.number is None or vm.number[1] != expected:
            return None
    return prefix + placeholder + suffix, numbers[0]


def _joins(run: Sequence[_Vm], vm: _Vm) -> bool:
    """Whether ``vm`` can be the next VM of the group ``run``."""
    last = run[-1]
    if vm.mac or vm.uuid or vm.hostname or vm.ip is None or last.ip is None:
        return False
    if int(vm.ip) != int(last.ip) + 1 or vm.settings != last.settings or vm.notes:
        return False
    if vm.port != last.port or (vm.port and vm.want_port != last.want_port + 1):
        return False
    return _pattern([*run, vm]) is not None


def _groups(vms: Sequence[_Vm]) -> list[_Group]:
    """Runs of two or more VMs that one [[vm]] entry gives."""
    groups = []
    start = 0
    while start < len(vms):
        head = vms[start]
        end = start + 1
        if not (head.mac or head.uuid or head.hostname or head.ip is None or head.notes):
            while end < len(vms) and _joins(vms[start:end], vms[end]):
                end += 1
        if end - start > 1:
            found = _pattern(vms[start:end])
            assert found is not None
            groups.append(_Group(start, end - start, *found))
        start = end
    return groups


# ------------------------------------------------------------------- the text


def _header(lab: LabInput, vms: Sequence[_Vm], todo: bool) -> str:
    count = len(lab.vms)
    width = max(len(vm.domain.name) for vm in lab.vms)
    target = lab.output or "PROFILE"
    kept = "names, MACs, VNC ports, vCPUs, memory, disk bus, machine type and network"
    if any(vm.uuid for vm in vms):
        kept += ", and UUIDs (define.sh then redefines the domains in place)"
    lines = [
        f"# A vmbuild lab profile, written by `vmbuild import` from the domain XML of "
        f"{count} VM{'s' if count > 1 else ''}:",
        *(
            f"#   {escape_controls(vm.domain.name).ljust(width)}  {escape_controls(vm.domain.file)}"
            for vm in lab.vms
        ),
        "#",
        *_comment_lines(
            ("Give each TODO its value and check" if todo else "Check")
            + f" each guess, then: vmbuild validate {target}. "
            f"Kept from the XML: {kept}. Each VM gets a new disk made from [base] image, "
            "with its hostname, static IP, machine-id and SSH host keys already inside."
        ),
    ]
    dropped: dict[tuple[str, ...], list[str]] = {}
    for vm in lab.vms:
        if vm.domain.dropped:
            dropped.setdefault(vm.domain.dropped, []).append(vm.domain.name)
    if dropped:
        left = []
        for items, names in dropped.items():
            who = "every VM's" if len(names) == count > 1 else f"{_names(names)}'s"
            left.append(f"{who} {' and '.join(items)}")
        cdrom = any(item.startswith("cdrom ") for items in dropped for item in items)
        lines += [
            "#",
            *_comment_lines(
                f"Left out: {'; '.join(left)}"
                + (" (each VM's CD-ROM holds its cloud-init seed)." if cdrom else ".")
            ),
        ]
    return "\n".join(lines) + "\n"


def _more_like(vm: _Vm) -> str:
    """How one imported VM becomes the many that were cloned from it by hand."""
    pattern = f"{vm.number[0]}{{n}}{vm.number[2]}" if vm.number else f"{vm.name}{{n}}"
    return (
        f"More VMs like {vm.name}, without cloning: make this entry a group, "
        f'name = "{pattern}" and count = 8, with the first VM\'s ip and vnc_port (each '
        "next VM takes the next ones); leave mac out, so that vmbuild derives one per VM "
        '(docs/profile.md, "Groups").'
    )


def _tail(ip: IPv4Address) -> str:
    """The last part of an address, as people say it: .101."""
    return "." + str(ip).rsplit(".", 1)[1]


@dataclass(frozen=True)
class _Shared:
    """What the profile says once for every VM."""

    seed: str | None
    domain: str | None
    defaults: dict[str, Any]
    #: [network]'s keys, and the comment of each.
    network: tuple[dict[str, Any], dict[str, str]]


def _render(lab: LabInput, once: _Shared, vms: Sequence[_Vm], groups: Sequence[_Group]) -> str:
    tables = []
    top = _Table("[lab]")
    top.key("name", lab.name, lab.name_note)
    if once.seed is not None:
        top.key(
            "seed", once.seed, "the lab vmbuild built these VMs as: it derives their MACs, UUIDs"
        )
    if once.domain is not None:
        top.key("domain", once.domain, "from the guests' /etc/hostname or /etc/hosts")
    types = {vm.domain.domain_type for vm in lab.vms}
    top.key("domain_type", "kvm" if "kvm" in types else "qemu")
    tables.append(top)

    base = _Table("[base]")
    base.key("image", lab.base_image, lab.base_note)
    base.key("format", lab.base_format)
    tables.append(base)

    net = _Table("[network]")
    keys, notes = once.network
    for key, value in keys.items():
        net.key(key, value, notes.get(key, ""))
    if "subnet" in keys and keys["subnet"] == TODO:
        net.line('# gateway = "..."', "the subnet's router, if the VMs have one")
        net.line('# dns = ["..."]', "their nameservers")
    tables.append(net)

    shared = _Table("[defaults]")
    for key in _VM_KEYS:
        if key in once.defaults:
            comment = ""
            if key == "vnc_listen" and once.defaults[key] == "0.0.0.0":
                comment = "every host address, and vmbuild sets no VNC password"
            if key == "nic_model" and not any(v.domain.nic and v.domain.nic.model for v in lab.vms):
                shared.note(
                    'nic_model = "virtio" is vmbuild\'s default: the XML names no NIC model '
                    "(QEMU then chooses one, e1000 or rtl8139)"
                )
                continue
            if key == "vnc_listen" and not any(
                v.domain.vnc and v.domain.vnc.listen for v in lab.vms
            ):
                continue
            shared.key(key, once.defaults[key], comment)
        elif key == "disk_size" and len({vm.disk_size for vm in lab.vms}) == 1:
            missing = [vm for vm in lab.vms if vm.disk_note]
            if missing:
                shared.note(
                    f"disk_size: {missing[0].disk_note}: without it, each disk is as large "
                    "as the golden image"
                )
    if all(vm.full_copy for vm in lab.vms):
        shared.line('# disk_mode = "copy"', "full copies, as the clones were; default: overlays")
    if shared.lines:
        tables.append(shared)

    grouped = {group.first: group for group in groups}
    index = 0
    while index < len(vms):
        vm = vms[index]
        entry = _Table("[[vm]]")
        group = grouped.get(index)
        if group is not None:
            members = vms[index : index + group.count]
            entry.key("name", group.pattern, f"{members[0].name} … {members[-1].name}")
            entry.key("count", group.count)
            if group.number != 1:
                entry.key("first", group.number)
            last = members[-1]
            assert vm.ip is not None and last.ip is not None
            entry.key(
                "ip",
                str(vm.ip),
                f"{vm.name} {_tail(vm.ip)} … {last.name} {_tail(last.ip)}, as their guests say",
            )
            if vm.port:
                entry.key(
                    "vnc_port",
                    vm.want_port,
                    f"{vm.name} {vm.want_port} … {last.name} {last.want_port}",
                )
            index += group.count
        else:
            entry.key("name", vm.name)
            if vm.hostname:
                entry.key("hostname", vm.hostname, vm.hostname_note)
            entry.key("ip", str(vm.ip) if vm.ip else TODO, vm.ip_note)
            if vm.mac:
                entry.key("mac", vm.want_mac)
            if vm.uuid:
                entry.key("uuid", vm.want_uuid)
            if vm.port:
                entry.key("vnc_port", vm.want_port, vm.port_note)
            index += 1
        for key, (value, comment) in vm.settings.items():
            entry.key(key, value, comment)
        for note in vm.notes:
            entry.note(note)
        tables.append(entry)
    if len(vms) == 1:
        tables[-1].lines.append("")
        tables[-1].note(_more_like(vms[0]))
    body = "".join("\n" + table.render() for table in tables)
    return _header(lab, vms, f"= {toml_string(TODO)}" in body) + body


# ---------------------------------------------------------------- the checking


def planned(text: str, lab: LabInput) -> Plan:
    """The plan of the written profile, with every TODO address replaced by a stand-in
    and the subnet by one that holds every address: what the check compares."""
    raw = tomllib.loads(text)
    raw["network"]["subnet"] = "0.0.0.0/0"
    raw["network"].pop("gateway", None)
    used = {entry["ip"] for entry in raw["vm"] if entry["ip"] != TODO}
    stand_ins = (f"240.0.{i // 250}.{i % 250 + 1}" for i in range(1 << 16))
    for entry in raw["vm"]:
        if entry["ip"] == TODO:
            entry["ip"] = next(ip for ip in stand_ins if ip not in used)
    try:
        return make_plan(parse_profile(raw, Path(f"{lab.name}.toml")))
    except ProfileError as err:
        raise BuildError(
            "vmbuild import wrote a profile that vmbuild refuses: "
            + "; ".join(str(problem) for problem in err.problems),
            hint="this is a bug in vmbuild import; please report it with the domain XML",
        ) from None


def _mismatches(plan: Plan, vms: Sequence[_Vm]) -> list[int]:
    """The positions of the VMs whose MAC, UUID or VNC port the plan does not reproduce."""
    wrong = []
    for index, (vm, want) in enumerate(zip(plan.vms, vms, strict=True)):
        if (
            vm.name != want.name
            or (want.want_mac is not None and vm.mac != want.want_mac)
            or (want.want_uuid is not None and vm.uuid != want.want_uuid)
            or vm.vnc.port != want.want_port
        ):
            wrong.append(index)
    return wrong


def write(lab: LabInput) -> Written:
    """The profile's text, loaded and planned to check that it gives every VM the
    name, MAC, UUID and VNC port of its XML."""
    warnings: list[tuple[str, str]] = []
    seed = _seed(lab)
    derive_from = seed or lab.name
    network = _network(lab.vms, lab.inspected)
    subnet_text = network[0]["subnet"]
    subnet = None if subnet_text == TODO else IPv4Network(subnet_text)
    hostnames = _hostnames(lab.vms, warnings)
    addresses = _addresses(lab.vms, subnet, warnings)
    ports = _vnc_ports(lab.vms)
    defaults = _defaults(lab.vms)
    vms = []
    for vm, (hostname, hostname_note), (ip, ip_note), (port, fixed, port_note) in zip(
        lab.vms, hostnames, addresses, ports, strict=True
    ):
        domain = vm.domain
        mac = domain.nic.mac if domain.nic else None
        uuid = domain.uuid
        settings: dict[str, tuple[Any, str]] = {}
        for key in _VM_KEYS:
            value = _setting(vm, key)
            if value is not None and defaults.get(key) != value:
                settings[key] = (value, "")
        notes = []
        varied = len({v.disk_size for v in lab.vms}) > 1
        if vm.disk_note and varied and "disk_size" not in settings:
            notes.append(f"disk_size: {vm.disk_note}")
        vms.append(
            _Vm(
                name=domain.name,
                number=_number(domain.name),
                hostname=hostname,
                hostname_note=hostname_note,
                ip=ip,
                ip_note=ip_note,
                want_mac=mac,
                want_uuid=domain.uuid,
                want_port=port,
                mac=mac is not None and mac != derive_mac(derive_from, domain.name),
                uuid=uuid is not None and uuid != derive_uuid(derive_from, domain.name),
                port=fixed,
                port_note=port_note,
                settings=settings,
                notes=notes,
            )
        )
    shared = _Shared(seed, _domain(lab.vms), defaults, network)
    groups = _groups(vms)
    for _ in range(len(vms) + 2):
        text = _render(lab, shared, vms, groups)
        wrong = _mismatches(planned(text, lab), vms)
        if not wrong:
            return Written(text, tuple(warnings))
        in_groups = {i for g in groups for i in range(g.first, g.first + g.count) if i in wrong}
        if in_groups:
            groups = []  # a group that does not reproduce its VMs: single VMs then
            continue
        for index in wrong:
            vms[index] = dataclasses.replace(
                vms[index],
                mac=vms[index].want_mac is not None,
                uuid=vms[index].want_uuid is not None,
                port=True,
            )
    raise BuildError(
        "vmbuild import could not write a profile that reproduces every MAC and VNC port",
        hint="this is a bug in vmbuild import; please report it with the domain XML",
    )
