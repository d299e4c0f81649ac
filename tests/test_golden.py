"""Golden cases: a profile in, the plan, domain XML, seed files and ISO listing out.

Every profile in profiles/ is a case, and so is every tests/golden/cases/*/profile.toml.
Regenerate the expected files after an intended change with:

    VMBUILD_REGEN=1 .venv/bin/pytest tests/test_golden.py
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
from pathlib import Path

import pycdlib
import pytest
from vmbuild.errors import BuildError
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import load_profile
from vmbuild.output import seed
from vmbuild.output.domain import domain_xml
from vmbuild.output.seed import SeedImages, seed_files, seed_inputs, seed_iso_bytes
from vmbuild.plugins.manager import load_plugins

HERE = Path(__file__).parent
REPO = HERE.parent
#: Where the golden XML pretends the bundle lives; libvirt needs absolute paths.
ROOT = "/srv/vmbuild/output"
#: And where its golden image is.
BACKING = [("/var/cache/vmbuild/golden/golden.qcow2", "qcow2")]
REGEN = os.environ.get("VMBUILD_REGEN") == "1"


def _cases() -> list[tuple[str, Path, Path]]:
    cases = [
        (f"profiles/{path.stem}", path, HERE / "golden" / "profiles" / path.stem)
        for path in sorted((REPO / "profiles").glob("*.toml"))
    ]
    cases += [
        (f"cases/{path.parent.name}", path, path.parent / "expected")
        for path in sorted((HERE / "golden" / "cases").glob("*/profile.toml"))
    ]
    return cases


def iso_listing(data: bytes) -> str:
    """What a reader of the seed ISO sees: labels, names in each namespace, sizes."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        lines = [
            f"sha256 {hashlib.sha256(data).hexdigest()}",
            f"size {len(data)}",
            f"volume_id {iso.pvd.volume_identifier.decode().strip()}",
        ]
        lines.append(f"joliet {iso.has_joliet()}  rock_ridge {iso.has_rock_ridge()}")
        for kind in ("iso_path", "rr_path", "joliet_path"):
            for parent, _dirs, files in iso.walk(**{kind: "/"}):
                for name in sorted(files):
                    path = parent.rstrip("/") + "/" + name
                    record = iso.get_record(**{kind: path})
                    lines.append(f"{kind} {path} {record.get_data_length()}")
        return "\n".join(lines) + "\n"
    finally:
        iso.close()


def render_case(profile_path: Path) -> dict[str, str]:
    """Every generated text of a case, keyed by its path under expected/."""
    profile = load_profile(profile_path)
    plugins = load_plugins(profile)
    plan = make_plan(profile, plugins)
    assert Plan.from_json(plan.to_json()) == plan
    out = {"plan.json": plan.to_json()}
    for vm in plan.vms:
        files = seed_files(plan, vm, plugins)
        for name, data in files.items():
            out[f"vms/{vm.name}/{name}"] = data.decode()
        out[f"vms/{vm.name}/seed-listing.txt"] = iso_listing(seed_iso_bytes(files, 0))
        xml = domain_xml(plan, vm, f"{ROOT}/{plan.lab}", plugins, BACKING)
        out[f"vms/{vm.name}/domain.xml"] = xml.decode()
    return out


@pytest.mark.parametrize(("case", "profile", "expected"), _cases(), ids=[c[0] for c in _cases()])
def test_golden(case: str, profile: Path, expected: Path) -> None:
    actual = render_case(profile)
    if REGEN:
        if expected.exists():
            for old in expected.rglob("*"):
                if old.is_file():
                    old.unlink()
        for name, text in actual.items():
            (expected / name).parent.mkdir(parents=True, exist_ok=True)
            (expected / name).write_text(text)
    have = sorted(str(p.relative_to(expected)) for p in expected.rglob("*") if p.is_file())
    assert have == sorted(actual), f"{case}: expected files differ; VMBUILD_REGEN=1 to update"
    diffs = []
    for name, text in sorted(actual.items()):
        want = (expected / name).read_text()
        if want != text:
            diffs.extend(
                difflib.unified_diff(
                    want.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"expected/{name}",
                    f"actual/{name}",
                )
            )
    assert not diffs, "".join(diffs)


def test_every_golden_folder_is_a_case_with_its_expected_files() -> None:
    """The folders under tests/golden/ and the cases test_golden runs are the same: a
    case folder without its profile, an expected folder left behind by a removed
    example profile, or an example without expected files would otherwise pass
    unnoticed (test_golden only looks at the cases it finds)."""
    examples = {path.stem for path in (REPO / "profiles").glob("*.toml")}
    assert examples, "profiles/ has no example profiles"
    expected = {path.name for path in (HERE / "golden" / "profiles").iterdir() if path.is_dir()}
    assert expected == examples, "tests/golden/profiles/ must hold one folder per example"
    folders = sorted(path for path in (HERE / "golden" / "cases").iterdir() if path.is_dir())
    assert folders, "tests/golden/cases/ has no cases"
    for folder in folders:
        assert (folder / "profile.toml").is_file(), f"{folder.name} has no profile.toml"
        assert sorted(child.name for child in folder.iterdir()) == ["expected", "profile.toml"]
    cases = {case: want for case, _, want in _cases()}
    assert sorted(cases) == sorted(
        [f"profiles/{stem}" for stem in examples] + [f"cases/{f.name}" for f in folders]
    )
    for case, want in cases.items():
        assert (want / "plan.json").is_file(), f"{case}: no expected plan.json"
        assert list(want.glob("vms/*/domain.xml")), f"{case}: no expected domain XML"


def test_seed_inputs_follow_every_byte_of_the_files_and_the_epoch() -> None:
    files = {"meta-data": b"instance-id: a\n", "user-data": b"#cloud-config\n"}
    first = seed_inputs(files, 0)
    assert seed_inputs(dict(files), 0) == first
    assert seed_inputs(files, 1) != first
    assert seed_inputs({**files, "user-data": b"#cloud-config\nx: 1\n"}, 0) != first
    # The same bytes split differently between name and contents are other files.
    assert seed_inputs({"ab": b"c"}, 0) != seed_inputs({"a": b"bc"}, 0)
    assert seed_inputs(dict(reversed(files.items())), 0) != first  # the ISO's order


def test_seed_images_answer_a_recorded_sha256_without_making_the_iso(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = {
        "a": {"meta-data": b"instance-id: a\n"},
        "b": {"meta-data": b"instance-id: b\n"},
    }
    real = {name: hashlib.sha256(seed_iso_bytes(f, 0)).hexdigest() for name, f in files.items()}
    made: list[bytes] = []
    making = seed.seed_iso_bytes
    monkeypatch.setattr(seed, "seed_iso_bytes", lambda *a: made.append(b"") or making(*a))
    known = {"a": (seed_inputs(files["a"], 0), "recorded"), "b": ("other inputs", "stale")}
    images = SeedImages(files, 0, known)
    assert images.sha256("a") == "recorded" and made == []
    assert images.sha256("b") == real["b"] and len(made) == 1  # inputs changed: made
    assert hashlib.sha256(images["a"]).hexdigest() == real["a"]
    assert images.sha256("a") == real["a"]  # once made, its own bytes answer
    assert images["a"] is images["a"] and len(made) == 2
    assert sorted(images) == ["a", "b"] and len(images) == 2


def test_seed_images_refuse_two_files_of_one_iso_name_up_front() -> None:
    with pytest.raises(BuildError, match="same ISO 9660 name"):
        SeedImages({"a": {"user-data": b"", "USER_DATA": b""}}, 0)


def test_seed_iso_is_reproducible_and_honours_source_date_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = {"meta-data": b"instance-id: a\n", "user-data": b"#cloud-config\n"}
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    first = seed_iso_bytes(files, 0)
    monkeypatch.setenv("TZ", "America/Anchorage")
    assert seed_iso_bytes(files, 0) == first
    later = seed_iso_bytes(files, 1_700_000_000)
    assert later != first
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(later))
    date = iso.pvd.volume_creation_date
    assert (date.year, date.month, date.dayofmonth) == (2023, 11, 14)
    assert date.gmtoffset == 0
    iso.close()
