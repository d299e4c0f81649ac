"""One more login on every VM: a user with an SSH key and no password, no sudo."""

from __future__ import annotations

from vmbuild.guest.diskops import AuthorizedKeys, EnsureUser, Operation
from vmbuild.model.facts import GuestFacts
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.plugins.hookspecs import hookimpl

USER = "audit"
KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C audit@lab",
)


@hookimpl
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation]:
    return [
        EnsureUser(user=USER, sudo=False),
        AuthorizedKeys(user=USER, keys=KEYS),
    ]
