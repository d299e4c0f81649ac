"""The static IP written natively for each guest family, bound to the VM's MAC.

ifupdown (Debian), netplan (Ubuntu), NetworkManager keyfiles (Fedora, RHEL 9+),
systemd-networkd and ifcfg (RHEL/CentOS 7-8). The NIC is found by its MAC, never by
a guessed name: a systemd .link file (or netplan's set-name) names it lan0.
A built-in plugin, written only against vmbuild's public hooks.
"""

from __future__ import annotations

import ipaddress
import uuid

from vmbuild.guest.diskops import Operation, RemovePaths, WriteFile
from vmbuild.model.facts import GuestFacts, NetStack
from vmbuild.model.netconfig import ethernet_v2
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.output.seed import dump_yaml
from vmbuild.plugins.hookspecs import hookimpl

IFACE = "lan0"
_HEADER = "# Written by vmbuild for {name}: {ip}/{prefix} on the NIC with MAC {mac}.\n"


def _header(vm: VmPlan, comment: str = "#") -> str:
    return _HEADER.format(name=vm.name, ip=vm.ip, prefix=vm.prefix, mac=vm.mac).replace(
        "#", comment, 1
    )


def _link(vm: VmPlan) -> WriteFile:
    return WriteFile(
        path=f"/etc/systemd/network/10-vmbuild-{IFACE}.link",
        content=f"{_header(vm)}[Match]\nMACAddress={vm.mac}\n\n[Link]\nName={IFACE}\n",
    )


def _configure(
    vm: VmPlan, replaces: tuple[str, ...], path: str, lines: list[str], mode: int = 0o644
) -> list[Operation]:
    """Name the NIC by its MAC, remove the golden image's own configuration
    (``replaces``) and write ours to ``path``."""
    return [
        _link(vm),
        RemovePaths(patterns=replaces),
        WriteFile(path=path, content=_header(vm) + "\n".join(lines) + "\n", mode=mode),
    ]


def _netmask(vm: VmPlan) -> str:
    return str(ipaddress.IPv4Network(f"0.0.0.0/{vm.prefix}").netmask)


def _resolv_conf(lab: Plan, vm: VmPlan) -> list[Operation]:
    net = lab.network
    if not net.dns and not net.search:
        return []
    lines = [f"nameserver {server}" for server in net.dns]
    if net.search:
        lines.append("search " + " ".join(net.search))
    return [
        WriteFile(
            path="/etc/resolv.conf",
            content=_header(vm) + "\n".join(lines) + "\n",
            skip_if_link=True,
        )
    ]


def _ifupdown(lab: Plan, vm: VmPlan) -> list[Operation]:
    net = lab.network
    stanza = [f"auto {IFACE}", f"iface {IFACE} inet static", f"    address {vm.ip}/{vm.prefix}"]
    if net.gateway:
        stanza.append(f"    gateway {net.gateway}")
    if net.dns:
        stanza.append(f"    dns-nameservers {' '.join(net.dns)}")
    if net.search:
        stanza.append(f"    dns-search {' '.join(net.search)}")
    lines = ["source /etc/network/interfaces.d/*", "", "auto lo", "iface lo inet loopback", ""]
    return [
        *_configure(
            vm,
            ("/etc/network/interfaces.d/50-cloud-init*",),
            "/etc/network/interfaces",
            lines + stanza,
        ),
        *_resolv_conf(lab, vm),
    ]


def _netplan(lab: Plan, vm: VmPlan) -> list[Operation]:
    ethernet = {**ethernet_v2(lab, vm), "set-name": IFACE}
    text = _header(vm) + dump_yaml({"network": {"version": 2, "ethernets": {IFACE: ethernet}}})
    return [
        RemovePaths(
            patterns=("/etc/netplan/*.yaml", "/etc/netplan/*.yml"),
        ),
        WriteFile(
            path="/etc/netplan/50-vmbuild.yaml",
            content=text,
            mode=0o600,
        ),
    ]


def _networkmanager(lab: Plan, vm: VmPlan) -> list[Operation]:
    net = lab.network
    connection_id = uuid.uuid5(uuid.NAMESPACE_URL, f"vmbuild:{lab.seed}:{vm.name}:{IFACE}")
    address = f"{vm.ip}/{vm.prefix}" + (f",{net.gateway}" if net.gateway else "")
    lines = [
        "[connection]",
        f"id={IFACE}",
        f"uuid={connection_id}",
        "type=ethernet",
        "autoconnect=true",
        "",
        "[ethernet]",
        f"mac-address={vm.mac.upper()}",
        "",
        "[ipv4]",
        "method=manual",
        f"address1={address}",
    ]
    if net.dns:
        lines.append("dns=" + ";".join(net.dns) + ";")
    if net.search:
        lines.append("dns-search=" + ";".join(net.search) + ";")
    lines += ["", "[ipv6]", "method=ignore"]
    return _configure(
        vm,
        ("/etc/NetworkManager/system-connections/*", "/etc/sysconfig/network-scripts/ifcfg-e*"),
        f"/etc/NetworkManager/system-connections/{IFACE}.nmconnection",
        lines,
        mode=0o600,
    )


def _networkd(lab: Plan, vm: VmPlan) -> list[Operation]:
    net = lab.network
    lines = ["[Match]", f"MACAddress={vm.mac}", "", "[Network]", f"Address={vm.ip}/{vm.prefix}"]
    if net.gateway:
        lines.append(f"Gateway={net.gateway}")
    lines += [f"DNS={server}" for server in net.dns]
    if net.search:
        lines.append("Domains=" + " ".join(net.search))
    return _configure(
        vm,
        ("/etc/systemd/network/*.network",),
        f"/etc/systemd/network/10-vmbuild-{IFACE}.network",
        lines,
    )


def _ifcfg(lab: Plan, vm: VmPlan) -> list[Operation]:
    net = lab.network
    lines = [
        f"DEVICE={IFACE}",
        f"NAME={IFACE}",
        f"HWADDR={vm.mac}",
        "TYPE=Ethernet",
        "BOOTPROTO=none",
        "ONBOOT=yes",
        f"IPADDR={vm.ip}",
        f"PREFIX={vm.prefix}",
        f"NETMASK={_netmask(vm)}",
    ]
    if net.gateway:
        lines.append(f"GATEWAY={net.gateway}")
    lines += [f"DNS{index}={server}" for index, server in enumerate(net.dns, start=1)]
    if net.search:
        lines.append(f'DOMAIN="{" ".join(net.search)}"')
    lines += ["DEFROUTE=yes", "IPV6INIT=no"]
    return [
        *_configure(
            vm,
            ("/etc/sysconfig/network-scripts/ifcfg-e*",),
            f"/etc/sysconfig/network-scripts/ifcfg-{IFACE}",
            lines,
        ),
        *_resolv_conf(lab, vm),
    ]


RENDERERS = {
    NetStack.IFUPDOWN: _ifupdown,
    NetStack.NETPLAN: _netplan,
    NetStack.NETWORKMANAGER: _networkmanager,
    NetStack.NETWORKD: _networkd,
    NetStack.IFCFG: _ifcfg,
}


@hookimpl
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation]:
    render = RENDERERS.get(guest.network)
    if render is None:
        return []
    ops = render(lab, vm)
    if guest.cloud_init:
        # The native file above already says it; cloud-init would otherwise render the
        # seed's network-config a second time, under its own interface names.
        ops.append(
            WriteFile(
                path="/etc/cloud/cloud.cfg.d/99-vmbuild-network.cfg",
                content="# Written by vmbuild: the network is configured natively.\n"
                "network:\n  config: disabled\n",
            )
        )
    return ops
