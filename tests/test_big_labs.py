"""Big labs: disks dealt out to several appliances, launches of many drives, host keys
made per VM in the background, and the lab's choice of host key types.

The pure parts (how disks are shared out, how many appliances, the key maker) are
tested on their own; the guestfs tests build real labs on the test golden image and
read every identity back from the disks.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli
from guestimages import read_guest_files
from labs import nodes, write_lab
from vmbuild.build import customize
from vmbuild.build.customize import Edit, appliance_count, shares
from vmbuild.errors import BuildError
from vmbuild.guest.appliance import _qemu_children
from vmbuild.host import hostkeys
from vmbuild.host.hostkeys import HostKeyMaker
from vmbuild.model.plan import make_plan
from vmbuild.model.profile import HOST_KEY_TYPES, load_profile

# ------------------------------------------------------------------ sharing out


def _edits(tmp_path: Path, count: int) -> list[Edit]:
    profile = write_lab(tmp_path, vms=[nodes(count)])
    plan = make_plan(load_profile(profile))
    return [Edit(vm, tmp_path / f"{vm.name}.qcow2") for vm in plan.vms]


def test_disks_are_dealt_out_in_turn_and_cut_into_launches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VM order is the order keys are made in: each appliance's first disks are the
    lab's first. A launch holds the golden image and DRIVES_PER_LAUNCH - 1 disks."""
    monkeypatch.setattr(customize, "DRIVES_PER_LAUNCH", 3)
    parts = shares(_edits(tmp_path, 7), 2)
    names = [[[edit.vm.name for edit in launch] for launch in part] for part in parts]
    assert names == [
        [["node1", "node3"], ["node5", "node7"]],
        [["node2", "node4"], ["node6"]],
    ]


def test_no_appliance_is_left_without_disks(tmp_path: Path) -> None:
    parts = shares(_edits(tmp_path, 2), 3)
    assert [[[e.vm.name for e in launch] for launch in part] for part in parts] == [
        [["node1"]],
        [["node2"]],
    ]


def test_the_drive_limit_of_one_handle_is_never_passed() -> None:
    assert customize.MAX_DRIVES == 255
    assert 2 <= customize.DRIVES_PER_LAUNCH <= customize.MAX_DRIVES


@pytest.mark.parametrize(
    ("disks", "cpus", "memory_gib", "requested", "expected"),
    [
        (100, 2, 20, None, 1),  # two cores: one appliance of two vCPUs
        (100, 8, 20, None, 4),
        (100, 64, 20, None, customize.MAX_APPLIANCES),
        (100, 8, 2, None, 2),  # memory for two
        (100, 8, 0, None, 1),  # never none
        (9, 16, 20, None, 2),  # at least MIN_SHARE disks each
        (3, 16, 20, None, 1),
        (100, 2, 20, 3, 3),  # asked for
        (2, 2, 20, 5, 2),  # never more than the disks
    ],
)
def test_how_many_appliances(
    monkeypatch: pytest.MonkeyPatch,
    disks: int,
    cpus: int,
    memory_gib: int,
    requested: int | None,
    expected: int,
) -> None:
    monkeypatch.delenv("VMBUILD_APPLIANCES", raising=False)
    monkeypatch.setattr(customize.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(customize, "available_memory", lambda: memory_gib << 30)
    monkeypatch.setattr(customize, "APPLIANCE_CPUS", 2)
    assert appliance_count(disks, requested) == expected


def test_the_environment_chooses_the_appliances(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMBUILD_APPLIANCES", "3")
    assert appliance_count(10) == 3
    assert appliance_count(10, 1) == 1  # the option wins


def test_available_memory_is_read_from_the_kernel() -> None:
    memory = customize.available_memory()
    assert memory is not None and memory > 64 << 20


# -------------------------------------------------------------------- host keys


def test_host_keys_come_per_vm_in_the_lab_order_of_types() -> None:
    hostnames = {"a": "a.lab.example", "b": "b.lab.example"}
    with HostKeyMaker(hostnames, ("ecdsa", "ed25519")) as maker:
        b = maker.keys("b")
        a = maker.keys("a")
        assert list(a) == ["ecdsa", "ed25519"]
        assert maker.all() == {"a": a, "b": b}
    assert a["ed25519"][1].startswith("ssh-ed25519 ")
    assert a["ed25519"][1].endswith(" root@a.lab.example")
    assert b["ecdsa"][1].startswith("ecdsa-sha2-nistp256 ")
    assert a["ed25519"] != b["ed25519"]
    assert a["ed25519"][0].startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_the_cheap_keys_are_made_first_and_waits_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[str, str, int]] = []

    def fake(key_type: str, comment: str, niceness: int) -> tuple[bytes, str]:
        made.append((comment, key_type, niceness))
        time.sleep(0.2)
        return b"private", f"{key_type} AAAA {comment}"

    monkeypatch.setattr(hostkeys, "_generate", fake)
    maker = HostKeyMaker({"a": "a", "b": "b"}, ("rsa", "ed25519"), workers=1)
    deadline = time.monotonic() + 5
    while not made and time.monotonic() < deadline:  # a's job has begun, unhurried
        time.sleep(0.01)
    assert list(maker.keys("a")) == ["rsa", "ed25519"]
    assert maker.waited > 0.2
    maker.keys("b")
    # a's keys were made niced; once the caller had to wait, b's are not
    assert made == [
        ("root@a", "ed25519", 19),
        ("root@a", "rsa", 19),
        ("root@b", "ed25519", 0),
        ("root@b", "rsa", 0),
    ]


def test_a_failed_build_drops_the_keys_not_yet_made(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []

    def slow(key_type: str, comment: str, niceness: int) -> tuple[bytes, str]:
        started.append(comment)
        time.sleep(0.3)
        return b"", ""

    monkeypatch.setattr(hostkeys, "_generate", slow)
    names = {f"vm{n}": f"vm{n}" for n in range(20)}
    with HostKeyMaker(names, ("ed25519",), workers=1):
        time.sleep(0.1)
    time.sleep(0.5)
    assert len(started) <= 3


def test_a_failed_ssh_keygen_is_an_error_for_that_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(key_type: str, comment: str, niceness: int) -> tuple[bytes, str]:
        raise BuildError(f"ssh-keygen -t {key_type} failed: no entropy")

    monkeypatch.setattr(hostkeys, "_generate", broken)
    with (
        HostKeyMaker({"a": "a"}, ("ed25519",)) as maker,
        pytest.raises(BuildError, match="ssh-keygen -t ed25519 failed"),
    ):
        maker.keys("a")


def test_the_key_types_reach_the_plan_the_operations_and_the_seed(tmp_path: Path) -> None:
    from vmbuild.plugins.manager import load_plugins

    default = load_profile(write_lab(tmp_path, file="default.toml"))
    assert default.host_key_types == HOST_KEY_TYPES == ("ed25519", "ecdsa", "rsa")
    profile = load_profile(
        write_lab(tmp_path, lab={"host_key_types": ["ed25519", "ecdsa"]}, file="no-rsa.toml")
    )
    plugins = load_plugins(profile)
    plan = make_plan(profile, plugins)
    assert plan.host_key_types == ("ed25519", "ecdsa")
    vm = plan.vms[0]
    user_data = plugins.user_data(plan, vm)
    assert user_data["ssh_genkeytypes"] == ["ed25519", "ecdsa"]
    default_plan = make_plan(default, load_plugins(default))
    assert "ssh_genkeytypes" not in load_plugins(default).user_data(
        default_plan, default_plan.vms[0]
    )


# ------------------------------------------------------------ real labs, guestfs


def _identity(bundle: Path, names: list[str]) -> dict[str, dict[str, bytes | None]]:
    disks = {name: bundle / "vms" / name / "disk.qcow2" for name in names}
    paths = ["/etc/hostname", "/etc/machine-id"] + [
        f"/etc/ssh/ssh_host_{kind}_key.pub" for kind in HOST_KEY_TYPES
    ]
    return read_guest_files(disks, paths)


@pytest.mark.guestfs
def test_a_lab_on_two_appliances_of_several_launches(
    run_cli: RunCli, os_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six VMs on two appliances, two launches each: every disk gets its own identity,
    with only the key types the lab asks for, and the plan is the one a single
    appliance makes."""
    monkeypatch.setattr(customize, "DRIVES_PER_LAUNCH", 3)
    profile = write_lab(tmp_path, os_image, vms=[nodes(6)], lab={"host_key_types": ["ed25519"]})
    built = run_cli("build", profile, "-o", tmp_path / "out", "--appliances", "2")
    assert built.code == 0, built.err
    for number in (1, 2):
        assert f"appliance {number} of 2: starting with 2 disks, launch 1 of 2" in built.err
        assert f"appliance {number} of 2: starting with 1 disks, launch 2 of 2" in built.err
    bundle = tmp_path / "out" / "t"
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = [f"node{n}" for n in range(1, 7)]
    found = _identity(bundle, names)
    for name in names:
        vm = manifest["vms"][name]
        files = found[name]
        assert files["/etc/hostname"] == f"{name}\n".encode()
        assert files["/etc/machine-id"] == f"{vm['machine_id']}\n".encode()
        assert list(vm["host_keys"]) == ["ed25519"]
        public = files["/etc/ssh/ssh_host_ed25519_key.pub"]
        assert public == (vm["host_keys"]["ed25519"] + "\n").encode()
        assert files["/etc/ssh/ssh_host_rsa_key.pub"] is None
        assert files["/etc/ssh/ssh_host_ecdsa_key.pub"] is None
        check = subprocess.run(
            ["qemu-img", "check", "-q", str(bundle / "vms" / name / "disk.qcow2")], check=False
        )
        assert check.returncode == 0
    known = (bundle / "inventory" / "known_hosts").read_text()
    assert known.count("ssh-ed25519 ") == 6 and "ssh-rsa" not in known

    single = run_cli("build", profile, "-o", tmp_path / "one", "--appliances", "1")
    assert single.code == 0, single.err
    assert "appliance 2 of" not in single.err

    def operations(folder: Path) -> list[Any]:
        plan = json.loads((folder / "t" / "plan.json").read_text())
        return [vm["operations"] for vm in plan["vms"]]

    assert operations(tmp_path / "one") == operations(tmp_path / "out")


@pytest.mark.guestfs
def test_a_failure_in_one_appliance_stops_the_others_and_publishes_nothing(
    run_cli: RunCli, os_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node2 (the second appliance's first disk) fails; the first appliance is then in
    a 60 s call that the stop cuts short. The error is node2's, and no bundle, staging
    folder or QEMU is left."""
    original = customize._edit

    def edit(app: Any, lab: Any, planned: Any, golden: int, one: Edit, drive: int) -> None:
        if one.vm.name == "node2":
            time.sleep(1)
            raise BuildError("injected failure", place=one.vm.place)
        if one.vm.name == "node1":
            app.call("sleeping", app.handle.sleep, 60, timeout=90)
        original(app, lab, planned, golden, one, drive)

    monkeypatch.setattr(customize, "_edit", edit)
    profile = write_lab(tmp_path, os_image, vms=[nodes(4)])
    start = time.monotonic()
    failed = run_cli("build", profile, "-o", tmp_path / "out", "--appliances", "2")
    took = time.monotonic() - start
    assert failed.code != 0
    assert 'vm "node2"' in failed.err and "injected failure" in failed.err
    assert "stopped" not in failed.err
    assert took < 60, f"the first appliance was not stopped ({took:.0f}s)"
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [name for name in left if not name.endswith(".lock")] == []
    assert _qemu_children() == []
