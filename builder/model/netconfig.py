"""A VM's static address as a network-config version 2 ethernet entry: the one shape
both cloud-init's seed and netplan read, matched by MAC, never by interface name."""

from __future__ import annotations

from typing import Any

from vmbuild.model.plan import Plan, VmPlan


def ethernet_v2(lab: Plan, vm: VmPlan) -> dict[str, Any]:
    net = lab.network
    ethernet: dict[str, Any] = {
        "match": {"macaddress": vm.mac},
        "dhcp4": False,
        "dhcp6": False,
        "addresses": [f"{vm.ip}/{vm.prefix}"],
    }
    if net.gateway:
        ethernet["routes"] = [{"to": "0.0.0.0/0", "via": net.gateway}]
    nameservers: dict[str, Any] = {}
    if net.dns:
        nameservers["addresses"] = list(net.dns)
    if net.search:
        nameservers["search"] = list(net.search)
    if nameservers:
        ethernet["nameservers"] = nameservers
    return ethernet
