"""Each clone's own identity inside its disk: hostname, hosts, machine-id, SSH host
keys, accounts, and none of the golden image's leftovers.

A built-in plugin, written only against vmbuild's public hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmbuild.guest.diskops import (
    AuthorizedKeys,
    EnsureUser,
    HostKeys,
    MachineId,
    Operation,
    PasswordHash,
    RemovePaths,
    WriteFile,
    listed,
)
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


@dataclass(frozen=True)
class Hostname(WriteFile):
    """/etc/hostname, holding this VM's name: the summary says which."""

    path: str = "/etc/hostname"

    def describe(self) -> str:
        return f"Setting the hostname: {self.content.strip()}"


@dataclass(frozen=True)
class Leftovers(RemovePaths):
    """What the golden VM left behind (``LEFTOVERS``): the summary says whose."""

    patterns: tuple[str, ...] = LEFTOVERS

    def describe(self) -> str:
        return f"Removing the golden image's leftovers: {listed(self.patterns)}"


@hookimpl
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation]:
    ops: list[Operation] = [
        Leftovers(),
        Hostname(content=vm.hostname + "\n"),
        WriteFile(path="/etc/hosts", content=hosts_file(lab), hosts_only=True),
        MachineId(value=vm.machine_id),
        HostKeys(types=lab.host_key_types),
    ]
    if vm.user is not None:
        ops.append(EnsureUser(user=vm.user.name, sudo=vm.user.sudo))
    for account in (vm.root, vm.user):
        if account is None:
            continue
        if account.ssh_authorized_keys:
            ops.append(AuthorizedKeys(user=account.name, keys=account.ssh_authorized_keys))
        if account.password_hash:
            ops.append(PasswordHash(user=account.name, password_hash=account.password_hash))
    return ops
