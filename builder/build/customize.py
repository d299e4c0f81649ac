"""Write each VM's identity into its disk: one libguestfs appliance for the lab.

The golden image and the VMs' disks go onto one handle (in chunks for big labs),
the golden image is inspected once, read-only, and each disk is mounted in turn
inside the appliance and edited with the operations the plugins planned for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vmbuild.build.base import BaseImage
from vmbuild.errors import BuildError
from vmbuild.guest.appliance import Appliance
from vmbuild.guest.diskops import Context, Operation, ordered, run_operations
from vmbuild.guest.files import GuestFiles
from vmbuild.guest.inspect import device_map_for, inspect_golden, mount_all
from vmbuild.host.hostkeys import HostKeySet
from vmbuild.log import detail, info, warn
from vmbuild.model.facts import GuestFacts, NetStack
from vmbuild.model.plan import Plan, VmPlan

if TYPE_CHECKING:
    from vmbuild.plugins.manager import Plugins

#: Drives per appliance launch. One handle takes up to 255; past a few dozen the
#: appliance's memory and udev settle time grow, so big labs go in chunks.
DRIVES_PER_LAUNCH = int(os.environ.get("VMBUILD_DRIVES_PER_LAUNCH", "24"))


@dataclass(frozen=True)
class Edit:
    """One disk for the appliance: the VM, its disk in the staging folder, and
    whether it was built before and only needs the lab's new hosts table."""

    vm: VmPlan
    disk: Path
    hosts_only: bool = False


@dataclass(frozen=True)
class Planned:
    """The plan with the golden image's facts and every VM's disk operations in it,
    as plan.json records it, and the operations themselves."""

    plan: Plan
    operations: Mapping[str, tuple[Operation, ...]]

    @property
    def facts(self) -> GuestFacts:
        assert self.plan.guest is not None
        return self.plan.guest


def plan_operations(lab: Plan, facts: GuestFacts, plugins: Plugins) -> Planned:
    """Every plugin's operations for every VM, combined in reverse call order (as
    ``Plugins.disk_operations`` does), then ordered by phase: the one
    call of ``vmbuild_disk_operations`` per VM in a build."""
    operations = {
        vm.name: tuple(ordered(plugins.disk_operations(lab, vm, facts))) for vm in lab.vms
    }
    return Planned(
        replace(
            lab,
            guest=facts,
            vms=tuple(
                replace(vm, operations=tuple(op.to_data() for op in operations[vm.name]))
                for vm in lab.vms
            ),
        ),
        operations,
    )


def check_family(facts: GuestFacts) -> None:
    """An image vmbuild cannot write a network configuration into."""
    if facts.os_type != "linux":
        raise BuildError(
            f"the golden image runs {facts.product_name} ({facts.os_type}); "
            "vmbuild writes identities into Linux guests only"
        )
    if facts.network is NetStack.UNKNOWN:
        if facts.cloud_init:
            warn(
                f"{facts.product_name}: no known network stack (ifupdown, netplan, "
                "NetworkManager, systemd-networkd, ifcfg); the static IP comes only "
                "from cloud-init's network-config in the seed"
            )
        else:
            raise BuildError(
                f"{facts.product_name}: vmbuild knows no way to set a static IP in this "
                "guest: it has none of ifupdown, netplan, NetworkManager, "
                "systemd-networkd or ifcfg, and no cloud-init",
            )


def inspect_only(base: BaseImage) -> GuestFacts:
    """Inspect the golden image alone, read-only (for ``vmbuild plan --inspect``)."""
    with Appliance() as app:
        index = app.add(base.path, base.format.value, readonly=True)
        app.launch()
        return inspect_golden(app, index)


def customize(
    lab: Plan,
    base: BaseImage,
    plugins: Plugins,
    edits: Sequence[Edit],
    host_keys: Callable[[], Mapping[str, HostKeySet]],
) -> Planned:
    """Edit every disk of ``edits``. The golden image is inspected first, and the
    operations for the whole lab are planned from what it holds; ``host_keys`` is
    waited for only once the appliance runs, so the keys can be made while it boots."""
    hosts_only = {edit.vm.name for edit in edits if edit.hosts_only}
    disks = {edit.vm.name: edit.disk for edit in edits}
    vms = [edit.vm for edit in edits]
    planned: Planned | None = None
    warned: set[str] = set()
    chunk_size = max(1, DRIVES_PER_LAUNCH - 1)
    chunks = [list(vms[i : i + chunk_size]) for i in range(0, len(vms), chunk_size)]
    for number, chunk in enumerate(chunks, start=1):
        with Appliance() as app:
            golden = app.add(base.path, base.format.value, readonly=True)
            drives = {
                vm.name: app.add(disks[vm.name], vm.disk.format.value, readonly=False)
                for vm in chunk
            }
            part = f" (part {number} of {len(chunks)})" if len(chunks) > 1 else ""
            info(f"  starting the appliance with {len(drives)} disks{part} [{app.accel}]")
            app.launch()
            if planned is None:
                facts = inspect_golden(app, golden)
                info(f"  golden image: {facts.family}")
                check_family(facts)
                planned = plan_operations(lab, facts, plugins)
            keys = host_keys()
            for vm in chunk:
                where = f"{vm.place} (disk {disks[vm.name]})"
                ops = planned.operations[vm.name]
                if vm.name in hosts_only:
                    ops = tuple(op for op in ops if op.hosts_only)
                info(f"  {vm.name}: {len(ops)} operations")
                mapping = device_map_for(app, planned.facts, golden, drives[vm.name])
                try:
                    mount_all(
                        app,
                        planned.facts.mounts,
                        readonly=False,
                        device_map=mapping,
                        types=planned.facts.filesystems,
                    )
                except BuildError as err:
                    raise BuildError(err.message, place=where) from None
                context = Context(keys.get(vm.name, {}))
                guest = GuestFiles(app)
                run_operations(guest, ops, context, where, detail)
                for note in guest.skipped:
                    if note not in warned:  # the golden image's, so the same in every clone
                        warned.add(note)
                        warn(f"{vm.place}: {note}")
                app.call(f"{where}: unmounting", app.handle.umount_all)
            app.finish("writing the disks out")
    assert planned is not None
    return planned
