"""cloud-init NoCloud data for every VM: hostname, users, hosts and a static IP by MAC.

A built-in plugin, written only against vmbuild's public hooks.
"""

from __future__ import annotations

from typing import Any

from vmbuild.model.netconfig import ethernet_v2
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.model.profile import HOST_KEY_TYPES, Account
from vmbuild.plugins.hookspecs import hookimpl

NAME = "cloudinit"


def _user_entry(account: Account) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": account.name}
    if account.name != "root":
        entry["shell"] = "/bin/bash"
        if account.sudo:
            entry["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    if account.password_hash:
        entry["lock_passwd"] = False
        entry["hashed_passwd"] = account.password_hash
    if account.ssh_authorized_keys:
        entry["ssh_authorized_keys"] = list(account.ssh_authorized_keys)
    return entry


@hookimpl
def vmbuild_user_data(lab: Plan, vm: VmPlan) -> dict[str, Any]:
    data: dict[str, Any] = {
        "hostname": vm.hostname,
        "fqdn": vm.fqdn,
        "prefer_fqdn_over_hostname": False,
        # vmbuild writes /etc/hosts into the disk with the lab's hosts; cloud-init's
        # template would replace it with this VM's own name at every boot.
        "manage_etc_hosts": False,
        "ssh_pwauth": False,
        # vmbuild installs this VM's own host keys and publishes them in the bundle's
        # known_hosts; cloud-init must keep them rather than make new ones.
        "ssh_deletekeys": False,
    }
    if lab.host_key_types != HOST_KEY_TYPES:
        # Nor make, at first boot, the types the lab left out.
        data["ssh_genkeytypes"] = list(lab.host_key_types)
    users = [account for account in (vm.root, vm.user) if account is not None]
    if users:
        data["users"] = [_user_entry(account) for account in users]
    if vm.root is not None:
        data["disable_root"] = False
    return data


@hookimpl
def vmbuild_network_config(lab: Plan, vm: VmPlan) -> dict[str, Any]:
    return {"version": 2, "ethernets": {"lan0": ethernet_v2(lab, vm)}}
