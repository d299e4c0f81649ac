"""The pure parts of deploy: volume names, the domain XML a host gets, the metadata
that says whose a domain is, the decision per VM, and --connect parsing."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from vmbuild.deploy import names
from vmbuild.deploy.deploy import Action, decide
from vmbuild.deploy.names import Owner, Placed
from vmbuild.deploy.survey import Live, parse_pairs
from vmbuild.deploy.volumes import _extents, copy_sparse
from vmbuild.errors import UserError

BUNDLE_XML = """<domain type="qemu">
  <name>web</name>
  <uuid>5a1c3c1e-7d8e-5a36-9c43-0f1b1f2d7f10</uuid>
  <description>demo: web.demo.example 192.0.2.10/24 (built by vmbuild)</description>
  <memory unit="KiB">1048576</memory>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" discard="unmap"/>
      <source file="/srv/out/demo/vms/web/disk.qcow2"/>
      <backingStore type="file">
        <format type="qcow2"/>
        <source file="/var/cache/vmbuild/golden/bookworm.qcow2">
          <seclabel model="dac" relabel="no"/>
        </source>
        <backingStore/>
      </backingStore>
      <target dev="vda" bus="virtio"/>
    </disk>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw"/>
      <source file="/srv/out/demo/vms/web/seed.iso"/>
      <target dev="hda" bus="ide"/>
      <readonly/>
    </disk>
  </devices>
</domain>
"""
PLACED = Placed(
    "/pool/demo+web+disk-aaaaaaaaaaaa.qcow2",
    "/pool/demo+web+seed-bbbbbbbbbbbb.iso",
    "/pool/vmbuild-golden-" + "c" * 64 + ".qcow2",
    "qcow2",
)
OWNER = Owner(
    lab="demo",
    vm="web",
    source="sha256:" + "1" * 64,
    digest="sha256:" + "2" * 64,
    pool="default",
    golden="vmbuild-golden-" + "c" * 64 + ".qcow2",
    disk="demo+web+disk-aaaaaaaaaaaa.qcow2",
    seed="demo+web+seed-bbbbbbbbbbbb.iso",
)


def test_volume_names_carry_lab_vm_and_content() -> None:
    sha = "0123456789abcdef" * 4
    assert names.disk_volume("demo", "web", sha, "qcow2") == "demo+web+disk-0123456789ab.qcow2"
    assert names.seed_volume("demo", "web", sha) == "demo+web+seed-0123456789ab.iso"
    assert names.golden_volume(sha, "raw") == f"vmbuild-golden-{sha}.raw"
    assert names.marker_volume("g.qcow2") == "g.qcow2.sha256"
    # One lab's prefix never matches another lab's volumes: "+" is in no name.
    assert not names.disk_volume("demo2", "web", sha, "qcow2").startswith(names.lab_prefix("demo"))


def test_host_xml_reads_disk_seed_and_golden_from_the_hosts_volumes() -> None:
    xml = ET.fromstring(names.host_xml(BUNDLE_XML, "vda", "hda", PLACED))
    disk, seed = xml.findall("devices/disk")
    assert disk.find("source").get("file") == PLACED.disk_path  # type: ignore[union-attr]
    assert seed.find("source").get("file") == PLACED.seed_path  # type: ignore[union-attr]
    backing = disk.find("backingStore/source")
    assert backing is not None and backing.get("file") == PLACED.golden_path
    # libvirt still must not relabel the shared golden image...
    assert backing.find("seclabel").get("relabel") == "no"  # type: ignore[union-attr]
    # ...and the chain ends there: nothing of the build host's paths is left.
    assert disk.find("backingStore/backingStore") is not None
    assert disk.find("backingStore/backingStore/source") is None
    assert "/srv/out" not in names.host_xml(BUNDLE_XML, "vda", "hda", PLACED)
    assert "/var/cache" not in names.host_xml(BUNDLE_XML, "vda", "hda", PLACED)


def test_host_xml_refuses_xml_without_the_planned_disks() -> None:
    with pytest.raises(Exception, match="no disk sdb"):
        names.host_xml(BUNDLE_XML, "vda", "sdb", PLACED)


def test_owner_round_trips_through_metadata_and_other_xml_has_none() -> None:
    xml = names.with_owner(names.host_xml(BUNDLE_XML, "vda", "hda", PLACED), OWNER)
    assert names.read_owner(xml) == OWNER
    root = ET.fromstring(xml)
    # Where libvirt itself keeps it: right after <description>.
    assert [child.tag for child in root][:4] == ["name", "uuid", "description", "metadata"]
    assert names.read_owner(BUNDLE_XML) is None
    assert names.read_owner("<domain><metadata><x/></metadata></domain>") is None
    assert names.read_owner("not xml") is None
    # A second owner replaces the first instead of adding one.
    again = names.with_owner(xml, OWNER)
    assert len(ET.fromstring(again).findall(f"metadata/{{{names.NS}}}lab")) == 1


def test_the_deployed_digest_changes_with_xml_disk_or_seed() -> None:
    base = names.deployed_digest("<x/>", "a", "b")
    assert base == names.deployed_digest("<x/>", "a", "b")
    assert len({base, names.deployed_digest("<y/>", "a", "b"),
                names.deployed_digest("<x/>", "c", "b"),
                names.deployed_digest("<x/>", "a", "c")}) == 4  # fmt: skip


def _live(name: str = "web", state: str = "shut off", owner: Owner | None = OWNER) -> Live:
    return Live(name, "u-" + name, state, owner, False, None)


@pytest.mark.parametrize(
    ("found", "intact", "replace", "action", "refusal"),
    [
        ((), True, False, Action.CREATE, ""),
        ((_live(),), True, False, Action.KEEP, ""),
        ((_live(),), False, False, Action.UPDATE, ""),  # a volume went missing
        ((_live(state="running"),), True, False, Action.KEEP, ""),
        ((_live(state="running"),), False, False, None, "is running, and deploying would"),
        ((_live(owner=None),), True, False, None, "was not deployed by this lab"),
        ((_live(owner=None),), True, True, Action.REPLACE, ""),
        ((_live(owner=None, state="running"),), True, True, None, "never touched"),
        ((_live(owner=Owner(**{**OWNER.__dict__, "lab": "other"})),), True, False, None,
         "was not deployed by this lab"),
    ],
)  # fmt: skip
def test_decide(
    found: tuple[Live, ...], intact: bool, replace: bool, action: Action | None, refusal: str
) -> None:
    decision = decide("demo", "web", OWNER.digest, intact, found, replace)
    assert decision.action is action
    assert refusal in decision.refusal + " " + decision.hint
    if action is None:
        assert decision.refusal


def test_a_changed_vm_is_updated_and_a_running_changed_one_refused() -> None:
    changed = "sha256:" + "9" * 64
    assert decide("demo", "web", changed, True, (_live(),), False).action is Action.UPDATE
    running = decide("demo", "web", changed, True, (_live(state="running"),), False)
    assert running.action is None and "vmbuild down" in running.hint


def test_connect_and_pool_pairs() -> None:
    assert parse_pairs(["qemu:///system"], "uri", "--connect") == {"local": "qemu:///system"}
    assert parse_pairs(["hv2=qemu+ssh://root@hv2.example/system?keyfile=/k=1"], "uri", "-c") == {
        "hv2": "qemu+ssh://root@hv2.example/system?keyfile=/k=1"
    }
    assert parse_pairs(["fast", "hv2=slow"], "pool", "--pool") == {"local": "fast", "hv2": "slow"}
    with pytest.raises(UserError, match="not a libvirt URI"):
        parse_pairs(["hv2"], "uri", "--connect")


def test_sparse_copy_keeps_bytes_and_holes(tmp_path: Path) -> None:
    source = tmp_path / "sparse"
    with source.open("wb") as out:
        out.seek(8 << 20)
        out.write(b"data" * 1024)
        out.seek(32 << 20)
        out.write(b"tail")
    copy = tmp_path / "copy"
    copy_sparse(source, copy)
    assert copy.read_bytes() == source.read_bytes()
    assert os.stat(copy).st_blocks * 512 < 1 << 20  # the holes stayed holes
    with source.open("rb") as handle:
        extents = _extents(handle.fileno(), source.stat().st_size)
    assert sum(length for data, _, length in extents if data) < 1 << 20
    assert sum(length for _, _, length in extents) == source.stat().st_size
