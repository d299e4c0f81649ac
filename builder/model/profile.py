"""Load a lab profile (TOML) into a frozen Profile, reporting every problem at once.

Nothing here touches anything but the profile file itself: checks that need the
golden image (existence, size, sha256 pin) live in ``base.py`` and run at build time.
"""

from __future__ import annotations

import difflib
import enum
import fractions
import hashlib
import ipaddress
import json
import re
import tomllib
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vmbuild.errors import Problem, ProfileError, UserError

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


class DomainType(enum.StrEnum):
    """libvirt's domain type (lab.domain_type): kvm needs working KVM; qemu is TCG."""

    KVM = "kvm"
    QEMU = "qemu"


class Target(enum.StrEnum):
    """What hypervisor the bundle is made for (lab.target). The libvirt bundle is
    always built; any other target is exported from it into ``<bundle>/<target>/``."""

    LIBVIRT_KVM = "libvirt-kvm"
    LIBVIRT_QEMU = "libvirt-qemu"
    XEN_HVM = "xen-hvm"
    XEN_PV = "xen-pv"
    XEN_PVH = "xen-pvh"
    HYPERV = "hyperv"
    VMWARE = "vmware"

    @property
    def is_libvirt_kvm_or_qemu(self) -> bool:
        return self in (Target.LIBVIRT_KVM, Target.LIBVIRT_QEMU)


class DiskMode(enum.StrEnum):
    """How a VM's disk is made from the golden image (disk_mode)."""

    #: A qcow2 file holding only this VM's changes, backed by the golden image.
    OVERLAY = "overlay"
    #: A full, independent (sparse) copy of the golden image.
    COPY = "copy"


class DiskFormat(enum.StrEnum):
    """A disk image format, as qemu-img and libvirt name it."""

    QCOW2 = "qcow2"
    RAW = "raw"


class Bus(enum.StrEnum):
    """The bus a VM's disk is attached to (disk_bus)."""

    VIRTIO = "virtio"
    IDE = "ide"
    SATA = "sata"
    SCSI = "scsi"


class SeedBus(enum.StrEnum):
    """How the NoCloud seed is attached (seed_bus): a CD-ROM on a bus, or a disk."""

    #: IDE on the ``pc`` machine type, virtio-scsi on ``q35`` (which has no IDE).
    AUTO = "auto"
    IDE = "ide"
    SATA = "sata"
    SCSI = "scsi"
    #: A read-only virtio disk instead of a CD-ROM.
    VIRTIO = "virtio"


class Machine(enum.StrEnum):
    """QEMU's machine type (machine): i440FX or Q35."""

    PC = "pc"
    Q35 = "q35"


class NetType(enum.StrEnum):
    """What a VM's NIC is attached to (network.type)."""

    #: A host bridge such as br0.
    BRIDGE = "bridge"
    #: A libvirt network such as "default".
    NETWORK = "network"
    #: QEMU user-mode networking (no host set-up, no inbound traffic).
    USER = "user"


@dataclass(frozen=True)
class Account:
    """Credentials for root or the lab's named user. Only password *hashes*."""

    name: str
    ssh_authorized_keys: tuple[str, ...] = ()
    password_hash: str | None = None
    sudo: bool = False


@dataclass(frozen=True)
class Golden:
    """A golden image vmbuild builds itself from Debian's packages (and caches)."""

    debian: str
    size: int
    packages: tuple[str, ...]


@dataclass(frozen=True)
class Base:
    #: The golden image, absolute or relative to the profile's folder; None when
    #: vmbuild builds it (``golden``).
    image: str | None
    sha256: str | None
    format: DiskFormat
    golden: Golden | None = None

    def describe(self) -> str:
        if self.golden is not None:
            extra = f" + {len(self.golden.packages)} packages" if self.golden.packages else ""
            return f"Debian {self.golden.debian}{extra}, built by vmbuild"
        return str(self.image)


@dataclass(frozen=True)
class Network:
    type: NetType
    source: str | None
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    search: tuple[str, ...]
    #: define.sh creates the libvirt network ``source`` (isolated) when it is missing.
    create: bool = False


#: The host a VM runs on when the profile places it nowhere else: the machine deploy
#: runs on. A profile may declare it ([hosts.local]) to give it a URI or a pool.
#: The SSH host key types OpenSSH's sshd loads when its configuration names none
#: (Debian's does not), in the order it offers them: what a VM gets by default.
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")

LOCAL_HOST = "local"
#: The storage pool of a host that names none.
DEFAULT_POOL = "default"


@dataclass(frozen=True)
class HostSpec:
    """A libvirt host the profile declares ([hosts.NAME]): where some of its VMs run."""

    name: str
    #: Its libvirt URI, e.g. qemu+ssh://root@hv2.example/system.
    uri: str
    #: The libvirt storage pool the lab's volumes go into.
    pool: str


@dataclass(frozen=True)
class VmSpec:
    """One VM as the profile describes it, with the lab's defaults applied."""

    name: str
    hostname: str
    ip: ipaddress.IPv4Address
    mac: str | None
    uuid: uuid.UUID | None
    vnc_port: int | None
    vcpus: int
    memory: int
    disk_size: int | None
    disk_mode: DiskMode
    disk_format: DiskFormat
    disk_bus: Bus
    seed_bus: SeedBus
    machine: Machine
    nic_model: str
    vnc_listen: str
    vnc_keymap: str | None
    autostart: bool
    #: The host the VM runs on: a name from [hosts], or LOCAL_HOST.
    host: str
    root: Account | None
    user: Account | None
    #: Where this VM was defined, for messages: 'vm "slave3"' or 'vm[2]'.
    place: str = field(compare=False)


@dataclass(frozen=True)
class Profile:
    #: The profile file; paths in it are relative to its folder.
    path: Path
    #: sha256 of the effective settings (after --set), canonical JSON.
    digest: str
    name: str
    seed: str
    domain: str | None
    domain_type: DomainType
    vnc_base: int
    base: Base
    network: Network
    vms: tuple[VmSpec, ...]
    plugins: tuple[str, ...]
    #: The hosts the profile declares ([hosts.NAME]), in its order.
    hosts: tuple[HostSpec, ...] = ()
    #: What the bundle is made for: see Target.
    target: Target = Target.LIBVIRT_KVM
    #: The SSH host key types every VM gets, in the order sshd offers them.
    host_key_types: tuple[str, ...] = HOST_KEY_TYPES

    @property
    def folder(self) -> Path:
        return self.path.parent


# --------------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r" *([0-9]+(?:\.[0-9]+)?) *([kKmMgGtT]?)(i?B?) *")
#: More digits than any size needs (2**64 bytes has 20).
_SIZE_DIGITS = 30
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """'20G', '20GiB', '512M', '1.5T' or a byte count -> bytes. Units are binary.

    'GB' is refused rather than guessed: qemu-img and libvirt mean GiB by 'G'.
    """
    if isinstance(text, bool):
        raise ValueError("is not a size")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("is negative")
        return text
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError("is not a size like 20G, 512M or 20GiB")
    number, unit, suffix = match.groups()
    if len(number) > _SIZE_DIGITS:
        raise ValueError("is too large")
    if suffix == "B" and unit:
        raise ValueError(f"is ambiguous: write {unit.upper()} or {unit.upper()}iB (binary units)")
    if suffix == "i" or (suffix == "iB" and not unit):
        raise ValueError("is not a size like 20G, 512M or 20GiB")
    value = fractions.Fraction(number) * _SIZE_UNITS[unit.lower()]
    if value.denominator != 1:
        raise ValueError("is not a whole number of bytes")
    return int(value)


def format_size(value: int) -> str:
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


# ---------------------------------------------------------------------- checkers

# Every check is a whole-string match (re.fullmatch): "web\n" is not a name.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CRYPT = re.compile(r"\$(?:1|2[abxy]|5|6|y|gy|7|sha1)\$[./A-Za-z0-9$=,]+")
_KEYMAP = re.compile(r"[a-z]{2}(?:-[a-z]+)?")
_NIC_MODEL = re.compile(r"[a-z0-9][a-z0-9_-]*")
_NET_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
#: A libvirt URI: a scheme (qemu, qemu+ssh, qemu+tcp, ...), "://", then no spaces.
_LIBVIRT_URI = re.compile(r"[a-z][a-z0-9+]*://\S*")
_POOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators,
#: as a regex class body: none of them may appear in a profile's values.
_CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{_CONTROL_CLASS}]")
#: An authorized_keys line: [options] type base64 [comment], on one line. The
#: options field has no spaces; the comment is anything but a control character.
_SSH_KEY = re.compile(
    rf"(?:[^ {_CONTROL_CLASS}]+ +)?"
    r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)"
    r"|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    rf" +[A-Za-z0-9+/]+={{0,3}}(?: [^{_CONTROL_CLASS}]*)?"
)
_GROUP_N = re.compile(r"\{n(?::(0[0-9]+))?\}")
#: The widest {n:0W} that can still give a valid name or hostname.
_GROUP_WIDTH_MAX = 63
_INVALID: Any = object()


def is_hostname_label(text: str) -> bool:
    return bool(_HOST_LABEL.fullmatch(text))


#: Unicode's names for the control characters (unicodedata has none for them).
_CONTROL_NAMES = (
    "NULL",
    "START OF HEADING",
    "START OF TEXT",
    "END OF TEXT",
    "END OF TRANSMISSION",
    "ENQUIRY",
    "ACKNOWLEDGE",
    "BELL",
    "BACKSPACE",
    "CHARACTER TABULATION",
    "LINE FEED",
    "LINE TABULATION",
    "FORM FEED",
    "CARRIAGE RETURN",
    "SHIFT OUT",
    "SHIFT IN",
    "DATA LINK ESCAPE",
    "DEVICE CONTROL ONE",
    "DEVICE CONTROL TWO",
    "DEVICE CONTROL THREE",
    "DEVICE CONTROL FOUR",
    "NEGATIVE ACKNOWLEDGE",
    "SYNCHRONOUS IDLE",
    "END OF TRANSMISSION BLOCK",
    "CANCEL",
    "END OF MEDIUM",
    "SUBSTITUTE",
    "ESCAPE",
    "FILE SEPARATOR",
    "GROUP SEPARATOR",
    "RECORD SEPARATOR",
    "UNIT SEPARATOR",
)
_C1_NAMES = (
    "PADDING CHARACTER",
    "HIGH OCTET PRESET",
    "BREAK PERMITTED HERE",
    "NO BREAK HERE",
    "INDEX",
    "NEXT LINE",
    "START OF SELECTED AREA",
    "END OF SELECTED AREA",
    "CHARACTER TABULATION SET",
    "CHARACTER TABULATION WITH JUSTIFICATION",
    "LINE TABULATION SET",
    "PARTIAL LINE FORWARD",
    "PARTIAL LINE BACKWARD",
    "REVERSE LINE FEED",
    "SINGLE SHIFT TWO",
    "SINGLE SHIFT THREE",
    "DEVICE CONTROL STRING",
    "PRIVATE USE ONE",
    "PRIVATE USE TWO",
    "SET TRANSMIT STATE",
    "CANCEL CHARACTER",
    "MESSAGE WAITING",
    "START OF GUARDED AREA",
    "END OF GUARDED AREA",
    "START OF STRING",
    "SINGLE GRAPHIC CHARACTER INTRODUCER",
    "SINGLE CHARACTER INTRODUCER",
    "CONTROL SEQUENCE INTRODUCER",
    "STRING TERMINATOR",
    "OPERATING SYSTEM COMMAND",
    "PRIVACY MESSAGE",
    "APPLICATION PROGRAM COMMAND",
)


def control_character(text: str) -> str:
    """The first control character in ``text``, described like "U+000A LINE FEED";
    "" when there is none. Control characters are C0 (tab, newline and carriage
    return included), DEL, C1 and the line and paragraph separators U+2028/U+2029:
    anything that could end a line, or change what a terminal shows, in a file
    vmbuild writes."""
    match = _CONTROL.search(text)
    if match is None:
        return ""
    code = ord(match.group())
    if code < 0x20:
        name = _CONTROL_NAMES[code]
    elif code == 0x7F:
        name = "DELETE"
    elif code <= 0x9F:
        name = _C1_NAMES[code - 0x80]
    else:
        name = unicodedata.name(match.group())
    return f"U+{code:04X} {name}"


def escape_controls(text: str) -> str:
    """``text`` with each control character written as an escape (\\n, \\u007f),
    so that a message about it stays on one line and shows what is there."""
    short = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return _CONTROL.sub(lambda m: short.get(m.group(), f"\\u{ord(m.group()):04x}"), text)


def _find_control(value: Any) -> str:
    """control_character() of the first string inside ``value`` (lists and tables
    included, keys too) that has one; "" when none does."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found = control_character(item)
            if found:
                return found
        elif isinstance(item, list):
            pending.extend(reversed(item))
        elif isinstance(item, dict):
            for key, element in reversed(list(item.items())):
                pending.extend((element, key))
    return ""


def normalise_mac(text: str) -> str:
    return text.lower()


def _bare(value: Any) -> str:
    """Addresses as written (ip 192.168.10.300), like the other messages about them."""
    if isinstance(value, str) and value and not re.search(rf'[\s"{_CONTROL_CLASS}]', value):
        return value
    return _quote(value)


def _quote(value: Any) -> str:
    """A value as TOML-like text on one line: strings quoted, control characters
    escaped (JSON escapes the C0 ones; DEL, C1, U+2028 and U+2029 too here)."""
    if isinstance(value, (str, list, dict)):
        return escape_controls(json.dumps(value, ensure_ascii=False, default=str))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One key of a profile table: how its value is read, and what it is when absent."""

    parse: Callable[[Any], Any]
    default: Any = None
    required: bool = False
    #: How a bad value is shown in its message: quoted, or bare for addresses.
    show: Callable[[Any], str] = _quote


#: "The setting's declared default", where None may be a default of its own.
_DECLARED: Any = object()


class _Checker:
    """Collects problems; parse helpers return _INVALID after reporting one."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, place: str, message: str, hint: str = "") -> Any:
        self.problems.append(Problem(place, message, hint))
        return _INVALID

    def keys(self, table: Mapping[str, Any], place: str, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f'did you mean "{close[0]}"?' if close else ""
                self.add(place, f"unknown key {_quote(key)}", hint)

    def section(
        self,
        table: Mapping[str, Any],
        place: str,
        settings: Mapping[str, Setting],
        allowed: Iterable[str] | None = None,
    ) -> _Section:
        """Report the unknown keys of ``table`` (those not in ``allowed``, by default
        the settings' own) and return its reader."""
        self.keys(table, place, settings if allowed is None else allowed)
        return _Section(self, table, place, settings)

    def table(self, raw: Mapping[str, Any], key: str, place: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.add(place, f"{key} must be a table, not {_quote(value)}")
            return {}
        return value

    def get(
        self,
        table: Mapping[str, Any],
        key: str,
        place: str,
        setting: Setting,
        default: Any = _DECLARED,
    ) -> Any:
        """The value of ``key`` in ``table`` as ``setting`` reads it; when absent,
        ``default`` if given, else the setting's; _INVALID after reporting."""
        show = setting.show
        if key not in table:
            if setting.required:
                return self.add(place, f"{key} is required")
            return setting.default if default is _DECLARED else default
        value = table[key]
        # Checked before parsing, so that it is the one problem reported.
        if isinstance(value, list):
            for index, element in enumerate(value):
                found = _find_control(element)
                if found:
                    return self.add(
                        place,
                        f"{key} item {index + 1} {_bare(element)} "
                        f"contains a control character ({found})",
                    )
        else:
            found = _find_control(value)
            if found:
                return self.add(
                    place, f"{key} {show(value)} contains a control character ({found})"
                )
        try:
            return setting.parse(value)
        except _ItemError as err:
            return self.add(place, f"{key} item {err.index} {_bare(err.element)} {err}")
        except ValueError as err:
            return self.add(place, f"{key} {show(value)} {err}", getattr(err, "hint", ""))


@dataclass(frozen=True)
class _Section:
    """One table of the profile, read key by key as its settings say."""

    check: _Checker
    table: Mapping[str, Any]
    place: str
    settings: Mapping[str, Setting]

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def __call__(self, key: str, default: Any = _DECLARED) -> Any:
        return self.check.get(self.table, key, self.place, self.settings[key], default)


class _HintedError(ValueError):
    """A bad value whose message comes with a hint on how to write it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _ItemError(ValueError):
    """One bad element of a list, reported as 'dns item 2 "x" is not ...'."""

    def __init__(self, index: int, element: Any, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.element = element


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("is not a string")
    return value


def _nonempty(value: Any) -> str:
    text = _string(value)
    if not text.strip():
        raise ValueError("is empty")
    return text


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("is not true or false")
    return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("is not a whole number")
        if not low <= value <= high:
            raise ValueError(f"is outside {low}-{high}")
        return value

    return parse


def _choice(kind: type[E]) -> Callable[[Any], E]:
    text = _choice_of(tuple(member.value for member in kind))
    return lambda value: kind(text(value))


_UNIT_NAMES = {"M": "MiB", "G": "GiB"}


def _size(minimum: int, multiple: int, bare_units: Sequence[str]) -> Callable[[Any], int]:
    """A size of at least ``minimum`` bytes, a whole number of ``multiple``. A bare
    number too small to be meant as bytes gets a hint with the first of
    ``bare_units`` ("M", "G") that makes it a valid size."""

    def parse(value: Any) -> int:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError("is not a size like 20G, 512M or 20GiB")
        size = parse_size(value)
        if size < minimum:
            message = f"is smaller than {format_size(minimum)}"
            if isinstance(value, int) and value > 0:
                unit = next(
                    (u for u in bare_units if value * _SIZE_UNITS[u.lower()] >= minimum),
                    bare_units[-1],
                )
                raise _HintedError(
                    message,
                    f'a bare number counts bytes: write "{value}{unit}" '
                    f"for {value} {_UNIT_NAMES[unit]}",
                )
            raise ValueError(message)
        if size % multiple:
            raise ValueError(f"is not a whole number of {format_size(multiple)} units")
        return size

    return parse


def _ipv4(value: Any) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError("is not an IPv4 address")
    if value == "TODO":  # what vmbuild import writes where it could not read an address
        raise ValueError("is a TODO left by vmbuild import: give the VM's static address")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError("is not an IPv4 address") from None


def _subnet(value: Any) -> ipaddress.IPv4Network:
    if value == "TODO":  # left by vmbuild import, like an ip
        raise ValueError(
            "is a TODO left by vmbuild import: give the network of the VMs' addresses, "
            "like 192.168.10.0/24"
        )
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("is not an IPv4 network like 192.168.10.0/24")
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise ValueError("is not an IPv4 network like 192.168.10.0/24") from None
    if net.prefixlen > 30:
        raise ValueError("is too small for a lab (at most /30)")
    if net.network_address != ipaddress.IPv4Interface(value).ip:
        raise ValueError(f"has host bits set; the network is {net}")
    return net


def _mac(value: Any) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise ValueError("is not a MAC address like 52:54:00:12:34:56")
    first = int(value[:2], 16)
    if first & 1:
        raise ValueError("is a multicast address; the first octet must be even")
    if value.replace(":", "") == "0" * 12:
        raise ValueError("is the all-zero address")
    return normalise_mac(value)


def _uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValueError("is not a UUID")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValueError("is not a UUID") from None


def _hostname(value: Any) -> str:
    text = _string(value)
    if not is_hostname_label(text):
        raise ValueError(
            "is not a valid hostname (RFC 1123: 1-63 letters, digits or '-', "
            "not starting or ending with '-')"
        )
    return text.lower()


def _domain(value: Any) -> str:
    text = _string(value).rstrip(".")
    labels = text.split(".")
    if len(text) > 253 or not all(is_hostname_label(label) for label in labels):
        raise ValueError("is not a DNS domain like lab.example")
    return text.lower()


def _string_list(item: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def parse(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise ValueError("is not a list")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except ValueError as err:
                raise _ItemError(index + 1, element, str(err)) from None
        return tuple(out)

    return parse


def _matching(
    pattern: re.Pattern[str], message: str, clean: Callable[[str], str] = str
) -> Callable[[Any], str]:
    """A string that ``pattern`` matches whole once ``clean`` has tidied it;
    ``message`` says what it is not."""

    def parse(value: Any) -> str:
        text = clean(_string(value))
        if not pattern.fullmatch(text):
            raise ValueError(message)
        return text

    return parse


#: Names debootstrap and apt accept; golden.py checks its recipes with the same.
DEBIAN_RELEASE = re.compile(r"[a-z][a-z0-9-]{1,30}")
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")

_ssh_key = _matching(
    _SSH_KEY,
    "is not an SSH public key like 'ssh-ed25519 AAAA... comment'",
    lambda text: text.strip(" "),
)
_password_hash = _matching(
    _CRYPT,
    "is not a crypt(3) password hash; make one with 'openssl passwd -6' or "
    "'mkpasswd -m yescrypt' (plain passwords are never written into images)",
)
_keymap = _matching(_KEYMAP, "is not a keymap like en-us or de")
_nic_model = _matching(_NIC_MODEL, "is not a NIC model like virtio or e1000")
_debian_release = _matching(DEBIAN_RELEASE, "is not a Debian release name like bookworm")
_package = _matching(DEBIAN_PACKAGE, "is not a Debian package name")
_host_name = _matching(
    _HOST_LABEL,
    "is not a host name (1-63 letters, digits or '-', not starting or ending with '-')",
)
_libvirt_uri = _matching(
    _LIBVIRT_URI, "is not a libvirt URI like qemu:///system or qemu+ssh://root@host/system"
)
_pool = _matching(
    _POOL,
    "is not a storage pool name (letters, digits, '_', '.' or '-', "
    "starting with a letter or digit)",
)
_sha256_pin = _matching(
    _SHA256,
    "is not a sha256 digest (64 hex digits)",
    lambda text: text.removeprefix("sha256:"),
)


def _vm_name(value: Any) -> str:
    text = _string(value)
    if _too_wide(text) or not _VM_NAME.fullmatch(_GROUP_N.sub("0", text)):
        raise ValueError(
            "is not a valid name (1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit)"
        )
    return text


def _host_key_types(value: Any) -> tuple[str, ...]:
    types = _string_list(_choice_of(HOST_KEY_TYPES))(value)
    if not types:
        raise ValueError("is empty: a VM needs at least one host key for sshd to start")
    repeated = sorted({kind for kind in types if types.count(kind) > 1})
    if repeated:
        raise ValueError(f"names {', '.join(repeated)} more than once")
    return types


def _choice_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            extra = f'; did you mean "{close[0]}"?' if close else ""
            raise ValueError(f"is not one of {', '.join(options)}{extra}")
        return str(value)

    return parse


def _unchecked(value: Any) -> Any:
    """A value checked later: a group's hostname, once {n} is expanded."""
    return value


# -------------------------------------------------------------------- the schema

_TOP = {"plugins": Setting(_string_list(_nonempty), ())}
_LAB = {
    "name": Setting(_vm_name, required=True),
    # Absent, the lab's name.
    "seed": Setting(_nonempty),
    "domain": Setting(_domain),
    "domain_type": Setting(_choice(DomainType), DomainType.KVM),
    "target": Setting(_choice(Target)),
    "vnc_base": Setting(_integer(5900, 65000), 5900),
    "host_key_types": Setting(_host_key_types, HOST_KEY_TYPES),
}
_BASE = {
    "image": Setting(_nonempty),
    "sha256": Setting(_sha256_pin),
    "format": Setting(_choice(DiskFormat), DiskFormat.QCOW2),
    "debian": Setting(_debian_release),
    "size": Setting(_size(1 << 30, 1 << 20, ("G",)), 4 << 30),
    "packages": Setting(_string_list(_package), ()),
}
_NETWORK = {
    "type": Setting(_choice(NetType), NetType.BRIDGE),
    "source": Setting(_nonempty),
    "create": Setting(_boolean, False),
    "subnet": Setting(_subnet, required=True, show=_bare),
    "gateway": Setting(_ipv4, show=_bare),
    "dns": Setting(_string_list(_ipv4), ()),
    # Absent, [lab.domain] (or none without a domain).
    "search": Setting(_string_list(_domain)),
}
#: Keys that [defaults] sets for every VM and any [[vm]] may override.
_VM_SETTINGS = {
    "vcpus": Setting(_integer(1, 4096), 2),
    # virt-install takes a bare memory in MiB and a bare disk size in GiB.
    "memory": Setting(_size(16 << 20, 1 << 20, ("M", "G")), 2 << 30),
    "disk_size": Setting(_size(1 << 20, 1 << 20, ("G",))),
    "disk_mode": Setting(_choice(DiskMode), DiskMode.OVERLAY),
    "disk_format": Setting(_choice(DiskFormat), DiskFormat.QCOW2),
    "disk_bus": Setting(_choice(Bus), Bus.VIRTIO),
    "seed_bus": Setting(_choice(SeedBus), SeedBus.AUTO),
    "machine": Setting(_choice(Machine), Machine.PC),
    "nic_model": Setting(_nic_model, "virtio"),
    "vnc_listen": Setting(lambda value: str(_ipv4(value)), "127.0.0.1"),
    "vnc_keymap": Setting(_keymap),
    "autostart": Setting(_boolean, False),
    "host": Setting(_host_name, LOCAL_HOST),
}
#: A [[vm]] entry: its own keys, then every [defaults] key.
_VM = {
    "name": Setting(_vm_name, required=True),
    "hostname": Setting(_unchecked),
    "ip": Setting(_ipv4, required=True, show=_bare),
    "mac": Setting(_mac, show=_bare),
    "uuid": Setting(_uuid),
    "vnc_port": Setting(_integer(5900, 65535)),
    "count": Setting(_integer(1, 4096), 1),
    "first": Setting(_integer(0, 1_000_000), 1),
    **_VM_SETTINGS,
}
#: [user] and a VM's user; [root] takes only the credentials.
_ACCOUNT = {
    "name": Setting(_string, required=True),
    "ssh_authorized_keys": Setting(_string_list(_ssh_key), ()),
    "password_hash": Setting(_password_hash),
    # root's is always false: its login needs no sudo.
    "sudo": Setting(_boolean, True),
}
_ACCOUNT_TABLES = ("root", "user")
#: Each [hosts.NAME]: a libvirt host some VMs run on. (NAME itself is read as this.)
_HOST = {
    "uri": Setting(_libvirt_uri, required=True),
    "pool": Setting(_pool, DEFAULT_POOL),
}
_HOST_NAME = Setting(_host_name)

_LIBVIRT_TARGETS = {DomainType.KVM: Target.LIBVIRT_KVM, DomainType.QEMU: Target.LIBVIRT_QEMU}


def _target(check: Any, target: Any, domain_type: Any, domain_type_given: bool) -> Any:
    """lab.target, with lab.domain_type as its older spelling for the libvirt targets:
    ``domain_type = "qemu"`` means ``target = "libvirt-qemu"``, and the two must agree."""
    if not isinstance(domain_type, DomainType):
        return _INVALID
    implied = _LIBVIRT_TARGETS[domain_type]
    if target is None:
        return implied
    if not isinstance(target, Target):
        return _INVALID
    if target.is_libvirt_kvm_or_qemu and domain_type_given and target is not implied:
        return check.add(
            "lab",
            f'target "{target}" and domain_type "{domain_type}" disagree',
            hint=f'give one of them: target = "{implied}" is domain_type = "{domain_type}"',
        )
    return target


#: Every table of a profile ("profile" is its top level) and the settings it takes:
#: what the loader reads, and what docs/profile.md documents.
SETTINGS: dict[str, Mapping[str, Setting]] = {
    "profile": _TOP,
    "lab": _LAB,
    "base": _BASE,
    "network": _NETWORK,
    #: A table of tables: [hosts.NAME] for any host name, each with these keys.
    "hosts": _HOST,
    "defaults": _VM_SETTINGS,
    "root": {key: _ACCOUNT[key] for key in ("ssh_authorized_keys", "password_hash")},
    "user": _ACCOUNT,
    "vm": _VM,
}
#: The tables a table holds.
_SUBTABLES = {"profile": tuple(t for t in SETTINGS if t != "profile"), "vm": _ACCOUNT_TABLES}
#: Every key each table takes: its settings, then its tables.
PROFILE_KEYS: dict[str, tuple[str, ...]] = {
    table: (*settings, *_SUBTABLES.get(table, ())) for table, settings in SETTINGS.items()
}


def _account(check: _Checker, raw: Mapping[str, Any], place: str, root: bool) -> Account | None:
    table = check.section(raw, place, _ACCOUNT, PROFILE_KEYS["root"] if root else None)
    if root:
        name = "root"
    else:
        name = table("name")
        if name is not _INVALID and (not _USER_NAME.fullmatch(name) or name == "root"):
            name = check.add(
                place,
                f"name {_quote(name)} is not a user name (lower-case letters, digits, "
                "'_' or '-', starting with a letter or '_', not root)",
            )
    keys = table("ssh_authorized_keys")
    password = table("password_hash")
    sudo = table("sudo", not root)
    if _INVALID in (name, keys, password, sudo):
        return None
    return Account(name, keys, password, sudo)


def _too_wide(pattern: str) -> bool:
    """A {n:0W} wider than any name can be (and too wide to expand)."""
    return any(
        len(width) > 3 or int(width) > _GROUP_WIDTH_MAX
        for width in _GROUP_N.findall(pattern)
        if width
    )


def _expand_name(pattern: str, number: int) -> str:
    def repl(match: re.Match[str]) -> str:
        width = match.group(1)
        return str(number).zfill(int(width)) if width else str(number)

    return _GROUP_N.sub(repl, pattern)


def _parse_hosts(check: _Checker, raw_hosts: Mapping[str, Any]) -> list[HostSpec]:
    """The [hosts.NAME] tables, in the profile's order."""
    hosts = []
    for name, entry in raw_hosts.items():
        place = f"hosts.{name if is_hostname_label(name) else _quote(name)}"
        # The name is a key, read as if it were the value of one: "name".
        valid_name = check.get({"name": name}, "name", place, _HOST_NAME)
        if not isinstance(entry, dict):
            check.add(place, f"must be a table ([{place}])")
            continue
        host = check.section(entry, place, _HOST)
        uri = host("uri")
        pool = host("pool")
        if _INVALID not in (valid_name, uri, pool):
            hosts.append(HostSpec(name, uri, pool))
    return hosts


def _check_declared(check: _Checker, place: str, host: Any, declared: Sequence[str]) -> None:
    """Report ``host`` (a VM's or [defaults]' host) unless [hosts] declares it or it is
    the local host."""
    if host is _INVALID or host == LOCAL_HOST or host in declared:
        return
    known = f"declared hosts: {', '.join(declared)}" if declared else "no hosts are declared"
    check.add(
        place,
        f"host {_quote(host)} is not declared",
        f'{known}; to add it: [hosts.{host}] uri = "..."',
    )


def _vm_place(entry: Mapping[str, Any], index: int) -> str:
    name = entry.get("name")
    return f"vm {_quote(name)}" if isinstance(name, str) and name else f"vm[{index + 1}]"


def _parse_vms(
    check: _Checker,
    raw_vms: Any,
    defaults: _Section,
    accounts: Mapping[str, Account | None],
    hosts: Sequence[str],
) -> list[VmSpec]:
    """The VMs, groups expanded; ``hosts`` are the names [hosts] declares."""
    if not isinstance(raw_vms, list) or not raw_vms:
        check.add("vm", "the lab has no VMs", "add at least one [[vm]] table")
        return []
    default_values = {key: defaults(key) for key in _VM_SETTINGS}
    if "host" in defaults:
        _check_declared(check, "defaults", default_values["host"], hosts)
    vms: list[VmSpec] = []
    for index, entry in enumerate(raw_vms):
        place = _vm_place(entry, index) if isinstance(entry, dict) else f"vm[{index + 1}]"
        if not isinstance(entry, dict):
            check.add(place, "must be a table ([[vm]])")
            continue
        vm = check.section(entry, place, _VM, PROFILE_KEYS["vm"])
        values = {key: vm(key, default_values[key]) for key in _VM_SETTINGS}
        if "host" in entry:
            _check_declared(check, place, values["host"], hosts)
        own_accounts: dict[str, Account | None] = {}
        for who in _ACCOUNT_TABLES:
            if who in entry:
                sub = check.table(entry, who, place)
                own_accounts[who] = _account(check, sub, f"{place}.{who}", who == "root")
            else:
                own_accounts[who] = accounts.get(who)
        name = vm("name")
        count = vm("count")
        first = vm("first")
        hostname_raw = vm("hostname")
        ip = vm("ip")
        mac = vm("mac")
        uid = vm("uuid")
        vnc_port = vm("vnc_port")
        if _INVALID in (name, count, first, hostname_raw, ip, mac, uid, vnc_port):
            continue
        if (
            values["disk_mode"] is DiskMode.OVERLAY
            and ("disk_format" in entry or "disk_format" in defaults)
            and isinstance(values["disk_format"], DiskFormat)
            and values["disk_format"] is not DiskFormat.QCOW2
        ):
            check.add(
                place,
                f"disk_format {values['disk_format'].value} needs disk_mode copy",
                "an overlay is always qcow2",
            )
        if "first" in entry and not _GROUP_N.search(name):
            check.add(place, "first is only used with a name containing {n}")
        if count > 1 or "{" in name:
            if not _GROUP_N.search(name):
                check.add(
                    place,
                    f"name {_quote(name)} needs {{n}} when count is {count}",
                    'for example name = "slave{n}"',
                )
                continue
            for key in ("mac", "uuid"):
                if key in entry and count > 1:
                    check.add(
                        place,
                        f"{key} cannot be given for a group of {count} VMs",
                        "leave it out to derive one per VM, or split the group",
                    )
            if count > 1 and ("mac" in entry or "uuid" in entry):
                continue
            if "{" in _GROUP_N.sub("", name) or "}" in _GROUP_N.sub("", name):
                check.add(place, f"name {_quote(name)} has braces other than {{n}}")
                continue
        # The last name has the most digits: {n} can only make names longer.
        longest = _expand_name(name, first + count - 1)
        if not _VM_NAME.fullmatch(longest):
            check.add(place, f"name {_quote(name)} gives {longest}, longer than 63 characters")
            continue
        for offset in range(count):
            number = first + offset
            vm_name = _expand_name(name, number)
            vm_place = f"vm {_quote(vm_name)}"
            if hostname_raw is None:
                hostname_text: Any = vm_name
                key_for_message = "name"
            else:
                hostname_text = (
                    _expand_name(hostname_raw, number)
                    if isinstance(hostname_raw, str) and not _too_wide(hostname_raw)
                    else hostname_raw
                )
                key_for_message = "hostname"
            try:
                hostname = _hostname(hostname_text)
            except ValueError as err:
                hint = "set hostname for this VM" if key_for_message == "name" else ""
                check.add(vm_place, f"{key_for_message} {_quote(hostname_text)} {err}", hint)
                continue
            if int(ip) + offset > int(ipaddress.IPv4Address("255.255.255.255")):
                check.add(vm_place, f"ip of VM {offset + 1} of the group is out of range")
                continue
            if vnc_port is not None and vnc_port + offset > 65535:
                check.add(
                    vm_place,
                    f"vnc_port of VM {offset + 1} of the group would be "
                    f"{vnc_port + offset}, above 65535",
                )
                continue
            vm_ip = ip + offset
            vms.append(
                VmSpec(
                    name=vm_name,
                    hostname=hostname,
                    ip=vm_ip,
                    mac=mac,
                    uuid=uid,
                    vnc_port=None if vnc_port is None else vnc_port + offset,
                    root=own_accounts["root"],
                    user=own_accounts["user"],
                    place=vm_place,
                    **values,
                )
            )
    return vms


def _check_network_addresses(check: _Checker, network: Network, vms: Sequence[VmSpec]) -> None:
    subnet = network.subnet
    reserved = {
        subnet.network_address: "the subnet's network address",
        subnet.broadcast_address: "the subnet's broadcast address",
    }
    if network.gateway is not None:
        if network.gateway not in subnet:
            check.add("network", f"gateway {network.gateway} is outside the subnet {subnet}")
        elif network.gateway in reserved:
            check.add("network", f"gateway {network.gateway} is {reserved[network.gateway]}")
        else:
            reserved[network.gateway] = "the gateway address"
    for vm in vms:
        if vm.ip not in subnet:
            check.add(vm.place, f"ip {vm.ip} is outside the subnet {subnet}")
        elif vm.ip in reserved:
            check.add(vm.place, f"ip {vm.ip} is {reserved[vm.ip]}")


def find_duplicates(
    check_add: Callable[[str, str, str], Any],
    vms: Sequence[Any],
    what: str,
    key: Callable[[Any], Any],
) -> None:
    """Report every VM whose key(vm) equals an earlier VM's (None is skipped)."""
    seen: dict[Any, Any] = {}
    for vm in vms:
        value = key(vm)
        if value is None:
            continue
        norm = value.lower() if isinstance(value, str) else value
        if norm in seen:
            check_add(vm.place, f"{what} {value} is also used by {seen[norm].place}", "")
        else:
            seen[norm] = vm


def json_digest(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON: the same data, the same digest anywhere."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------- overrides


def _override_value(text: str) -> Any:
    """--set values are TOML values when they parse as one, otherwise strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # TOMLDecodeError, or too deep or too long
        return text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> list[Problem]:
    """Apply KEY=VALUE overrides by dotted path; [[vm]] entries by index or name."""
    problems = []
    for item in overrides:
        place = f"--set {escape_controls(item)}"
        key, sep, text = item.partition("=")
        found = control_character(item)
        if found:
            what = f"value {_quote(text)}" if sep and not control_character(key) else "key"
            if what == "key":
                what = f"key {_quote(key if sep else item)}"
            problems.append(Problem(place, f"{what} contains a control character ({found})"))
            continue
        if not sep or not key.strip():
            problems.append(Problem(place, "expected KEY=VALUE, e.g. lab.domain_type=qemu"))
            continue
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                match = [
                    element
                    for i, element in enumerate(node)
                    if str(i + 1) == part
                    or (isinstance(element, dict) and element.get("name") == part)
                ]
                if not match:
                    problems.append(
                        Problem(
                            place,
                            f"{'.'.join(parts[: depth + 1])} matches no entry",
                            "name a [[vm]] by its name or its position, from 1",
                        )
                    )
                    break
                node = match[0]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                problems.append(Problem(place, f"{'.'.join(parts[:depth])} is not a table"))
                break
        else:
            if isinstance(node, dict):
                node[parts[-1]] = _override_value(text)
            else:
                problems.append(Problem(place, f"{'.'.join(parts[:-1])} is not a table"))
    return problems


# ------------------------------------------------------------------------- load


def read_profile(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError("no such profile", place=str(path)) from None
    except IsADirectoryError:
        raise UserError("is a folder, not a profile", place=str(path)) from None
    except OSError as err:
        raise UserError(f"cannot read the profile: {err.strerror}", place=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", place=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"not valid TOML: {escape_controls(str(err))}", place=str(path)) from None
    except ValueError:  # Python's limit on the digits of an integer
        raise UserError("not valid TOML: a number has too many digits", place=str(path)) from None
    except RecursionError:
        raise UserError(
            "not valid TOML: arrays or tables nested too deeply", place=str(path)
        ) from None


def load_profile(
    path: Path, overrides: Sequence[str] = (), base_image: Path | None = None
) -> Profile:
    """Parse and check a profile. Raises ProfileError listing every problem."""
    raw = read_profile(path)
    return parse_profile(raw, path, overrides, base_image)


def parse_profile(
    raw: dict[str, Any],
    path: Path,
    overrides: Sequence[str] = (),
    base_image: Path | None = None,
) -> Profile:
    check = _Checker()
    check.problems.extend(apply_overrides(raw, overrides))
    if base_image is not None:
        base_table = raw.setdefault("base", {})
        if isinstance(base_table, dict):
            base_table["image"] = str(base_image.absolute())
            for key in ("sha256", "debian", "size", "packages"):
                base_table.pop(key, None)
    digest = json_digest(raw)
    top = check.section(raw, "profile", _TOP, PROFILE_KEYS["profile"])

    lab = check.section(check.table(raw, "lab", "lab"), "lab", _LAB)
    name = lab("name")
    seed = lab("seed", name)
    domain = lab("domain")
    domain_type = lab("domain_type")
    target = _target(check, lab("target"), domain_type, "domain_type" in lab)
    if target is Target.LIBVIRT_QEMU:
        domain_type = DomainType.QEMU
    vnc_base = lab("vnc_base")
    host_key_types = lab("host_key_types")
    if isinstance(name, str) and "{" in name:
        check.add("lab", f"name {_quote(name)} may not contain braces")

    base = check.section(check.table(raw, "base", "base"), "base", _BASE)
    golden = None
    if "image" in base and "debian" in base:
        image = check.add("base", "give either image or debian, not both")
    elif "image" in base:
        image = base("image")
        for key in ("size", "packages"):
            if key in base:
                check.add("base", f'{key} is only used with debian = "<release>"')
    elif "debian" in base:
        image = None
        release = base("debian")
        size = base("size")
        packages = base("packages")
        if "sha256" in base:
            check.add(
                "base",
                "sha256 cannot pin an image vmbuild builds itself",
                "its sha256 is recorded in the bundle's manifest",
            )
        if _INVALID not in (release, size, packages):
            golden = Golden(release, size, packages)
    else:
        image = check.add(
            "base",
            "image is required",
            'add image = "golden.qcow2" (or debian = "bookworm") under [base], or use --base',
        )
    pin = base("sha256")
    base_format = base("format")

    net = check.section(check.table(raw, "network", "network"), "network", _NETWORK)
    net_type = net("type")
    source = net("source")
    if net_type in (NetType.BRIDGE, NetType.NETWORK) and source is None:
        what = "bridge" if net_type is NetType.BRIDGE else "libvirt network"
        check.add("network", f"source is required for type {net_type.value} (the {what} name)")
    if net_type is NetType.USER and source is not None:
        check.add("network", "source is not used with type user; remove it")
    create = net("create")
    if create is True and net_type is not NetType.NETWORK:
        check.add(
            "network",
            f"create = true makes a libvirt network, but type is {net_type.value}",
            hint='use type = "network", or drop create',
        )
    if isinstance(source, str) and not _NET_SOURCE.fullmatch(source):
        check.add("network", f"source {_quote(source)} is not a bridge or network name")
    subnet = net("subnet")
    gateway = net("gateway")
    dns = net("dns")
    search = net("search")
    if search is None and isinstance(domain, str):
        search = (domain,)

    raw_hosts = check.table(raw, "hosts", "hosts")
    hosts = _parse_hosts(check, raw_hosts)

    defaults = check.section(check.table(raw, "defaults", "defaults"), "defaults", _VM_SETTINGS)
    accounts: dict[str, Account | None] = {}
    for who in _ACCOUNT_TABLES:
        accounts[who] = (
            _account(check, check.table(raw, who, who), who, who == "root") if who in raw else None
        )

    plugins = top("plugins")
    vms = _parse_vms(check, raw.get("vm"), defaults, accounts, tuple(raw_hosts))

    network = None
    if _INVALID not in (net_type, source, create, subnet, gateway, dns, search):
        network = Network(net_type, source, subnet, gateway, dns, search or (), create)
        _check_network_addresses(check, network, vms)

    find_duplicates(check.add, vms, "name", lambda vm: vm.name)
    find_duplicates(check.add, vms, "hostname", lambda vm: vm.hostname)
    find_duplicates(check.add, vms, "ip", lambda vm: vm.ip)
    find_duplicates(check.add, vms, "mac", lambda vm: vm.mac)
    find_duplicates(check.add, vms, "uuid", lambda vm: vm.uuid)
    find_duplicates(check.add, vms, "vnc_port", lambda vm: vm.vnc_port)

    if check.problems:
        raise ProfileError(str(path), check.problems)
    assert network is not None
    return Profile(
        path=path,
        digest=digest,
        name=name,
        seed=seed,
        domain=domain,
        domain_type=domain_type,
        vnc_base=vnc_base,
        base=Base(image, None if pin is None else pin.lower(), base_format, golden),
        network=network,
        vms=tuple(vms),
        plugins=plugins,
        hosts=tuple(hosts),
        target=target,
        host_key_types=host_key_types,
    )
