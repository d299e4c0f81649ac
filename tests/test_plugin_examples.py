"""The example plugins in plugins/examples/: what each one adds to the seed, the XML
and the plan, and, in one real build of a lab using all of them, to the disks."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pycdlib
import pytest
import yaml
from guestimages import read_guest_files
from labs import debian_facts as facts
from labs import write_lab
from vmbuild.guest.diskops import AuthorizedKeys, EnsureUser, WriteFile
from vmbuild.model.facts import NetStack
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import load_profile
from vmbuild.output.domain import domain_xml
from vmbuild.output.seed import seed_files
from vmbuild.plugins.manager import Plugins, load_plugins
from vmbuild_plugins.examples import extra_user, packages, second_nic

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = [
    "vmbuild_plugins.examples.packages",
    "vmbuild_plugins.examples.motd",
    "vmbuild_plugins.examples.extra_user",
    "vmbuild_plugins.examples.second_nic",
    "vmbuild_plugins.examples.cpu_passthrough",
]


def write_profile(
    folder: Path,
    image: Path | str = "golden.qcow2",
    examples: list[str] = EXAMPLES,
    *,
    domain_type: str = "kvm",
) -> Path:
    """Lab "examples": VMs node1 and node2 (192.0.2.10, .11) using the given examples."""
    return write_lab(
        folder, image, name="examples", lab={"domain_type": domain_type}, plugins=examples
    )


def planned(profile: Path) -> tuple[Plan, Plugins]:
    loaded = load_profile(profile)
    plugins = load_plugins(loaded)
    return make_plan(loaded, plugins), plugins


def test_packages_and_first_boot_command(tmp_path: Path) -> None:
    plan, plugins = planned(write_profile(tmp_path, examples=[EXAMPLES[0]]))
    text = seed_files(plan, plan.vms[0], plugins)["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["packages"] == packages.PACKAGES
    assert data["runcmd"] == [packages.FIRST_BOOT]
    assert data["hostname"] == "node1"  # the built-in user-data is still there


def test_motd_and_extra_user_are_disk_operations(tmp_path: Path) -> None:
    plan, plugins = planned(write_profile(tmp_path, examples=EXAMPLES[1:3]))
    operations = plugins.disk_operations(plan, plan.vms[1], facts())
    motd = [op for op in operations if isinstance(op, WriteFile) and op.path == "/etc/motd"]
    assert [op.content for op in motd] == [
        "node2.lab.example (192.0.2.11): VM 2 of 2 in lab examples\n"
    ]
    users = [op for op in operations if isinstance(op, EnsureUser)]
    assert [(op.user, op.sudo) for op in users] == [(extra_user.USER, False)]
    keys = [op for op in operations if isinstance(op, AuthorizedKeys)]
    assert [(op.user, op.keys) for op in keys] == [(extra_user.USER, extra_user.KEYS)]


def test_second_nic_in_plan_xml_and_network_config(tmp_path: Path) -> None:
    plan, plugins = planned(write_profile(tmp_path, examples=[EXAMPLES[3]]))
    nics = [vm.extra["second_nic"] for vm in plan.vms]
    assert [nic["ip"] for nic in nics] == ["203.0.113.10/24", "203.0.113.11/24"]
    assert len({nic["mac"] for nic in nics} | {vm.mac for vm in plan.vms}) == 4
    assert planned(write_profile(tmp_path, examples=[EXAMPLES[3]]))[0] == plan  # deterministic
    vm = plan.vms[0]
    domain = ET.fromstring(domain_xml(plan, vm, "/srv/examples", plugins))
    interfaces = domain.findall("devices/interface")
    assert [(i.find("source").get("bridge"), i.find("mac").get("address")) for i in interfaces] == [  # type: ignore[union-attr]
        ("br-test", vm.mac),
        (second_nic.BRIDGE, nics[0]["mac"]),
    ]
    network = yaml.safe_load(seed_files(plan, vm, plugins)["network-config"])
    assert network["ethernets"]["lan0"]["match"] == {"macaddress": vm.mac}
    assert network["ethernets"]["storage0"] == {
        "match": {"macaddress": nics[0]["mac"]},
        "set-name": "storage0",
        "dhcp4": False,
        "dhcp6": False,
        "addresses": ["203.0.113.10/24"],
    }
    native = plugins.disk_operations(plan, vm, facts())
    assert "/etc/network/interfaces.d/storage0" in [getattr(op, "path", "") for op in native]
    assert not [
        op
        for op in plugins.disk_operations(plan, vm, facts(NetStack.NETPLAN))
        if "storage0" in getattr(op, "path", "")
    ]
    assert second_nic.vmbuild_check_profile(load_profile(write_profile(tmp_path))) == []
    crowded = SimpleNamespace(vms=[None] * 250)  # more VMs than fit a /24 from .10
    problems = second_nic.vmbuild_check_profile(crowded)  # type: ignore[arg-type]
    assert [str(problem) for problem in problems] == [
        "plugin second_nic: 250 VMs do not fit in 203.0.113.0/24"
    ]


def test_cpu_passthrough_only_with_kvm(tmp_path: Path) -> None:
    for domain_type, modes in (("kvm", ["host-passthrough"]), ("qemu", [])):
        plan, plugins = planned(
            write_profile(tmp_path, examples=[EXAMPLES[4]], domain_type=domain_type)
        )
        domain = ET.fromstring(domain_xml(plan, plan.vms[0], "/srv/examples", plugins))
        assert [cpu.get("mode") for cpu in domain.findall("cpu")] == modes
        if modes:
            tags = [child.tag for child in domain]
            at = tags.index("features")
            assert tags[at : at + 3] == ["features", "cpu", "clock"]


def test_reference_lab_uses_examples() -> None:
    profile = load_profile(REPO / "profiles" / "reference-lab.toml")
    names = [info.name for info in load_plugins(profile).infos]
    assert "vmbuild_plugins.examples.motd" in names
    assert "vmbuild_plugins.examples.cpu_passthrough" in names
    xml = (REPO / "tests/golden/profiles/reference-lab/vms/slave1/domain.xml").read_text()
    assert '<cpu mode="host-passthrough"' in xml


# ------------------------------------------------------ one real build with all five


@dataclass
class Lab:
    bundle: Path
    files: dict[str, dict[str, bytes | None]]


@pytest.fixture(scope="module")
def lab(os_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from vmbuild.cli import main

    work = tmp_path_factory.mktemp("examples")
    assert main([str(write_profile(work, os_image)), "-o", str(work / "out"), "-q"]) == 0
    bundle = work / "out" / "examples"
    paths = (
        "/etc/motd",
        "/etc/passwd",
        f"/home/{extra_user.USER}/.ssh/authorized_keys",
        "/etc/network/interfaces.d/storage0",
        "/etc/systemd/network/10-vmbuild-storage0.link",
    )
    disks = {name: bundle / f"vms/{name}/disk.qcow2" for name in ("node1", "node2")}
    yield Lab(bundle, read_guest_files(disks, paths))


def _seed_file(iso_path: Path, name: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        return out.getvalue().decode()
    finally:
        iso.close()


@pytest.mark.guestfs
def test_all_examples_in_one_build(lab: Lab) -> None:
    plan = json.loads((lab.bundle / "plan.json").read_text())
    for index, vm in enumerate(plan["vms"]):
        name = vm["name"]
        disk = {path: (data or b"").decode() for path, data in lab.files[name].items()}
        assert (
            disk["/etc/motd"] == f"{vm['fqdn']} ({vm['ip']}): VM {index + 1} of 2 in lab examples\n"
        )
        assert any(
            line.startswith(f"{extra_user.USER}:") for line in disk["/etc/passwd"].splitlines()
        )
        assert disk[f"/home/{extra_user.USER}/.ssh/authorized_keys"] == extra_user.KEYS[0] + "\n"
        nic = vm["extra"]["second_nic"]
        assert f"address {nic['ip']}" in disk["/etc/network/interfaces.d/storage0"]
        assert f"MACAddress={nic['mac']}" in disk["/etc/systemd/network/10-vmbuild-storage0.link"]

        seed = lab.bundle / f"vms/{name}/seed.iso"
        user_data = yaml.safe_load(_seed_file(seed, "user-data"))
        assert user_data["packages"] == packages.PACKAGES
        network = yaml.safe_load(_seed_file(seed, "network-config"))
        assert network["ethernets"]["storage0"]["match"] == {"macaddress": nic["mac"]}

        xml = lab.bundle / f"vms/{name}/domain.xml"
        domain = ET.parse(xml).getroot()
        assert domain.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
        bridges = [s.get("bridge") for s in domain.findall("devices/interface/source")]
        assert bridges == ["br-test", second_nic.BRIDGE]
        if shutil.which("virt-xml-validate"):
            subprocess.run(["virt-xml-validate", str(xml), "domain"], check=True)
