"""A second NIC on another bridge, with a static address of its own.

Each VM gets a NIC on ``BRIDGE`` with a MAC derived from the lab and the VM (so it is
stable across rebuilds) and the address ``FIRST`` + position in ``SUBNET``. The NIC is
added to the domain XML, to cloud-init's network-config (matched by MAC), and, on
ifupdown guests, natively to the disk: a systemd .link file names it ``storage0`` and
``/etc/network/interfaces.d/storage0`` configures it. On other guest families the
built-in network plugin turns cloud-init's network configuration off, so extend
``vmbuild_disk_operations`` below for them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from typing import Any

from vmbuild.errors import Problem
from vmbuild.guest.diskops import Operation, WriteFile
from vmbuild.model.facts import GuestFacts, NetStack
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.model.profile import Profile
from vmbuild.plugins.hookspecs import hookimpl

BRIDGE = "br-storage"
SUBNET = ipaddress.IPv4Network("203.0.113.0/24")
FIRST = 10
IFACE = "storage0"


def _nic(vm: VmPlan) -> dict[str, str]:
    data: dict[str, str] = vm.extra["second_nic"]
    return data


@hookimpl
def vmbuild_check_profile(profile: Profile) -> list[Problem]:
    last = FIRST + len(profile.vms) - 1
    if last >= SUBNET.num_addresses - 1:
        return [Problem("plugin second_nic", f"{len(profile.vms)} VMs do not fit in {SUBNET}")]
    return []


@hookimpl
def vmbuild_plan_vm(lab: Plan, vm: VmPlan) -> dict[str, Any]:
    digest = hashlib.sha256(f"second-nic\0{lab.seed}\0{vm.name}".encode()).digest()
    mac = "52:54:00" + "".join(f":{byte:02x}" for byte in digest[:3])
    ip = SUBNET.network_address + FIRST + vm.index - 1
    return {"second_nic": {"bridge": BRIDGE, "mac": mac, "ip": f"{ip}/{SUBNET.prefixlen}"}}


@hookimpl
def vmbuild_domain_xml(lab: Plan, vm: VmPlan, domain: ET.Element) -> None:
    nic = _nic(vm)
    devices = domain.find("devices")
    assert devices is not None
    interface = ET.Element("interface", type="bridge")
    ET.SubElement(interface, "source", bridge=nic["bridge"])
    ET.SubElement(interface, "mac", address=nic["mac"])
    ET.SubElement(interface, "model", type=vm.nic_model)
    children = list(devices)
    last = max(i for i, child in enumerate(children) if child.tag == "interface")
    devices.insert(last + 1, interface)


@hookimpl
def vmbuild_network_config(lab: Plan, vm: VmPlan) -> dict[str, Any]:
    nic = _nic(vm)
    ethernet = {
        "match": {"macaddress": nic["mac"]},
        "set-name": IFACE,
        "dhcp4": False,
        "dhcp6": False,
        "addresses": [nic["ip"]],
    }
    return {"ethernets": {IFACE: ethernet}}


@hookimpl
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation]:
    if guest.network is not NetStack.IFUPDOWN:
        return []
    nic = _nic(vm)
    return [
        WriteFile(
            path=f"/etc/systemd/network/10-vmbuild-{IFACE}.link",
            content=f"[Match]\nMACAddress={nic['mac']}\n\n[Link]\nName={IFACE}\n",
        ),
        WriteFile(
            path=f"/etc/network/interfaces.d/{IFACE}",
            content=f"auto {IFACE}\niface {IFACE} inet static\n    address {nic['ip']}\n",
        ),
    ]
