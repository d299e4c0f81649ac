"""The Hyper-V and VMware writers, on a bundle of real overlays: every disk converted
with the bundle's bytes in it, every VM's identity in what the hypervisor reads (MAC,
UUID, CPUs, memory, network, console), and what either hypervisor cannot take refused
before anything is written."""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
import tarfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from labs import BRIDGE, USER, WEB_DB, debian_facts, make_image, write_lab
from vmbuild.errors import ProfileError
from vmbuild.model.plan import make_plan
from vmbuild.model.profile import load_profile
from vmbuild.targets import hyperv, vmware
from vmbuild.targets.job import ExportJob
from vmbuild.targets.render import psquote

ISOLATED: Mapping[str, Any] = {
    "type": "network",
    "source": "labnet",
    "create": True,
    "subnet": "192.0.2.0/24",
    "gateway": "192.0.2.1",
}
NS = vmware.NS


def built(
    tmp_path: Path, target: str, network: Mapping[str, Any] = ISOLATED, **vm: Any
) -> ExportJob:
    """A bundle as a build leaves it, for what the writers read: each VM's qcow2
    overlay on a golden image with data in it, and its seed. The job's ``out`` is
    empty."""
    golden = make_image(tmp_path / "golden.qcow2", data_mib=3)
    vms = [{**spec, **vm} for spec in WEB_DB]
    profile = write_lab(tmp_path, golden, vms=vms, lab={"target": target}, network=network)
    plan = make_plan(load_profile(profile))
    bundle = tmp_path / "bundle"
    for spec in plan.vms:
        (bundle / spec.folder).mkdir(parents=True)
        overlay = bundle / spec.disk.file
        qemu_img("create", "-q", "-f", "qcow2", "-b", golden, "-F", "qcow2", overlay)
        # Each VM's own bytes on top of the golden image's, as the identity edits are.
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P {spec.index} 1M 64k", overlay],
            check=True,
            capture_output=True,
        )
        (bundle / spec.seed.file).write_bytes(f"cidata of {spec.name}".encode())
    out = tmp_path / target
    out.mkdir()
    return ExportJob(plan=plan, bundle=bundle, out=out, target=plan.target)


def qemu_img(*args: str | Path) -> str:
    return subprocess.run(
        ["qemu-img", *map(str, args)], check=True, capture_output=True, text=True
    ).stdout


def same_disk(a: Path, a_format: str, b: Path) -> bool:
    """Whether ``a`` is a consistent image (``qemu-img check``) that holds the bundle
    disk ``b``'s bytes, its backing chain read."""
    check = subprocess.run(
        ["qemu-img", "check", "-f", a_format, a], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", a_format, "-F", "qcow2", a, b], check=False
    )
    return result.returncode == 0


def files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------------- Hyper-V


def test_hyperv_converts_every_disk_and_writes_define_ps1(tmp_path: Path) -> None:
    job = built(tmp_path, "hyperv")
    hyperv.export(job)
    assert files(job.out) == [
        "define.ps1",
        "vms/db/disk.vhdx",
        "vms/db/seed.iso",
        "vms/web/disk.vhdx",
        "vms/web/seed.iso",
    ]
    for vm in job.plan.vms:
        disk = job.out / "vms" / vm.name / "disk.vhdx"
        assert '"format": "vhdx"' in qemu_img("info", "--output=json", "-f", "vhdx", disk)
        assert same_disk(disk, "vhdx", job.disk(vm))
        assert (job.out / "vms" / vm.name / "seed.iso").read_bytes() == job.seed(vm).read_bytes()
    raw = (job.out / "define.ps1").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf#Requires -Version 5.1")
    script = raw.decode("utf-8-sig")
    web, db = job.plan.vms
    assert "[string]$SwitchName = 'labnet'" in script
    assert "New-VMSwitch -Name $SwitchName -SwitchType Private" in script
    for vm in (web, db):
        mac = vm.mac.replace(":", "").upper()
        assert (
            f"Name = '{vm.name}'; Cpus = {vm.vcpus}; Memory = {vm.memory}; Mac = '{mac}'; "
            f"Autostart = $false; Mark = 'vmbuild lab t, VM {vm.name}:'; "
            f"Notes = 'vmbuild lab t, VM {vm.name}: {vm.fqdn} {vm.ip}/24 "
            f"(instance {vm.instance_id})' }}" in script
        )
    assert "-Generation 1" in script
    assert 'Set-VMComPort -VM $vm -Number 1 -Path "\\\\.\\pipe\\$Lab-$($spec.Name)"' in script


@pytest.mark.parametrize(
    ("network", "switch", "create"),
    [(ISOLATED, "labnet", True), (BRIDGE, "br-test", False), (USER, "Default Switch", False)],
)
def test_hyperv_switch_follows_the_network(
    tmp_path: Path, network: Mapping[str, Any], switch: str, create: bool
) -> None:
    profile = write_lab(tmp_path, vms=WEB_DB, lab={"target": "hyperv"}, network=network)
    plan = make_plan(load_profile(profile))
    assert hyperv.switch(plan.network) == (switch, create)
    script = hyperv.script(plan)
    assert f"[string]$SwitchName = {psquote(switch)}" in script
    assert ("New-VMSwitch -Name $SwitchName -SwitchType Private" in script) is create
    assert ('throw "there is no virtual switch' in script) is not create


def test_hyperv_autostart_and_mac_format(tmp_path: Path) -> None:
    profile = write_lab(
        tmp_path,
        vms=[{"name": "web", "ip": "192.0.2.10", "mac": "52:54:00:0a:bc:de", "autostart": True}],
        lab={"target": "hyperv"},
    )
    script = hyperv.script(make_plan(load_profile(profile)))
    assert "Mac = '5254000ABCDE'; Autostart = $true;" in script


def test_hyperv_refuses_memory_it_cannot_take_before_writing(tmp_path: Path) -> None:
    job = built(tmp_path, "hyperv", memory="1001M")
    with pytest.raises(ProfileError) as caught:
        hyperv.export(job)
    lines = caught.value.lines()
    assert lines == [
        f'lab t for Hyper-V: vm "{name}": memory 1001M is not a whole multiple of 2 MiB, '
        "which Hyper-V needs (give memory in steps of 2 MiB, such as 1G or 1536M)"
        for name in ("web", "db")
    ]
    assert files(job.out) == []


def test_psquote_doubles_every_quote_powershell_reads() -> None:
    assert psquote("it's") == "'it''s'"
    assert psquote("a\u2019b\u2018c") == "'a\u2019\u2019b\u2018\u2018c'"
    assert psquote("$x `n") == "'$x `n'"


# ----------------------------------------------------------------------- VMware


def ova_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as ova:
        names = ova.getnames()
        members = {}
        for name in names:
            handle = ova.extractfile(name)
            assert handle is not None
            members[name] = handle.read()
        infos = ova.getmembers()
    assert all((i.uid, i.gid, i.mode, i.uname) == (0, 0, 0o644, "root") for i in infos)
    return members


def parse_vmx(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        assert sep and value.startswith('"') and value.endswith('"'), line
        assert key not in settings, key
        settings[key] = value[1:-1]
    return settings


def test_vmware_writes_an_ova_and_a_vmx_folder_per_vm(tmp_path: Path) -> None:
    job = built(tmp_path, "vmware")
    vmware.export(job)
    assert files(job.out) == [
        "db.ova",
        "vms/db/db.vmx",
        "vms/db/disk.vmdk",
        "vms/db/seed.iso",
        "vms/web/disk.vmdk",
        "vms/web/seed.iso",
        "vms/web/web.vmx",
        "web.ova",
    ]
    for vm in job.plan.vms:
        folder = job.out / "vms" / vm.name
        assert same_disk(folder / "disk.vmdk", "vmdk", job.disk(vm))
        assert "create type: monolithicSparse" in qemu_img(
            "info", "-f", "vmdk", folder / "disk.vmdk"
        )
        vmx = parse_vmx((folder / f"{vm.name}.vmx").read_text())
        assert vmx["displayName"] == vm.name
        assert vmx["numvcpus"] == str(vm.vcpus)
        assert vmx["memsize"] == str(vm.memory >> 20)
        assert (vmx["ethernet0.addressType"], vmx["ethernet0.address"]) == ("static", vm.mac)
        assert "ethernet0.checkMACAddress" not in vmx
        assert vmx["ethernet0.virtualDev"] == "vmxnet3"
        assert vmx["scsi0.virtualDev"] == "pvscsi"
        assert uuid.UUID(vmx["uuid.bios"].replace(" ", "").replace("-", "")) == uuid.UUID(vm.uuid)
        assert (folder / vmx["scsi0:0.fileName"]).is_file()
        assert (folder / vmx["ide1:0.fileName"]).read_bytes() == job.seed(vm).read_bytes()
        assert vmx["ethernet0.connectionType"] == "pvn"
        assert vmx["serial0.fileName"] == "serial.log"
    # One LAN segment for the lab: the VMs meet there, and nowhere else.
    segments = {parse_vmx(p.read_text())["ethernet0.pvnID"] for p in job.out.glob("vms/*/*.vmx")}
    assert segments == {vmware.lan_segment(job.plan)}


def test_vmware_ova_is_an_ovf_package_of_the_vm(tmp_path: Path) -> None:
    job = built(tmp_path, "vmware")
    vmware.export(job)
    web = job.plan.vm("web")
    members = ova_members(job.out / "web.ova")
    # The descriptor first, then the manifest, then the files as References lists them.
    assert list(members) == ["web.ovf", "web.mf", "web-disk1.vmdk", "web-seed.iso"]
    assert members["web.mf"].decode() == "".join(
        f"SHA256({name})= {hashlib.sha256(members[name]).hexdigest()}\n"
        for name in ("web.ovf", "web-disk1.vmdk", "web-seed.iso")
    )
    assert members["web-seed.iso"] == job.seed(web).read_bytes()
    stream = tmp_path / "web-disk1.vmdk"
    stream.write_bytes(members["web-disk1.vmdk"])
    assert "create type: streamOptimized" in qemu_img("info", "-f", "vmdk", stream)
    assert same_disk(stream, "vmdk", job.disk(web))

    root = ET.fromstring(members["web.ovf"])
    ovf = f"{{{NS['ovf']}}}"
    refs = {f.get(f"{ovf}id"): f for f in root.iter(f"{ovf}File")}
    assert refs["file1"].get(f"{ovf}href") == "web-disk1.vmdk"
    assert refs["file1"].get(f"{ovf}size") == str(len(members["web-disk1.vmdk"]))
    assert refs["file2"].get(f"{ovf}size") == str(len(members["web-seed.iso"]))
    disk = next(root.iter(f"{ovf}Disk"))
    virtual = qemu_img("info", "--output=json", "-f", "qcow2", job.disk(web))
    assert f'"virtual-size": {disk.get(f"{ovf}capacity")},' in virtual
    assert [n.get(f"{ovf}name") for n in root.iter(f"{ovf}Network")] == ["labnet"]
    items = {}
    for item in root.iter(f"{ovf}Item"):
        rasd = f"{{{NS['rasd']}}}"
        fields = {
            child.tag.removeprefix(rasd): child.text for child in item if child.tag.startswith(rasd)
        }
        # CIM's schema is a sequence: the fields must come in alphabetical order.
        assert list(fields) == sorted(fields)
        items[fields["ResourceType"]] = fields
    assert items["3"]["VirtualQuantity"] == str(web.vcpus)
    assert items["4"]["VirtualQuantity"] == str(web.memory >> 20)
    assert items["17"]["HostResource"] == "ovf:/disk/vmdisk1"
    assert items["15"]["HostResource"] == "ovf:/file/file2"
    assert (items["10"]["Address"], items["10"]["Connection"]) == (web.mac, "labnet")
    assert items["17"]["Parent"] == items["6"]["InstanceID"]
    assert items["15"]["Parent"] == items["5"]["InstanceID"]
    system = next(root.iter(f"{{{NS['vssd']}}}VirtualSystemType"))
    assert system.text == "vmx-13"


def test_vmware_ova_descriptor_is_the_same_on_every_export(tmp_path: Path) -> None:
    job = built(tmp_path, "vmware")
    vmware.export(job)
    first = ova_members(job.out / "web.ova")["web.ovf"]
    again = tmp_path / "again"
    again.mkdir()
    vmware.export(ExportJob(plan=job.plan, bundle=job.bundle, out=again, target=job.target))
    assert ova_members(again / "web.ova")["web.ovf"] == first


def test_vmware_takes_a_libvirt_mac_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = built(tmp_path, "libvirt-kvm", network=BRIDGE)
    vmware.export(job)
    for vm in job.plan.vms:
        vmx = parse_vmx((job.out / "vms" / vm.name / f"{vm.name}.vmx").read_text())
        assert vmx["ethernet0.address"] == vm.mac
        assert vmx["ethernet0.checkMACAddress"] == "FALSE"
        assert vmx["ethernet0.connectionType"] == "bridged"
    err = capsys.readouterr().err
    assert "vmbuild: warning: the MACs of web, db are outside VMware's static range" in err


def test_vmware_refuses_memory_it_cannot_take_before_writing(tmp_path: Path) -> None:
    job = built(tmp_path, "vmware", memory="1026M")
    with pytest.raises(ProfileError) as caught:
        vmware.export(job)
    assert caught.value.lines()[0] == (
        'lab t for VMware: vm "web": memory 1026M is not a whole multiple of 4 MiB, '
        "which VMware needs (give memory in steps of 4 MiB, such as 1G or 1536M)"
    )
    assert files(job.out) == []


def test_vmware_connection_follows_the_network(tmp_path: Path) -> None:
    profile = write_lab(tmp_path, vms=WEB_DB, lab={"target": "vmware"}, network=USER)
    plan = make_plan(load_profile(profile))
    vmx = parse_vmx(vmware.vmx(plan, plan.vms[0]))
    assert vmx["ethernet0.connectionType"] == "nat"
    assert vmware.network_name(plan.network) == "VM Network"


def test_vmware_guest_os_names() -> None:
    assert vmware.guest_os(debian_facts()) == vmware.GuestOs(96, "debian10_64Guest", "debian10-64")
    assert vmware.guest_os(None).ovf == "other3xLinux64Guest"


def test_vmx_values_are_escaped() -> None:
    assert vmware._vmx_value('a "b" | #c\n') == '"a |22b|22 |7C |23c|0A"'
    assert vmware._vmx_value("é") == '"é"'


def test_both_take_memory_in_their_steps(tmp_path: Path) -> None:
    # web has the default's 1538M, db its own 1G.
    profile = write_lab(tmp_path, vms=WEB_DB, defaults={"memory": "1538M"})
    plan = make_plan(load_profile(profile))
    assert hyperv.check(plan) == []
    assert [problem.place for problem in vmware.check(plan)] == ['vm "web"']


# ---------------------------------------------------------------------- golden files

GOLDEN = Path(__file__).resolve().parent / "golden" / "targets"


def text_outputs(job: ExportJob) -> dict[str, str]:
    """Every text file of an export, the OVF descriptors read out of the OVAs; the
    test's own folder written as <tmp>."""
    texts = {}
    for path in sorted(job.out.rglob("*")):
        name = str(path.relative_to(job.out))
        if path.suffix in (".ps1", ".vmx"):
            texts[name] = path.read_text(encoding="utf-8-sig")
        elif path.suffix == ".ova":
            texts[name + "/" + path.stem + ".ovf"] = ova_members(path)[path.stem + ".ovf"].decode()
    return {name: text.replace(str(job.bundle.parent), "<tmp>") for name, text in texts.items()}


@pytest.mark.parametrize("target", ["hyperv", "vmware"])
def test_golden(tmp_path: Path, target: str) -> None:
    """The text each target writes for the two-VM lab, file by file: what a change to
    a writer changes is seen in the diff (VMBUILD_REGEN=1 writes the files anew)."""
    job = built(tmp_path, target)
    (hyperv if target == "hyperv" else vmware).export(job)
    actual = text_outputs(job)
    expected = GOLDEN / target
    if os.environ.get("VMBUILD_REGEN") == "1":
        shutil.rmtree(expected, ignore_errors=True)
        for name, text in actual.items():
            (expected / name).parent.mkdir(parents=True, exist_ok=True)
            (expected / name).write_text(text)
    have = sorted(str(p.relative_to(expected)) for p in expected.rglob("*") if p.is_file())
    assert have == sorted(actual), f"{expected}: VMBUILD_REGEN=1 writes it"
    diffs: list[str] = []
    for name, text in actual.items():
        diffs += difflib.unified_diff(
            (expected / name).read_text().splitlines(keepends=True),
            text.splitlines(keepends=True),
            f"expected/{name}",
            f"actual/{name}",
        )
    assert not diffs, "".join(diffs)
