"""A guest's own network files, read back: the static IPv4 address each one gives an
interface, with its prefix, gateway and DNS, or that it takes its address by DHCP.

Pure: each reader takes a file's text (from a guest that may be hostile) and never
raises; what it cannot make sense of it leaves out. The formats are those vmbuild
writes for each guest family (``vmbuild_plugins.network``): ifupdown's
``/etc/network/interfaces``, netplan YAML, NetworkManager keyfiles,
systemd-networkd ``.network`` files and ifcfg files, as people write them too.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import yaml
from vmbuild.model.profile import is_hostname_label, normalise_mac

_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


@dataclass(frozen=True)
class InterfaceConfig:
    """What one file says about one interface."""

    #: The guest file it was read from.
    source: str
    #: The interface as the file names it (eth0, ens3), if it does.
    interface: str | None
    #: The MAC it is matched to, if the file matches one.
    mac: str | None
    #: None when the interface takes its address by DHCP.
    address: IPv4Interface | None
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    search: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuestNet:
    """What a guest's own files say of its name and address."""

    hostname: str | None = None
    #: The DNS domain of its fully qualified name (/etc/hostname, /etc/hosts).
    domain: str | None = None
    address: IPv4Interface | None = None
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    search: tuple[str, ...] = ()
    #: The guest file the address came from.
    source: str = ""
    #: Where the guest takes its address by DHCP instead, when it has no static one.
    dhcp: str = ""


def _address(text: str, mask: str = "") -> IPv4Interface | None:
    """ip, ip/prefix or ip with a netmask (dotted or a prefix length); None if not IPv4."""
    text = text.strip()
    try:
        if "/" not in text and mask.strip():
            return IPv4Interface(f"{text}/{mask.strip()}")
        return IPv4Interface(text)
    except ValueError:
        return None


def _ip(text: Any) -> IPv4Address | None:
    if not isinstance(text, str):
        return None
    try:
        return IPv4Address(text.strip())
    except ValueError:
        return None


def _ips(words: Any) -> tuple[IPv4Address, ...]:
    found = (_ip(word) for word in words if isinstance(word, str))
    return tuple(ip for ip in found if ip is not None)


def _domains(words: Any) -> tuple[str, ...]:
    names = [word.strip().rstrip(".").lower() for word in words if isinstance(word, str)]
    return tuple(name for name in names if is_domain(name))


def is_domain(text: str) -> bool:
    return 0 < len(text) <= 253 and all(is_hostname_label(label) for label in text.split("."))


def _mac(text: Any) -> str | None:
    if isinstance(text, str) and _MAC.fullmatch(text.strip()):
        return normalise_mac(text.strip())
    return None


def _is_default(destination: Any) -> bool:
    return destination in ("default", "0.0.0.0/0", "0/0", "0.0.0.0")


# ------------------------------------------------------------------- ifupdown

#: Lines that end an ifupdown stanza (interfaces(5)).
_IFUPDOWN_TOP = ("iface", "mapping", "auto", "source", "source-directory", "rename")


def ifupdown(text: str, source: str) -> list[InterfaceConfig]:
    """/etc/network/interfaces (or a file it sources): each ``iface NAME inet static``
    or ``inet dhcp`` stanza."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    found: list[InterfaceConfig] = []
    stanza: dict[str, list[str]] | None = None
    name = method = ""

    def close() -> None:
        if stanza is None or name == "lo":
            return
        if method == "dhcp":
            found.append(InterfaceConfig(source, name, None, None))
            return
        if method != "static" or not stanza.get("address"):
            return
        address = _address(stanza["address"][0], " ".join(stanza.get("netmask", [""])[:1]))
        if address is None:
            return
        dns = [w for value in stanza.get("dns-nameservers", []) for w in value.split()]
        search = [w for value in stanza.get("dns-search", []) for w in value.split()]
        hwaddress = stanza.get("hwaddress", [""])[0].split()
        found.append(
            InterfaceConfig(
                source,
                name,
                _mac(hwaddress[-1]) if hwaddress else None,
                address,
                _ip(stanza.get("gateway", [""])[0]),
                _ips(dns),
                _domains(search),
            )
        )

    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] in _IFUPDOWN_TOP or words[0].startswith("allow-"):
            close()
            stanza = None
            if words[0] == "iface" and len(words) >= 4 and words[2] == "inet":
                stanza, name, method = {}, words[1], words[3]
            continue
        if stanza is not None:
            stanza.setdefault(words[0], []).append(" ".join(words[1:]))
    close()
    return found


# -------------------------------------------------------------------- netplan


def _netplan_address(entry: Any) -> IPv4Interface | None:
    if isinstance(entry, dict):  # newer netplan: {"192.0.2.10/24": {"label": ...}}
        entry = next(iter(entry), None)
    if not isinstance(entry, str) or "/" not in entry:
        return None
    return _address(entry)


def netplan(text: str, source: str) -> list[InterfaceConfig]:
    """A netplan YAML file: each ethernet (bridge, bond, vlan) with addresses or dhcp4."""
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        return []
    network = data.get("network") if isinstance(data, dict) else None
    if not isinstance(network, dict):
        return []
    found = []
    for kind in ("ethernets", "bridges", "bonds", "vlans"):
        entries = network.get(kind)
        if not isinstance(entries, dict):
            continue
        for name, conf in entries.items():
            if not isinstance(conf, dict):
                continue
            match = conf.get("match")
            mac = _mac(match.get("macaddress")) if isinstance(match, dict) else None
            mac = mac or _mac(conf.get("macaddress"))
            addresses = conf.get("addresses")
            address = None
            if isinstance(addresses, list):
                address = next(filter(None, map(_netplan_address, addresses)), None)
            if address is None:
                if conf.get("dhcp4") in (True, "true", "yes", "on"):
                    found.append(InterfaceConfig(source, str(name), mac, None))
                continue
            gateway = _ip(conf.get("gateway4"))
            routes = conf.get("routes")
            if gateway is None and isinstance(routes, list):
                for route in routes:
                    if isinstance(route, dict) and _is_default(route.get("to")):
                        gateway = _ip(route.get("via"))
                        if gateway is not None:
                            break
            servers = conf.get("nameservers")
            servers = servers if isinstance(servers, dict) else {}
            dns = servers.get("addresses")
            search = servers.get("search")
            found.append(
                InterfaceConfig(
                    source,
                    str(name),
                    mac,
                    address,
                    gateway,
                    _ips(dns) if isinstance(dns, list) else (),
                    _domains(search) if isinstance(search, list) else (),
                )
            )
    return found


# ----------------------------------------------------------- ini-like formats


def _ini(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of each ``key=value`` line, in order; repeated keys and
    sections kept (systemd-networkd has many [Address] sections)."""
    out = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if sep:
            out.append((section, key.strip(), value.strip()))
    return out


def networkmanager(text: str, source: str) -> list[InterfaceConfig]:
    """A NetworkManager keyfile (system-connections/*.nmconnection): an ethernet
    connection with ``method=manual`` and ``address1=``, or ``method=auto``."""
    values: dict[tuple[str, str], str] = {}
    for section, key, value in _ini(text):
        values.setdefault((section, key), value)
    kind = values.get(("connection", "type"), "")
    if kind not in ("ethernet", "802-3-ethernet", "bridge", "bond", "vlan"):
        return []
    name = values.get(("connection", "interface-name")) or None
    mac = _mac(
        values.get(("ethernet", "mac-address")) or values.get(("802-3-ethernet", "mac-address"))
    )
    method = values.get(("ipv4", "method"), "auto")
    if method == "auto":
        return [InterfaceConfig(source, name, mac, None)]
    if method != "manual":
        return []
    address = gateway = None
    for key in ("address1", "addresses1", "address", "addresses"):
        text_value = values.get(("ipv4", key))
        if not text_value:
            continue
        if ";" in text_value and "/" not in text_value:  # old: ip;prefix;gateway;
            parts = text_value.split(";")
            address = _address(parts[0], parts[1] if len(parts) > 1 else "")
            gateway = _ip(parts[2]) if len(parts) > 2 else None
        else:
            first = text_value.split(";")[0]
            where, _, via = first.partition(",")
            address, gateway = _address(where), _ip(via) if via else None
        if address is not None:
            break
    if address is None:
        return []
    gateway = _ip(values.get(("ipv4", "gateway"), "")) or gateway
    dns = values.get(("ipv4", "dns"), "").replace(",", ";").split(";")
    search = values.get(("ipv4", "dns-search"), "").replace(",", ";").split(";")
    return [InterfaceConfig(source, name, mac, address, gateway, _ips(dns), _domains(search))]


def networkd(text: str, source: str) -> list[InterfaceConfig]:
    """A systemd-networkd .network file: Address= (in [Network] or an [Address]
    section), Gateway=, DNS=, Domains=, or DHCP=."""
    name = mac = None
    address = gateway = None
    dns: list[str] = []
    search: list[str] = []
    dhcp = False
    for section, key, value in _ini(text):
        if section == "Match" and key == "Name" and value.split():
            name = value.split()[0]
        elif section == "Match" and key in ("MACAddress", "PermanentMACAddress"):
            mac = mac or next(filter(None, map(_mac, value.split())), None)
        elif section in ("Network", "Address") and key == "Address" and address is None:
            found = _address(value)
            address = found if found is not None and "/" in value else None
        elif section in ("Network", "Route") and key == "Gateway" and gateway is None:
            gateway = _ip(value)
        elif section == "Network" and key == "DNS":
            dns += value.split()
        elif section == "Network" and key == "Domains":
            search += [word.lstrip("~") for word in value.split()]
        elif section == "Network" and key == "DHCP":
            dhcp = value.lower() in ("yes", "true", "ipv4", "on", "1")
    if address is None:
        return [InterfaceConfig(source, name, mac, None)] if dhcp else []
    return [InterfaceConfig(source, name, mac, address, gateway, _ips(dns), _domains(search))]


def _shell_values(text: str) -> dict[str, str]:
    """KEY=value lines of a shell variables file (ifcfg, /etc/sysconfig/network)."""
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z0-9_]+", key.strip()):
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            words = [value.strip().strip("\"'")]
        values[key.strip()] = " ".join(words)
    return values


def ifcfg(text: str, source: str, network: str = "") -> list[InterfaceConfig]:
    """An ifcfg file (RHEL, CentOS: /etc/sysconfig/network-scripts/ifcfg-*), with
    ``network``, the text of /etc/sysconfig/network, for a GATEWAY given there."""
    values = _shell_values(text)
    name = values.get("DEVICE") or values.get("NAME") or None
    if name == "lo":
        return []
    mac = _mac(values.get("HWADDR"))
    proto = values.get("BOOTPROTO", "none").lower()
    if proto in ("dhcp", "bootp"):
        return [InterfaceConfig(source, name, mac, None)]
    address = None
    for suffix in ("", "0", "1"):
        ip = values.get(f"IPADDR{suffix}")
        if ip:
            mask = values.get(f"PREFIX{suffix}") or values.get(f"NETMASK{suffix}") or ""
            address = _address(ip, mask)
            if address is not None:
                break
    if address is None:
        return []
    gateway = _ip(values.get("GATEWAY") or values.get("GATEWAY0") or "")
    if gateway is None:
        gateway = _ip(_shell_values(network).get("GATEWAY", ""))
    dns = [values[key] for key in ("DNS1", "DNS2", "DNS3") if key in values]
    search = values.get("DOMAIN", "").split()
    return [InterfaceConfig(source, name, mac, address, gateway, _ips(dns), _domains(search))]


# ------------------------------------------------------------- name and DNS


def resolv_conf(text: str) -> tuple[tuple[IPv4Address, ...], tuple[str, ...]]:
    """The nameservers (not loopback ones: a local stub resolver is no lab DNS) and
    the search list of /etc/resolv.conf."""
    dns: list[IPv4Address] = []
    search: tuple[str, ...] = ()
    for raw in text.splitlines():
        words = raw.split()
        if len(words) >= 2 and words[0] == "nameserver":
            ip = _ip(words[1])
            if ip is not None and not ip.is_loopback:
                dns.append(ip)
        elif len(words) >= 2 and words[0] in ("search", "domain"):
            search = _domains(words[1:])
    return tuple(dns), search


def hostname_file(text: str) -> tuple[str | None, str | None]:
    """/etc/hostname: (host name, DNS domain), either None when the file gives none.
    A name with dots is a fully qualified one: its first label and the rest."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    label, _, domain = first.lower().rstrip(".").partition(".")
    if not is_hostname_label(label) or label == "localhost":
        return None, None
    return label, domain if is_domain(domain) else None


def hosts_domain(text: str, hostname: str) -> str | None:
    """The DNS domain /etc/hosts gives ``hostname`` (``127.0.1.1 web.lab.example web``)."""
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        names = [word.lower() for word in words[1:]]
        if len(words) < 2 or (_ip(words[0]) is None and not _is_ipv6(words[0])):
            continue
        for name in names:
            label, _, domain = name.partition(".")
            if label == hostname and is_domain(domain):
                return domain
    return None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
