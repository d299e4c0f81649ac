"""vmbuild doctor --quick: every check is reported, one row each, and the golden-image
cache is judged by whether libvirt's unprivileged QEMU could reach it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from conftest import RunCli

CHECKS = [
    "qemu-img",
    "ssh-keygen",
    "libguestfs",
    "kvm",
    "libvirt",
    "debootstrap",
    "golden cache",
    "virt-xml-validate",
]
#: How QEMU fails under KVM on some nested hosts: two lines on stderr.
MSR_FIRST = "QEMU failed under KVM: qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"
MSR_SECOND = (
    "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: "
    "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."
)
#: What kvm_usable() may answer, so the tests do not depend on this host's KVM.
KVM_ANSWERS = {
    "works": (True, "a test guest ran under KVM in 1.2s"),
    "aborts": (False, f"{MSR_FIRST}\n{MSR_SECOND}"),
    "hangs": (False, "a test guest hung under KVM for 30s"),
}


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        name, _, rest = line.partition("  ")
        rows[name.strip()] = rest.split(None, 1)
    return rows


@pytest.mark.parametrize("kvm", list(KVM_ANSWERS))
def test_quick_doctor_lists_every_check(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, kvm: str
) -> None:
    usable, reason = KVM_ANSWERS[kvm]
    monkeypatch.setattr("vmbuild.commands.doctor.kvm_usable", lambda: (usable, reason))
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        Path(folder).chmod(0o755)
        monkeypatch.setenv("VMBUILD_CACHE", folder)
        result = run_cli("doctor", "--quick")
    assert len(result.out.splitlines()) == len(CHECKS)  # one row per check, nothing else
    rows = _rows(result.out)
    assert list(rows) == CHECKS
    assert rows["qemu-img"][0] == "ok" and rows["ssh-keygen"][0] == "ok"
    assert rows["golden cache"] == ["ok", f"{folder}/golden"]
    first = reason.splitlines()[0]
    assert rows["kvm"] == (
        ["ok", first] if usable else ["no", f"not usable: {first}; libguestfs uses TCG (slower)"]
    )
    assert result.code == 0  # nothing a build needs is missing here


def test_verbose_doctor_shows_the_rest_of_a_detail_under_its_row(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vmbuild.commands.doctor.kvm_usable", lambda: KVM_ANSWERS["aborts"])
    quick = run_cli("doctor", "--quick").out.splitlines()
    result = run_cli("doctor", "--quick", "-v")
    lines = result.out.splitlines()
    kvm = next(i for i, line in enumerate(lines) if line.startswith("kvm "))
    assert lines[: kvm + 1] == quick[: kvm + 1] and lines[kvm + 2 :] == quick[kvm + 1 :]
    column = lines[kvm].index("not usable: ")
    assert lines[kvm + 1] == " " * column + MSR_SECOND
    assert run_cli("doctor", "--quick", "--verbose").out == result.out
    assert result.code == 0


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
