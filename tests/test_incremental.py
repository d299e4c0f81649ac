"""Rebuilds do only the work their changes need: none for an unchanged lab, one VM's
disk, seed and XML for a change to that VM, everything with --force."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from guestimages import read_guest_files
from labs import write_lab
from vmbuild.output import seed

#: The run_cli fixture (conftest.py): run(*args) -> Result(code, out, err).
RunCli = Callable[..., Any]

pytestmark = pytest.mark.guestfs


def snapshot(bundle: Path) -> dict[str, tuple[int, int]]:
    """Every file's inode and modification time."""
    return {
        str(path.relative_to(bundle)): (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in sorted(bundle.rglob("*"))
        if path.is_file()
    }


def host_keys(bundle: Path) -> dict[str, str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {name: vm["host_keys"]["ed25519"] for name, vm in manifest["vms"].items()}


def test_rebuilds_do_only_what_changed(
    run_cli: RunCli, golden: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vms = [{"name": name, "ip": f"192.0.2.{ip}"} for name, ip in (("a", 10), ("b", 11), ("c", 12))]
    profile = write_lab(tmp_path, golden, name="inc", domain=None, vms=vms)
    out = tmp_path / "out"
    bundle = out / "inc"
    assert run_cli(profile, "-o", out).code == 0
    before = snapshot(bundle)
    keys = host_keys(bundle)

    # Unchanged: no appliance, nothing rewritten, not even the manifest.
    again = run_cli(profile, "-o", out)
    assert again.code == 0, again.err
    assert "inc is up to date: nothing to do" in again.err
    assert "appliance" not in again.err
    assert snapshot(bundle) == before

    # Not even a seed ISO is made to be compared: the manifest's seed_inputs say
    # what each was made from. One changed on disk is noticed all the same, and put
    # back as it was, with nothing else rewritten.
    made = []
    making = seed.seed_iso_bytes
    monkeypatch.setattr(seed, "seed_iso_bytes", lambda *a: made.append(1) or making(*a))
    assert "nothing to do" in run_cli(profile, "-o", out).err
    assert made == []
    iso = bundle / "vms/a/seed.iso"
    original = iso.read_bytes()
    iso.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    repaired = run_cli(profile, "-o", out)
    assert repaired.code == 0, repaired.err
    assert "nothing to do" not in repaired.err and "appliance" not in repaired.err
    assert iso.read_bytes() == original
    assert snapshot(bundle)["vms/b/seed.iso"] == before["vms/b/seed.iso"]
    before = snapshot(bundle)

    # One VM's address changes: that VM's disk, seed and XML are made anew; the
    # others keep their disks (with the lab's new /etc/hosts), seeds and XML.
    changed = run_cli(profile, "-o", out, "--set", "vm.b.ip=192.0.2.99")
    assert changed.code == 0, changed.err
    assert "Creating 1 disks" in changed.err
    assert "Keeping 2 unchanged disks" in changed.err
    after = snapshot(bundle)
    new_keys = host_keys(bundle)
    assert new_keys["b"] != keys["b"]
    assert new_keys["a"] == keys["a"] and new_keys["c"] == keys["c"]
    for name in ("a", "c"):
        for file in ("seed.iso", "domain.xml"):
            assert after[f"vms/{name}/{file}"] == before[f"vms/{name}/{file}"]
    for file in ("seed.iso", "domain.xml", "disk.qcow2"):
        assert after[f"vms/b/{file}"] != before[f"vms/b/{file}"]
    files = read_guest_files(
        {"a": bundle / "vms/a/disk.qcow2"}, ["/etc/hosts", "/etc/ssh/ssh_host_ed25519_key.pub"]
    )["a"]
    hosts = (files["/etc/hosts"] or b"").decode()
    public = (files["/etc/ssh/ssh_host_ed25519_key.pub"] or b"").decode()
    assert "192.0.2.99 b" in hosts and "192.0.2.11" not in hosts
    assert public.strip() == keys["a"]

    # --force makes every disk anew.
    forced = run_cli(profile, "-o", out, "--set", "vm.b.ip=192.0.2.99", "--force")
    assert forced.code == 0, forced.err
    assert "Creating 3 disks" in forced.err
    forced_keys = host_keys(bundle)
    assert all(forced_keys[name] != new_keys[name] for name in "abc")
