"""vmbuild doctor --quick: every check is reported, and the golden-image cache is
judged by whether libvirt's unprivileged QEMU could reach it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from conftest import RunCli


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        name, _, rest = line.partition("  ")
        rows[name.strip()] = rest.split(None, 1)
    return rows


def test_quick_doctor_lists_every_check(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        Path(folder).chmod(0o755)
        monkeypatch.setenv("VMBUILD_CACHE", folder)
        result = run_cli("doctor", "--quick")
    rows = _rows(result.out)
    assert list(rows) == [
        "qemu-img",
        "ssh-keygen",
        "libguestfs",
        "kvm",
        "libvirt",
        "debootstrap",
        "golden cache",
        "virt-xml-validate",
    ]
    assert rows["qemu-img"][0] == "ok" and rows["ssh-keygen"][0] == "ok"
    assert rows["golden cache"] == ["ok", f"{folder}/golden"]
    assert result.code == 0  # nothing a build needs is missing here


def test_doctor_flags_a_cache_qemu_cannot_reach(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("VMBUILD_CACHE", str(private / "cache"))
    result = run_cli("doctor", "--quick")
    mark, detail = _rows(result.out)["golden cache"]
    assert mark == "no"
    assert detail.startswith(f"{private}/cache/golden: behind ")
    assert f"{private} (mode 0700), out of reach of libvirt's QEMU user" in detail
    assert result.code == 0  # not needed by a build, so not a failure
