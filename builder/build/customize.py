"""Write each VM's identity into its disk: one libguestfs appliance for the lab.

The golden image and the VMs' disks go onto one handle (in chunks for big labs),
the golden image is inspected once, read-only, and each disk is mounted in turn
inside the appliance and edited with the operations the plugins planned for it.
What the new disks hold before they are edited is the golden image's, looked at
once: the first clone's listings and reads serve the others.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vmbuild.build.base import BaseImage
from vmbuild.errors import BuildError
from vmbuild.guest.appliance import APPLIANCE_CPUS, POLL, Appliance, ApplianceStopped
from vmbuild.guest.diskops import Context, Operation, listed, ordered, run_operations
from vmbuild.guest.files import GuestFiles, Pristine
from vmbuild.guest.inspect import device_map_for, inspect_golden, mount_all
from vmbuild.host.hostkeys import HostKeyMaker
from vmbuild.log import detail, info, warn
from vmbuild.model.facts import GuestFacts, NetStack
from vmbuild.model.plan import Plan, VmPlan

if TYPE_CHECKING:
    from vmbuild.plugins.manager import Plugins

#: Drives on one appliance, the golden image's included. A handle takes up to 255
#: (libguestfs's virtio-scsi targets); each drive adds about 0.2 s to a launch under
#: TCG (the appliance's udev probing, then guestfsd's), evenly, so bigger launches
#: cost nothing more per disk and fewer of them save about 5 s each.
MAX_DRIVES = 255
DRIVES_PER_LAUNCH = min(MAX_DRIVES, int(os.environ.get("VMBUILD_DRIVES_PER_LAUNCH", "128")))
#: Appliances that run at once: by default one per APPLIANCE_CPUS cores, at most one
#: per APPLIANCE_MEMORY of available memory, and none with fewer than MIN_SHARE
#: disks (a launch costs more than it saves on a few). Under TCG an appliance keeps
#: its two vCPUs busy, launching and editing alike: on 2 cores two appliances of one
#: vCPU each took as long as one of two (32 disks: 40.8 s and 39.4 s). The
#: --appliances option, or VMBUILD_APPLIANCES, overrides it.
MAX_APPLIANCES = 8
MIN_SHARE = 4
APPLIANCE_MEMORY = 1 << 30
#: A wait for host keys worth telling: the appliance stood idle that long.
KEYS_WAIT_SHOWN = 0.5


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


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def appliance_count(disks: int, requested: int | None = None) -> int:
    """How many appliances edit ``disks`` disks at once: ``requested`` if given (at
    most one per disk), else from the cores and the memory (see MAX_APPLIANCES)."""
    if requested is None and os.environ.get("VMBUILD_APPLIANCES", "").strip():
        requested = int(os.environ["VMBUILD_APPLIANCES"])
    if requested is not None:
        return max(1, min(requested, disks))
    memory = available_memory()
    by_memory = MAX_APPLIANCES if memory is None else memory // APPLIANCE_MEMORY
    by_cores = (os.cpu_count() or 1) // max(1, APPLIANCE_CPUS)
    return max(1, min(by_cores, by_memory, disks // MIN_SHARE, MAX_APPLIANCES))


def shares(edits: Sequence[Edit], count: int) -> list[list[list[Edit]]]:
    """The edits dealt out to ``count`` appliances in turn (so that the first VMs'
    host keys, made first, are wanted first), each share cut into launches of at
    most DRIVES_PER_LAUNCH drives, the golden image's included."""
    per_launch = max(1, DRIVES_PER_LAUNCH - 1)
    out = []
    for number in range(count):
        share = list(edits[number::count])
        out.append([share[i : i + per_launch] for i in range(0, len(share), per_launch)])
    return [launches for launches in out if launches]


class _Lab:
    """What the appliances of one build share: the golden image's facts and the
    lab's operations, planned by the first appliance to inspect it, and the stop
    that a failure in any of them sets."""

    def __init__(self, lab: Plan, plugins: Plugins, keys: HostKeyMaker) -> None:
        self.lab = lab
        self.plugins = plugins
        self.keys = keys
        self.stop = threading.Event()
        #: What the fresh clones hold before they are written to: the golden image's
        #: files, looked at once for the whole lab.
        self.pristine = Pristine()
        self._planned: Planned | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    def plan(self, app: Appliance, golden: int) -> Planned:
        """The lab's operations; the first caller inspects the golden image, the
        others wait for it (or for the stop)."""
        if self._lock.acquire(blocking=False):
            try:
                if self._planned is None:
                    facts = inspect_golden(app, golden)
                    info(f"  golden image: {facts.family}")
                    check_family(facts)
                    self._planned = plan_operations(self.lab, facts, self.plugins)
            finally:
                self._ready.set()
        while not self._ready.wait(POLL):
            if self.stop.is_set():
                raise ApplianceStopped("stopped: another appliance failed")
        if self._planned is None:
            raise ApplianceStopped("stopped: the golden image could not be inspected")
        return self._planned

    def warn_once(self, place: str, note: str) -> None:
        with self._warn_lock:
            if note in self._warned:  # the golden image's, so the same in every clone
                return
            self._warned.add(note)
        warn(f"{place}: {note}")


def _edit(app: Appliance, lab: _Lab, planned: Planned, golden: int, edit: Edit, drive: int) -> None:
    """One disk: mounted in the appliance, its operations run, unmounted."""
    vm = edit.vm
    where = f"{vm.place} (disk {edit.disk})"
    ops = planned.operations[vm.name]
    if edit.hosts_only:
        ops = tuple(op for op in ops if op.hosts_only)
    mapping = device_map_for(app, planned.facts, golden, drive)
    try:
        mount_all(
            app,
            planned.facts.mounts,
            readonly=False,
            device_map=mapping,
            types=planned.facts.filesystems,
        )
    except ApplianceStopped:
        raise
    except BuildError as err:
        raise BuildError(err.message, place=where) from None
    context = Context({} if edit.hosts_only else lab.keys.keys(vm.name))
    # A refreshed disk was written by an earlier build: it is no clone to share with.
    guest = GuestFiles(app, None if edit.hosts_only else lab.pristine)
    run_operations(guest, ops, context, where, detail)
    for note in guest.skipped:
        lab.warn_once(vm.place, note)
    app.call(f"{where}: unmounting", app.handle.umount_all)


def _run_share(
    lab: _Lab, base: BaseImage, launches: list[list[Edit]], name: str, cpus: int
) -> Planned | None:
    """One appliance's share of the lab, launch after launch."""
    planned = None
    for number, launch in enumerate(launches, start=1):
        with Appliance(cpus=cpus, stop=lab.stop) as app:
            golden = app.add(base.path, base.format.value, readonly=True)
            drives = [
                app.add(edit.disk, edit.vm.disk.format.value, scratch=True) for edit in launch
            ]
            part = f", launch {number} of {len(launches)}" if len(launches) > 1 else ""
            info(f"  {name}: starting with {len(drives)} disks{part} [{app.accel}]")
            app.launch()
            planned = lab.plan(app, golden)
            for edit, drive in zip(launch, drives, strict=True):
                info(f"  {name}: {edit.vm.name}")
                _edit(app, lab, planned, golden, edit, drive)
            app.finish("writing the disks out")
    return planned


def customize(
    lab: Plan,
    base: BaseImage,
    plugins: Plugins,
    edits: Sequence[Edit],
    host_keys: HostKeyMaker,
    appliances: int | None = None,
) -> Planned:
    """Edit every disk of ``edits``, on several appliances at once where the host
    has the cores (``appliance_count``). The golden image is inspected once, by the
    first appliance up, and the lab's operations planned from what it holds; each
    VM's host keys are waited for only when its disk is edited. A failure in one
    appliance stops the others; the disks are then half-written, and the caller
    throws them away with the staging folder."""
    state = _Lab(lab, plugins, host_keys)
    parts = shares(edits, appliance_count(len(edits), appliances))
    cpus = max(1, min(APPLIANCE_CPUS, (os.cpu_count() or 1) // len(parts)))
    names = [
        f"appliance {number} of {len(parts)}" if len(parts) > 1 else "appliance"
        for number in range(1, len(parts) + 1)
    ]
    for name, launches in zip(names, parts, strict=True):
        info(f"  {name}: {listed([edit.vm.name for part in launches for edit in part], 4)}")
    errors: list[BaseException] = []

    def run(index: int) -> Planned | None:
        try:
            return _run_share(state, base, parts[index], names[index], cpus)
        except BaseException as err:
            errors.append(err)  # before the stop: the first error is the cause
            state.stop.set()
            raise

    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="appliance") as pool:
        others = [pool.submit(run, index) for index in range(1, len(parts))]
        try:
            results = [run(0)]
        except BaseException as err:
            state.stop.set()  # an interrupt too: no appliance may keep running behind it
            concurrent.futures.wait(others)
            if errors and errors[0] is not err:
                raise errors[0] from None
            raise
        concurrent.futures.wait(others)
    if errors:
        raise errors[0]
    results += [future.result() for future in others]
    if host_keys.waited >= KEYS_WAIT_SHOWN:
        info(f"  waited {host_keys.waited:.1f}s in all for ssh-keygen's host keys")
    planned = next(result for result in results if result is not None)
    return planned
