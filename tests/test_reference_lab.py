"""The 8-VM reference lab built on a real Debian golden image: read back through
libguestfs, every disk is its own machine, the one the bundle says it is.

The golden image is the one the test run builds from Debian's packages
(tests/debiangolden.py), shared with the boot tier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from debiangolden import Built
from expected import NATIVE
from guestimages import read_guest_files
from vmbuild.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.guestfs, pytest.mark.golden_image]

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "reference-lab.toml"
KEY_TYPES = ("ed25519", "ecdsa", "rsa")


def test_eight_disks_are_eight_distinct_machines(debian_golden: Built, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(
        ["build", str(PROFILE), "--output", str(out), "--base", str(debian_golden.path), "-q"]
    )
    assert code == 0
    bundle = out / "reference-lab"
    plan: dict[str, Any] = json.loads((bundle / "plan.json").read_text())
    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    known_hosts = (bundle / "inventory" / "known_hosts").read_text().splitlines()
    network_file = NATIVE[plan["guest"]["network"]]
    vms = plan["vms"]
    assert len(vms) == 8

    paths = ["/etc/hostname", "/etc/machine-id", network_file] + [
        f"/etc/ssh/ssh_host_{key_type}_key{suffix}"
        for key_type in KEY_TYPES
        for suffix in ("", ".pub")
    ]
    images = {vm["name"]: bundle / vm["disk"]["file"] for vm in vms}
    seen = read_guest_files({"golden": debian_golden.path, **images}, paths)
    golden = seen["golden"]
    disks = [seen[vm["name"]] for vm in vms]

    for path in golden:
        values = [disk[path] for disk in disks]
        assert all(value for value in values), f"{path} missing from a disk"
        assert len(set(values)) == 8, f"{path} is shared between disks"
        assert golden[path] not in values, f"{path} is the golden image's"
    for vm, disk in zip(vms, disks, strict=True):
        text = {path: (data or b"").decode() for path, data in disk.items()}
        assert text["/etc/hostname"] == vm["hostname"] + "\n"
        assert text["/etc/machine-id"] == vm["machine_id"] + "\n"
        assert manifest["vms"][vm["name"]]["machine_id"] == vm["machine_id"]
        assert vm["ip"] in text[network_file]
        names = f"{vm['hostname']},{vm['fqdn']},{vm['ip']}"
        for key_type in KEY_TYPES:
            public = text[f"/etc/ssh/ssh_host_{key_type}_key.pub"].split()
            assert " ".join(public[:2]) == " ".join(
                manifest["vms"][vm["name"]]["host_keys"][key_type].split()[:2]
            )
            assert f"{names} {public[0]} {public[1]}" in known_hosts
