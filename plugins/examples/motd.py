"""A message of the day in every VM's disk: which lab and machine you logged in to."""

from __future__ import annotations

from vmbuild.guest.diskops import Operation, WriteFile
from vmbuild.model.facts import GuestFacts
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.plugins.hookspecs import hookimpl


def motd(lab: Plan, vm: VmPlan) -> str:
    return f"{vm.fqdn} ({vm.ip}): VM {vm.index} of {len(lab.vms)} in lab {lab.lab}\n"


@hookimpl
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation]:
    return [WriteFile(path="/etc/motd", content=motd(lab, vm))]
