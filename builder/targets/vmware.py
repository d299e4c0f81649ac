"""VMware: each VM as an OVA for vSphere and ESXi (and anything ovftool imports), and as
a folder with its ``.vmx`` that Workstation, Fusion and Player open as it is.

::

    <vm>.ova                 <vm>.ovf, <vm>.mf (SHA256), <vm>-disk1.vmdk
                             (streamOptimized), <vm>-seed.iso
    vms/<vm>/<vm>.vmx        the VM for the hosted products
    vms/<vm>/disk.vmdk       its disk (monolithicSparse: a hosted product runs it)
    vms/<vm>/seed.iso        its NoCloud seed

What each VM is made of, and why:

- BIOS firmware: vmbuild's golden images boot with BIOS GRUB (and VMware boots NVMe
  only with EFI).
- The disk on a VMware Paravirtual SCSI controller (vmw_pvscsi), the seed's CD-ROM on
  IDE 1:0 (ata_piix), one vmxnet3 NIC: Debian's cloud kernels (12 and 13) have all
  three in the initramfs, and neither has the AHCI driver a SATA CD-ROM would need.
- The NIC's MAC is the plan's, static: the guest's network configuration is matched
  by it. VMware takes a static MAC only in 00:50:56:00:00:00-00:50:56:3f:ff:ff, which
  is where the plan derives MACs for a lab with ``target = "vmware"``; a MAC outside
  it (a lab built for libvirt) gets ``checkMACAddress = "FALSE"`` in the .vmx, which
  the hosted products need to take it, and a warning.
- The BIOS UUID is the plan's UUID; the serial port (ttyS0, where GRUB and the kernel
  write) goes to ``serial.log`` beside the .vmx.
- The guest OS is named as conservatively as VMware's products know it (Debian as
  debian10_64Guest, which more releases know than debian11/12_64Guest): the name
  only chooses defaults, and every device is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tarfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vmbuild.errors import Problem, ProfileError
from vmbuild.host import qemuimg
from vmbuild.host.files import file_digest, write_atomic
from vmbuild.host.space import write_error
from vmbuild.log import warn
from vmbuild.model.facts import GuestFacts
from vmbuild.model.plan import NetworkPlan, Plan, VmPlan, vmware_static_mac
from vmbuild.model.profile import NetType, format_size
from vmbuild.output.seed import source_date_epoch
from vmbuild.targets.files import place_copy
from vmbuild.targets.job import ExportJob

#: Virtual hardware version 13: ESXi 6.5 and later, Workstation 14 and later.
HARDWARE_VERSION = 13
#: VMware takes a VM's memory only in whole multiples of 4 MiB.
MEMORY_STEP = 4 << 20
#: The network an OVA of a lab on QEMU's user networking names: ESXi's default.
DEFAULT_NETWORK = "VM Network"
STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
#: ``-o`` for qemu-img: the disk's descriptor names a SCSI adapter, as the VMs have.
_VMDK_OPTIONS = ("adapter_type=lsilogic",)

NS = {
    "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
    "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "vmw": "http://www.vmware.com/schema/ovf",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


def check(plan: Plan) -> list[Problem]:
    """What in the plan VMware cannot take, each at its VM."""
    return [
        Problem(
            vm.place,
            f"memory {format_size(vm.memory)} is not a whole multiple of 4 MiB, which VMware needs",
            "give memory in steps of 4 MiB, such as 1G or 1536M",
        )
        for vm in plan.vms
        if vm.memory % MEMORY_STEP
    ]


def export(job: ExportJob) -> None:
    """Write each VM's ``<vm>.ova`` and ``vms/<vm>/`` (its .vmx, disk and seed)."""
    plan = job.plan
    problems = check(plan)
    if problems:
        raise ProfileError(f"lab {plan.lab} for VMware", problems)
    outside = [vm.name for vm in plan.vms if not vmware_static_mac(vm.mac)]
    if outside:
        warn(
            f"the MACs of {', '.join(outside)} are outside VMware's static range "
            "00:50:56:00:00:00-00:50:56:3f:ff:ff: their .vmx files allow them "
            '(checkMACAddress = "FALSE"), but vSphere may give such a VM another MAC, '
            'and the guest then finds no network; build the lab with target = "vmware"'
        )
    work = job.out / ".work"
    work.mkdir()
    for vm in plan.vms:
        folder = job.out / "vms" / vm.name
        folder.mkdir(parents=True)
        job.progress(f"  {vm.name}: disk.vmdk")
        qemuimg.convert(
            folder / "disk.vmdk",
            job.disk(vm),
            vm.disk.format,
            "vmdk",
            ("subformat=monolithicSparse", *_VMDK_OPTIONS),
        )
        place_copy(job.seed(vm), folder / "seed.iso")
        write_atomic(folder / f"{vm.name}.vmx", vmx(plan, vm).encode())
        job.progress(f"  {vm.name}: {vm.name}.ova")
        stream = work / f"{vm.name}-disk1.vmdk"
        qemuimg.convert(
            stream,
            job.disk(vm),
            vm.disk.format,
            "vmdk",
            ("subformat=streamOptimized", *_VMDK_OPTIONS),
        )
        capacity = qemuimg.info(stream, "vmdk").virtual_size
        write_ova(job.out / f"{vm.name}.ova", plan, vm, stream, capacity, folder / "seed.iso")
        stream.unlink()
    shutil.rmtree(work)


# ------------------------------------------------------------------ guest and net


@dataclass(frozen=True)
class GuestOs:
    """A guest OS as OVF (CIM's number, VMware's osType) and the .vmx name it."""

    cim: int
    ovf: str
    vmx: str


def guest_os(facts: GuestFacts | None) -> GuestOs:
    """The most widely known VMware name for the golden image's distribution."""
    distro = facts.distro if facts is not None else ""
    if distro == "debian":
        return GuestOs(96, "debian10_64Guest", "debian10-64")
    if distro == "ubuntu":
        return GuestOs(94, "ubuntu64Guest", "ubuntu-64")
    return GuestOs(100, "other3xLinux64Guest", "other3xlinux-64")


def network_name(network: NetworkPlan) -> str:
    """The network an OVA's NIC is on: the bridge's or libvirt network's name, which
    the importer maps to one of the host's port groups."""
    return network.source if network.source is not None else DEFAULT_NETWORK


def _uuid_text(value: uuid.UUID) -> str:
    """A UUID as a .vmx writes it: ``56 4d 8e ... 3c-7a 1f ... 0b``."""
    hexes = [f"{byte:02x}" for byte in value.bytes]
    return " ".join(hexes[:8]) + "-" + " ".join(hexes[8:])


def lan_segment(plan: Plan) -> str:
    """The .vmx ``pvnID`` of the lab's isolated network: a Workstation LAN segment
    (no host adapter, no uplink), the same for every VM of the lab."""
    digest = hashlib.sha256("\0".join(("pvn", plan.seed, str(plan.network.source))).encode())
    return _uuid_text(uuid.UUID(bytes=digest.digest()[:16]))


def _connection(plan: Plan) -> list[tuple[str, str]]:
    """How a hosted product connects the NIC: bridged to the host's LAN for a bridge,
    a LAN segment for an isolated ``network.create`` network, else NAT."""
    net = plan.network
    if net.type is NetType.BRIDGE:
        return [("ethernet0.connectionType", "bridged")]
    if net.type is NetType.NETWORK and net.create:
        return [("ethernet0.connectionType", "pvn"), ("ethernet0.pvnID", lan_segment(plan))]
    return [("ethernet0.connectionType", "nat")]


# ------------------------------------------------------------------------- .vmx


def _vmx_value(text: str) -> str:
    """A .vmx value, quoted: ``"`` and ``|`` and control characters as ``|XX``."""
    out = []
    for char in text:
        if char in '"|#' or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"|{ord(char):02X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def annotation(plan: Plan, vm: VmPlan) -> str:
    return f"{plan.lab}: {vm.fqdn} {vm.ip}/{vm.prefix} (built by vmbuild)"


def vmx(plan: Plan, vm: VmPlan) -> str:
    """The VM's .vmx, for a folder holding disk.vmdk and seed.iso beside it."""
    settings: list[tuple[str, str]] = [
        (".encoding", "UTF-8"),
        ("config.version", "8"),
        ("virtualHW.version", str(HARDWARE_VERSION)),
        ("displayName", vm.name),
        ("annotation", annotation(plan, vm)),
        ("guestOS", guest_os(plan.guest).vmx),
        ("firmware", "bios"),
        ("uuid.bios", _uuid_text(uuid.UUID(vm.uuid))),
        # Keep the plan's UUID when the folder is copied or moved, without asking.
        ("uuid.action", "keep"),
        ("numvcpus", str(vm.vcpus)),
        ("memsize", str(vm.memory >> 20)),
        ("pciBridge0.present", "TRUE"),
    ]
    # The PCI Express root ports that a vmxnet3 NIC sits behind, as VMware writes them.
    for bridge in (4, 5, 6, 7):
        settings += [
            (f"pciBridge{bridge}.present", "TRUE"),
            (f"pciBridge{bridge}.virtualDev", "pcieRootPort"),
            (f"pciBridge{bridge}.functions", "8"),
        ]
    settings += [
        ("vmci0.present", "TRUE"),
        ("hpet0.present", "TRUE"),
        ("svga.present", "TRUE"),
        ("floppy0.present", "FALSE"),
        ("scsi0.present", "TRUE"),
        ("scsi0.virtualDev", "pvscsi"),
        ("scsi0:0.present", "TRUE"),
        ("scsi0:0.deviceType", "scsi-hardDisk"),
        ("scsi0:0.fileName", "disk.vmdk"),
        ("ide1:0.present", "TRUE"),
        ("ide1:0.deviceType", "cdrom-image"),
        ("ide1:0.fileName", "seed.iso"),
        ("ide1:0.startConnected", "TRUE"),
        ("bios.bootOrder", "hdd"),
        ("ethernet0.present", "TRUE"),
        ("ethernet0.virtualDev", "vmxnet3"),
        *_connection(plan),
        ("ethernet0.addressType", "static"),
        ("ethernet0.address", vm.mac),
    ]
    if not vmware_static_mac(vm.mac):
        settings.append(("ethernet0.checkMACAddress", "FALSE"))
    settings += [
        ("ethernet0.startConnected", "TRUE"),
        ("serial0.present", "TRUE"),
        ("serial0.fileType", "file"),
        ("serial0.fileName", "serial.log"),
    ]
    return "".join(f"{key} = {_vmx_value(value)}\n" for key, value in settings)


# -------------------------------------------------------------------------- OVF


def _tag(name: str) -> str:
    prefix, local = name.split(":")
    return f"{{{NS[prefix]}}}{local}"


def _sub(parent: ET.Element, name: str, text: str | int | None = None, **attrs: str) -> ET.Element:
    """A child element ``prefix:Name``; attributes as ``prefix_name`` keywords
    (``ovf_id="file1"`` is ``ovf:id="file1"``)."""
    names = {_tag(key.replace("_", ":", 1)): value for key, value in attrs.items()}
    element = ET.SubElement(parent, _tag(name), names)
    if text is not None:
        element.text = str(text)
    return element


def _item(section: ET.Element, fields: dict[str, str | int], required: bool = True) -> ET.Element:
    """A RASD item; its fields in the alphabetical order CIM's schema requires."""
    item = _sub(section, "ovf:Item", **({} if required else {"ovf_required": "false"}))
    for name in sorted(fields):
        _sub(item, f"rasd:{name}", fields[name])
    return item


def _config(parent: ET.Element, key: str, value: str) -> None:
    _sub(parent, "vmw:Config", ovf_required="false", vmw_key=key, vmw_value=value)


@dataclass(frozen=True)
class OvaFile:
    """A file of an OVA: its name there, and its size."""

    name: str
    size: int


def ovf(plan: Plan, vm: VmPlan, disk: OvaFile, capacity: int, seed: OvaFile) -> bytes:
    """The OVF descriptor of one VM: its disk (streamOptimized, ``capacity`` bytes
    virtual), its seed on the CD-ROM, its NIC with the plan's MAC."""
    net = network_name(plan.network)
    kind = guest_os(plan.guest)
    envelope = ET.Element(_tag("ovf:Envelope"))
    refs = _sub(envelope, "ovf:References")
    _sub(refs, "ovf:File", ovf_href=disk.name, ovf_id="file1", ovf_size=str(disk.size))
    _sub(refs, "ovf:File", ovf_href=seed.name, ovf_id="file2", ovf_size=str(seed.size))
    disks = _sub(envelope, "ovf:DiskSection")
    _sub(disks, "ovf:Info", "Virtual disk information")
    _sub(
        disks,
        "ovf:Disk",
        ovf_capacity=str(capacity),
        ovf_capacityAllocationUnits="byte",
        ovf_diskId="vmdisk1",
        ovf_fileRef="file1",
        ovf_format=STREAM_FORMAT,
    )
    networks = _sub(envelope, "ovf:NetworkSection")
    _sub(networks, "ovf:Info", "The list of logical networks")
    _sub(
        _sub(networks, "ovf:Network", ovf_name=net), "ovf:Description", f"lab {plan.lab}'s network"
    )

    system = _sub(envelope, "ovf:VirtualSystem", ovf_id=vm.name)
    _sub(system, "ovf:Info", "A virtual machine")
    _sub(system, "ovf:Name", vm.name)
    notes = _sub(system, "ovf:AnnotationSection")
    _sub(notes, "ovf:Info", "A human-readable annotation")
    _sub(notes, "ovf:Annotation", annotation(plan, vm))
    guest = _sub(system, "ovf:OperatingSystemSection", ovf_id=str(kind.cim), vmw_osType=kind.ovf)
    _sub(guest, "ovf:Info", "The kind of installed guest operating system")

    hardware = _sub(system, "ovf:VirtualHardwareSection")
    _sub(hardware, "ovf:Info", "Virtual hardware requirements")
    family = _sub(hardware, "ovf:System")
    _sub(family, "vssd:ElementName", "Virtual Hardware Family")
    _sub(family, "vssd:InstanceID", 0)
    _sub(family, "vssd:VirtualSystemIdentifier", vm.name)
    _sub(family, "vssd:VirtualSystemType", f"vmx-{HARDWARE_VERSION:02d}")
    memory = vm.memory >> 20
    _item(
        hardware,
        {
            "AllocationUnits": "hertz * 10^6",
            "Description": "Number of Virtual CPUs",
            "ElementName": f"{vm.vcpus} virtual CPU(s)",
            "InstanceID": 1,
            "ResourceType": 3,
            "VirtualQuantity": vm.vcpus,
        },
    )
    _item(
        hardware,
        {
            "AllocationUnits": "byte * 2^20",
            "Description": "Memory Size",
            "ElementName": f"{memory}MB of memory",
            "InstanceID": 2,
            "ResourceType": 4,
            "VirtualQuantity": memory,
        },
    )
    _item(
        hardware,
        {
            "Address": 0,
            "Description": "SCSI Controller",
            "ElementName": "SCSI Controller 0",
            "InstanceID": 3,
            "ResourceSubType": "VirtualSCSI",
            "ResourceType": 6,
        },
    )
    _item(
        hardware,
        {
            "Address": 1,
            "Description": "IDE Controller",
            "ElementName": "IDE Controller 1",
            "InstanceID": 4,
            "ResourceType": 5,
        },
    )
    _item(
        hardware,
        {
            "AddressOnParent": 0,
            "ElementName": "Hard Disk 1",
            "HostResource": "ovf:/disk/vmdisk1",
            "InstanceID": 5,
            "Parent": 3,
            "ResourceType": 17,
        },
    )
    _item(
        hardware,
        {
            "AddressOnParent": 0,
            "AutomaticAllocation": "true",
            "ElementName": "CD-ROM 1",
            "HostResource": "ovf:/file/file2",
            "InstanceID": 6,
            "Parent": 4,
            "ResourceSubType": "vmware.cdrom.iso",
            "ResourceType": 15,
        },
    )
    nic = _item(
        hardware,
        {
            "Address": vm.mac,
            "AddressOnParent": 7,
            "AutomaticAllocation": "true",
            "Connection": net,
            "Description": f'VmxNet3 ethernet adapter on "{net}"',
            "ElementName": "Ethernet 1",
            "InstanceID": 7,
            "ResourceSubType": "VmxNet3",
            "ResourceType": 10,
        },
    )
    _config(nic, "wakeOnLanEnabled", "false")
    _config(hardware, "firmware", "bios")
    _config(hardware, "uuid", vm.uuid)
    ET.indent(envelope)
    text = ET.tostring(envelope, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n'.encode()


# -------------------------------------------------------------------------- OVA


@contextlib.contextmanager
def _written(dest: Path) -> Iterator[IO[bytes]]:
    """A file written beside ``dest`` and renamed into place once complete."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        with tmp.open("xb") as handle:
            yield handle
        tmp.replace(dest)
    except OSError as err:
        raise write_error(err, dest, dest.parent) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_ova(dest: Path, plan: Plan, vm: VmPlan, stream: Path, capacity: int, seed: Path) -> None:
    """The OVA: a tar of the descriptor, then the manifest, then the files in the
    order the descriptor lists them, as OVF requires; every member's owner, mode
    and time fixed, so that the same files give the same archive."""
    disk = OvaFile(f"{vm.name}-disk1.vmdk", stream.stat().st_size)
    cdrom = OvaFile(f"{vm.name}-seed.iso", seed.stat().st_size)
    descriptor = ovf(plan, vm, disk, capacity, cdrom)
    name = f"{vm.name}.ovf"
    manifest = "".join(
        f"SHA256({file})= {digest}\n"
        for file, digest in (
            (name, hashlib.sha256(descriptor).hexdigest()),
            (disk.name, file_digest(stream)),
            (cdrom.name, file_digest(seed)),
        )
    ).encode()
    mtime = source_date_epoch()

    def member(file: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(file)
        info.size, info.mode, info.mtime = size, 0o644, mtime
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with (
        _written(dest) as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as ova,
    ):
        ova.addfile(member(name, len(descriptor)), io.BytesIO(descriptor))
        ova.addfile(member(f"{vm.name}.mf", len(manifest)), io.BytesIO(manifest))
        for file, path in ((disk, stream), (cdrom, seed)):
            with path.open("rb") as source:
                ova.addfile(member(file.name, file.size), source)
