"""vmbuild import --inspect on real disk images: each guest's hostname and static
address read from its own files, one guest family per format vmbuild knows, plus a
hostile guest, a DHCP one and a clone whose disk was copied and not changed. The
images are made in one launch (tests/guestimages.py) and read in one more: the
whole module is one `vmbuild import --inspect`.

The round trip (``libvirt``): a lab vmbuild built is defined on the test libvirtd,
dumped with `virsh dumpxml` and imported; the new profile plans the same VMs.
"""

from __future__ import annotations

import contextlib
import io
import json
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guestimages import ImageSpec, make_images
from labs import BRIDGE, nodes, write_lab
from libvirthelp import define, virsh
from vmbuild import cli, log
from vmbuild.model.plan import derive_mac, make_plan
from vmbuild.model.profile import load_profile

pytestmark = pytest.mark.guestfs

LAB = "inspected"
MACS = {f"slave{n}": derive_mac(LAB, f"slave{n}") for n in range(1, 7)}

#: Each guest's own network files, as each family writes a static address.
STATIC: dict[str, tuple[str, dict[str, str]]] = {
    "slave1": (
        "debian-ifupdown",
        {
            "/etc/hostname": "slave1\n",
            "/etc/network/interfaces": "source /etc/network/interfaces.d/*\n\nauto lo\n"
            "iface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet static\n"
            "    address 192.0.2.11\n    netmask 255.255.255.0\n    gateway 192.0.2.1\n"
            "    dns-nameservers 192.0.2.53 198.51.100.53\n",
        },
    ),
    "slave2": (
        "ubuntu-netplan",
        {
            "/etc/hostname": "slave2.lab.example\n",
            "/etc/netplan/50-cloud-init.yaml": "network:\n  version: 2\n  ethernets:\n"
            "    ens3:\n      match:\n        macaddress: " + MACS["slave2"] + "\n"
            "      addresses: [192.0.2.12/24]\n      routes:\n        - to: default\n"
            "          via: 192.0.2.1\n      nameservers:\n        addresses: [192.0.2.53]\n",
        },
    ),
    "slave3": (
        "fedora-nm",
        {
            "/etc/hostname": "slave3\n",
            "/etc/NetworkManager/system-connections/Wired connection 1.nmconnection": (
                "[connection]\nid=Wired connection 1\ntype=ethernet\ninterface-name=eth0\n\n"
                "[ipv4]\nmethod=manual\naddress1=192.0.2.13/24,192.0.2.1\ndns=192.0.2.53;\n"
            ),
        },
    ),
    "slave4": (
        "debian-networkd",
        {
            "/etc/hostname": "slave4\n",
            "/etc/systemd/network/80-dhcp.network": "[Match]\nName=eth0\n\n[Network]\n"
            "Address=192.0.2.14/24\nGateway=192.0.2.1\nDNS=192.0.2.53\n",
        },
    ),
    "slave5": (
        "centos7-ifcfg",
        {
            "/etc/hostname": "slave5\n",
            "/etc/sysconfig/network-scripts/ifcfg-eth0": 'DEVICE=eth0\nBOOTPROTO="none"\n'
            "ONBOOT=yes\nIPADDR=192.0.2.15\nNETMASK=255.255.255.0\nGATEWAY=192.0.2.1\n"
            "DNS1=192.0.2.53\n",
        },
    ),
    "slave6": (
        "rhel8-ifcfg",
        {
            "/etc/hostname": "slave6\n",
            "/etc/sysconfig/network": "NETWORKING=yes\nGATEWAY=192.0.2.1\n",
            "/etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nBOOTPROTO=static\n"
            "IPADDR0=192.0.2.16\nPREFIX0=24\nDNS1=192.0.2.53\n",
        },
    ),
    # slave1's disk copied and booted as it was: its name and address too
    "twin": ("debian-ifupdown", {}),
    # a DHCP guest, as every test image is until given a static address
    "dhcp": ("debian-ifupdown", {"/etc/hostname": "dhcp\n"}),
}
STATIC["twin"] = ("debian-ifupdown", dict(STATIC["slave1"][1]))


@dataclass(frozen=True)
class Run:
    code: int
    text: str
    err: str
    xml: dict[str, Path]


def _xml(name: str, disk: Path, mac: str, port: int) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='br-test'/>
      <model type='virtio'/>
    </interface>
    <graphics type='vnc' port='{port}' autoport='no' listen='127.0.0.1'/>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Every guest made in one launch, then `vmbuild import --inspect` on all of them."""
    folder = tmp_path_factory.mktemp("import-inspect")
    specs = {folder / f"{name}.qcow2": ImageSpec(family, files=files)
             for name, (family, files) in STATIC.items()}  # fmt: skip
    specs[folder / "hostile.qcow2"] = ImageSpec(
        "debian-ifupdown",
        symlinks={"/etc/hostname": "/etc/shadow", "/etc/network/interfaces.d": "/etc"},
        fifos=("/etc/network/interfaces", "/etc/resolv.conf"),
    )
    make_images(specs)
    xml = {}
    for number, disk in enumerate(sorted(specs), start=11):
        name = disk.stem
        # the slaves: MACs the lab's seed derives, ports 6001-6006; the others their own
        mac = MACS.get(name, f"00:16:3e:00:00:{number:02x}")
        port = 6000 + int(name[-1]) if name in MACS else 6000 + number
        xml[name] = folder / f"{name}.xml"
        xml[name].write_text(_xml(name, disk, mac, port))
    out = folder / f"{LAB}.toml"
    stdout, stderr = io.StringIO(), io.StringIO()
    log.set_verbosity(1)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["import", *map(str, xml.values()), "--inspect", "-o", str(out)])
    return Run(code, out.read_text() if out.exists() else "", stderr.getvalue(), xml)


def test_the_import_succeeds_in_one_appliance(run: Run) -> None:
    assert run.code == 0, run.err
    assert run.err.count("‣ Reading 9 disks, read-only, in one appliance") == 1


def test_each_family_s_static_address_makes_one_group(run: Run) -> None:
    data = tomllib.loads(run.text)
    assert data["network"] == {
        "type": "bridge",
        "source": "br-test",
        "subnet": "192.0.2.0/24",
        "gateway": "192.0.2.1",
        "dns": ["192.0.2.53"],
    }
    # slave2 says it is slave2.lab.example
    assert data["lab"] == {"name": LAB, "domain": "lab.example", "domain_type": "qemu"}
    group = next(vm for vm in data["vm"] if vm["name"] == "slave{n}")
    assert group == {"name": "slave{n}", "count": 6, "ip": "192.0.2.11", "vnc_port": 6001}
    assert "from its /etc/network/interfaces" not in run.text  # said once, for the group


def test_the_guests_that_give_no_address_are_todos(run: Run) -> None:
    vms = {vm["name"]: vm for vm in tomllib.loads(run.text)["vm"]}
    assert {name for name, vm in vms.items() if vm["ip"] == "TODO"} == {"dhcp", "hostile", "twin"}
    comments = " ".join(run.text.replace("\n# ", " ").split())
    assert "TODO: its guest takes its address eth0 by DHCP (/etc/network/interfaces)" in comments
    assert "TODO: its guest's network files give no static address" in comments  # hostile
    assert "twin" in vms and "hostname" not in vms["twin"]
    twin = f'vmbuild: warning: {run.xml["twin"]}: vm "twin": '
    assert f"{twin}its guest calls itself slave1, as vm 'slave1' is called" in run.err
    assert f"{twin}its guest has the address 192.0.2.11 of vm 'slave1'" in run.err


def test_a_hostile_guest_is_read_around_never_through(run: Run) -> None:
    hostile = f'vmbuild: warning: {run.xml["hostile"]}: vm "hostile": '
    assert f"{hostile}/etc/hostname is a symbolic link, not a file: not read" in run.err
    assert f"{hostile}/etc/network/interfaces is a FIFO, not a file: not read" in run.err
    assert "/etc/network/interfaces.d" in run.err  # a link to /etc: not searched
    assert "shadow" not in run.text


def test_the_written_profile_plans_every_mac_and_port(run: Run, tmp_path: Path) -> None:
    text = run.text
    for number in (21, 22, 23):
        text = text.replace('ip = "TODO"', f'ip = "192.0.2.{number}"', 1)
    profile = tmp_path / "lab.toml"
    profile.write_text(text)
    plan = make_plan(load_profile(profile))
    for vm in plan.vms:
        root = run.xml[vm.name].read_text()
        assert f"<mac address='{vm.mac}'/>" in root
        assert f"port='{vm.vnc.port}'" in root
    assert {vm.name: vm.ip for vm in plan.vms if vm.name.startswith("slave")} == {
        f"slave{n}": f"192.0.2.{10 + n}" for n in range(1, 7)
    }


# ------------------------------------------------------------------ round trip


@pytest.fixture
def defined(tmp_path: Path, os_image: Path, libvirtd: None) -> Iterator[tuple[Path, list[Path]]]:
    """A two-VM lab built by vmbuild, defined on the test libvirtd (names unique to
    this run), and each domain as `virsh dumpxml` gives it; undefined afterwards."""
    prefix = f"vmbuild-test-{uuid.uuid4().hex[:8]}-"
    lab = write_lab(
        tmp_path,
        os_image,
        name="roundtrip",
        lab={"domain_type": "qemu"},
        network=BRIDGE,
        defaults={"vcpus": 2, "memory": "768M", "vnc_listen": "0.0.0.0"},
        vms=(nodes(2, name=f"{prefix}node{{n}}", vnc_port=6101),),
    )
    code = cli.main([str(lab), "-o", str(tmp_path / "out"), "-q"])
    assert code == 0
    bundle = tmp_path / "out" / "roundtrip"
    names = [vm.name for vm in make_plan(load_profile(lab)).vms]
    existing = set(virsh("list", "--all", "--name").stdout.split())
    assert not existing & set(names), "refusing to touch domains that already exist"
    try:
        define(bundle)
        dumped = []
        for name in names:
            dumped.append(tmp_path / f"{name}.xml")
            dumped[-1].write_text(virsh("dumpxml", name).stdout)
        yield lab, dumped
    finally:
        for name in names:
            virsh("undefine", name, check=False)
    assert not set(virsh("list", "--all", "--name").stdout.split()) & set(names)


@pytest.mark.libvirt
def test_a_lab_defined_on_libvirt_imports_as_itself(
    defined: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    lab, dumped = defined
    again = tmp_path / "again.toml"
    code = cli.main(["import", *map(str, dumped), "--inspect", "-o", str(again), "-q"])
    assert code == 0
    data = tomllib.loads(again.read_text())
    assert data["lab"]["name"] == "roundtrip"  # its description names the lab
    assert len(data["vm"]) == 1 and data["vm"][0]["count"] == 2  # MACs the seed derives
    original = make_plan(load_profile(lab))
    imported = make_plan(load_profile(again))

    def identity(plan: object) -> list[tuple[object, ...]]:
        return [
            (vm.name, vm.mac, vm.vnc.port, vm.vnc.listen, vm.vcpus, vm.memory, vm.ip, vm.uuid)
            for vm in plan.vms  # type: ignore[attr-defined]
        ]

    assert identity(imported) == identity(original)
    assert imported.network.subnet == original.network.subnet
    assert imported.network.gateway == original.network.gateway
    assert json.loads(imported.to_json())["domain_type"] == "qemu"
