"""Write each VM's identity into its disk: one libguestfs appliance for the lab.

The golden image and the VMs' disks go onto one handle (in chunks for big labs),
the golden image is inspected once, read-only, and each disk is mounted in turn
inside the appliance and edited with the operations the plugins planned for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vmbuild.build.base import BaseImage
from vmbuild.errors import BuildError
from vmbuild.guest.appliance import Appliance
from vmbuild.guest.diskops import Context, GuestFiles, Operation, ordered, run_operations
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
class Customized:
    facts: GuestFacts
    operations: Mapping[str, tuple[Operation, ...]]


def plan_operations(
    lab: Plan, vm: VmPlan, facts: GuestFacts, plugins: Plugins
) -> tuple[Operation, ...]:
    """Every plugin's operations for one VM, in plugin order, then by phase."""
    return tuple(ordered(plugins.disk_operations(lab, vm, facts)))


def with_operations(lab: Plan, facts: GuestFacts, plugins: Plugins) -> Plan:
    """The plan with the golden image's facts and every VM's disk operations in it."""
    return replace(
        lab,
        guest=facts,
        vms=tuple(
            replace(
                vm,
                operations=tuple(op.to_data() for op in plan_operations(lab, vm, facts, plugins)),
            )
            for vm in lab.vms
        ),
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
    vms: Sequence[VmPlan],
    disks: Mapping[str, Path],
    base: BaseImage,
    plugins: Plugins,
    host_keys: Callable[[], Mapping[str, HostKeySet]],
    hosts_only: Set[str] = frozenset(),
) -> Customized:
    """Edit every VM's disk; ``host_keys`` is waited for only once the appliance runs,
    so the keys can be made while it boots. Disks named in ``hosts_only`` were built
    before and only get the lab's new /etc/hosts."""
    facts: GuestFacts | None = None
    operations: dict[str, tuple[Operation, ...]] = {}
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
            if facts is None:
                facts = inspect_golden(app, golden)
                info(f"  golden image: {facts.family}")
                check_family(facts)
            keys = host_keys()
            for vm in chunk:
                where = f"{vm.place} (disk {disks[vm.name]})"
                ops = plan_operations(lab, vm, facts, plugins)
                operations[vm.name] = ops
                if vm.name in hosts_only:
                    ops = tuple(op for op in ops if getattr(op, "path", None) == "/etc/hosts")
                info(f"  {vm.name}: {len(ops)} operations")
                mapping = device_map_for(app, facts, golden, drives[vm.name])
                try:
                    mount_all(
                        app,
                        facts.mounts,
                        readonly=False,
                        device_map=mapping,
                        types=facts.filesystems,
                    )
                except BuildError as err:
                    raise BuildError(f"{where}: {err.message}") from None
                context = Context(keys.get(vm.name, {}))
                guest = GuestFiles(app)
                run_operations(guest, ops, context, where, detail)
                for note in guest.skipped:
                    if note not in warned:  # the golden image's, so the same in every clone
                        warned.add(note)
                        warn(f"{vm.place}: {note}")
                app.call(f"{where}: unmounting", app.handle.umount_all)
            app.finish("writing the disks out")
    assert facts is not None
    return Customized(facts, operations)
