"""The boot tier on Debian 13: a golden image built from trixie's packages (its
6.12 kernel has the virtio drivers built in, and its modules compressed), the demo
lab built on it, defined and started on the system libvirtd, and every VM found to
be the machine its bundle describes, running Debian 13.

Bookworm's lab is booted by test_boot.py; together they cover every release
Debian's mirror serves as stable or oldstable. The lab runs under TCG on an
isolated network that its define.sh makes (no uplink, no host address); every
domain, network and file made here is removed again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from debiangolden import Built, build_once
from libvirthelp import BOOT_TIER, DemoLab, check_lab, demo_lab, virsh

pytestmark = BOOT_TIER


@pytest.fixture(scope="module")
def trixie_golden() -> Iterator[Built]:
    yield from build_once("trixie")


@pytest.fixture(scope="module")
def trixie_lab(trixie_golden: Built, libvirtd: None) -> Iterator[DemoLab]:
    with demo_lab(trixie_golden.path, "vmbuild-trixie") as lab:
        for name in lab.domains.values():
            virsh("start", name)
        yield lab


def test_the_trixie_golden_image_records_its_release(trixie_golden: Built) -> None:
    record = json.loads(Path(f"{trixie_golden.path}.json").read_text())
    assert record["recipe"]["release"] == "trixie", record


def test_a_trixie_lab_boots_as_built(trixie_lab: DemoLab) -> None:
    result = check_lab(trixie_lab.bundle)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 VMs match the bundle" in result.stdout
    for name in trixie_lab.domains.values():
        answer = virsh(
            "qemu-agent-command", name, json.dumps({"execute": "guest-get-osinfo"})
        ).stdout
        info = json.loads(answer)["return"]
        assert (info["id"], info["version-id"]) == ("debian", "13"), info
        assert info["kernel-release"].startswith("6.12"), info
