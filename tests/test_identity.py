"""Identity written inside real disks, per guest family, read back through libguestfs.

One lab of two clones is built on each family's golden image (made by the tests,
tests/guestimages.py); then one appliance opens every clone read-only and the tests
check each identity item against the bundle's manifest, known_hosts and plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from expected import NATIVE
from guestimages import (
    FAMILIES,
    GOLDEN_MACHINE_ID,
    ImageSpec,
    golden_facts,
    guest_entries,
    make_images,
)
from guestimages import golden_host_public_keys as golden_keys
from labs import BRIDGE, write_lab
from vmbuild.cli import main

pytestmark = pytest.mark.guestfs

USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C t@x"
ROOT_HASH = (
    "$6$saltsalt$3MEaFAYZqQZ1KZzPjZ0JKEbDvQvmw2DLb"
    "K8GQk6T0eVHW9pIoaQEN2sfEnuUUl0E1RBeLnAGcBcbdAc2.JYfj0"
)

#: The lab network, with its own DNS server.
NETWORK = {**BRIDGE, "dns": ["192.0.2.53"]}
ACCOUNTS = {
    "root": {"password_hash": ROOT_HASH},
    "user": {"name": "ops", "ssh_authorized_keys": [USER_KEY]},
}


@dataclass
class Clone:
    family: str
    name: str
    manifest: dict[str, Any]
    plan: dict[str, Any]
    files: dict[str, bytes | None]
    modes: dict[str, int]


def _short(family: str) -> str:
    return family.split("-")[0][:6]


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Clone]]]:
    work = tmp_path_factory.mktemp("identity")
    images = {work / f"{family}.qcow2": ImageSpec(family) for family in FAMILIES}
    make_images(images)
    bundles = {}
    for family in FAMILIES:
        profile = write_lab(
            work,
            work / f"{family}.qcow2",
            name=family,
            network=NETWORK,
            tables=ACCOUNTS,
            vms=[{"name": f"{_short(family)}{{n}}", "count": 2, "ip": "192.0.2.21"}],
        )
        assert main([str(profile), "-o", str(work / "out"), "-q"]) == 0
        bundles[family] = work / "out" / family

    watched = {
        "/etc/hostname",
        "/etc/hosts",
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "/etc/shadow",
        "/etc/passwd",
        "/home/ops/.ssh/authorized_keys",
        "/etc/sudoers.d/90-vmbuild-ops",
        "/etc/systemd/network/10-vmbuild-lan0.link",
        "/etc/cloud/cloud.cfg.d/99-vmbuild-network.cfg",
        *NATIVE.values(),
    } | {f"/etc/ssh/ssh_host_{t}_key{s}" for t in ("rsa", "ecdsa", "ed25519") for s in ("", ".pub")}
    clones: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    disks: dict[str, Path] = {}
    for family, bundle in bundles.items():
        manifest = json.loads((bundle / "manifest.json").read_text())
        plan = json.loads((bundle / "plan.json").read_text())
        for vm in plan["vms"]:
            clones[f"{family}/{vm['name']}"] = (family, vm, manifest)
            disks[f"{family}/{vm['name']}"] = bundle / vm["disk"]["file"]
    paths = set(watched)
    for family in FAMILIES:
        facts = golden_facts(family)
        paths |= set(facts["leftovers"]) | set(facts["network_config"])
    seen = guest_entries(disks, sorted(paths))  # every clone in one appliance
    result: dict[str, list[Clone]] = {}
    for key, (family, vm, manifest) in clones.items():
        entries = seen[key]
        files = {
            path: (entry.data if entry.kind == "file" else b"<not a regular file>")
            if entry
            else None
            for path, entry in entries.items()
        }
        modes = {
            path: entry.mode for path, entry in entries.items() if entry and entry.mode is not None
        }
        result.setdefault(family, []).append(Clone(family, vm["name"], manifest, vm, files, modes))
    yield result


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_per_family(clones: dict[str, list[Clone]], family: str) -> None:
    facts = golden_facts(family)
    pair = clones[family]
    assert len(pair) == 2
    for clone in pair:
        vm = clone.plan
        entry = clone.manifest["vms"][clone.name]
        text = {p: (d or b"").decode(errors="replace") for p, d in clone.files.items()}
        # hostname and the lab's hosts
        assert text["/etc/hostname"] == vm["hostname"] + "\n"
        for other in clones[family]:
            assert (
                f"{other.plan['ip']} {other.plan['fqdn']} {other.plan['hostname']}"
                in text["/etc/hosts"]
            )
        # static IP bound to the MAC, in the family's own format
        native = text[NATIVE[facts["network"]]]
        assert vm["ip"] in native
        assert vm["mac"] in native.lower() or facts["network"] in ("ifupdown", "ifcfg")
        if facts["network"] in ("ifupdown", "ifcfg", "networkmanager", "networkd"):
            link = text["/etc/systemd/network/10-vmbuild-lan0.link"]
            assert f"MACAddress={vm['mac']}" in link and "Name=lan0" in link
        for golden_file in facts["network_config"]:
            if golden_file != NATIVE[facts["network"]]:
                assert clone.files[golden_file] is None, f"{golden_file} still in {clone.name}"
            assert facts["nic"] not in text[golden_file]  # no guessed interface name left
        assert clone.modes.get(NATIVE[facts["network"]], 0o644) & 0o007 == 0 or facts[
            "network"
        ] not in ("netplan", "networkmanager")
        # machine-id: the plan's, not the golden image's, in dbus's copy too
        assert text["/etc/machine-id"].strip() == vm["machine_id"] == entry["machine_id"]
        assert vm["machine_id"] != GOLDEN_MACHINE_ID
        if clone.files["/var/lib/dbus/machine-id"] is not None:
            assert text["/var/lib/dbus/machine-id"].strip() == vm["machine_id"]
        # SSH host keys: new, private ones root-only, the same as the bundle publishes
        golden = golden_keys()
        for key_type in ("rsa", "ecdsa", "ed25519"):
            public = text[f"/etc/ssh/ssh_host_{key_type}_key.pub"].strip()
            assert public == entry["host_keys"][key_type]
            assert public.split()[1] != golden[key_type].split()[1]
            assert clone.modes[f"/etc/ssh/ssh_host_{key_type}_key"] == 0o600
        # accounts
        assert f"ops:{text['/home/ops/.ssh/authorized_keys']}" == f"ops:{USER_KEY}\n"
        assert clone.modes["/home/ops/.ssh/authorized_keys"] == 0o600
        assert any(line.startswith("ops:") for line in text["/etc/passwd"].splitlines())
        assert f"root:{ROOT_HASH}:" in text["/etc/shadow"]
        assert "ops ALL=(ALL) NOPASSWD:ALL" in text["/etc/sudoers.d/90-vmbuild-ops"]
        # golden-image leftovers are gone
        for leftover in facts["leftovers"]:
            if "machine-id" in leftover or "/etc/ssh/" in leftover:
                continue
            assert clone.files[leftover] is None, f"{leftover} left in {clone.name}"
    # and the two clones differ from each other
    first, second = pair
    for path in ("/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key", "/etc/hostname"):
        assert first.files[path] != second.files[path], path


def test_known_hosts_and_ssh_config_match_the_disks(
    clones: dict[str, list[Clone]], tmp_path: Path
) -> None:
    clone = clones["debian-ifupdown"][0]
    bundle = Path(clone.manifest["root"])
    known = (bundle / "inventory" / "known_hosts").read_text().splitlines()
    for candidate in clones["debian-ifupdown"]:
        names = f"{candidate.plan['hostname']},{candidate.plan['fqdn']},{candidate.plan['ip']}"
        public = (candidate.files["/etc/ssh/ssh_host_ed25519_key.pub"] or b"").decode().split()
        assert f"{names} {public[0]} {public[1]}" in known
    config = (bundle / "inventory" / "ssh_config").read_text()
    assert f"Host {clone.name}\n    HostName {clone.plan['ip']}\n    User ops" in config


def test_plan_lists_the_operations(clones: dict[str, list[Clone]]) -> None:
    vm = clones["ubuntu-netplan"][0].plan
    summaries = [op["summary"] for op in vm["operations"]]
    assert summaries[0].startswith("Removing the golden image's leftovers")
    assert f"Setting the hostname: {vm['hostname']}" in summaries
    assert summaries[-1] == "Setting the password of root"  # passwords last
    assert all("password_hash" not in op for op in vm["operations"])
