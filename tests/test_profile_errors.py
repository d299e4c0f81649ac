"""Every bad profile in tests/bad_profiles/ must be refused with exactly its messages.

Each case is one file whose leading comments say what to expect:

    # expect: vm "slave3": ip 192.168.10.300 is not an IPv4 address
    # set: vm.slave9.memory=4G        (optional, repeatable: a --set override)
    # raises: UserError               (optional: the file is not a profile at all)

A case passes when loading (and, if that succeeds, planning: some collisions only
exist once ports are derived) raises the error, every line of it names the file,
and each `# expect:` text is found in its own line, with no line unaccounted for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vmbuild.errors import ExitCode, ProfileError, UserError
from vmbuild.model.plan import make_plan
from vmbuild.model.profile import load_profile

CASES = Path(__file__).parent / "bad_profiles"
FILES = sorted(CASES.glob("*.toml"))


def _header(path: Path) -> dict[str, list[str]]:
    """The `# key: value` comments at the top of a case (read as bytes: one is not UTF-8)."""
    found: dict[str, list[str]] = {"expect": [], "set": [], "raises": []}
    for raw in path.read_bytes().splitlines():
        if not raw.startswith(b"# "):
            break
        key, sep, value = raw[2:].decode("ascii").partition(": ")
        assert sep and key in found, f"{path.name}: unknown header line {raw!r}"
        found[key].append(value)
    return found


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 35


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_bad_profile(path: Path) -> None:
    header = _header(path)
    expected = header["expect"]
    assert expected, f"{path.name} must start with a '# expect:' line"
    kind = UserError if header["raises"] == ["UserError"] else ProfileError

    with pytest.raises(UserError) as info:
        make_plan(load_profile(path, overrides=header["set"]))
    error = info.value
    assert type(error) is kind
    assert error.exit_code == ExitCode.USER

    lines = error.lines()
    for line in lines:
        assert line.startswith(f"{path}: "), line
        assert "Traceback" not in line
    unmatched = list(lines)
    for text in expected:
        hit = next((line for line in unmatched if text in line), None)
        assert hit is not None, f"{text!r} not among {unmatched!r}"
        unmatched.remove(hit)
    assert not unmatched, f"reported but not expected: {unmatched!r}"


def test_all_problems_are_reported_at_once() -> None:
    path = CASES / "many_problems.toml"
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    places = {problem.place for problem in info.value.problems}
    assert places == {"lab", "network", 'vm "slave1"', 'vm "slave2"', 'vm "slave3"'}
    assert str(info.value) == f"{path}: 6 problems"


def test_unknown_key_without_a_close_match_has_no_hint(tmp_path: Path) -> None:
    text = (CASES / "unknown_key_top.toml").read_text()
    path = tmp_path / "colour.toml"
    path.write_text(text.replace("[defualts]\nvcpus = 2", "[colour]\nshade = 2"))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.lines() == [f'{path}: profile: unknown key "colour"']


def test_missing_and_folder_profiles_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError) as missing:
        load_profile(tmp_path / "nope.toml")
    assert missing.value.lines() == [f"{tmp_path / 'nope.toml'}: no such profile"]
    with pytest.raises(UserError) as folder:
        load_profile(tmp_path)
    assert folder.value.lines() == [f"{tmp_path}: is a folder, not a profile"]
