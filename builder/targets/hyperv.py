"""Hyper-V: each VM's disk as a dynamic VHDX beside its seed, and ``define.ps1``, which
defines the lab's VMs on a Hyper-V host (Windows 10 or Windows Server 2016 and later).

What each VM is made of, and why:

- Generation 1: vmbuild's golden images boot with BIOS GRUB, and generation 2 boots
  only UEFI.
- The disk on IDE 0:0, the one place generation 1 boots from. Linux reads it through
  hv_storvsc once the VMBus is up, and the seed's DVD drive on IDE 1:0 through
  ata_piix: Debian's cloud kernels (12 and 13) have hv_vmbus, hv_storvsc, hv_netvsc
  and ata_piix in the initramfs.
- A synthetic network adapter whose static MAC is the plan's: the guest's network
  configuration is matched by that MAC, so the NIC gets its name and address as under
  libvirt. Hyper-V takes any unicast MAC as a static one.
- The serial console, where GRUB, the kernel and a getty are (ttyS0), on COM1: the
  named pipe ``\\\\.\\pipe\\<lab>-<vm>``.

The VM's UUID is not carried over: New-VM chooses a VM's ID, and nothing in the guest's
identity reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmbuild.errors import Problem, ProfileError
from vmbuild.host import qemuimg
from vmbuild.host.files import write_atomic
from vmbuild.model.plan import NetworkPlan, Plan, VmPlan
from vmbuild.model.profile import NetType, format_size
from vmbuild.targets.files import place_copy
from vmbuild.targets.job import ExportJob
from vmbuild.targets.render import render

#: Hyper-V takes a VM's memory only in whole multiples of 2 MiB.
MEMORY_STEP = 2 << 20
#: The switch a lab on QEMU's user networking joins: Hyper-V's own NAT switch.
NAT_SWITCH = "Default Switch"
SCRIPT = "define.ps1"
#: A dynamic VHDX in 1 MiB blocks, as Microsoft advises for Linux guests: ext4 spreads
#: its writes, and in Hyper-V's default 32 MiB blocks a disk grows by a third more.
VHDX_OPTIONS = ("subformat=dynamic", "block_size=1M")


def check(plan: Plan) -> list[Problem]:
    """What in the plan Hyper-V cannot take, each at its VM."""
    return [
        Problem(
            vm.place,
            f"memory {format_size(vm.memory)} is not a whole multiple of 2 MiB, "
            "which Hyper-V needs",
            "give memory in steps of 2 MiB, such as 1G or 1536M",
        )
        for vm in plan.vms
        if vm.memory % MEMORY_STEP
    ]


def export(job: ExportJob) -> None:
    """Write each VM's ``vms/<vm>/disk.vhdx`` and ``seed.iso``, and ``define.ps1``."""
    problems = check(job.plan)
    if problems:
        raise ProfileError(f"lab {job.plan.lab} for Hyper-V", problems)
    for vm in job.plan.vms:
        folder = job.out / "vms" / vm.name
        folder.mkdir(parents=True)
        job.progress(f"  {vm.name}: disk.vhdx")
        qemuimg.convert(folder / "disk.vhdx", job.disk(vm), vm.disk.format, "vhdx", VHDX_OPTIONS)
        place_copy(job.seed(vm), folder / "seed.iso")
    # A byte order mark: Windows PowerShell 5.1 reads a script without one in the
    # system's ANSI code page.
    write_atomic(job.out / SCRIPT, script(job.plan).encode("utf-8-sig"))


@dataclass(frozen=True)
class _VmRow:
    """One VM as define.ps1 lists it."""

    name: str
    cpus: int
    memory: int
    #: The static MAC as Hyper-V writes it: 12 hex digits, no separators.
    mac: str
    autostart: bool
    #: How the script knows the VM as the lab's: the start of its notes.
    mark: str
    notes: str


def _row(plan: Plan, vm: VmPlan) -> _VmRow:
    mark = f"vmbuild lab {plan.lab}, VM {vm.name}:"
    return _VmRow(
        name=vm.name,
        cpus=vm.vcpus,
        memory=vm.memory,
        mac=vm.mac.replace(":", "").upper(),
        autostart=vm.autostart,
        mark=mark,
        notes=f"{mark} {vm.fqdn} {vm.ip}/{vm.prefix} (instance {vm.instance_id})",
    )


def switch(network: NetworkPlan) -> tuple[str, bool]:
    """The virtual switch the lab's VMs join unless told another, and whether
    define.ps1 makes it (as a private switch) on a host that lacks it: a bridge's or a
    libvirt network's name, which an isolated ``network.create`` network makes."""
    if network.type is NetType.USER or network.source is None:
        return NAT_SWITCH, False
    return network.source, network.create


def script(plan: Plan) -> str:
    """define.ps1 for the lab."""
    name, create = switch(plan.network)
    return render(
        "define.ps1.j2",
        lab=plan,
        vms=[_row(plan, vm) for vm in plan.vms],
        switch=name,
        create=create,
    )
