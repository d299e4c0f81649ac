"""`vmbuild export` and `lab.target`: what every target's export shares, on real
bundles built on a real (small) golden image with real qemu-img.

An export is put in place whole, with its own SHA256SUMS and a record of what it was
made from; it replaces an earlier export and nothing else; it is refused for a
bundle whose disks are not as built. A build whose profile names a target exports
into the bundle, and keeps that export when the lab did not change. What each
target writes is tested in its own file (test_target_xen.py,
test_targets_hyperv_vmware.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from labs import WEB_DB, write_lab
from vmbuild.cli import main
from vmbuild.model.profile import Target
from vmbuild.targets import export as export_module
from vmbuild.targets.job import ExportJob

pytestmark = pytest.mark.guestfs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, os_image: Path) -> Path:
    """The web/db lab, built once for the module; tests export it, never change it."""
    folder = tmp_path_factory.mktemp("export-lab")
    golden = folder / "golden.qcow2"
    shutil.copyfile(os_image, golden)
    profile = write_lab(folder, golden, vms=WEB_DB)
    assert main([str(profile), "--output", str(folder / "out"), "-q"]) == 0
    return folder / "out" / "t"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_export_is_whole_checked_and_records_its_source(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hv"
    assert main(["export", str(built), "--target", "hyperv", "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    record = json.loads((out / "export.json").read_text())
    assert record["target"] == "hyperv" and record["lab"] == "t"
    assert record["bundle_sums_sha256"] == sha256(built / "SHA256SUMS")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert sorted(record["files"]) == [f for f in files if f not in ("SHA256SUMS", "export.json")]
    assert all(record["files"][name] == sha256(out / name) for name in record["files"])
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, check=True)
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_the_default_folder_is_beside_the_bundle(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out" / "t"
    shutil.copytree(built.parent, tmp_path / "out", symlinks=True)
    assert main(["export", str(copy), "-t", "xen-hvm", "-q"]) == 0
    assert (tmp_path / "out" / "t-xen-hvm" / "export.json").is_file()
    # The bundle itself is left alone: its files are still the ones SHA256SUMS lists.
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=copy, check=True)


def test_an_export_replaces_an_export_and_nothing_else(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "vmw"
    assert main(["export", str(built), "-t", "xen-pv", "-o", str(out), "-q"]) == 0
    first = (out / "export.json").stat().st_ino
    assert main(["export", str(built), "-t", "xen-pv", "-o", str(out), "-q"]) == 0
    assert (out / "export.json").stat().st_ino != first

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", str(built), "-t", "xen-pv", "-o", str(foreign)]) != 0
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("libvirt-kvm", 'a bundle is the "libvirt-kvm" lab already'),
        ("xen", "--target 'xen' is not a target"),
    ],
)
def test_targets_that_are_no_export_are_refused(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    assert main(["export", str(built), "-t", target, "-o", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert message in err
    assert "xen-hvm, xen-pv, xen-pvh, hyperv, vmware" in err
    assert not (tmp_path / "x").exists()


def test_a_bundle_whose_disk_changed_is_refused(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(built.parent, tmp_path / "out", symlinks=True)
    copy = tmp_path / "out" / "t"
    with (copy / "vms/db/disk.qcow2").open("ab") as disk:
        disk.write(b"\0" * 512)
    assert main(["export", str(copy), "-t", "hyperv", "-o", str(tmp_path / "hv")]) != 0
    assert "vms/db/disk.qcow2 is not as built" in capsys.readouterr().err
    assert not (tmp_path / "hv").exists()


def test_a_failed_export_leaves_the_previous_one(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hv"
    assert main(["export", str(built), "-t", "hyperv", "-o", str(out), "-q"]) == 0
    before = {str(p): sha256(p) for p in out.rglob("*") if p.is_file()}

    def failing(job: ExportJob) -> None:
        (job.out / "half.vhdx").write_bytes(b"half")
        raise OSError(28, "No space left on device", str(job.out / "half.vhdx"))

    monkeypatch.setitem(export_module.WRITERS, Target.HYPERV, failing)  # type: ignore[index]
    assert main(["export", str(built), "-t", "hyperv", "-o", str(out), "-q"]) != 0
    err = capsys.readouterr().err
    assert "No space left on device; the previous export is as it was" in err, err
    assert {str(p): sha256(p) for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hv"]


def test_a_build_exports_its_target_and_keeps_it_while_nothing_changes(
    tmp_path: Path, os_image: Path
) -> None:
    golden = tmp_path / "golden.qcow2"
    shutil.copyfile(os_image, golden)
    profile = write_lab(tmp_path, golden, vms=WEB_DB, lab={"target": "hyperv"})
    out = tmp_path / "out"
    assert main([str(profile), "--output", str(out), "-q"]) == 0
    folder = out / "t" / "hyperv"
    record = json.loads((folder / "export.json").read_text())
    assert record["bundle_sums_sha256"] == sha256(out / "t" / "SHA256SUMS")
    inodes = {p: p.stat().st_ino for p in folder.rglob("*") if p.is_file()}
    assert len(inodes) > 3

    # Nothing changed: the build publishes nothing, the export is the same files.
    assert main([str(profile), "--output", str(out), "-q"]) == 0
    assert {p: p.stat().st_ino for p in folder.rglob("*") if p.is_file()} == inodes

    # db's memory changed: its domain XML, so the bundle's sums, so the export.
    profile = write_lab(
        tmp_path, golden, vms=[WEB_DB[0], {**WEB_DB[1], "memory": "2G"}], lab={"target": "hyperv"}
    )
    assert main([str(profile), "--output", str(out), "-q"]) == 0
    again = json.loads((folder / "export.json").read_text())
    assert again["bundle_sums_sha256"] == sha256(out / "t" / "SHA256SUMS")
    assert again["bundle_sums_sha256"] != record["bundle_sums_sha256"]
    assert "Name = 'db'; Cpus = 2; Memory = 2147483648;" in (folder / "define.ps1").read_text()
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=folder, check=True)


def test_a_packed_lab_is_exported_from_its_layout(built: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    assert main(["pack", str(built), "-o", str(layout), "-q"]) == 0
    out = tmp_path / "xen"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VMBUILD_CACHE", str(tmp_path / "cache"))
        args = ["export", str(layout), "-t", "xen-hvm", "--allow-unsigned", "-o", str(out), "-q"]
        assert main(args) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["lab"] == "t"
    # Made from the bundle unpacked (once, into the cache) from the layout: its disks
    # name the golden image where the cache keeps it, so its sums are its own.
    (unpacked,) = (tmp_path / "cache").rglob("SHA256SUMS")
    assert record["bundle_sums_sha256"] == sha256(unpacked)
    plans = [json.loads((b / "plan.json").read_text()) for b in (unpacked.parent, built)]
    assert [[(vm["name"], vm["mac"]) for vm in plan["vms"]] for plan in plans] == [
        [("web", plans[1]["vms"][0]["mac"]), ("db", plans[1]["vms"][1]["mac"])]
    ] * 2
