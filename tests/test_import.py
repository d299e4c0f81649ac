"""vmbuild import without an appliance: the domain XML read, the problems reported
file by file, the profile written (TOML that parses, [defaults], groups), and the
plan of that profile giving every VM the MAC and VNC port of its XML.

The XML is in tests/import_xml/: the blog's slave7 verbatim, a lab of eight hand
clones (hand-lab/), broken files (broken/); vmbuild's own XML is the golden demo
lab's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vmbuild.importer import netfiles
from vmbuild.importer.domxml import Disk, Domain, Nic, Vnc, machine_type, parse_domain
from vmbuild.importer.lab import import_lab
from vmbuild.importer.netfiles import GuestNet
from vmbuild.importer.writer import LabInput, VmInput, planned, toml_string, write
from vmbuild.model.plan import derive_mac

RunCli = Callable[..., Any]

HERE = Path(__file__).parent
XML = HERE / "import_xml"
BLOG = XML / "blog-slave7.xml"
HAND_LAB = sorted((XML / "hand-lab").glob("*.xml"))
BROKEN = XML / "broken"
DEMO = HERE / "golden" / "profiles" / "demo"
DOCS = HERE.parent / "docs" / "import.md"


def xml_identity(path: Path) -> tuple[str, str | None, int | None]:
    """(name, MAC, VNC port) as the XML says, read here without vmbuild."""
    root = ET.parse(path).getroot()
    mac = root.find("devices/interface/mac")
    vnc = root.find("devices/graphics[@type='vnc']")
    port = vnc.get("port") if vnc is not None else None
    return (
        root.findtext("name") or "",
        mac.get("address") if mac is not None else None,
        int(port) if port and port != "-1" else None,
    )


def fill(text: str, subnet: str, ips: Sequence[str]) -> str:
    """The profile with its TODOs given, as its user would: the subnet, then each
    VM's ip in order."""
    text = text.replace('subnet = "TODO"', f'subnet = "{subnet}"', 1)
    for ip in ips:
        assert 'ip = "TODO"' in text
        text = text.replace('ip = "TODO"', f'ip = "{ip}"', 1)
    assert 'TODO"' not in text
    return text


def plan_json(run_cli: RunCli, profile: Path) -> dict[str, Any]:
    result = run_cli("plan", profile, "--json")
    assert result.code == 0, result.err
    data: dict[str, Any] = json.loads(result.out)
    return data


def imported(run_cli: RunCli, folder: Path, *xml: Path, args: Sequence[str] = ()) -> Path:
    """`vmbuild import XML... -o folder/lab.toml`, which must succeed."""
    out = folder / "lab.toml"
    result = run_cli("import", *xml, "-o", out, *args)
    assert result.code == 0, result.err
    assert result.out == f"{out}\n"
    return out


# ------------------------------------------------------------------- the blog


def test_the_blog_xml_is_read_as_written() -> None:
    domain, findings = parse_domain(BLOG.read_bytes(), "blog-slave7.xml")
    assert domain is not None
    assert (domain.name, domain.domain_type, domain.vcpus) == ("slave7", "kvm", 3)
    assert domain.memory == 12 << 30
    assert domain.machine == "pc"
    assert domain.disk == Disk("/diskD/images/virtuals/slave7.img", "raw", "ide")
    assert domain.nic == Nic("bridge", "br0", "00:16:3e:5d:aa:79", None)
    assert domain.vnc == Vnc(6007, True, "0.0.0.0", "en-us")
    assert domain.uuid is None
    assert domain.dropped == ("cdrom /images/iso/ubuntu.iso", "emulator /usr/bin/kvm-spice")
    assert [(f.error, f.vm) for f in findings] == [(False, "slave7")]
    assert "autoport='yes'" in findings[0].message
    assert "keeps it as its fixed port" in findings[0].message


def test_the_blog_profile_is_the_one_docs_import_md_shows(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(BLOG, tmp_path)
    monkeypatch.chdir(tmp_path)
    result = run_cli("import", "blog-slave7.xml", "-o", "lab.toml")
    assert result.code == 0, result.err
    text = (tmp_path / "lab.toml").read_text()
    docs = DOCS.read_text()
    shown = re.search(r"<!-- import-output -->\n```toml\n(.*?)```\n", docs, re.S)
    assert shown is not None, "docs/import.md lost its example"
    assert text == shown.group(1), "docs/import.md shows another profile: update its example"
    messages = re.search(r"<!-- import-messages -->\n```text\n(.*?)```\n", docs, re.S)
    assert messages is not None
    assert result.err == messages.group(1)
    (tmp_path / "lab.toml").write_text(fill(text, "192.168.1.0/24", ["192.168.1.107"]))
    planned_ = run_cli("plan", "lab.toml")
    plan = re.search(r"<!-- import-plan -->\n```text\n(.*?)```\n", docs, re.S)
    assert plan is not None
    assert planned_.out == plan.group(1)


def test_the_blog_profile_s_last_comment_makes_the_eight_vms(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Its advice, followed: one group instead of eight hand-made clones."""
    profile = imported(run_cli, tmp_path, BLOG)
    text = fill(profile.read_text(), "192.168.1.0/24", ["192.168.1.101"])
    assert 'name = "slave{n}" and count = 8' in " ".join(text.replace("\n# ", " ").split())
    text = text.replace('name = "slave7"', 'name = "slave{n}"\ncount = 8')
    text = re.sub(r"mac = .*\n", "", text).replace("vnc_port = 6007", "vnc_port = 6001")
    profile.write_text(text)
    plan = plan_json(run_cli, profile)
    assert [(vm["name"], vm["ip"], vm["vnc"]["port"]) for vm in plan["vms"]] == [
        (f"slave{n}", f"192.168.1.{100 + n}", 6000 + n) for n in range(1, 9)
    ]
    assert len({vm["mac"] for vm in plan["vms"]}) == 8


def test_the_blog_warning_names_the_file_and_what_the_profile_does(
    run_cli: RunCli, tmp_path: Path
) -> None:
    result = run_cli("import", BLOG, "-o", tmp_path / "lab.toml")
    assert result.code == 0
    assert (
        f"vmbuild: warning: {BLOG}: vm \"slave7\": VNC port 6007 is not fixed (autoport='yes'): "
        "libvirt may give the VM another port at each start; the profile keeps it as its "
        "fixed port\n"
    ) in result.err
    assert "lab 'lab', 1 VM, 2 TODOs to fill in" in result.err


def test_validate_names_each_todo(run_cli: RunCli, tmp_path: Path) -> None:
    profile = imported(run_cli, tmp_path, BLOG)
    result = run_cli("validate", profile, "--no-base")
    assert result.code == 2
    assert result.err.splitlines() == [
        f"vmbuild: error: {profile}: network: subnet TODO is a TODO left by vmbuild import: "
        "give the network of the VMs' addresses, like 192.168.10.0/24",
        f'vmbuild: error: {profile}: vm "slave7": ip TODO is a TODO left by vmbuild import: '
        "give the VM's static address",
    ]


def test_the_blog_profile_once_given_its_address_plans_the_xml_s_vm(
    run_cli: RunCli, tmp_path: Path
) -> None:
    profile = imported(run_cli, tmp_path, BLOG)
    profile.write_text(fill(profile.read_text(), "192.168.1.0/24", ["192.168.1.107"]))
    assert run_cli("validate", profile, "--no-base").code == 0
    (vm,) = plan_json(run_cli, profile)["vms"]
    assert (vm["name"], vm["mac"], vm["vnc"]["port"]) == xml_identity(BLOG)
    assert vm["vnc"] == {"port": 6007, "listen": "0.0.0.0", "keymap": "en-us"}
    assert (vm["vcpus"], vm["memory"], vm["machine"]) == (3, 12 << 30, "pc")
    assert vm["disk"]["bus"] == "ide"
    assert vm["seed"]["bus"] == "ide"  # pc: the seed CD-ROM where the install ISO was
    data = tomllib.loads(profile.read_text())
    assert data["base"] == {"image": "/diskD/images/virtuals/slave7.img", "format": "raw"}
    assert data["network"]["source"] == "br0"


# ------------------------------------------------------------- eight clones


def test_eight_hand_clones_keep_every_mac_port_and_uuid(run_cli: RunCli, tmp_path: Path) -> None:
    # given in the shell's order: slave1.xml ... slave8.xml (and reversed: the same)
    profile = imported(run_cli, tmp_path, *reversed(HAND_LAB))
    text = profile.read_text()
    data = tomllib.loads(text)
    assert data["defaults"] == {
        "vcpus": 4,
        "memory": "12G",
        "disk_bus": "ide",
        "machine": "pc",
        "vnc_listen": "0.0.0.0",
        "vnc_keymap": "en-us",
    }
    assert [vm["name"] for vm in data["vm"]] == [f"slave{n}" for n in range(1, 9)]
    assert [vm.get("memory") for vm in data["vm"]] == [None] * 7 + ["16G"]
    assert all("uuid" in vm and "mac" in vm for vm in data["vm"])
    assert "redefines the domains in place" in text
    ips = [f"192.168.1.{100 + n}" for n in range(1, 9)]
    profile.write_text(fill(text, "192.168.1.0/24", ips))
    plan = plan_json(run_cli, profile)
    assert [(vm["name"], vm["mac"], vm["vnc"]["port"]) for vm in plan["vms"]] == [
        xml_identity(path) for path in HAND_LAB
    ]
    for vm, path in zip(plan["vms"], HAND_LAB, strict=True):
        assert vm["uuid"] == ET.parse(path).getroot().findtext("uuid")
    assert [vm["memory"] for vm in plan["vms"]] == [12 << 30] * 7 + [16 << 30]


def test_vms_come_in_name_order(run_cli: RunCli, tmp_path: Path) -> None:
    """slave2 before slave10, as a person counts, whatever the shell's order."""
    for number in (1, 2, 10):
        text = BLOG.read_text().replace("slave7", f"slave{number}")
        text = text.replace("aa:79", f"aa:{number:02x}").replace("6007", str(6000 + number))
        (tmp_path / f"slave{number}.xml").write_text(text)
    files = sorted(tmp_path.glob("*.xml"))  # slave1, slave10, slave2
    result = run_cli("import", *files, "-o", "-")
    assert result.code == 0, result.err
    names = [vm["name"] for vm in tomllib.loads(result.out)["vm"]]
    assert names == ["slave1", "slave2", "slave10"]


# -------------------------------------------------------- what vmbuild built


def test_a_lab_vmbuild_built_keeps_its_derived_identities(run_cli: RunCli, tmp_path: Path) -> None:
    xmls = sorted(DEMO.glob("vms/*/domain.xml"))
    out = tmp_path / "again.toml"
    result = run_cli("import", *xmls, "-o", out)
    assert result.code == 0, result.err
    data = tomllib.loads(out.read_text())
    assert data["lab"]["name"] == "demo"  # the lab the XML says vmbuild built them for
    assert data["network"]["type"] == "network"
    assert data["network"]["source"] == "vmbuild-demo"
    assert data["base"] == {"image": "/var/cache/vmbuild/golden/golden.qcow2", "format": "qcow2"}
    assert not any("mac" in vm or "uuid" in vm for vm in data["vm"])  # derived from the seed
    original = json.loads((DEMO / "plan.json").read_text())["vms"]
    ips = {vm["name"]: vm["ip"] for vm in original}
    out.write_text(fill(out.read_text(), "192.0.2.0/24", [ips[vm["name"]] for vm in data["vm"]]))
    again = {vm["name"]: vm for vm in plan_json(run_cli, out)["vms"]}
    for vm in original:
        twin = again[vm["name"]]
        for key in ("mac", "uuid", "vcpus", "memory", "machine", "hostname"):
            assert twin[key] == vm[key], key
        assert twin["vnc"] == vm["vnc"]


def test_another_name_keeps_the_seed_that_derives_them(run_cli: RunCli) -> None:
    xmls = sorted(DEMO.glob("vms/*/domain.xml"))
    result = run_cli("import", *xmls, "-o", "-", "--name", "demo2")
    assert result.code == 0, result.err
    data = tomllib.loads(result.out)
    assert (data["lab"]["name"], data["lab"]["seed"]) == ("demo2", "demo")
    assert not any("mac" in vm or "uuid" in vm for vm in data["vm"])


# ----------------------------------------------------------- the problems


def test_problems_are_listed_file_by_file_and_nothing_is_written(
    run_cli: RunCli, tmp_path: Path
) -> None:
    broken = sorted(BROKEN.glob("*.xml"))
    out = tmp_path / "lab.toml"
    result = run_cli("import", *broken, BLOG, "-o", out)
    assert result.code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    errors = [line for line in result.err.splitlines() if line.startswith("vmbuild: error: ")]
    by_file = {path.name: [e for e in errors if f"{path}: " in e] for path in (*broken, BLOG)}
    assert len(by_file["block-disk.xml"]) == 1
    assert "is a block device (dev /dev/vg0/onlvm)" in by_file["block-disk.xml"][0]
    assert "vmbuild's disks are files" in by_file["block-disk.xml"][0]
    assert "is a network disk" in by_file["network-disk.xml"][0]
    assert "protocol rbd" in by_file["network-disk.xml"][0]
    assert "is not a libvirt domain: its root element is <network>" in by_file["network.xml"][0]
    assert 'vm "diskless": has no disk' in by_file["no-disk.xml"][0]
    assert "is not XML: syntax error: line 1, column 0" in by_file["not-xml.xml"][0]
    # the clone whose MAC and VNC port were not changed: slave8 comes before blog-slave7
    forgot = by_file["blog-slave7.xml"]
    assert len(forgot) == 2
    assert (
        f'mac 00:16:3e:5d:aa:79 is also used by vm "slave8" in {BROKEN}/forgot-mac.xml'
        in (forgot[0])
    )
    assert 'VNC port 6007 is also used by vm "slave8"' in forgot[1]
    assert sum(len(lines) for lines in by_file.values()) == len(errors) == 7
    assert "vmbuild: warning: " in result.err  # the warnings are printed too


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("<interface type='bridge'>", "<interface type='direct'>", "of type 'direct'"),
        ("00:16:3e:5d:aa:79", "01:16:3e:5d:aa:79", "is a multicast address"),
        ("port='6007'", "port='5800'", "VNC port 5800 is outside 5900-65535"),
        ("<domain type='kvm'>", "<domain type='xen'>", "domain type 'xen'"),
        ("<name>slave7</name>", "<name>slave 7</name>", "is not a valid name"),
        ("<name>slave7</name>", "<name>s{n}</name>", "has braces"),
        ("12582912", "twelve", "memory 'twelve' 'KiB' is not an amount"),
        ("type='raw'", "type='vmdk'", "its disk is vmdk"),
        ("<os>", "<!DOCTYPE x [<!ENTITY a 'b'>]><os>", "DOCTYPE"),
        ("<source bridge='br0'/>", "<source bridge='br0;reboot'/>", "not a name vmbuild accepts"),
        ("slave7.img", "slave7.img&#10;x", "has a control character (U+000A LINE FEED)"),
    ],
)
def test_what_vmbuild_cannot_reproduce_is_an_error(
    run_cli: RunCli, tmp_path: Path, old: str, new: str, message: str
) -> None:
    xml = tmp_path / "vm.xml"
    xml.write_text(BLOG.read_text().replace(old, new))
    result = run_cli("import", xml, "-o", tmp_path / "lab.toml")
    assert result.code == 2, result.err
    assert f"vmbuild: error: {xml}" in result.err
    assert message in result.err
    assert not (tmp_path / "lab.toml").exists()


def test_what_vmbuild_does_otherwise_is_a_warning(run_cli: RunCli, tmp_path: Path) -> None:
    text = (
        BLOG.read_text()
        .replace("port='6007' autoport='yes'", "autoport='yes'")
        .replace("<boot dev='hd'/>", "<boot dev='hd'/><loader>/usr/share/OVMF.fd</loader>")
        .replace(
            "</interface>",
            "</interface><interface type='bridge'><source bridge='br1'/>"
            "<mac address='00:16:3e:00:00:02'/></interface>",
        )
        .replace("keymap='en-us'", "keymap='en-us' passwd='secret'")
        .replace("machine='pc'", "machine='pc-i440fx-7.2'")
    )
    xml = tmp_path / "vm.xml"
    xml.write_text(text)
    result = run_cli("import", xml, "-o", tmp_path / "lab.toml")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "warning" in line]
    assert all(line.startswith(f'vmbuild: warning: {xml}: vm "slave7": ') for line in warnings)
    joined = "\n".join(warnings)
    assert "autoport='yes') and the XML gives none: the profile derives a fixed one" in joined
    assert "boots with UEFI firmware" in joined
    assert "00:16:3e:00:00:02 is not imported" in joined
    assert "has a password: vmbuild sets none" in joined
    vm = tomllib.loads((tmp_path / "lab.toml").read_text())["vm"][0]
    assert "vnc_port" not in vm  # derived: 5901


def test_two_networks_are_two_labs(run_cli: RunCli, tmp_path: Path) -> None:
    other = tmp_path / "slave8.xml"
    other.write_text(
        BLOG.read_text()
        .replace("slave7", "slave8")
        .replace("br0", "br1")
        .replace("aa:79", "aa:80")
        .replace("6007", "6008")
    )
    result = run_cli("import", BLOG, other, "-o", tmp_path / "lab.toml")
    assert result.code == 2
    assert (
        f'vmbuild: error: {other}: vm "slave8": is on bridge br1, but vm "slave7" in {BLOG} '
        "is on bridge br0: a vmbuild lab has one network (import the VMs of each network into "
        "a profile of its own)"
    ) in result.err


# --------------------------------------------------------------- the output


def test_an_existing_profile_is_kept_unless_force(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "lab.toml"
    out.write_text("# mine\n")
    result = run_cli("import", BLOG, "-o", out)
    assert result.code == 2
    assert result.err == f"vmbuild: error: {out}: exists already (--force replaces it)\n"
    assert out.read_text() == "# mine\n"
    assert run_cli("import", BLOG, "-o", out, "--force").code == 0
    assert out.read_text().startswith("# A vmbuild lab profile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.toml"]  # no temporary left


def test_a_link_at_the_output_is_replaced_not_followed(run_cli: RunCli, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    link = tmp_path / "lab.toml"
    link.symlink_to(target)
    assert run_cli("import", BLOG, "-o", link).code == 2  # it exists
    assert run_cli("import", BLOG, "-o", link, "--force").code == 0
    assert target.read_text() == "keep\n"
    assert not link.is_symlink()


def test_dash_writes_the_profile_to_stdout(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("import", BLOG, "-o", "-", "--name", "blog")
    assert result.code == 0
    data = tomllib.loads(result.out)
    assert data["lab"]["name"] == "blog"
    assert "warning" in result.err and "warning" not in result.out


def test_a_bad_name_is_refused(run_cli: RunCli) -> None:
    result = run_cli("import", BLOG, "-o", "-", "--name", "my lab")
    assert result.code == 2
    assert "--name 'my lab' is not a valid name" in result.err
    assert result.out == ""


def test_import_help(run_cli: RunCli) -> None:
    result = run_cli("import", "--help")
    assert result.code == 0
    assert result.out.startswith("Usage: vmbuild import [OPTIONS] {DOMAIN.xml...}\n")
    for text in ("--output", "--inspect", "--name", "--force", "virsh dumpxml", "TODO"):
        assert text in result.out


def test_disk_sizes_and_backing_files_come_from_qemu_img(run_cli: RunCli, tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    template = tmp_path / "template.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(template), "1G"], check=True)
    files = []
    for number in (1, 2):
        disk = tmp_path / f"clone{number}.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "template.qcow2",
                "-F",
                "qcow2",
                str(disk),
                "20G",
            ],
            check=True,
        )
        text = (
            BLOG.read_text()
            .replace("slave7", f"clone{number}")
            .replace("/diskD/images/virtuals/clone", str(tmp_path / "clone"))
            .replace(".img", ".qcow2")
            .replace("type='raw'", "type='qcow2'")
            .replace("aa:79", f"aa:{number:02x}")
            .replace("6007", str(6000 + number))
        )
        files.append(tmp_path / f"clone{number}.xml")
        files[-1].write_text(text)
    result = run_cli("import", *files, "-o", "-")
    assert result.code == 0, result.err
    data = tomllib.loads(result.out)
    assert data["base"] == {"image": str(template), "format": "qcow2"}
    assert "overlay on this image" in result.out
    assert data["defaults"]["disk_size"] == "20G"
    assert 'disk_mode = "copy"' not in result.out  # overlays already


# ---------------------------------------------------------- groups (writer)


def _domain(name: str, mac: str | None, port: int | None, **changes: Any) -> Domain:
    return Domain(
        file=f"{name}.xml",
        name=name,
        domain_type="kvm",
        uuid=None,
        vcpus=changes.get("vcpus", 2),
        memory=1 << 30,
        machine="pc",
        machine_given="pc-i440fx-7.2",
        disk=Disk(f"/srv/{name}.qcow2", "qcow2", "virtio"),
        nic=Nic("bridge", "br0", mac, "virtio"),
        vnc=Vnc(port, port is None, "127.0.0.1", None),
    )


def _guest(ip: str, hostname: str | None = None) -> GuestNet:
    return GuestNet(
        hostname=hostname,
        address=IPv4Interface(ip),
        gateway=IPv4Address("192.0.2.1"),
        dns=(IPv4Address("192.0.2.53"),),
        source="/etc/network/interfaces",
    )


def _lab(vms: Sequence[VmInput], name: str = "nodes") -> LabInput:
    return LabInput(name, "", tuple(vms), "/srv/golden.qcow2", "qcow2", "", inspected=True)


def _check(lab: LabInput, text: str) -> None:
    """The written text plans (with its real addresses) every VM as its XML says."""
    data = tomllib.loads(text)
    assert "TODO" not in text
    from vmbuild.model.plan import make_plan
    from vmbuild.model.profile import parse_profile

    plan = make_plan(parse_profile(data, Path("nodes.toml")))
    for vm, wanted in zip(plan.vms, lab.vms, strict=True):
        domain = wanted.domain
        assert vm.name == domain.name
        assert vm.mac == (domain.nic.mac if domain.nic and domain.nic.mac else vm.mac)
        assert vm.vnc.port == (domain.vnc.port if domain.vnc and domain.vnc.port else vm.vnc.port)
        assert wanted.guest is not None and wanted.guest.address is not None
        assert vm.ip == str(wanted.guest.address.ip)


def _nodes(
    count: int, *, first: int = 1, width: int = 0, mac: Callable[[str], str | None]
) -> list[VmInput]:
    out = []
    for offset in range(count):
        name = f"node{str(first + offset).zfill(width)}"
        out.append(
            VmInput(
                _domain(name, mac(name), 6001 + offset),
                20 << 30,
                guest=_guest(f"192.0.2.{11 + offset}/24"),
            )
        )
    return out


def test_a_sequence_with_derived_macs_is_one_group() -> None:
    lab = _lab(_nodes(4, mac=lambda name: derive_mac("nodes", name)))
    written = write(lab)
    data = tomllib.loads(written.text)
    assert data["vm"] == [{"name": "node{n}", "count": 4, "ip": "192.0.2.11", "vnc_port": 6001}]
    assert data["network"] == {
        "type": "bridge",
        "source": "br0",
        "subnet": "192.0.2.0/24",
        "gateway": "192.0.2.1",
        "dns": ["192.0.2.53"],
    }
    assert data["defaults"]["disk_size"] == "20G"
    _check(lab, written.text)


def test_a_padded_sequence_from_zero_is_a_group_with_first() -> None:
    lab = _lab(_nodes(3, first=0, width=2, mac=lambda name: derive_mac("nodes", name)))
    data = tomllib.loads(write(lab).text)
    assert data["vm"] == [
        {"name": "node{n:02}", "count": 3, "first": 0, "ip": "192.0.2.11", "vnc_port": 6001}
    ]
    _check(lab, write(lab).text)


def test_hand_made_macs_make_single_vms() -> None:
    lab = _lab(_nodes(3, mac=lambda name: "00:16:3e:00:00:" + name[-2:].replace("e", "0")))
    data = tomllib.loads(write(lab).text)
    assert [vm["name"] for vm in data["vm"]] == ["node1", "node2", "node3"]
    assert all("mac" in vm for vm in data["vm"])
    _check(lab, write(lab).text)


def test_a_group_breaks_where_the_sequence_does() -> None:
    vms = _nodes(5, mac=lambda name: derive_mac("nodes", name))
    vms[3] = VmInput(
        _domain("node4", derive_mac("nodes", "node4"), 6004, vcpus=8),
        20 << 30,
        guest=_guest("192.0.2.14/24"),
    )
    lab = _lab(vms)
    data = tomllib.loads(write(lab).text)
    assert [(vm["name"], vm.get("count", 1), vm.get("vcpus")) for vm in data["vm"]] == [
        ("node{n}", 3, None),
        ("node4", 1, 8),
        ("node5", 1, None),
    ]
    _check(lab, write(lab).text)


def test_a_port_libvirt_chose_does_not_take_a_fixed_one() -> None:
    """node1's port is libvirt's choice (derived: 5901), node2 has 5901 fixed."""
    vms = [
        VmInput(_domain("a", derive_mac("nodes", "a"), None), guest=_guest("192.0.2.11/24")),
        VmInput(_domain("b", derive_mac("nodes", "b"), 5901), guest=_guest("192.0.2.12/24")),
    ]
    plan = planned(write(_lab(vms)).text, _lab(vms))
    assert [vm.vnc.port for vm in plan.vms] == [5902, 5901]


def test_guests_that_share_a_hostname_or_address_are_not_given_it() -> None:
    vms = [
        VmInput(_domain("web", "00:16:3e:00:00:01", 6001), guest=_guest("192.0.2.11/24", "web")),
        VmInput(_domain("db", "00:16:3e:00:00:02", 6002), guest=_guest("192.0.2.11/24", "web")),
        VmInput(
            _domain("cache", "00:16:3e:00:00:03", 6003), guest=_guest("192.0.2.13/24", "memcached")
        ),
    ]
    written = write(_lab(vms))
    data = tomllib.loads(written.text)
    assert [(vm["name"], vm.get("hostname"), vm["ip"]) for vm in data["vm"]] == [
        ("web", None, "192.0.2.11"),
        ("db", None, "TODO"),
        ("cache", "memcached", "192.0.2.13"),
    ]
    first, second = (message for vm, message in written.warnings if vm == "db")
    assert first.startswith("its guest calls itself web, as vm 'web' is called")
    assert second.startswith("its guest has the address 192.0.2.11 of vm 'web'")
    assert [vm for vm, _message in written.warnings] == ["db", "db"]


# ---------------------------------------------------------------- TOML


@given(st.text())
def test_toml_strings_round_trip(text: str) -> None:
    assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text


def test_odd_paths_are_quoted(run_cli: RunCli, tmp_path: Path) -> None:
    odd = '/srv/my "lab"\\ünïcode #1.img'
    xml = tmp_path / "vm.xml"
    xml.write_text(
        BLOG.read_text().replace("/diskD/images/virtuals/slave7.img", odd.replace('"', "&quot;"))
    )
    result = run_cli("import", xml, "-o", "-")
    assert result.code == 0, result.err
    assert tomllib.loads(result.out)["base"]["image"] == odd


def test_every_machine_type_libvirt_writes() -> None:
    assert [machine_type(m) for m in ("pc", "pc-i440fx-7.2", "pc-1.0", "ubuntu")] == ["pc"] * 4
    assert [machine_type(m) for m in ("q35", "pc-q35-7.2", "ubuntu-q35")] == ["q35"] * 3
    assert machine_type("microvm") is None


@pytest.mark.parametrize(
    ("amount", "unit", "size"),
    [
        ("12582912", "KiB", 12 << 30),
        ("4", "GiB", 4 << 30),
        ("2048", "M", 2 << 30),
        ("1073741824", "b", 1 << 30),
        ("12582912", None, 12 << 30),
    ],
)
def test_memory_in_libvirt_s_units(amount: str, unit: str | None, size: int) -> None:
    attr = f" unit='{unit}'" if unit else ""
    text = re.sub(
        r"<memory unit='KiB'>12582912</memory>",
        f"<memory{attr}>{amount}</memory>",
        BLOG.read_text(),
    )
    domain, _ = parse_domain(text.encode(), "x.xml")
    assert domain is not None and domain.memory == size


def test_a_libvirt_network_and_its_vm_without_vnc() -> None:
    text = (
        BLOG.read_text()
        .replace("<interface type='bridge'>", "<interface type='network'>")
        .replace("<source bridge='br0'/>", "<source network='default'/><model type='e1000'/>")
        .replace("type='vnc'", "type='spice'")
    )
    domain, findings = parse_domain(text.encode(), "x.xml")
    assert domain is not None
    assert domain.nic == Nic("network", "default", "00:16:3e:5d:aa:79", "e1000")
    assert domain.vnc is None
    assert any("spice graphics" in f.message for f in findings)


def test_stdin_is_read_once(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(BLOG.read_bytes())))
    result = run_cli("import", "-", "-o", "-")
    assert result.code == 0, result.err
    assert "#   slave7  <stdin>" in result.out
    assert run_cli("import", "-", "-", "-o", "-").code == 2


def test_the_library_call_raises_every_problem() -> None:
    from vmbuild.importer.domxml import ImportProblems

    with pytest.raises(ImportProblems) as caught:
        import_lab([str(BROKEN / "no-disk.xml"), str(BROKEN / "missing.xml")])
    assert [line.split(": ", 1)[1] for line in caught.value.lines()] == [
        'vm "diskless": has no disk (vmbuild makes each VM\'s disk from the golden image)',
        "no such file",
    ]
    assert caught.value.exit_code == 2


# ---------------------------------------------------------- network files


def test_ifupdown_static_and_dhcp() -> None:
    text = (
        "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n\n"
        "allow-hotplug eth0\niface eth0 inet static\n  address 192.0.2.11\n"
        "  netmask 255.255.255.0\n  gateway 192.0.2.1\n  dns-nameservers 192.0.2.53 192.0.2.54\n"
        "  dns-search lab.example\n\niface eth1 inet dhcp\n"
    )
    static, dhcp = netfiles.ifupdown(text, "/etc/network/interfaces")
    assert static.address == IPv4Interface("192.0.2.11/24")
    assert static.gateway == IPv4Address("192.0.2.1")
    assert static.dns == (IPv4Address("192.0.2.53"), IPv4Address("192.0.2.54"))
    assert static.search == ("lab.example",)
    assert (dhcp.interface, dhcp.address) == ("eth1", None)
    (cidr,) = netfiles.ifupdown("iface lan0 inet static\n address 10.1.2.3/16\n", "x")
    assert cidr.address == IPv4Interface("10.1.2.3/16")


def test_netplan_routes_and_gateway4() -> None:
    text = """
network:
  version: 2
  ethernets:
    ens3:
      match: {macaddress: "52:54:00:AA:BB:CC"}
      addresses: [192.0.2.12/24]
      routes: [{to: default, via: 192.0.2.1}]
      nameservers: {addresses: [192.0.2.53], search: [lab.example]}
    ens4:
      dhcp4: true
"""
    static, dhcp = netfiles.netplan(text, "/etc/netplan/50.yaml")
    assert (static.mac, static.address, static.gateway) == (
        "52:54:00:aa:bb:cc",
        IPv4Interface("192.0.2.12/24"),
        IPv4Address("192.0.2.1"),
    )
    assert dhcp.address is None
    (old,) = netfiles.netplan(
        "network:\n  ethernets:\n    eth0:\n      addresses: ['10.0.0.5/8']\n"
        "      gateway4: 10.0.0.1\n",
        "x",
    )
    assert old.gateway == IPv4Address("10.0.0.1")


def test_networkmanager_keyfiles_old_and_new() -> None:
    new = (
        "[connection]\nid=lan\ntype=ethernet\n\n[ethernet]\nmac-address=52:54:00:AA:BB:CC\n\n"
        "[ipv4]\nmethod=manual\naddress1=192.0.2.13/24,192.0.2.1\ndns=192.0.2.53;\n"
    )
    (config,) = netfiles.networkmanager(new, "x")
    assert (config.mac, config.address, config.gateway, config.dns) == (
        "52:54:00:aa:bb:cc",
        IPv4Interface("192.0.2.13/24"),
        IPv4Address("192.0.2.1"),
        (IPv4Address("192.0.2.53"),),
    )
    old = "[connection]\ntype=802-3-ethernet\n[ipv4]\nmethod=manual\n"
    old += "addresses1=10.0.0.5;8;10.0.0.1;\n"
    (config,) = netfiles.networkmanager(old, "x")
    assert (config.address, config.gateway) == (
        IPv4Interface("10.0.0.5/8"),
        IPv4Address("10.0.0.1"),
    )
    assert netfiles.networkmanager("[connection]\ntype=wifi\n", "x") == []


def test_networkd_and_ifcfg() -> None:
    (config,) = netfiles.networkd(
        "[Match]\nMACAddress=52:54:00:aa:bb:cc\n\n[Network]\nDNS=192.0.2.53\n\n"
        "[Address]\nAddress=192.0.2.14/24\n\n[Route]\nGateway=192.0.2.1\n",
        "x",
    )
    assert (config.address, config.gateway) == (
        IPv4Interface("192.0.2.14/24"),
        IPv4Address("192.0.2.1"),
    )
    (config,) = netfiles.ifcfg(
        'DEVICE=eth0\nBOOTPROTO="none"\nIPADDR=192.0.2.15\nNETMASK=255.255.255.0\nDNS1=192.0.2.53\n',
        "x",
        network="NETWORKING=yes\nGATEWAY=192.0.2.1\n",
    )
    assert (config.address, config.gateway) == (
        IPv4Interface("192.0.2.15/24"),
        IPv4Address("192.0.2.1"),
    )
    assert netfiles.ifcfg("DEVICE=eth0\nBOOTPROTO=dhcp\n", "x")[0].address is None


def test_names_and_resolvers() -> None:
    assert netfiles.hostname_file("slave7.lab.example\n") == ("slave7", "lab.example")
    assert netfiles.hostname_file("localhost\n") == (None, None)
    assert netfiles.hosts_domain("127.0.1.1\tslave7.lab.example slave7\n", "slave7") == (
        "lab.example"
    )
    dns, search = netfiles.resolv_conf(
        "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch a.example\n"
    )
    assert (dns, search) == ((IPv4Address("192.0.2.53"),), ("a.example",))


@given(st.text(max_size=400))
def test_the_readers_take_anything(text: str) -> None:
    """A hostile guest's files: whatever they hold, the readers return, never raise."""
    for reader in (
        netfiles.ifupdown,
        netfiles.netplan,
        netfiles.networkmanager,
        netfiles.networkd,
        netfiles.ifcfg,
    ):
        reader(text, "x")
    netfiles.resolv_conf(text)
    netfiles.hostname_file(text)
    netfiles.hosts_domain(text, "x")


@given(st.binary(max_size=600))
def test_the_xml_reader_takes_anything(data: bytes) -> None:
    domain, findings = parse_domain(data, "x.xml")
    assert domain is not None or any(f.error for f in findings)
