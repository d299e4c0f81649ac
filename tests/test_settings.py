"""The profile's settings tables are the one list of keys: the loader accepts exactly
them, reads every one of them, and docs/profile.md lists each with its default."""

from __future__ import annotations

import copy
import enum
import re
from pathlib import Path
from typing import Any

import pytest
from vmbuild.errors import ProfileError
from vmbuild.model.profile import PROFILE_KEYS, SETTINGS, Setting, format_size, parse_profile

DOCS = Path(__file__).parent.parent / "docs" / "profile.md"

#: A valid profile with every table present.
VALID: dict[str, Any] = {
    "lab": {"name": "lab"},
    "base": {"image": "golden.qcow2"},
    "network": {"source": "br0", "subnet": "192.0.2.0/24"},
    "defaults": {},
    "root": {},
    "user": {"name": "lab"},
    "hosts": {"hv2": {"uri": "qemu:///system"}},
    "vm": [{"name": "web", "ip": "192.0.2.10"}],
}
#: Where each table's problems are reported.
PLACES = {table: table for table in SETTINGS} | {"vm": 'vm "web"', "hosts": "hosts.hv2"}

CASES = [(table, key) for table, keys in PROFILE_KEYS.items() for key in keys]
SETTING_CASES = [(table, key) for table, settings in SETTINGS.items() for key in settings]


def _table(raw: dict[str, Any], table: str) -> dict[str, Any]:
    if table == "profile":
        return raw
    if table == "vm":
        entry: dict[str, Any] = raw["vm"][0]
        return entry
    if table == "hosts":  # a table of tables: [hosts.NAME]
        host: dict[str, Any] = raw["hosts"]["hv2"]
        return host
    part: dict[str, Any] = raw[table]
    return part


def _problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        parse_profile(raw, Path("lab.toml"))
    except ProfileError as err:
        return [(problem.place, problem.message) for problem in err.problems]
    return []


def test_the_valid_profile_is_valid() -> None:
    assert _problems(copy.deepcopy(VALID)) == []


def test_tables_are_keys_of_their_parents() -> None:
    """Every table a table holds has settings of its own; nothing else is a table."""
    for table, keys in PROFILE_KEYS.items():
        for key in keys:
            assert key in SETTINGS[table] or key in SETTINGS, (table, key)


@pytest.mark.parametrize(("table", "key"), CASES, ids=[f"{t}.{k}" for t, k in CASES])
def test_the_loader_accepts_every_declared_key(table: str, key: str) -> None:
    raw = copy.deepcopy(VALID)
    part = _table(raw, table)
    if key not in part:
        part[key] = {} if key in SETTINGS else {"x": 1}
    unknown = [p for p in _problems(raw) if p[1].startswith("unknown key")]
    # A table's own keys may be unknown to it ("x"); the key itself never is.
    assert (PLACES[table], f'unknown key "{key}"') not in unknown


@pytest.mark.parametrize("table", list(PROFILE_KEYS))
def test_the_loader_refuses_any_other_key(table: str) -> None:
    raw = copy.deepcopy(VALID)
    _table(raw, table)["vnc_prot"] = 5901
    problems = _problems(raw)
    assert (PLACES[table], 'unknown key "vnc_prot"') in problems
    assert len(problems) == 1, problems


@pytest.mark.parametrize(
    ("table", "key"), SETTING_CASES, ids=[f"{t}.{k}" for t, k in SETTING_CASES]
)
def test_the_loader_reads_every_declared_setting(table: str, key: str) -> None:
    """A key declared but never read would be accepted and silently ignored."""
    raw = copy.deepcopy(VALID)
    _table(raw, table)[key] = {"x": 1}  # a TOML table: no setting takes one
    messages = [message for _, message in _problems(raw)]
    assert any(re.search(rf"\b{key}\b", message) for message in messages), messages


# --------------------------------------------------------------------------- the docs


def _documented() -> dict[str, dict[str, tuple[str, str]]]:
    """docs/profile.md's "Keys at a glance": table -> key -> (link target, default)."""
    text = DOCS.read_text()
    section = text.split("## Keys at a glance", 1)[1].split("\n## ", 1)[0]
    found: dict[str, dict[str, tuple[str, str]]] = {}
    table = ""
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("table", "---"):
            continue
        if cells[0]:
            name = re.search(r"`\[\[?(\w+)\]\]?`", cells[0])
            table = "profile" if cells[0] == "top level" else name.group(1) if name else "?"
        for key, target in re.findall(r"\[`(\w+)`\]\(#([\w-]+)\)", cells[1]):
            found.setdefault(table, {})[key] = (target, cells[3])
    return found


def _anchors() -> set[str]:
    """The anchors of docs/profile.md's headings, as GitHub makes them."""
    anchors = set()
    for heading in re.findall(r"^#{2,4} (.+)$", DOCS.read_text(), re.MULTILINE):
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(anchor)
    return anchors


def test_the_docs_list_every_key_of_every_table() -> None:
    documented = {table: set(keys) for table, keys in _documented().items()}
    # [defaults] keys are documented once, for [defaults] and [[vm]] together;
    # the top level's tables have sections of their own.
    documented["vm"] |= documented["defaults"]
    documented["profile"] |= set(SETTINGS) - {"profile"}
    assert documented == {table: set(keys) for table, keys in PROFILE_KEYS.items()}


def test_every_documented_key_links_to_its_section() -> None:
    anchors = _anchors()
    missing = [
        f"{table}.{key} -> #{target}"
        for table, keys in _documented().items()
        for key, (target, _) in keys.items()
        if target not in anchors
    ]
    assert not missing


def _shown(setting: Setting) -> tuple[str, ...]:
    """How docs/profile.md may write a setting's default."""
    value = setting.default
    if setting.required:
        return ("required",)
    if isinstance(value, bool):
        return (f"`{str(value).lower()}`",)
    if isinstance(value, enum.Enum):
        return (f'`"{value.value}"`',)
    if isinstance(value, str):
        return (f'`"{value}"`',)
    if isinstance(value, int):
        return (f"`{value}`", f'`"{format_size(value)}"`')
    if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
        return ("`[" + ", ".join(f'"{item}"' for item in value) + "]`",)
    raise AssertionError(f"no way to show {value!r}")


def test_the_docs_give_each_default_as_declared() -> None:
    wrong = []
    for table, keys in _documented().items():
        for key, (_, default) in keys.items():
            setting = SETTINGS[table].get(key)
            if setting is None or (setting.default is None and not setting.required):
                continue  # a table, or no default: the docs say what absence means
            if not default.startswith(_shown(setting)):
                wrong.append(f"{table}.{key}: docs {default!r}, declared {_shown(setting)}")
    assert not wrong
