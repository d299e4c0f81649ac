"""Plugins: loading (profile, entry points, built-ins), listing, disabling, the errors
a broken plugin gives, every hook's effect on a real bundle, and the docs of the hooks.

Plugins here are small inline files written to tmp_path and named by the profile.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import re
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib
import pytest
from guestimages import read_guest_files
from labs import debian_facts, make_image, nodes, write_lab
from vmbuild.errors import BuildError, ProfileError, UserError
from vmbuild.host.hostkeys import HostKeySet
from vmbuild.model.plan import make_plan
from vmbuild.model.profile import load_profile
from vmbuild.output.seed import seed_files, seed_iso_bytes
from vmbuild.plugins import hookspecs
from vmbuild.plugins.manager import BUILTIN_PLUGINS, HOOK_NAMES, PluginError, load_plugins

#: The run_cli fixture (conftest.py): run(*args) -> Result(code, out, err).
RunCli = Callable[..., Any]

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- docs


def test_docs_document_every_hook_with_its_exact_signature() -> None:
    """docs/plugins.md has a `def` line per hook, equal to the hookspec's signature."""
    text = (REPO / "docs" / "plugins.md").read_text()
    documented = dict(re.findall(r"^def (vmbuild_\w+)(\(.*\) -> .*)$", text, re.MULTILINE))
    headings = re.findall(r"^### (vmbuild_\w+)$", text, re.MULTILINE)
    assert sorted(documented) == sorted(HOOK_NAMES), "hooks missing from or unknown to the docs"
    assert sorted(headings) == sorted(HOOK_NAMES)
    for name in HOOK_NAMES:
        signature = inspect.signature(getattr(hookspecs, name))
        params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
        assert documented[name] == f"({params}) -> {signature.return_annotation}", name
        assert (getattr(hookspecs, name).__doc__ or "").count(":return:") == 1, name


# ------------------------------------------------------------------------ loading


def fake_distribution(site: Path, name: str, module_source: str) -> None:
    """An installed package with an entry point in the `vmbuild` group."""
    (site / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = site / f"{name}-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[vmbuild]\n{name}_ep = {name}\n")


def test_plugins_command_lists_every_source_in_call_order(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "vmbuild_site_extra", "def vmbuild_user_data(vm):\n    return {}\n")
    monkeypatch.syspath_prepend(str(site))
    profile = write_lab(
        tmp_path,
        "golden.qcow2",
        plugin_files={"lab/motd.py": "def vmbuild_domain_xml(domain):\n    pass\n"},
        plugins=["vmbuild_plugins.examples.packages"],
    )
    result = run_cli("plugins", profile, "--json")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert [p["name"] for p in listed] == [
        *BUILTIN_PLUGINS,
        "vmbuild_site_extra_ep",
        "lab/motd.py",
        "vmbuild_plugins.examples.packages",
    ]
    by_name = {p["name"]: p for p in listed}
    assert by_name["vmbuild_plugins.network"]["source"] == "builtin"
    assert by_name["vmbuild_plugins.inventory"]["hooks"] == ["vmbuild_bundle_files"]
    assert by_name["vmbuild_site_extra_ep"]["source"] == "entry point"
    assert by_name["vmbuild_site_extra_ep"]["origin"] == "vmbuild_site_extra 1.2"
    lab = by_name["lab/motd.py"]
    assert lab["source"] == "file"
    assert lab["origin"] == str(tmp_path / "lab" / "motd.py")
    assert lab["hooks"] == ["vmbuild_domain_xml"]
    assert lab["sha256"] == hashlib.sha256((tmp_path / "lab/motd.py").read_bytes()).hexdigest()
    assert by_name["vmbuild_plugins.examples.packages"]["source"] == "module"
    assert by_name["vmbuild_plugins.examples.packages"]["hooks"] == ["vmbuild_user_data"]

    text = run_cli("plugins", profile)
    assert text.code == 0
    assert f"lab/motd.py  (file, {tmp_path / 'lab' / 'motd.py'})\n    vmbuild_domain_xml\n" in (
        text.out
    )
    assert "vmbuild_site_extra_ep  (entry point, vmbuild_site_extra 1.2)" in text.out
    helped = run_cli("plugins", "--help")
    assert helped.code == 0 and "--json" in helped.out and "VMBUILD_DISABLE_PLUGINS" in helped.out


def test_disabled_plugins_are_not_loaded(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = write_lab(
        tmp_path, "golden.qcow2", plugin_files={"broken.py": "raise RuntimeError('never')\n"}
    )
    monkeypatch.setenv("VMBUILD_DISABLE_PLUGINS", "vmbuild_plugins.network, broken.py,nothing")
    result = run_cli("plugins", profile, "--json")
    assert result.code == 0, result.err
    listed = {p["name"]: p for p in json.loads(result.out)}
    assert listed["vmbuild_plugins.network"]["disabled"] is True
    assert listed["broken.py"]["disabled"] is True  # and never imported: it would raise
    assert listed["vmbuild_plugins.identity"]["disabled"] is False
    assert "VMBUILD_DISABLE_PLUGINS names nothing, which is not a plugin" in result.err
    plugins = load_plugins(load_profile(profile))
    impls = plugins.manager.hook.vmbuild_disk_operations.get_hookimpls()
    assert [impl.plugin_name for impl in impls] == ["vmbuild_plugins.identity"]
    assert "vmbuild_plugins.network" not in json.dumps(plugins.inputs())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "def vmbuild_user_dat(vm):\n    return {}\n",
            "vmbuild_user_dat is not a vmbuild hook (did you mean vmbuild_user_data?)",
        ),
        (
            "from vmbuild.plugins.hookspecs import hookimpl\n\n"
            "@hookimpl\ndef motd(vm):\n    pass\n",
            "motd is not a vmbuild hook",
        ),
        (
            "def vmbuild_user_data(vm, colour):\n    return {}\n",
            "Argument(s) {'colour'} are declared in the hookimpl but can not be found",
        ),
        ("x = 1 / 0\n", "failed to load: ZeroDivisionError: division by zero"),
        ("def vmbuild_user_data(vm)\n", "failed to load: SyntaxError: expected ':' (line 1)"),
        (
            "from vmbuild.plugins.hookspecs import hookimpl\n\n@hookimpl(hookwrapper=True)\n"
            "def vmbuild_user_data(vm):\n    yield\n",
            "vmbuild_user_data is a hook wrapper",
        ),
    ],
    ids=["misspelt", "not-a-hook", "bad-argument", "raises", "syntax", "wrapper"],
)
def test_a_broken_plugin_is_a_user_error_naming_it(
    run_cli: RunCli, tmp_path: Path, source: str, expected: str
) -> None:
    profile = write_lab(tmp_path, "golden.qcow2", plugin_files={"lab/bad.py": source})
    for command in ("plan", "plugins"):
        result = run_cli(command, profile)
        assert result.code == 2, result.err
        assert result.err.startswith(f'vmbuild: error: {profile}: plugins: "lab/bad.py": ')
        assert expected in result.err
        assert "Traceback" not in result.err


def test_an_entry_point_that_fails_to_load_is_named(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "vmbuild_site_broken", "raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(site))
    result = run_cli("plugins", write_lab(tmp_path, "golden.qcow2"))
    assert result.code == 2
    assert result.err == (
        'vmbuild: error: entry point "vmbuild_site_broken_ep" (vmbuild_site_broken 1.2, '
        "vmbuild_site_broken): cannot load: ImportError: needs libfoo "
        "(run with -v for the traceback)\n"
    )


def test_a_missing_plugin_is_a_user_error(run_cli: RunCli, tmp_path: Path) -> None:
    profile = write_lab(tmp_path, "golden.qcow2", plugins=["./gone.py", "no_such_vmbuild_plugin"])
    result = run_cli("plan", profile)
    assert result.code == 2
    assert f'{profile}: plugins: "./gone.py": no such file {tmp_path / "gone.py"}' in result.err
    profile = write_lab(tmp_path, "golden.qcow2", plugins=["no_such_vmbuild_plugin"])
    result = run_cli("plan", profile)
    assert result.code == 2
    assert (
        'plugins: "no_such_vmbuild_plugin": cannot import no_such_vmbuild_plugin: '
        "ModuleNotFoundError: No module named 'no_such_vmbuild_plugin'"
    ) in result.err


def test_the_same_file_twice_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "a.py").write_text("def vmbuild_user_data(vm):\n    return {}\n")
    profile = write_lab(tmp_path, "golden.qcow2", plugins=["lab/a.py", "./lab/../lab/a.py"])
    result = run_cli("plugins", profile)
    assert result.code == 2
    assert f'{profile}: plugins: "./lab/../lab/a.py": the same file as "lab/a.py"' in result.err


def test_a_failing_import_shows_its_traceback_with_v(run_cli: RunCli, tmp_path: Path) -> None:
    profile = write_lab(
        tmp_path, "golden.qcow2", plugin_files={"bad.py": "import os\n\nos.no_such_thing()\n"}
    )
    quiet = run_cli("validate", profile, "--no-base")
    assert quiet.code == 2 and "Traceback" not in quiet.err
    loud = run_cli("validate", profile, "--no-base", "-v")
    assert loud.code == 2
    assert "Traceback" in loud.err and f'File "{tmp_path / "bad.py"}", line 3' in loud.err
    assert "AttributeError: module 'os' has no attribute 'no_such_thing'" in loud.err


def test_profile_checks_report_like_builtin_ones(run_cli: RunCli, tmp_path: Path) -> None:
    source = """\
        from vmbuild.errors import Problem

        def vmbuild_check_profile(profile):
            for vm in profile.vms:
                if vm.memory < 2 << 30:
                    yield Problem(f'vm "{vm.name}"', "needs 2G of memory", "set memory = 2G")
        """
    profile = write_lab(tmp_path, "golden.qcow2", plugin_files={"check.py": source})
    result = run_cli("plan", profile)
    assert result.code == 2
    assert result.err.splitlines() == [
        f'vmbuild: error: {profile}: vm "node1": needs 2G of memory (set memory = 2G)',
        f'vmbuild: error: {profile}: vm "node2": needs 2G of memory (set memory = 2G)',
    ]
    with pytest.raises(ProfileError):
        load_plugins(load_profile(profile))
    assert run_cli("plan", profile, "--set", "defaults.memory=2G").code == 0


def test_plan_vm_annotates_the_plan(run_cli: RunCli, tmp_path: Path) -> None:
    source = """\
        def vmbuild_plan_vm(vm):
            return {"role": "db" if vm.index == 1 else "web", "tags": [vm.name]}

        def vmbuild_user_data(vm):
            return {"write_files": [{"path": "/etc/role", "content": vm.extra["role"]}]}
        """
    profile = write_lab(
        tmp_path, "golden.qcow2", plugin_files={"roles.py": source, "more.py": source}
    )
    result = run_cli("plan", profile, "--json")
    assert result.code == 0, result.err
    vms = json.loads(result.out)["vms"]
    assert vms[0]["extra"] == {"role": "db", "tags": ["node1", "node1"]}  # deep-merged
    assert vms[1]["extra"]["role"] == "web"
    loaded = load_profile(profile)
    plugins = load_plugins(loaded)
    plan = make_plan(loaded, plugins)
    files = seed_files(plan, plan.vms[1], plugins)
    assert b"path: /etc/role\n  content: web\n" in files["user-data"]


# ------------------------------------------------------------------ hook results


def test_seed_files_hook_adds_files_to_the_iso(tmp_path: Path) -> None:
    source = """\
        def vmbuild_seed_files(vm):
            return {"lab-role.txt": f"role of {vm.name}\\n", "blob": bytes([0, 1, 2])}
        """
    profile = load_profile(
        write_lab(tmp_path, "golden.qcow2", plugin_files={"seedfiles.py": source})
    )
    plugins = load_plugins(profile)
    plan = make_plan(profile, plugins)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(seed_iso_bytes(seed_files(plan, plan.vms[0], plugins), 0)))
    try:
        names = {name for _, _, files in iso.walk(rr_path="/") for name in files}
        assert names == {"meta-data", "user-data", "network-config", "lab-role.txt", "blob"}
        for kind, path in (("rr_path", "/lab-role.txt"), ("joliet_path", "/lab-role.txt")):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, **{kind: path})
            assert out.getvalue() == b"role of node1\n"
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, iso_path="/LAB_ROLE.TXT;1")
        assert out.getvalue() == b"role of node1\n"
    finally:
        iso.close()


@pytest.mark.parametrize(
    ("hook", "body", "expected"),
    [
        ("vmbuild_user_data(vm)", "return ['a']", "returned list, not a mapping"),
        ("vmbuild_seed_files(vm)", "return {'../x': b''}", "file name '../x' is not a plain"),
        ("vmbuild_seed_files(vm)", "return {'user-data': b''}", "is the seed's own user-data"),
        ("vmbuild_seed_files(vm)", "return {'a': 1}", "a: contents are int, not bytes or str"),
        ("vmbuild_plan_vm(vm)", "return {'when': object()}", "returned data that is not JSON"),
        ("vmbuild_disk_operations(vm)", "return ['rm -rf /']", "returned str, not a vmbuild."),
        ("vmbuild_domain_xml(vm)", "raise KeyError('cpu')", "KeyError: 'cpu'"),
    ],
)
def test_a_hook_that_fails_names_plugin_hook_and_vm(
    tmp_path: Path, hook: str, body: str, expected: str
) -> None:
    profile = load_profile(
        write_lab(tmp_path, "golden.qcow2", plugin_files={"bad.py": f"def {hook}:\n    {body}\n"})
    )
    plugins = load_plugins(profile)
    name = hook.split("(")[0]
    with pytest.raises(PluginError) as caught:
        plan = make_plan(profile, plugins)
        vm = plan.vms[0]
        seed_files(plan, vm, plugins)
        plugins.disk_operations(plan, vm, debian_facts())
        plugins.domain_xml(plan, vm, ET.Element("domain"))
    message = caught.value.lines()[0]
    assert message.startswith(f'vm "node1": plugin "bad.py" failed in {name}: '), message
    assert expected in message
    assert caught.value.plugin == "bad.py" and caught.value.hook == name


def test_bundle_files_must_stay_inside_the_bundle(tmp_path: Path) -> None:
    for path, problem in (
        ("../outside", "must be a normalised path inside the bundle"),
        ("/etc/passwd", "must be a normalised path inside the bundle"),
        ("manifest.json", "is one of vmbuild's own files"),
        ("vms/node1/domain.xml", "is one of vmbuild's own files"),
    ):
        source = f"def vmbuild_bundle_files(lab):\n    return {{{path!r}: 'x'}}\n"
        profile = load_profile(
            write_lab(tmp_path, "golden.qcow2", plugin_files={"bundle.py": source})
        )
        plugins = load_plugins(profile)
        with pytest.raises(PluginError, match=re.escape(f"file name {path!r} {problem}")):
            plugins.bundle_files(make_plan(profile, plugins), "/srv/t", {})


def test_exception_in_a_build_publishes_nothing_and_shows_traceback_with_v(
    run_cli: RunCli, tmp_path: Path
) -> None:
    source = """\
        def vmbuild_user_data(vm):
            if vm.name == "node2":
                return {"packages": sorted([vm.name, None])}
        """
    blank = make_image(tmp_path / "blank.qcow2", size="64M")
    profile = write_lab(tmp_path, blank, plugin_files={"lab/bad.py": source})
    out = tmp_path / "out"
    result = run_cli(profile, "-o", out)
    assert result.code == 3
    assert result.err.splitlines()[-1] == (
        'vmbuild: error: vm "node2": plugin "lab/bad.py" failed in vmbuild_user_data: '
        "TypeError: '<' not supported between instances of 'NoneType' and 'str' "
        "(run with -v for the plugin's traceback)"
    )
    assert "Traceback" not in result.err
    assert not (out / "t").exists()
    assert sorted(p.name for p in out.iterdir()) == [".t.lock"]  # no staging folder left
    verbose = run_cli(profile, "-o", out, "-v")
    assert verbose.code == 3
    assert "Traceback" in verbose.err
    assert f'File "{tmp_path / "lab" / "bad.py"}", line 3, in vmbuild_user_data' in verbose.err


def test_a_plugin_raising_a_vmbuild_error_keeps_its_words_and_exit_code(
    run_cli: RunCli, tmp_path: Path
) -> None:
    source = """\
        from vmbuild.errors import UserError

        def vmbuild_domain_xml(vm):
            raise UserError("bridge br-storage is not in the profile", hint="add it")
        """
    profile = write_lab(tmp_path, "golden.qcow2", plugin_files={"nic.py": source})
    loaded = load_profile(profile)
    plugins = load_plugins(loaded)
    plan = make_plan(loaded, plugins)
    with pytest.raises(PluginError) as caught:
        plugins.domain_xml(plan, plan.vms[0], ET.Element("domain"))
    assert isinstance(caught.value, BuildError) and caught.value.exit_code == 2
    assert caught.value.lines() == [
        'vm "node1": plugin "nic.py" failed in vmbuild_domain_xml: '
        "bridge br-storage is not in the profile (add it)"
    ]
    assert not isinstance(caught.value, UserError)


# ---------------------------------------------------- a whole build with lab plugins

#: The lab plugin of the acceptance test: under 20 lines, one change per artifact.
SMALL_PLUGIN = """\
import xml.etree.ElementTree as ET

from vmbuild.guest.diskops import WriteFile
from vmbuild.plugins.hookspecs import hookimpl


@hookimpl
def vmbuild_user_data(vm):
    return {"runcmd": [["touch", f"/var/lib/{vm.name}-ready"]]}


@hookimpl
def vmbuild_disk_operations(vm):
    return [WriteFile(path="/etc/lab-note", content=f"{vm.name}\\n")]


@hookimpl
def vmbuild_domain_xml(domain):
    domain.append(ET.Element("cpu", mode="host-passthrough"))
"""

#: Records, in a file beside it, every hook call with its VM.
RECORDER = """\
from pathlib import Path

LOG = Path(__file__).with_name("hooks.log")


def _log(hook, vm=None):
    with LOG.open("a") as handle:
        handle.write(hook + (f" {vm.name}" if vm is not None else "") + "\\n")


def vmbuild_check_profile(profile):
    _log("check_profile")


def vmbuild_plan_vm(vm):
    _log("plan_vm", vm)


def vmbuild_disk_operations(vm):
    _log("disk_operations", vm)


def vmbuild_user_data(vm):
    _log("user_data", vm)


def vmbuild_network_config(vm):
    _log("network_config", vm)


def vmbuild_seed_files(vm):
    _log("seed_files", vm)


def vmbuild_domain_xml(vm):
    _log("domain_xml", vm)


def vmbuild_bundle_files(lab):
    _log("bundle_files")


def vmbuild_build_finished(bundle):
    _log("build_finished")
"""


@dataclass
class Built:
    profile: Path
    out: Path
    bundle: Path
    err: str
    note: dict[str, bytes | None]


@pytest.fixture(scope="module")
def built(os_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """A two-VM lab with the small plugin and the recorder, built once, its disks read
    back in one appliance."""
    from vmbuild import log
    from vmbuild.cli import main

    work = tmp_path_factory.mktemp("lab-plugins")
    profile = write_lab(
        work, os_image, plugin_files={"lab/small.py": SMALL_PLUGIN, "lab/recorder.py": RECORDER}
    )
    assert len(SMALL_PLUGIN.splitlines()) < 20
    out = work / "out"
    log.set_verbosity(1)
    assert main([str(profile), "-o", str(out), "-q"]) == 0
    bundle = out / "t"
    disks = {name: bundle / f"vms/{name}/disk.qcow2" for name in ("node1", "node2")}
    files = read_guest_files(disks, ["/etc/lab-note"])
    note = {name: files[name]["/etc/lab-note"] for name in disks}
    yield Built(profile, out, bundle, "", note)


def read_iso_file(path: Path, name: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        return out.getvalue()
    finally:
        iso.close()


@pytest.mark.guestfs
def test_small_lab_plugin_reaches_seed_disk_and_xml(built: Built) -> None:
    for name in ("node1", "node2"):
        user_data = read_iso_file(built.bundle / f"vms/{name}/seed.iso", "user-data").decode()
        assert f"runcmd:\n- - touch\n  - /var/lib/{name}-ready\n" in user_data
        assert built.note[name] == f"{name}\n".encode()
        domain = ET.parse(built.bundle / f"vms/{name}/domain.xml").getroot()
        cpu = domain.find("cpu")
        assert cpu is not None and cpu.get("mode") == "host-passthrough"
    operations = json.loads((built.bundle / "plan.json").read_text())["vms"][0]["operations"]
    summary = "Writing /etc/lab-note (mode 0644)"
    assert {"op": "write", "summary": summary}.items() <= operations[-1].items()


@pytest.mark.guestfs
def test_inventory_comes_from_the_plugin_and_is_checksummed(built: Built) -> None:
    sums = (built.bundle / "SHA256SUMS").read_text()
    for name in ("hosts", "known_hosts", "ssh_config", "ansible.ini"):
        data = (built.bundle / "inventory" / name).read_bytes()
        assert f"{hashlib.sha256(data).hexdigest()}  inventory/{name}\n" in sums
    ansible = (built.bundle / "inventory" / "ansible.ini").read_text()
    assert "[t]\nnode1 ansible_host=192.0.2.10\nnode2 ansible_host=192.0.2.11\n" in ansible
    assert f"UserKnownHostsFile={built.bundle}/inventory/known_hosts" in ansible
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=built.bundle, check=True)


@pytest.mark.guestfs
def test_hooks_fire_in_order_during_a_whole_build(built: Built) -> None:
    calls = (built.profile.parent / "lab" / "hooks.log").read_text().splitlines()
    per_vm = [
        f"{hook} {vm}"
        for hook in ("user_data", "network_config", "seed_files")
        for vm in ("node1",)
    ]
    assert calls == [
        "check_profile",
        "plan_vm node1",
        "plan_vm node2",
        *per_vm,
        *(f"{hook} node2" for hook in ("user_data", "network_config", "seed_files")),
        "domain_xml node1",
        "domain_xml node2",
        # once per VM, right after the appliance inspected the golden image: the
        # same operations edit the disks and go into plan.json
        "disk_operations node1",
        "disk_operations node2",
        "bundle_files",
        "build_finished",
    ]


@pytest.mark.guestfs
def test_changing_a_lab_plugin_rebuilds_the_disks(built: Built, run_cli: RunCli) -> None:
    """Runs last on the module's lab: it rebuilds it."""
    again = run_cli(built.profile, "-o", built.out)
    assert again.code == 0, again.err
    assert "t is up to date: nothing to do" in again.err
    small = built.profile.parent / "lab" / "small.py"
    small.write_text(small.read_text().replace("/etc/lab-note", "/etc/lab-notes"))
    changed = run_cli(built.profile, "-o", built.out)
    assert changed.code == 0, changed.err
    assert "up to date" not in changed.err
    assert "Creating 2 disks" in changed.err


# --------------------------------------------- the built-in network plugin, disabled


def _fixed_host_keys() -> Callable[..., dict[str, HostKeySet]]:
    """Host keys made once per VM name, so that two builds publish the same keys."""
    from vmbuild.host.hostkeys import generate_host_keys

    made: dict[str, HostKeySet] = {}

    def generate(
        hostnames: dict[str, str], types: Sequence[str], niceness: int = 19
    ) -> dict[str, HostKeySet]:
        missing = {name: host for name, host in hostnames.items() if name not in made}
        if missing:
            made.update(generate_host_keys(missing, types, niceness))
        return {name: made[name] for name in hostnames}

    return generate


def _sums_without_disks(bundle: Path) -> dict[str, str]:
    """SHA256SUMS without the disks (the guest filesystem records write times) and
    the manifest (which records the disks' digests), and the manifest without them."""
    lines = {}
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        lines[name] = digest
    manifest = json.loads((bundle / "manifest.json").read_text())
    for vm in manifest["vms"].values():
        del vm["artifacts"]["disk"]["sha256"]
    lines["manifest.json"] = json.dumps(manifest, sort_keys=True)
    return {name: digest for name, digest in lines.items() if not name.endswith("disk.qcow2")}


@pytest.mark.guestfs
def test_without_the_network_plugin_no_network_file_is_written(
    run_cli: RunCli, os_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disabled, the network plugin leaves no trace; enabled, the bundle is the default
    one. All builds go to one output folder (paths in the XML and manifest are
    absolute) with the same host keys (ssh-keygen's are random)."""
    monkeypatch.setattr("vmbuild.host.hostkeys.generate_host_keys", _fixed_host_keys())
    profile = write_lab(tmp_path, os_image, vms=[nodes(1)])
    out = tmp_path / "out"
    bundle = out / "t"

    def build(disable: str | None, *options: str) -> None:
        if disable is None:
            monkeypatch.delenv("VMBUILD_DISABLE_PLUGINS", raising=False)
        else:
            monkeypatch.setenv("VMBUILD_DISABLE_PLUGINS", disable)
        result = run_cli(profile, "-o", out, "-q", *options)
        assert result.code == 0, result.err

    build(None)
    default_sums = _sums_without_disks(bundle)
    default = {
        file: (bundle / file).read_bytes()
        for file in ("plan.json", "vms/node1/seed.iso", "vms/node1/domain.xml")
    }
    build("", "--force")  # enabled explicitly: every disk made anew
    assert _sums_without_disks(bundle) == default_sums
    kept = tmp_path / "kept"  # at the same depth: the overlay's backing path still holds
    kept.mkdir()
    bundle.rename(kept / "t")
    build("vmbuild_plugins.network")

    # Only the network plugin's operations are missing; seeds and XML are the same.
    ops = {
        case: [op["summary"] for op in json.loads(plan)["vms"][0]["operations"]]
        for case, plan in (
            ("default", default["plan.json"]),
            ("disabled", (bundle / "plan.json").read_bytes()),
        )
    }
    assert set(ops["disabled"]) < set(ops["default"])
    assert not [summary for summary in ops["disabled"] if "interfaces" in summary]
    for file in ("vms/node1/seed.iso", "vms/node1/domain.xml"):
        assert (bundle / file).read_bytes() == default[file]

    network_files = (
        "/etc/network/interfaces",
        "/etc/systemd/network/10-vmbuild-lan0.link",
        "/etc/cloud/cloud.cfg.d/99-vmbuild-network.cfg",
    )
    disks = {
        "golden": os_image,
        "disabled": bundle / "vms/node1/disk.qcow2",
        "enabled": kept / "t/vms/node1/disk.qcow2",
    }
    seen = read_guest_files(disks, network_files)
    assert seen["disabled"] == seen["golden"]  # not one network file written
    assert b"192.0.2.10/24" not in (seen["disabled"]["/etc/network/interfaces"] or b"")
    assert b"address 192.0.2.10/24" in (seen["enabled"]["/etc/network/interfaces"] or b"")
    assert seen["enabled"]["/etc/systemd/network/10-vmbuild-lan0.link"] is not None
