"""Fuzzing the profile loader: whatever a profile file holds, vmbuild answers with one
of its own errors, each line of it a single readable line, or with a plan whose every
value renders into output that parses back to that value.

Three sources of documents, all starting from one valid profile:

- plausible values for its keys (mostly valid profiles: these exercise the renderers),
- hostile values (control characters, arbitrary text, wrong types, nested tables),
- raw byte mutations of the profile file (these exercise the TOML parser's errors).

Every run is the same run: derandomized, with no example database.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vmbuild.errors import VmbuildError
from vmbuild.host.files import file_digest
from vmbuild.model.hosts import hosts_file
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import Account, control_character, load_profile
from vmbuild.output.bundle import sums_text
from vmbuild.output.domain import domain_xml
from vmbuild.output.render import render
from vmbuild.output.seed import seed_files
from vmbuild.plugins.manager import PluginError, Plugins, load_plugins

#: Few enough examples that the whole file runs in seconds on a busy machine.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=250,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OUT = "/var/lib/vmbuild/out/"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C t@lab"
HASH = "$6$salt$0123456789abcdefghijklmnopqrstuvwxyz"

#: A valid profile that sets (nearly) every key vmbuild knows.
BASE: dict[str, Any] = {
    "lab": {"name": "lab", "seed": "fuzz", "domain": "lab.example", "domain_type": "qemu"},
    "base": {"image": "golden.qcow2"},
    "network": {
        "type": "bridge",
        "source": "br0",
        "subnet": "198.51.100.0/24",
        "gateway": "198.51.100.1",
        "dns": ["198.51.100.1"],
    },
    "defaults": {"vcpus": 2, "memory": "1G", "disk_size": "8G", "vnc_keymap": "en-us"},
    "root": {"password_hash": HASH, "ssh_authorized_keys": [KEY]},
    "user": {"name": "lab", "ssh_authorized_keys": [KEY], "sudo": True},
    "vm": [
        {
            "name": "web",
            "hostname": "www",
            "ip": "198.51.100.10",
            "mac": "52:54:00:12:34:56",
            "uuid": "6f1c1a3e-2b4d-4c5e-8f90-123456789abc",
            "vnc_port": 5910,
            "memory": "2G",
        },
        {"name": "node{n}", "count": 2, "ip": "198.51.100.20", "autostart": True},
    ],
}

# ------------------------------------------------------------------ strategies


def regex(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


#: What a terminal, a shell or a line-based file would trip on.
CONTROLS = st.sampled_from(
    [chr(code) for code in range(0x20)] + ["\x7f", "\x80", "\x85", "\x9b", "\u2028", "\u2029"]
)
#: Any text but surrogates (TOML cannot hold them): controls and non-ASCII included.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=16)
PRINTABLE = st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=16)
IP = regex(r"198\.51\.100\.[0-9]{1,3}")
DOMAIN = regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\.[a-zA-Z0-9]{1,6}){0,2}\.?")
SIZE = regex(r"[0-9]{1,4}(\.[05])? ?[KkMGT]?(iB)?") | st.integers(0, 1 << 36)
SSH_KEY = st.builds(
    lambda options, kind, blob, comment: f"{options}{kind} {blob}{comment}",
    st.sampled_from(["", 'from="198.51.100.0/24" ', 'no-pty,command="/bin/true" ']),
    st.sampled_from(
        ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "sk-ssh-ed25519@openssh.com"]
    ),
    regex(r"[A-Za-z0-9+/]{4,24}={0,2}"),
    st.just("") | PRINTABLE.map(lambda text: " " + text),
)
CRYPT = regex(r"\$(1|5|6|y|2b)\$[./A-Za-z0-9]{1,12}(\$[./A-Za-z0-9]{1,24})?")

PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "lab.name": regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}"),
    "lab.seed": PRINTABLE.filter(str.strip),
    "lab.domain": DOMAIN,
    "lab.domain_type": st.sampled_from(["kvm", "qemu", "xen"]),
    "lab.vnc_base": st.integers(5890, 65010),
    "base.image": PRINTABLE.filter(str.strip),
    "base.sha256": regex(r"(sha256:)?[0-9a-fA-F]{64}"),
    "base.format": st.sampled_from(["qcow2", "raw"]),
    "network.type": st.sampled_from(["bridge", "network", "user"]),
    "network.source": regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,10}"),
    "network.create": st.booleans(),
    "network.subnet": regex(r"198\.51\.100\.0/2[4-9]"),
    "network.gateway": IP,
    "network.dns": st.lists(IP, max_size=3),
    "network.search": st.lists(DOMAIN, max_size=2),
    "defaults.vcpus": st.integers(0, 5000),
    "defaults.memory": SIZE,
    "defaults.disk_size": SIZE,
    "defaults.disk_mode": st.sampled_from(["overlay", "copy"]),
    "defaults.disk_format": st.sampled_from(["qcow2", "raw"]),
    "defaults.disk_bus": st.sampled_from(["virtio", "ide", "sata", "scsi"]),
    "defaults.seed_bus": st.sampled_from(["auto", "ide", "sata", "scsi", "virtio"]),
    "defaults.machine": st.sampled_from(["pc", "q35"]),
    "defaults.nic_model": regex(r"[a-z0-9][a-z0-9_-]{0,8}"),
    "defaults.vnc_listen": IP | st.just("0.0.0.0"),
    "defaults.vnc_keymap": regex(r"[a-z]{2}(-[a-z]{2,3})?"),
    "defaults.autostart": st.booleans(),
    "root.password_hash": CRYPT,
    "root.ssh_authorized_keys": st.lists(SSH_KEY, max_size=2),
    "user.name": regex(r"[a-z_][a-z0-9_-]{0,8}"),
    "user.password_hash": CRYPT,
    "user.ssh_authorized_keys": st.lists(SSH_KEY, max_size=2),
    "user.sudo": st.booleans(),
    "vm.name": regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}(\{n(:0[1-3])?\})?"),
    "vm.hostname": regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,8}(\{n(:0[1-3])?\})?"),
    "vm.ip": IP,
    "vm.mac": regex(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"),
    "vm.uuid": st.uuids().map(str),
    "vm.vnc_port": st.integers(5890, 66000),
    "vm.count": st.integers(0, 5),
    "vm.first": st.integers(-1, 30),
}
#: [defaults] keys may be set in a [[vm]] too; accounts in a [[vm]]'s own tables.
VM_KEYS = [key for key in PLAUSIBLE if key.startswith(("vm.", "defaults."))]
ACCOUNT_KEYS = [key for key in PLAUSIBLE if key.startswith(("root.", "user."))]


def with_control(value: Any) -> st.SearchStrategy[str]:
    """``value`` as text with a control character before, inside or after it; most
    often a trailing newline, which a check with re.match(...$) lets through."""
    text = str(value)
    return st.one_of(
        st.sampled_from(["\n", "\r\n", "\n\n", "\n" + KEY]).map(lambda end: text + end),
        CONTROLS.map(lambda char: text + char),
        st.tuples(CONTROLS, st.integers(0, len(text))).map(
            lambda pair: text[: pair[1]] + pair[0] + text[pair[1] :]
        ),
    )


def hostile(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    scalar = st.one_of(
        TEXT,
        st.integers(-(1 << 63), (1 << 63) - 1),
        st.booleans(),
        st.floats(),
        st.datetimes(),
    )
    return st.one_of(
        plausible.flatmap(with_control),
        plausible.flatmap(with_control).map(lambda text: [text]),
        scalar,
        st.lists(plausible | scalar, max_size=3),
        st.dictionaries(TEXT, plausible | scalar, max_size=2),
    )


def _place(doc: dict[str, Any], path: str, vm: int, own: bool) -> tuple[dict[str, Any], str]:
    """The table ``path`` ("user.name", "vm.ip") names in ``doc``, and its key."""
    table, key = path.split(".")
    if table == "vm" or (table == "defaults" and own):
        entry = doc["vm"][vm]
        return entry, key
    if table in ("root", "user") and own:
        entry = doc["vm"][vm].setdefault(table, {"name": "own"} if table == "user" else {})
        return entry, key
    return doc.setdefault(table, {}), key


@st.composite
def documents(draw: st.DrawFn, values: Callable[[str], st.SearchStrategy[Any]]) -> Any:
    """BASE with a few keys set to drawn values, removed, or added unknown."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 5))):
        path = draw(st.sampled_from(sorted(PLAUSIBLE)))
        vm = draw(st.integers(0, len(doc["vm"]) - 1))
        # [defaults] keys and accounts go lab-wide or into one [[vm]]; VM keys into a VM.
        own = path.startswith("vm.") or (path in VM_KEYS + ACCOUNT_KEYS and draw(st.booleans()))
        table, key = _place(doc, path, vm, own)
        action = draw(st.sampled_from(["set", "set", "set", "delete", "unknown"]))
        if action == "set":
            table[key] = draw(values(path))
        elif action == "delete":
            table.pop(key, None)
        else:
            table[draw(TEXT.filter(lambda name: name != "plugins"))] = draw(values(path))
    if draw(st.integers(0, 9)) == 0:
        doc["vm"].append({"name": draw(PLAUSIBLE["vm.name"]), "ip": draw(IP)})
    if values is any_value and draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(sorted(doc)))] = draw(hostile(TEXT))
    return doc


def plausible(path: str) -> st.SearchStrategy[Any]:
    return PLAUSIBLE[path]


def any_value(path: str) -> st.SearchStrategy[Any]:
    return PLAUSIBLE[path] | hostile(PLAUSIBLE[path])


# ------------------------------------------------------------------ the checks


def check_error(error: VmbuildError) -> None:
    """Every line of a refusal is one line of visible text."""
    lines = error.lines()
    assert lines
    for line in lines:
        assert control_character(line) == "", repr(line)


def check_file(path: Path) -> str:
    """Load, plan and render the profile at ``path``: "refused" or "rendered"."""
    try:
        profile = load_profile(path)
        plugins = load_plugins(profile)
        plan = make_plan(profile, plugins)
    except VmbuildError as error:
        check_error(error)
        return "refused"
    check_plan(plan, plugins)
    return "rendered"


def check_plan(plan: Plan, plugins: Plugins) -> None:
    root = OUT + plan.lab
    for vm in plan.vms:
        domain = ET.fromstring(domain_xml(plan, vm, root, plugins))
        assert domain.findtext("name") == vm.name
        assert domain.findtext("uuid") == vm.uuid
        assert [mac.get("address") for mac in domain.iter("mac")] == [vm.mac]
        sources = [source.get("file") for source in domain.findall("devices/disk/source")]
        assert sources == [f"{root}/{vm.disk.file}", f"{root}/{vm.seed.file}"]
        if plan.network.source is not None:
            interface = domain.find("devices/interface/source")
            assert interface is not None
            assert set(interface.attrib.values()) == {plan.network.source}

        files = seed_files(plan, vm, plugins)
        meta = yaml.safe_load(files["meta-data"])
        assert meta == {"instance-id": vm.instance_id, "local-hostname": vm.hostname}
        assert files["user-data"].startswith(b"#cloud-config\n")
        user_data = yaml.safe_load(files["user-data"])
        assert (user_data["hostname"], user_data["fqdn"]) == (vm.hostname, vm.fqdn)
        accounts = [account for account in (vm.root, vm.user) if account is not None]
        assert [entry["name"] for entry in user_data.get("users", [])] == [
            account.name for account in accounts
        ]
        for entry, account in zip(user_data.get("users", []), accounts, strict=True):
            assert entry.get("ssh_authorized_keys", []) == list(account.ssh_authorized_keys)
            assert entry.get("hashed_passwd") == account.password_hash
            check_line_files(vm.hostname, account)
        network = yaml.safe_load(files["network-config"])
        lan = network["ethernets"]["lan0"]
        assert lan["match"] == {"macaddress": vm.mac}
        assert lan["addresses"] == [f"{vm.ip}/{vm.prefix}"]
        assert lan.get("nameservers", {}).get("search", []) == list(plan.network.search)

    check_define_sh(plan, root)

    lines = hosts_file(plan).split("\n")
    assert lines[-1] == "", "the hosts file ends with one newline"
    body = lines[lines.index(f"# {plan.lab} (written by vmbuild)") + 1 : -1]
    assert len(body) == len(plan.vms)
    for line, vm in zip(body, plan.vms, strict=True):
        assert line.split(" ") == [vm.ip, *dict.fromkeys([vm.fqdn, vm.hostname])]


def check_line_files(hostname: str, account: Account) -> None:
    """The files a clone gets one line per entry in: authorized_keys, /etc/shadow and
    /etc/hostname read back as exactly the lines written."""
    keys = list(account.ssh_authorized_keys)
    assert "".join(f"{key}\n" for key in keys).splitlines() == keys
    if account.password_hash is not None:
        shadow = f"{account.name}:{account.password_hash}:19000:0:99999:7:::\n"
        assert shadow.splitlines() == [shadow[:-1]]
        assert shadow.split(":")[:2] == [account.name, account.password_hash]
    assert f"{hostname}\n".splitlines() == [hostname]


def check_define_sh(plan: Plan, root: str) -> None:
    text = render("define.sh.j2", lab=plan, root=root)
    result = subprocess.run(["sh", "-n"], input=text.encode(), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    quoted = re.search(r"^built_for=(.*?)\nif \[", text, re.MULTILINE | re.DOTALL)
    assert quoted is not None
    assert shlex.split(quoted.group(1)) == [root]
    autostarts = [line for line in text.splitlines() if line.startswith('virsh "$@" autostart ')]
    assert [shlex.split(line)[-1] for line in autostarts] == [
        vm.name for vm in plan.vms if vm.autostart
    ]


def test_the_base_profile_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(tomli_w.dumps(BASE))
    assert check_file(path) == "rendered"


# ------------------------------------------------------------------ documents


def _run_documents(strategy: st.SearchStrategy[Any]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lab.toml"

        @FUZZ
        @given(strategy)
        def run(doc: Any) -> None:
            path.write_text(tomli_w.dumps(doc), encoding="utf-8")
            outcomes[check_file(path)] += 1

        run()
    return outcomes


def test_plausible_profiles_render_into_valid_output() -> None:
    outcomes = _run_documents(documents(plausible))
    assert outcomes["rendered"] >= 30, outcomes
    assert outcomes["refused"] >= 10, outcomes


def test_hostile_values_are_refused_readably_or_render() -> None:
    outcomes = _run_documents(documents(any_value))
    assert outcomes["refused"] >= 50, outcomes


@st.composite
def one_control_character(draw: st.DrawFn) -> tuple[Any, str]:
    """BASE with one value, or one item of a list value, given a control character."""
    doc = copy.deepcopy(BASE)
    path = draw(st.sampled_from(sorted(PLAUSIBLE)))
    own = path.startswith("vm.") or (path in VM_KEYS + ACCOUNT_KEYS and draw(st.booleans()))
    table, key = _place(doc, path, draw(st.integers(0, len(doc["vm"]) - 1)), own)
    value = draw(PLAUSIBLE[path])
    if isinstance(value, list):
        value = value or ["x"]
        index = draw(st.integers(0, len(value) - 1))
        value[index] = draw(with_control(value[index]))
    else:
        value = draw(with_control(value))
    table[key] = value
    return doc, key


def test_a_control_character_in_any_value_is_refused() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lab.toml"

        @FUZZ
        @given(one_control_character())
        def run(case: tuple[Any, str]) -> None:
            doc, key = case
            path.write_text(tomli_w.dumps(doc), encoding="utf-8")
            with pytest.raises(VmbuildError) as info:
                load_profile(path)
            check_error(info.value)
            assert any(
                f": {key} " in line and "contains a control character (U+" in line
                for line in info.value.lines()
            ), info.value.lines()

        run()


MUTATION_TOKENS = [
    b"\n",
    b"\r\n",
    b"\\n",
    b"\\u0000",
    b"\\u2028",
    b'"',
    b"'''",
    b"[",
    b"]",
    b"[[vm]]\n",
    b"=",
    b"{n}",
    b"#",
    b"\x00",
    b"\x7f",
    b"\t",
    "\u2028".encode(),
    "\x85".encode(),
    "é".encode(),
    b"\xff",
    b"\xc3",
    b"9" * 5000,
    b"[" * 2000,
    b'"a\\\n"',
]


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(tomli_w.dumps(BASE).encode())
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "insert", "delete", "replace", "lines"]))
        if kind == "insert":
            data[where:where] = draw(st.sampled_from(MUTATION_TOKENS) | st.binary(max_size=4))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif kind == "replace" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        else:
            lines = bytes(data).split(b"\n")
            first, second = (
                draw(st.integers(0, len(lines) - 1)),
                draw(st.integers(0, len(lines) - 1)),
            )
            lines[first], lines[second] = lines[second], lines[first]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def test_mutated_profile_files_are_refused_readably_or_render() -> None:
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lab.toml"

        @FUZZ
        @given(mutated_files())
        def run(data: bytes) -> None:
            path.write_bytes(data)
            outcomes[check_file(path)] += 1

        run()
    assert outcomes["refused"] >= 50, outcomes
    assert outcomes["rendered"] >= 1, outcomes


# ------------------------------------------------------------- define.sh roots


@pytest.mark.parametrize(
    "root",
    [
        "/var/lib/vmbuild/out/lab",
        "/srv/lab's bundle",
        '/srv/"$HOME" `id` $(id) ; rm -rf /',
        "/srv/ünïcødé/東京",
        "/srv/new\nline",
        "/srv/back\\slash",
    ],
)
def test_define_sh_quotes_any_root(tmp_path: Path, root: str) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(tomli_w.dumps(BASE))
    profile = load_profile(path)
    check_define_sh(make_plan(profile, load_plugins(profile)), root)


# -------------------------------------------------------------------- SHA256SUMS

BUNDLE_NAMES = [
    "manifest.json",
    "plan.json",
    "define.sh",
    "inventory/hosts",
    "vms/web/disk.qcow2",
    "vms/web/seed.iso",
    "vms/web/domain.xml",
    "back\\slash",
    "new\nline",
    "carriage\rreturn",
    "\\leading backslash",
    "all\\of\nthem\r",
    " leading space",
    "trailing space ",
    "*star",
    "tab\there",
    "ünïcødé/東京",
]


def _verify_sums(folder: Path, names: list[str]) -> subprocess.CompletedProcess[bytes]:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode() * 3)
    digests = {name: file_digest(folder / name) for name in names}
    (folder / "SHA256SUMS").write_text(sums_text(folder, digests), encoding="utf-8")
    return subprocess.run(
        ["sha256sum", "--strict", "-c", "SHA256SUMS"],
        cwd=folder,
        capture_output=True,
        check=False,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
    )


def test_sha256sum_accepts_every_bundle_name(tmp_path: Path) -> None:
    result = _verify_sums(tmp_path, BUNDLE_NAMES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(b": OK\n") == len(BUNDLE_NAMES)
    lines = (tmp_path / "SHA256SUMS").read_text(encoding="utf-8").split("\n")
    assert len(lines) == len(BUNDLE_NAMES) + 1, "one line per file"
    # And it does check: a changed file fails.
    (tmp_path / "new\nline").write_bytes(b"changed")
    again = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True, check=False
    )
    assert again.returncode == 1
    assert again.stdout.count(b"FAILED") == 1


FILE_NAME = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/\0"),
    min_size=1,
    max_size=10,
).filter(lambda name: name not in (".", "..", "SHA256SUMS") and len(name.encode()) < 200)


@settings(FUZZ, max_examples=25)
@given(st.lists(FILE_NAME, min_size=1, max_size=4, unique=True))
def test_sha256sum_accepts_any_file_name(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        result = _verify_sums(Path(folder), names)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------- plugins' bundle files


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("notes\n.txt", "contains a control character (U+000A LINE FEED)"),
        ("notes.txt\r", "contains a control character (U+000D CARRIAGE RETURN)"),
        ("extra/\x1b[31mred", "contains a control character (U+001B ESCAPE)"),
        ("line\u2028separator", "contains a control character (U+2028 LINE SEPARATOR)"),
        ("back\\slash", "is not a relative path"),
    ],
)
def test_plugin_bundle_file_names_are_refused_with_control_characters(
    tmp_path: Path, name: str, problem: str
) -> None:
    (tmp_path / "bundle.py").write_text(
        f"def vmbuild_bundle_files(lab):\n    return {{{name!r}: 'x'}}\n"
    )
    path = tmp_path / "lab.toml"
    path.write_text(tomli_w.dumps({"plugins": ["bundle.py"], **BASE}))
    profile = load_profile(path)
    plugins = load_plugins(profile)
    with pytest.raises(PluginError) as info:
        plugins.bundle_files(make_plan(profile, plugins), OUT + "lab", {})
    assert f"file name {name!r} {problem}" in info.value.message
    check_error(info.value)
