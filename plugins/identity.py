"""Each clone's own identity inside its disk: hostname, hosts, machine-id, SSH host
keys, accounts, and none of the golden image's leftovers.

A built-in plugin, written only against vmbuild's public hooks.
"""

from __future__ import annotations

from vmbuild.guest.diskops import (
    AuthorizedKeys,
    EnsureUser,
    HostKeys,
    MachineId,
    Operation,
    PasswordHash,
    RemovePaths,
    WriteFile,
)
from vmbuild.host.hostkeys import KEY_TYPES
from vmbuild.model.facts import GuestFacts
from vmbuild.model.hosts import hosts_file
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.plugins.hookspecs import hookimpl

#: What a golden VM leaves behind that no clone may inherit.
LEFTOVERS = (
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/udev/rules.d/70-persistent-cd.rules",
    "/var/lib/dhcp/*.leases",
    "/var/lib/dhcp/*.lease",
    "/var/lib/dhclient/*.lease*",
    "/var/lib/NetworkManager/*.lease",
    "/var/lib/NetworkManager/dhclient-*",
    "/var/lib/NetworkManager/timestamps",
    "/var/lib/systemd/random-seed",
    "/var/lib/cloud/*",
    "/var/log/cloud-init*.log",
)


@hookimpl
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation]:
    ops: list[Operation] = [
        RemovePaths(
            "Removing the golden image's leftovers: udev net rules, DHCP leases, "
            "cloud-init state, random seed",
            patterns=LEFTOVERS,
        ),
        WriteFile(
            f"Setting the hostname: {vm.hostname}", path="/etc/hostname", content=vm.hostname + "\n"
        ),
        WriteFile(
            f"Writing /etc/hosts with the lab's {len(lab.vms)} hosts",
            path="/etc/hosts",
            content=hosts_file(lab),
        ),
        MachineId(f"Setting the machine-id: {vm.machine_id}", value=vm.machine_id),
        HostKeys(f"Installing new SSH host keys: {', '.join(KEY_TYPES)}", types=KEY_TYPES),
    ]
    if vm.user is not None:
        user = vm.user
        ops.append(
            EnsureUser(
                f"Adding the user {user.name}" + (" with sudo" if user.sudo else ""),
                user=user.name,
                sudo=user.sudo,
            )
        )
    for account in (vm.root, vm.user):
        if account is None:
            continue
        if account.ssh_authorized_keys:
            count = len(account.ssh_authorized_keys)
            ops.append(
                AuthorizedKeys(
                    f"Setting {count} authorized SSH keys for {account.name}",
                    user=account.name,
                    keys=account.ssh_authorized_keys,
                )
            )
        if account.password_hash:
            ops.append(
                PasswordHash(
                    f"Setting the password of {account.name}",
                    user=account.name,
                    password_hash=account.password_hash,
                )
            )
    return ops
