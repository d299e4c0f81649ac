"""Plugins are called in pluggy's order, and their results combine in its reverse.

Small plugin files are written into tmp_path and loaded through ``load_plugins`` as a
lab loads them; what vmbuild then does is compared with what ``pluggy.PluginManager``
itself does with the very same plugin modules, registered in the same order.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from labs import debian_facts
from vmbuild.errors import UserError
from vmbuild.guest.diskops import Operation, WriteFile, ordered
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import Profile, load_profile
from vmbuild.plugins import hookspecs
from vmbuild.plugins.manager import HOOK_NAMES, Plugins, deep_merge, load_plugins

PROFILE = """\
plugins = {plugins}

[lab]
name = "order"
domain = "lab.example"

[base]
image = "golden.qcow2"

[network]
source = "br-test"
subnet = "192.0.2.0/24"
gateway = "192.0.2.1"

[[vm]]
name = "node{{n}}"
count = 2
ip = "192.0.2.10"
"""

FACTS = debian_facts()

#: Implements every hook: logs each call as "NAME hook" and returns data naming itself.
TRACER = """\
from pathlib import Path

from vmbuild.errors import Problem
from vmbuild.guest.diskops import WriteFile
from vmbuild.plugins.hookspecs import hookimpl

NAME = {name!r}
LOG = Path({log!r})


def _log(hook):
    with LOG.open("a") as handle:
        handle.write(f"{{NAME}} {{hook}}\\n")


@hookimpl({mark})
def vmbuild_check_profile(profile):
    _log("vmbuild_check_profile")
    return [Problem("", f"from {{NAME}}")]


@hookimpl({mark})
def vmbuild_plan_vm(vm):
    _log("vmbuild_plan_vm")
    return {{"by": [NAME], "last_word": NAME}}


@hookimpl({mark})
def vmbuild_disk_operations(vm, guest):
    _log("vmbuild_disk_operations")
    return [WriteFile(path="/etc/order", content=NAME)]


@hookimpl({mark})
def vmbuild_user_data(vm):
    _log("vmbuild_user_data")
    return {{"packages": [NAME], "hostname": NAME}}


@hookimpl({mark})
def vmbuild_network_config(vm):
    _log("vmbuild_network_config")
    return {{"by": [NAME]}}


@hookimpl({mark})
def vmbuild_seed_files(vm):
    _log("vmbuild_seed_files")
    return {{"order.txt": NAME}}


@hookimpl({mark})
def vmbuild_domain_xml(domain):
    _log("vmbuild_domain_xml")
    domain.append(domain.makeelement("called", {{"by": NAME}}))


@hookimpl({mark})
def vmbuild_bundle_files(lab):
    _log("vmbuild_bundle_files")
    return {{"order.txt": NAME, "inventory/hosts": NAME}}


@hookimpl({mark})
def vmbuild_build_finished(bundle):
    _log("vmbuild_build_finished")
"""


class Lab:
    """A profile whose plugins are the given tracers (file -> hookimpl options) or
    files (file -> source), then ``modules``, loaded as a build loads them."""

    def __init__(
        self,
        folder: Path,
        marks: dict[str, str] | None = None,
        *,
        sources: dict[str, str] | None = None,
        modules: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.log = folder / "calls.log"
        files = {file: tracer(file, self.log, mark) for file, mark in (marks or {}).items()}
        files.update(sources or {})
        for file, source in files.items():
            path = folder / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        listed = json.dumps([*files, *modules])
        (folder / "lab.toml").write_text(PROFILE.format(plugins=listed))
        self.profile: Profile = load_profile(folder / "lab.toml")
        self.plugins: Plugins = load_plugins(self.profile, check=False)
        self.plan: Plan = make_plan(self.profile, self.plugins)
        self.calls()

    def calls(self) -> list[str]:
        """The tracers' calls since the last look, as "NAME hook" lines."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.write_text("")
        return lines

    def arguments(self, hook: str) -> dict[str, Any]:
        vm = self.plan.vms[0]
        table: dict[str, dict[str, Any]] = {
            "vmbuild_check_profile": {"profile": self.profile},
            "vmbuild_plan_vm": {"lab": self.plan, "vm": vm},
            "vmbuild_disk_operations": {"lab": self.plan, "vm": vm, "guest": FACTS},
            "vmbuild_user_data": {"lab": self.plan, "vm": vm},
            "vmbuild_network_config": {"lab": self.plan, "vm": vm},
            "vmbuild_seed_files": {"lab": self.plan, "vm": vm},
            "vmbuild_domain_xml": {"lab": self.plan, "vm": vm, "domain": ET.Element("domain")},
            "vmbuild_bundle_files": {"lab": self.plan, "root": "/srv/order", "host_keys": {}},
            "vmbuild_build_finished": {"lab": self.plan, "bundle": self.folder, "manifest": {}},
        }
        return table[hook]

    def vmbuild(self, hook: str) -> tuple[Any, list[str], dict[str, Any]]:
        """vmbuild's combined result of a hook, the tracers' calls, and the arguments."""
        arguments = self.arguments(hook)
        result = getattr(self.plugins, hook.removeprefix("vmbuild_"))(**arguments)
        return result, self.calls(), arguments

    def pluggy(self, hook: str) -> tuple[list[Any], list[str], dict[str, Any]]:
        """pluggy's own call of a hook on the same plugin modules: its results (in call
        order), the tracers' calls, and the arguments."""
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        for info in self.plugins.infos:
            if not info.disabled:
                manager.register(self.plugins.manager.get_plugin(info.name), name=info.name)
        arguments = self.arguments(hook)
        results = getattr(manager.hook, hook)(**arguments)
        return results, self.calls(), arguments


def tracer(name: str, log: Path, mark: str) -> str:
    return TRACER.format(name=name, log=str(log), mark=mark)


@pytest.fixture
def entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed plugin (entry point group ``vmbuild``) named "installed" that traces
    too; yields its module's name, which is this test's own, so that no other test's
    module is found cached in sys.modules."""
    site = tmp_path / "site"
    site.mkdir()
    module = "vmbuild_order_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    (site / f"{module}.py").write_text(tracer("installed", tmp_path / "calls.log", ""))
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[vmbuild]\ninstalled = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    yield module
    sys.modules.pop(module, None)


#: Lab plugins in profile order, with their marks: two of each kind, interleaved, so
#: that LIFO within each kind shows as well as the moves.
MIXED = {
    "lab/first_a.py": "tryfirst=True",
    "lab/plain_a.py": "",
    "lab/last_a.py": "trylast=True",
    "lab/plain_b.py": "",
    "lab/first_b.py": "tryfirst=True",
    "lab/last_b.py": "trylast=True",
}


# ------------------------------------------------------------------- call order


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_calls_plugins_in_pluggys_order(
    tmp_path: Path, entry_point: str, hook: str
) -> None:
    lab = Lab(tmp_path, MIXED, modules=("vmbuild_plugins.examples.packages",))
    assert "installed" in {info.name for info in lab.plugins.infos}
    _result, called, arguments = lab.vmbuild(hook)
    _results, oracle, oracle_arguments = lab.pluggy(hook)
    assert called == oracle
    assert len(called) == len(MIXED) + 1, called
    names = [line.split()[0] for line in called]
    assert names != ["installed", *MIXED], "registration order is not pluggy's"
    if hook == "vmbuild_domain_xml":  # the edits themselves land in call order
        edits = [[e.get("by") for e in a["domain"]] for a in (arguments, oracle_arguments)]
        assert edits[0] == edits[1] == names


def test_tryfirst_and_trylast_move_a_plugin_as_pluggy_documents(tmp_path: Path) -> None:
    """pluggy: implementations are called LIFO, the last registered first;
    tryfirst ones run before all others (LIFO among themselves), trylast ones after
    all others, where the trylast registered last is called last of all."""
    lab = Lab(tmp_path, MIXED)
    _result, called, _ = lab.vmbuild("vmbuild_domain_xml")
    assert [line.split()[0] for line in called] == [
        "lab/first_b.py",
        "lab/first_a.py",
        "lab/plain_b.py",
        "lab/plain_a.py",
        "lab/last_a.py",
        "lab/last_b.py",
    ]
    # the built-ins are plain plugins registered first: called after the lab's plain ones
    names = [impl.plugin_name for impl in lab.plugins.call_order("vmbuild_disk_operations")]
    assert names == [
        "lab/first_b.py",
        "lab/first_a.py",
        "lab/plain_b.py",
        "lab/plain_a.py",
        "vmbuild_plugins.network",
        "vmbuild_plugins.identity",
        "lab/last_a.py",
        "lab/last_b.py",
    ]


def test_unmarked_plugins_are_called_last_registered_first(tmp_path: Path) -> None:
    lab = Lab(tmp_path, {"lab/a.py": "", "lab/b.py": "", "lab/c.py": ""})
    _result, called, _ = lab.vmbuild("vmbuild_build_finished")
    assert called == [f"lab/{x}.py vmbuild_build_finished" for x in "cba"]
    assert called == lab.pluggy("vmbuild_build_finished")[1]


def test_optional_arguments_are_passed_as_pluggy_passes_them(tmp_path: Path) -> None:
    """An argument with a default gets the hook's value if the hook has one, and
    keeps its default otherwise (it used to be a KeyError outside the plugin)."""
    source = """\
        from vmbuild.plugins.hookspecs import hookimpl

        @hookimpl
        def vmbuild_user_data(vm, lab=None, colour="blue"):
            return {"seen": [vm.name, lab is not None, colour]}
        """
    lab = Lab(tmp_path, sources={"opt.py": textwrap.dedent(source)})
    assert lab.vmbuild("vmbuild_user_data")[0]["seen"] == ["node1", True, "blue"]
    assert lab.pluggy("vmbuild_user_data")[0][0] == {"seen": ["node1", True, "blue"]}


# ------------------------------------------------------------------- precedence


def combined_by_pluggy(hook: str, results: list[Any]) -> Any:
    """What docs/plugins.md says vmbuild makes of pluggy's results (in call order):
    the same combination, over the results in reverse call order."""
    ordered = results[::-1]
    if hook in ("vmbuild_check_profile", "vmbuild_disk_operations"):
        return [item for result in ordered for item in result]
    if hook in ("vmbuild_seed_files", "vmbuild_bundle_files"):
        files: dict[str, bytes] = {}
        for result in ordered:
            files.update({k: v.encode() if isinstance(v, str) else v for k, v in result.items()})
        return files
    merged: dict[str, Any] = {}
    for result in ordered:
        merged = deep_merge(merged, result)
    return merged


#: The hooks whose results vmbuild combines (the other two return nothing).
COMBINED = tuple(h for h in HOOK_NAMES if h not in ("vmbuild_domain_xml", "vmbuild_build_finished"))


@pytest.mark.parametrize("hook", COMBINED)
def test_results_combine_in_reverse_call_order(tmp_path: Path, entry_point: str, hook: str) -> None:
    lab = Lab(tmp_path, MIXED, modules=("vmbuild_plugins.examples.packages",))
    result, _, _ = lab.vmbuild(hook)
    assert result == combined_by_pluggy(hook, lab.pluggy(hook)[0])


def test_the_plugin_called_first_has_the_last_word(tmp_path: Path) -> None:
    lab = Lab(tmp_path, MIXED)
    vm = lab.plan.vms[0]
    # deep-merged: the value of the plugin called first (first_b) stays; lists are
    # joined in reverse call order
    user_data = lab.plugins.user_data(lab.plan, vm)
    assert user_data["hostname"] == "lab/first_b.py"
    assert user_data["packages"] == [
        "lab/last_b.py",
        "lab/last_a.py",
        "lab/plain_a.py",
        "lab/plain_b.py",
        "lab/first_a.py",
        "lab/first_b.py",
    ]
    assert vm.extra == {"by": user_data["packages"], "last_word": "lab/first_b.py"}
    # files: the same
    assert lab.plugins.seed_files(lab.plan, vm)["order.txt"] == b"lab/first_b.py"
    assert lab.plugins.bundle_files(lab.plan, "/srv/order", {})["order.txt"] == b"lab/first_b.py"
    # concatenated: trylast's operations first, then the built-ins', ..., tryfirst's
    # last; so, within a phase, tryfirst's are applied last and its file wins
    operations = lab.plugins.disk_operations(lab.plan, vm, FACTS)
    assert runs_by_plugin(operations) == [
        "lab/last_b.py",
        "lab/last_a.py",
        "built-in",
        "lab/plain_a.py",
        "lab/plain_b.py",
        "lab/first_a.py",
        "lab/first_b.py",
    ]
    assert runs_by_plugin(ordered(operations))[-1] == "lab/first_b.py"


def runs_by_plugin(operations: list[Operation]) -> list[str]:
    """Which tracer wrote each run of operations ("built-in" for the others')."""
    by = [
        op.content if isinstance(op, WriteFile) and op.path == "/etc/order" else "built-in"
        for op in operations
    ]
    return [name for i, name in enumerate(by) if i == 0 or name != by[i - 1]]


def test_without_marks_a_later_plugin_overrides_an_earlier_one_and_the_builtins(
    tmp_path: Path, entry_point: str
) -> None:
    """What vmbuild always did: built-ins, then installed, then the lab's own in
    profile order, each overriding the ones before."""
    lab = Lab(tmp_path, {"lab/site.py": "", "lab/final.py": ""})
    vm = lab.plan.vms[0]
    order = ["installed", "lab/site.py", "lab/final.py"]
    assert [i.name for i in lab.plugins.infos][-3:] == order
    user_data = lab.plugins.user_data(lab.plan, vm)
    assert user_data["hostname"] == "lab/final.py"  # over cloudinit's vm.hostname
    assert user_data["packages"] == order
    bundle = lab.plugins.bundle_files(lab.plan, "/srv/order", {})
    assert bundle["inventory/hosts"] == b"lab/final.py"  # over the built-in inventory's
    problems = lab.plugins.check_profile(lab.profile)
    assert [p.message for p in problems] == [f"from {name}" for name in order]
    operations = lab.plugins.disk_operations(lab.plan, vm, FACTS)
    assert runs_by_plugin(operations) == ["built-in", *order]


def test_trylast_gives_a_default_that_even_a_builtin_overrides(tmp_path: Path) -> None:
    lab = Lab(tmp_path, {"lab/defaults.py": "trylast=True"})
    vm = lab.plan.vms[0]
    assert lab.plugins.user_data(lab.plan, vm)["hostname"] == vm.hostname  # cloudinit's
    bundle = lab.plugins.bundle_files(lab.plan, "/srv/order", {})
    assert bundle["inventory/hosts"] != b"lab/defaults.py"  # the built-in inventory's
    assert bundle["order.txt"] == b"lab/defaults.py"  # nobody else's


# ---------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("mark", "body", "expected"),
    [
        (
            "hookwrapper=True",
            "yield",
            "vmbuild_user_data is a hook wrapper (hookwrapper=True); vmbuild calls each "
            "plugin's implementation on its own",
        ),
        (
            "wrapper=True",
            "return (yield)",
            "vmbuild_user_data is a hook wrapper (wrapper=True); vmbuild calls each "
            "plugin's implementation on its own",
        ),
        (
            "tryfirst=True, trylast=True",
            "return {}",
            "vmbuild_user_data is marked both tryfirst and trylast; choose one",
        ),
    ],
    ids=["hookwrapper", "wrapper", "tryfirst-and-trylast"],
)
def test_what_vmbuild_cannot_honour_is_refused_naming_plugin_and_hook(
    tmp_path: Path, mark: str, body: str, expected: str
) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "wrap.py").write_text(
        "from vmbuild.plugins.hookspecs import hookimpl\n\n"
        "def vmbuild_plan_vm(vm):\n    return None\n\n"
        f"@hookimpl({mark})\ndef vmbuild_user_data(vm):\n    {body}\n"
    )
    (tmp_path / "lab.toml").write_text(PROFILE.format(plugins='["lab/wrap.py"]'))
    profile = load_profile(tmp_path / "lab.toml")
    with pytest.raises(UserError) as caught:
        load_plugins(profile)
    message = caught.value.lines()[0]
    assert message.startswith(f'{profile.path}: plugins: "lab/wrap.py": {expected}'), message
    assert "tryfirst" in caught.value.hint and "trylast" in caught.value.hint
