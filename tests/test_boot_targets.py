"""The boot tier for the Hyper-V and VMware exports: the demo lab built on the Debian
golden image with ``target = "hyperv"`` (so the build exports it) and exported to
``vmware`` with ``vmbuild export``; then web runs from its flattened VHDX and db from
its flattened VMDK, under libvirt's QEMU, on the devices each hypervisor gives the
VM as far as QEMU has them:

- web (Hyper-V, generation 1): ``hyperv/vms/web/disk.vhdx`` on IDE 0:0 and the
  export's seed on IDE 1:0. QEMU has no VMBus, so the guest reads them through
  ata_piix rather than hv_storvsc; the NIC is virtio.
- db (VMware): ``vmware/vms/db/disk.vmdk`` on a VMware Paravirtual SCSI controller,
  the export's seed on an IDE CD-ROM, a vmxnet3 NIC: QEMU emulates all three, so
  this is the VMware VM's own hardware.

Both keep the plan's MAC. ``vmbuild check`` then asks each guest, through its agent,
who it is: hostname, static address on the NIC named by its MAC, machine-id, host
keys, cloud-init done. So the conversion kept a bootable disk and the identity
inside it. The lab runs under TCG on the isolated network its define.sh makes (no
uplink, no host address); every domain, network and file made here is removed.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from debiangolden import Built
from libvirthelp import BOOT_TIER, DemoLab, check_lab, demo_lab, virsh
from vmbuild.cli import main

pytestmark = BOOT_TIER

#: hostname -> (export, disk format, disk bus, NIC model)
DEVICES = {
    "web": ("hyperv", "vhdx", "ide", "virtio"),
    "db": ("vmware", "vmdk", "scsi", "vmxnet3"),
}


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)


def _on_exported_disk(xml: str, folder: Path, fmt: str, bus: str, nic: str) -> str:
    """The bundle's domain XML with its disk and seed taken from the export, on the
    target hypervisor's buses and NIC.

    libvirt 9.0 (Debian 12's) has no ``vhdx`` disk format, though QEMU reads it: a
    VHDX is handed to QEMU as its own ``-drive`` and ``-device`` on IDE 0:0, booted
    first, through libvirt's QEMU command-line passthrough."""
    domain = ET.fromstring(xml)
    devices = domain.find("devices")
    assert devices is not None
    disk_file = folder / f"disk.{fmt}"
    for disk in devices.findall("disk"):
        source, driver, target = disk.find("source"), disk.find("driver"), disk.find("target")
        assert source is not None and driver is not None and target is not None
        if disk.get("device") != "disk":
            source.set("file", str(folder / "seed.iso"))
            target.attrib.update(dev="hdc", bus="ide")
        elif fmt == "vhdx":
            devices.remove(disk)
        else:
            source.set("file", str(disk_file))
            driver.set("type", fmt)
            driver.attrib.pop("discard", None)
            backing = disk.find("backingStore")
            if backing is not None:
                disk.remove(backing)
            target.attrib.update(dev="sda", bus=bus)
    if fmt == "vhdx":
        # libvirt gives the disks it manages to QEMU's user; this one it does not manage.
        qemu = pwd.getpwnam("libvirt-qemu")
        os.chown(disk_file, qemu.pw_uid, qemu.pw_gid)
        commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
        for arg in (
            "-drive",
            f"file={disk_file},format=vhdx,if=none,id=exported-disk",
            "-device",
            "ide-hd,drive=exported-disk,bus=ide.0,unit=0,bootindex=1",
        ):
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    if bus == "scsi":
        ET.SubElement(devices, "controller", type="scsi", index="0", model="vmpvscsi")
    model = devices.find("interface/model")
    assert model is not None
    model.set("type", nic)
    return ET.tostring(domain, encoding="unicode")


@pytest.fixture(scope="module")
def lab(debian_golden: Built, libvirtd: None) -> Iterator[DemoLab]:
    with demo_lab(debian_golden.path, "vmbuild-tgt", ["lab.target=hyperv"]) as lab:
        bundle = lab.bundle
        assert main(["export", str(bundle), "-t", "vmware", "-o", str(bundle / "vmware")]) == 0
        for host, (target, fmt, bus, nic) in DEVICES.items():
            name = lab.domains[host]
            folder = bundle / target / "vms" / name
            xml = _on_exported_disk(
                (bundle / "vms" / name / "domain.xml").read_text(), folder, fmt, bus, nic
            )
            (lab.work / f"{name}.xml").write_text(xml)
            virsh("define", str(lab.work / f"{name}.xml"))  # in place of the bundle's
        for name in lab.domains.values():
            virsh("start", name)
        yield lab


def test_the_exported_vhdx_and_vmdk_boot_as_the_lab_built(lab: DemoLab) -> None:
    bundle, domains = lab.bundle, lab.domains
    for host, (target, fmt, bus, nic) in DEVICES.items():
        disk = bundle / target / "vms" / domains[host] / f"disk.{fmt}"
        # What the running QEMU has open: the exported disk, in its own format.
        blocks = virsh("qemu-monitor-command", domains[host], "--hmp", "info block").stdout
        assert f"{disk} ({fmt})" in blocks, blocks
        assert "Backing file" not in blocks.split(str(disk))[1].split("\n\n")[0], blocks
        live = ET.fromstring(virsh("dumpxml", domains[host]).stdout)
        model = live.find("devices/interface/model")
        assert model is not None and model.get("type") == nic
        if bus == "scsi":
            assert live.find("devices/controller[@model='vmpvscsi']") is not None
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f'"format": "{fmt}"' in info and "backing-filename" not in info
    result = check_lab(bundle)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 VMs match the bundle" in result.stdout
