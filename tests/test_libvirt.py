"""Real libvirt: every generated domain XML passes virt-xml-validate, and a built
lab is defined with its own define.sh on a running libvirtd, then undefined. The
built lab's disks are edited in the appliance (``guestfs``); the XML checks need
neither libvirtd nor the appliance.

.ci/run starts libvirtd and sets VMBUILD_REQUIRE_LIBVIRT=1, so there a missing
libvirtd fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from libvirthelp import define, need, virsh
from vmbuild.cli import main

REPO = Path(__file__).resolve().parent.parent


def _domain_type() -> str:
    caps = virsh("domcapabilities", "--virttype", "kvm", check=False)
    return "kvm" if caps.returncode == 0 else "qemu"


def _all_generated_xml() -> list[Path]:
    return sorted((REPO / "tests" / "golden").rglob("domain.xml"))


@pytest.mark.parametrize(
    "xml", _all_generated_xml(), ids=lambda p: str(p.relative_to(REPO / "tests" / "golden"))
)
def test_golden_xml_passes_virt_xml_validate(xml: Path) -> None:
    need("virt-xml-validate")
    result = subprocess.run(
        ["virt-xml-validate", str(xml), "domain"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.fixture
def reference_bundle(tmp_path: Path, golden: Path) -> Iterator[Path]:
    """The reference lab, built on a small golden image, with VM names made unique so
    that no domain already on this host is ever touched."""
    prefix = f"vmbuild-test-{uuid.uuid4().hex[:8]}-"
    code = main(
        [
            str(REPO / "profiles" / "reference-lab.toml"),
            "-o",
            str(tmp_path / "out"),
            "-q",
            "--base",
            str(golden),
            "--set",
            f"vm.1.name={prefix}slave{{n}}",
            "--set",
            "vm.1.hostname=slave{n}",
            "--set",
            f"lab.seed={prefix}",
            "--set",
            f"lab.domain_type={_domain_type()}",
        ]
    )
    assert code == 0
    yield tmp_path / "out" / "reference-lab"


@pytest.mark.libvirt
@pytest.mark.guestfs
def test_reference_lab_defines_on_real_libvirt(libvirtd: None, reference_bundle: Path) -> None:
    need("virt-xml-validate")
    xmls = sorted(reference_bundle.glob("vms/*/domain.xml"))
    assert len(xmls) == 8
    names = [ET.parse(x).findtext("name") or "" for x in xmls]
    existing = set(virsh("list", "--all", "--name").stdout.split())
    assert not existing & set(names), "refusing to touch domains that already exist"
    for xml in xmls:
        result = subprocess.run(
            ["virt-xml-validate", str(xml), "domain"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    try:
        define(reference_bundle)
        for xml in xmls:
            ours = ET.parse(xml).getroot()
            name = ours.findtext("name") or ""
            live = ET.fromstring(virsh("dumpxml", name).stdout)
            assert live.findtext("uuid") == ours.findtext("uuid")
            mac = live.find("devices/interface/mac")
            assert mac is not None
            assert mac.get("address") == ours.find("devices/interface/mac").get("address")  # type: ignore[union-attr]
            graphics = live.find("devices/graphics")
            assert graphics is not None
            assert graphics.get("autoport") == "no"
            assert graphics.get("port") == ours.find("devices/graphics").get("port")  # type: ignore[union-attr]
            sources = [s.get("file") for s in live.iter("source") if s.get("file")]
            assert str(reference_bundle / "vms") in sources[0]
            assert any(s.endswith("seed.iso") for s in sources)
        # Defining again (a rebuilt lab) updates the same domains: UUIDs are stable.
        define(reference_bundle)
    finally:
        for name in names:
            virsh("undefine", name, check=False)
    left = set(virsh("list", "--all", "--name").stdout.split())
    assert not left & set(names)


@pytest.mark.guestfs
def test_define_sh_refuses_a_moved_bundle(reference_bundle: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    reference_bundle.rename(moved)
    result = subprocess.run(
        ["sh", str(moved / "define.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/nonexistent:" + os.environ["PATH"]},
    )
    assert result.returncode == 1
    assert "this bundle was built for" in result.stderr
