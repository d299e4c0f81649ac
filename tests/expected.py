"""What vmbuild is expected to write into a guest, written out here so that tests do
not take it from vmbuild itself."""

from __future__ import annotations

#: Where each network stack's static configuration for the lab NIC (lan0) goes.
NATIVE = {
    "ifupdown": "/etc/network/interfaces",
    "netplan": "/etc/netplan/50-vmbuild.yaml",
    "networkmanager": "/etc/NetworkManager/system-connections/lan0.nmconnection",
    "networkd": "/etc/systemd/network/10-vmbuild-lan0.network",
    "ifcfg": "/etc/sysconfig/network-scripts/ifcfg-lan0",
}
