"""Xen: every VM of the lab as libvirt domain XML for libvirt's Xen driver (libxl),
``<vm>.xml``, and as a native ``xl`` config, ``<vm>.cfg``; ``define.sh`` defines the
lab with ``virsh -c xen:///system``, ``create.sh`` starts it with ``xl create``.

The three kinds (``xen-hvm``, ``xen-pv``, ``xen-pvh``) differ in how the guest boots
and what it sees; the identity is the plan's in all of them (name, UUID, MAC, memory,
vCPUs, VNC port and address, console), and the disk is the bundle's own:

- ``xen-hvm``: hvmloader and SeaBIOS boot the guest's GRUB from the disk, which the
  guest sees as emulated IDE until its PV drivers unplug that and read it as
  ``xvda``; the seed is an emulated CD-ROM on ``hdc`` (Linux's blkfront leaves
  CD-ROMs to the emulated IDE); the serial console is the emulated ttyS0.
- ``xen-pv``: ``pygrub`` reads the guest's grub.cfg and boots its kernel with
  ``console=hvc0`` added; disk ``xvda`` and seed ``xvdb`` (read-only) are PV disks.
- ``xen-pvh``: Debian's PVH GRUB (grub-xen-host's ``grub-i386-xen_pvh.bin``) reads
  the guest's grub.cfg; disks as for PV.

Xen's qdisk backend reads qcow2, so each VM uses its bundle disk as it is: an
overlay keeps working because its backing path is relative to the disk. Paths are
absolute under ``job.root``, the folder the bundle will be in on the Xen host.

Owns: the Xen writer, its checks of the plan, and what the guest kernel must have
for each kind (``kernel_warning``).
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmbuild.errors import BuildError, Problem, ProfileError, UserError
from vmbuild.host import qemuimg
from vmbuild.host.files import write_atomic
from vmbuild.model.plan import NetworkPlan, Plan, VmPlan
from vmbuild.model.profile import NetType, Target, format_size
from vmbuild.output.domain import check_domain
from vmbuild.targets.job import ExportJob
from vmbuild.targets.render import XL_UNSAFE, render

#: libxl looks a bootloader named without a path up in its own folder
#: (/usr/lib/xen-4.17/bin on Debian 12); "/usr/bin/pygrub" is deprecated.
PYGRUB = "pygrub"
#: GRUB for PVH guests, from Debian's grub-xen-host.
PVH_GRUB = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"
#: What pygrub adds to the guest's own kernel command line: the PV console.
PV_CMDLINE = "console=hvc0"
#: The VM's disk as the guest sees it, in every kind.
DISK_VDEV = "xvda"
#: VNC display N is TCP port 5900 + N.
VNC_BASE = 5900
#: Linux's limit on an interface name (IFNAMSIZ less the NUL): a bridge's too.
BRIDGE_NAME_MAX = 15
_BRIDGE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class KernelOption:
    """A kernel option a kind needs (built in or as a module), and what for."""

    name: str
    needed_for: str


_FRONTENDS = (
    KernelOption("CONFIG_XEN_BLKDEV_FRONTEND", "the disk as xvda"),
    KernelOption("CONFIG_XEN_NETDEV_FRONTEND", "the network"),
)
_SEED = KernelOption("CONFIG_ISO9660_FS", "reading the seed")


_CDROM = (
    KernelOption("CONFIG_ATA_PIIX", "the seed's emulated CD-ROM"),
    KernelOption("CONFIG_BLK_DEV_SR", "the seed's emulated CD-ROM"),
)
_PV_CONSOLE = KernelOption("CONFIG_HVC_XEN", "the console hvc0")


@dataclass(frozen=True)
class Kind:
    """What one of the three Xen targets is made of: the rest follows from whether
    it is HVM (emulated firmware and devices) or PV/PVH (paravirtual only)."""

    target: Target
    #: xl's ``type``: "hvm", "pv" or "pvh".
    xl_type: str
    #: libvirt's ``<os><type>`` and its machine.
    os_type: str
    machine: str
    #: The option the guest kernel boots this kind with.
    boot_option: KernelOption

    @property
    def hvm(self) -> bool:
        return self.xl_type == "hvm"

    @property
    def title(self) -> str:
        return self.xl_type.upper()

    @property
    def seed_cdrom(self) -> bool:
        """The seed is an emulated CD-ROM (HVM), else a read-only PV disk."""
        return self.hvm

    @property
    def seed_vdev(self) -> str:
        return "hdc" if self.hvm else "xvdb"

    @property
    def kernel_options(self) -> tuple[KernelOption, ...]:
        """What the guest kernel needs, in the order the warning names them."""
        devices = _CDROM if self.hvm else (_PV_CONSOLE,)
        return (self.boot_option, *_FRONTENDS, *devices, _SEED)


#: What each kind boots with.
_PVHVM = KernelOption("CONFIG_XEN_PVHVM", "PV drivers in an HVM guest")
_PV = KernelOption("CONFIG_XEN_PV", "booting as a PV guest")
_PVH = KernelOption("CONFIG_XEN_PVH", "booting as a PVH guest")

KINDS: Mapping[Target, Kind] = {
    kind.target: kind
    for kind in (
        Kind(Target.XEN_HVM, xl_type="hvm", os_type="hvm", machine="xenfv", boot_option=_PVHVM),
        Kind(Target.XEN_PV, xl_type="pv", os_type="xen", machine="xenpv", boot_option=_PV),
        Kind(Target.XEN_PVH, xl_type="pvh", os_type="xenpvh", machine="xenpvh", boot_option=_PVH),
    )
}


# ------------------------------------------------------------------ guest kernel


_KCONFIG_LINE = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(\S+)")


def kernel_config(text: str) -> dict[str, str]:
    """A kernel's ``/boot/config-<version>``: option -> value ("y", "m", ...); an
    option that is "not set" is absent."""
    return {
        match.group(1): match.group(2)
        for line in text.splitlines()
        if (match := _KCONFIG_LINE.fullmatch(line.strip()))
    }


def missing_kernel_options(target: Target, config: str) -> list[KernelOption]:
    """What the kernel whose config is ``config`` lacks of what ``target`` needs."""
    have = kernel_config(config)
    return [opt for opt in KINDS[target].kernel_options if have.get(opt.name) not in ("y", "m")]


def kernel_warning(
    target: Target, config: str, kernel: str = "the golden image's kernel"
) -> str | None:
    """The warning to print when the guest kernel (its ``/boot/config-*`` text) cannot
    run the ``target`` lab as written, or None when it can. The files are written
    either way: a user may change the guest's kernel before starting it on Xen."""
    missing = missing_kernel_options(target, config)
    if not missing:
        return None
    lacks = ", ".join(f"{opt.name} ({opt.needed_for})" for opt in missing)
    return (
        f"{kernel} lacks {lacks}: the {target} files are written, but its VMs will not "
        f"boot or work as {KINDS[target].title} guests until the guest has a kernel with them"
    )


# ------------------------------------------------------------------ checks


def bridge_name(network: NetworkPlan) -> str | None:
    """The bridge each VM's ``vif`` joins under ``xl``: the lab's bridge, or for a
    libvirt network a bridge of the network's name. None for user-mode networking,
    which Xen does not have."""
    if network.type is NetType.USER or network.source is None:
        return None
    return network.source


def check(plan: Plan) -> list[Problem]:
    """What in the plan Xen cannot take, each at its place."""
    problems = []
    net = plan.network
    bridge = bridge_name(net)
    if bridge is None:
        problems.append(
            Problem(
                "network",
                "type user is QEMU's own networking, which Xen does not have",
                'use type = "bridge" (a bridge on the Xen host) or type = "network"',
            )
        )
    elif net.type is NetType.NETWORK and (
        len(bridge) > BRIDGE_NAME_MAX or not _BRIDGE_NAME.fullmatch(bridge)
    ):
        problems.append(
            Problem(
                "network",
                f'the xl configs join a bridge named after the libvirt network "{bridge}", '
                f"which is no Linux interface name (at most {BRIDGE_NAME_MAX} letters, "
                "digits, '.', '_' or '-')",
                "give the network a shorter name, or use a bridge lab",
            )
        )
    for vm in plan.vms:
        if vm.memory % (1 << 20):
            problems.append(
                Problem(
                    vm.place,
                    f"memory {format_size(vm.memory)} is not a whole number of MiB, which xl needs",
                    "give memory in MiB or GiB",
                )
            )
        if vm.vnc.port < VNC_BASE:
            problems.append(Problem(vm.place, f"vnc_port {vm.vnc.port} is below {VNC_BASE}"))
    return problems


def host_root(job: ExportJob) -> str:
    """The bundle's folder on the Xen host, without a trailing slash: ``job.root`` or
    the bundle's own absolute path."""
    root = job.root if job.root is not None else str(job.bundle.resolve())
    where = "root" if job.root is not None else str(job.bundle)
    if not root.startswith("/") or ".." in root.split("/"):
        raise UserError(
            f"the bundle's folder on the Xen host must be an absolute path without '..', "
            f"not {root!r}",
            place=where,
            hint="for example /srv/labs/" + job.plan.lab,
        )
    if XL_UNSAFE.search(root):
        raise UserError(
            f"the bundle's folder {root!r} holds a quote, a backslash or a control "
            "character, which xl configs cannot name",
            place=where,
            hint="copy the bundle to a plainer path",
        )
    return posixpath.normpath(root).rstrip("/") if root != "/" else ""


# ------------------------------------------------------------------ rendering


#: What every template of this module may name.
_CONSTANTS = {
    "pygrub": PYGRUB,
    "pvh_grub": PVH_GRUB,
    "pv_cmdline": PV_CMDLINE,
    "disk_vdev": DISK_VDEV,
}


def _render(template: str, **context: Any) -> str:
    return render(template, **_CONSTANTS, **context)


@dataclass(frozen=True)
class XenVm:
    """One VM as the templates write it: the plan's VM and its files on the Xen host."""

    vm: VmPlan
    disk: str
    seed: str
    #: The disk's virtual size, as qemu-img reads it.
    size: int
    #: The image the disk is an overlay on, on the Xen host; None for a standalone disk.
    backing: str | None

    @property
    def memory_mib(self) -> int:
        return self.vm.memory >> 20

    @property
    def vnc_display(self) -> int:
        return self.vm.vnc.port - VNC_BASE

    @property
    def size_text(self) -> str:
        return format_size(self.size)


def _xen_vm(job: ExportJob, vm: VmPlan, root: str) -> XenVm:
    """The VM's files on the Xen host, once the bundle is checked to have its disk
    (of the plan's format and size) and its seed."""
    disk, seed = job.disk(vm), job.seed(vm)
    for path, what in ((disk, "disk"), (seed, "seed")):
        if not path.is_file():
            raise BuildError(
                f"the bundle has no {what} {path}",
                place=vm.place,
                hint="build the bundle again: the export uses its files",
            )
    image = qemuimg.info(disk, vm.disk.format, force_share=True)
    if vm.disk.size is not None and image.virtual_size != vm.disk.size:
        raise BuildError(
            f"the disk {disk} is {format_size(image.virtual_size)}, "
            f"the plan says {format_size(vm.disk.size)}",
            place=vm.place,
            hint="build the bundle again",
        )
    folder = f"{root}/{vm.folder}"
    backing = None
    if image.backing_file is not None:
        backing = posixpath.normpath(posixpath.join(folder, image.backing_file))
    return XenVm(
        vm,
        disk=f"{root}/{vm.disk.file}",
        seed=f"{root}/{vm.seed.file}",
        size=image.virtual_size,
        backing=backing,
    )


def domain_xml(lab: Plan, kind: Kind, xen: XenVm, bridge: str) -> bytes:
    """The VM's libvirt domain XML for libvirt's Xen driver, checked and serialised
    as the KVM domain XML is."""
    text = _render("xen-domain.xml.j2", lab=lab, kind=kind, xen=xen, vm=xen.vm, bridge=bridge)
    domain = ET.fromstring(text)
    check_domain(xen.vm, domain)
    ET.indent(domain, space="  ")
    return ET.tostring(domain, encoding="unicode").encode() + b"\n"


def xl_config(lab: Plan, kind: Kind, xen: XenVm, bridge: str) -> bytes:
    return _render("xen-xl.cfg.j2", lab=lab, kind=kind, xen=xen, vm=xen.vm, bridge=bridge).encode()


def _needed_files(vms: list[XenVm]) -> list[str]:
    """Every file on the Xen host the lab's domains open, for the scripts to check."""
    files: list[str] = []
    for xen in vms:
        files += [xen.disk, *([xen.backing] if xen.backing else []), xen.seed]
    return list(dict.fromkeys(files))


def export(job: ExportJob) -> None:
    """Write ``<vm>.xml`` and ``<vm>.cfg`` for every VM, and ``define.sh`` and
    ``create.sh``, into ``job.out``."""
    if job.target not in KINDS:
        raise ValueError(f"not a Xen target: {job.target}")
    kind = KINDS[job.target]
    lab = job.plan
    problems = check(lab)
    if problems:
        raise ProfileError(f"lab {lab.lab} for Xen", problems)
    root = host_root(job)
    bridge = bridge_name(lab.network)
    assert bridge is not None  # check() refuses a lab without one
    vms = [_xen_vm(job, vm, root) for vm in lab.vms]
    for xen in vms:
        name = xen.vm.name
        write_atomic(job.out / f"{name}.xml", domain_xml(lab, kind, xen, bridge))
        write_atomic(job.out / f"{name}.cfg", xl_config(lab, kind, xen, bridge))
        job.progress(f"  {name}: {name}.xml (libvirt), {name}.cfg (xl)")
    files = _needed_files(vms)
    context = {"lab": lab, "kind": kind, "vms": vms, "root": root, "files": files}
    network_xml = f"{root}/network.xml" if lab.network.create else None
    define = _render("xen-define.sh.j2", network_xml=network_xml, **context)
    create = _render("xen-create.sh.j2", bridge=bridge, **context)
    write_atomic(job.out / "define.sh", define.encode(), mode=0o755)
    write_atomic(job.out / "create.sh", create.encode(), mode=0o755)
