"""The build's pure parts: the keep / refresh / make decision and the disk inputs."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from labs import write_lab
from vmbuild.build import pipeline, stages
from vmbuild.build.base import BaseImage
from vmbuild.build.decide import Decision, decide, disk_inputs, hosts_inputs, same_backing
from vmbuild.model.plan import make_plan
from vmbuild.model.profile import DiskFormat, parse_profile

NAMES = ["a", "b", "c"]
INPUTS = {"a": "in-a", "b": "in-b", "c": "in-c"}


def recorded(hosts: str = "h1", **changes: str) -> dict[str, dict[str, str]]:
    """What a previous manifest records for the lab NAMES, built from INPUTS."""
    return {
        name: {"disk_inputs": changes.get(name, INPUTS[name]), "hosts": hosts} for name in NAMES
    }


def test_a_first_build_makes_every_disk() -> None:
    decision = decide(NAMES, INPUTS, "h1", None, set())
    assert decision == Decision(keep=(), refresh=(), make=("a", "b", "c"))
    assert decision.edit == ("a", "b", "c")


def test_an_unchanged_lab_keeps_every_disk() -> None:
    decision = decide(NAMES, INPUTS, "h1", recorded(), set(NAMES))
    assert decision == Decision(keep=("a", "b", "c"), refresh=(), make=())
    assert decision.edit == ()


def test_changed_inputs_make_that_disk_only() -> None:
    decision = decide(NAMES, INPUTS, "h1", recorded(b="old"), set(NAMES))
    assert decision == Decision(keep=("a", "c"), refresh=(), make=("b",))


def test_a_new_hosts_table_refreshes_the_kept_disks() -> None:
    previous = recorded(hosts="h0", c="old")
    decision = decide(NAMES, INPUTS, "h1", previous, set(NAMES))
    assert decision == Decision(keep=(), refresh=("a", "b"), make=("c",))
    assert decision.edit == ("c", "a", "b")  # the new disks first


def test_a_missing_disk_file_is_made_again() -> None:
    decision = decide(NAMES, INPUTS, "h1", recorded(), {"a", "c"})
    assert decision == Decision(keep=("a", "c"), refresh=(), make=("b",))


def test_a_vm_the_previous_manifest_does_not_know_is_made() -> None:
    previous = recorded()
    del previous["b"]
    decision = decide([*NAMES, "d"], {**INPUTS, "d": "in-d"}, "h1", previous, set(NAMES))
    assert decision == Decision(keep=("a", "c"), refresh=(), make=("b", "d"))


def test_every_vm_is_in_exactly_one_list_in_the_plans_order() -> None:
    previous = recorded(hosts="h0", a="old")
    previous["c"]["hosts"] = "h1"
    decision = decide(NAMES, INPUTS, "h1", previous, set(NAMES))
    lists = [decision.keep, decision.refresh, decision.make]
    assert sorted(name for names in lists for name in names) == NAMES
    for names in lists:
        assert list(names) == [name for name in NAMES if name in names]
    assert decision == Decision(keep=("c",), refresh=("b",), make=("a",))


PROFILE = """
[lab]
name = "t"
domain = "lab.example"
[base]
image = "golden.qcow2"
[network]
type = "network"
source = "t-net"
subnet = "192.0.2.0/24"
gateway = "192.0.2.1"
[[vm]]
name = "web"
ip = "192.0.2.10"
[[vm]]
name = "db"
ip = "192.0.2.20"
"""


def _plan(text: str = PROFILE):  # type: ignore[no-untyped-def]
    return make_plan(parse_profile(tomllib.loads(text), Path("/labs/t.toml")))


BASE = BaseImage(Path("/images/golden.qcow2"), DiskFormat.QCOW2, 2 << 30, 1 << 20, "s" * 64, "k")


def test_disk_inputs_ignore_what_is_not_on_the_disk() -> None:
    plan = _plan()
    more = _plan(PROFILE.replace('name = "web"', 'name = "web"\nmemory = "4G"\nvcpus = 4'))
    assert disk_inputs(plan, plan.vms[0], BASE, []) == disk_inputs(more, more.vms[0], BASE, [])


def test_disk_inputs_follow_the_golden_image_the_vm_and_the_plugins() -> None:
    plan = _plan()
    web, db = plan.vms
    first = disk_inputs(plan, web, BASE, [])
    assert first != disk_inputs(plan, db, BASE, [])
    assert first != disk_inputs(plan, web, dataclasses.replace(BASE, sha256="t" * 64), [])
    assert first != disk_inputs(plan, web, BASE, [{"name": "motd"}])


def test_disks_are_kept_only_while_their_overlays_find_the_golden_image() -> None:
    """Overlays name the golden image relative to their folder: the bundle and the
    image may move together (an unpacked bundle), not apart."""
    built = {"root": "/out/t", "base": {"path": "/images/golden.qcow2"}}
    assert same_backing(built, Path("/images/golden.qcow2"), Path("/out/t"))
    assert same_backing(built, Path("/srv/images/golden.qcow2"), Path("/srv/out/t"))
    assert not same_backing(built, Path("/images/golden.qcow2"), Path("/srv/labs/t"))
    assert not same_backing(built, Path("/images/other.qcow2"), Path("/out/t"))
    assert not same_backing({}, Path("/images/golden.qcow2"), Path("/out/t"))


def test_the_hosts_table_changes_when_a_vm_is_added() -> None:
    plan = _plan()
    bigger = _plan(PROFILE + '[[vm]]\nname = "cache"\nip = "192.0.2.30"\n')
    assert hosts_inputs(plan) == hosts_inputs(_plan())
    assert hosts_inputs(plan) != hosts_inputs(bigger)


def test_build_lists_its_stages_on_one_screen() -> None:
    source = inspect.getsource(pipeline.build)
    assert len(source.splitlines()) <= 50
    called = [
        node.func.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    steps = [name for name in called if name in vars(stages)]
    assert steps == [
        "prepare_output",
        "make_golden_image",
        "check_golden_image",
        "plan_build",
        "unchanged",
        "check_room",
        "refuse_running",
        "start_host_keys",
        "keep_unchanged_disks",
        "create_new_disks",
        "write_identities",
        "write_seeds_and_xml",
        "write_lab_files",
        "export_target",
        "publish_bundle",
    ]


@pytest.mark.parametrize("folder", ["builder", "plugins"])
def test_no_function_takes_more_than_six_parameters(folder: str) -> None:
    root = Path(__file__).resolve().parent.parent / folder
    wide = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                names = [
                    a.arg
                    for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
                    if a.arg not in ("self", "cls")
                ]
                count = len(names) + bool(args.vararg) + bool(args.kwarg)
                if count > 6:
                    wide.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}")
    assert wide == []


COUNTING_PLUGIN = """
def vmbuild_disk_operations(vm):
    with open({log!r}, "a") as log:
        log.write(vm.name + "\\n")
    return []
"""


@pytest.mark.guestfs
def test_disk_operations_are_planned_once_per_vm_in_every_build(
    run_cli: Any, golden: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    profile = write_lab(
        tmp_path,
        golden,
        name="once",
        vms=({"name": "a", "ip": "192.0.2.10"}, {"name": "b", "ip": "192.0.2.11"}),
        plugin_files={"count.py": COUNTING_PLUGIN.format(log=str(calls))},
    )
    out = tmp_path / "out"

    def build(*extra: str) -> list[str]:
        calls.write_text("")
        result = run_cli(profile, "-o", out, *extra)
        assert result.code == 0, result.err
        return sorted(calls.read_text().split())

    assert build() == ["a", "b"]  # new disks: planned in the appliance
    assert build() == ["a", "b"]  # up to date: planned from the recorded facts
    assert build("--set", "vm.b.ip=192.0.2.99") == ["a", "b"]  # one made, one refreshed
    plan = json.loads((out / "once/plan.json").read_text())
    assert all(vm["operations"] for vm in plan["vms"])  # the built-in plugins' edits
