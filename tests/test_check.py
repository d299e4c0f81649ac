"""vmbuild check's pure parts: fingerprints, reading a bundle, comparing VMs with
each other, the table, a failing virsh as one VM's finding; and the warning about
folders libvirt's QEMU cannot enter. The check against running guests is in the
boot tier (test_boot.py), a domain undefined during --wait in test_check_wait.py."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from vmbuild.commands import check
from vmbuild.commands.check import (
    Expected,
    VmReport,
    _shared,
    check_bundle,
    fingerprint,
    load_expected,
    table,
)
from vmbuild.errors import UserError
from vmbuild.libvirt.virsh import Virsh, VirshError, unreachable_for_qemu

ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C"


def test_fingerprint_is_ssh_keygens() -> None:
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"],
        input=f"ssh-ed25519 {ED25519} x@y\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert fingerprint("ssh-ed25519", ED25519) == f"ssh-ed25519 {done.stdout.split()[1]}"


def _bundle(folder: Path, known_hosts: str | None) -> Path:
    vm = {
        "hostname": "web",
        "fqdn": "web.lab.example",
        "ip": "192.0.2.10/24",
        "mac": "52:54:00:AA:BB:CC",
        "machine_id": "1" * 32,
        "host_keys": {"ed25519": f"ssh-ed25519 {ED25519} root@web"},
    }
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"vms": {"lab-web": vm}}))
    if known_hosts is not None:
        (folder / "inventory").mkdir()
        (folder / "inventory" / "known_hosts").write_text(known_hosts)
    return folder


def test_expectations_come_from_manifest_and_known_hosts(tmp_path: Path) -> None:
    other = "AAAAC3NzaC1lZDI1NTE5AAAAINThx/sVcWYaAvEk5fsvbSAVzeEdiNsw1PXriKbDF4YI"
    bundle = _bundle(
        tmp_path / "b",
        f"# a comment\nweb,web.lab.example,192.0.2.10 ssh-ed25519 {other}\n"
        f"db,db.lab.example,192.0.2.20 ssh-ed25519 {ED25519}\n",
    )
    (want,) = load_expected(bundle)
    assert want == Expected(
        "lab-web",
        "web",
        "52:54:00:aa:bb:cc",
        "192.0.2.10/24",
        "1" * 32,
        frozenset({fingerprint("ssh-ed25519", other)}),
    )
    # Without an inventory, the keys the manifest recorded.
    (want,) = load_expected(_bundle(tmp_path / "c", None))
    assert want.fingerprints == frozenset({fingerprint("ssh-ed25519", ED25519)})


def test_not_a_bundle_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"is not a vmbuild bundle: it has no manifest\.json"):
        load_expected(tmp_path)
    (tmp_path / "manifest.json").write_text('{"vms": {"a": {"hostname": "a"}}}')
    with pytest.raises(UserError, match="vm 'a' lacks 'fqdn'"):
        load_expected(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="not a readable vmbuild manifest"):
        load_expected(tmp_path)


@dataclass(frozen=True)
class _GoneVirsh(Virsh):
    """virsh where the domains in ``gone`` are not defined and the others are shut off."""

    gone: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        """Nothing is run, so virsh need not be installed."""

    def run(self, *args: str, timeout: float = 0) -> str:
        if args[-1] in self.gone:
            raise VirshError(f"failed to get domain '{args[-1]}'")
        return "shut off\n"


def test_a_failing_virsh_is_that_vms_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(tmp_path / "b", None)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["vms"]["lab-db"] = manifest["vms"]["lab-web"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    reports = check_bundle(bundle, _GoneVirsh(gone=frozenset({"lab-web"})))
    assert [(r.name, [(f.item, f.found) for f in r.findings]) for r in reports] == [
        ("lab-web", [("domain", "not defined (failed to get domain 'lab-web')")]),
        ("lab-db", [("domain", "shut off")]),
    ]
    # Whatever else fails in virsh for one VM is its finding too.
    real = check.check_vm

    def failing(virsh: Virsh, want: Expected, wait: float, start: float) -> VmReport:
        if want.name == "lab-db":
            raise VirshError("virsh qemu-agent-command: no answer within 30s")
        return real(virsh, want, wait, start)

    monkeypatch.setattr(check, "check_vm", failing)
    web, db = check_bundle(bundle, _GoneVirsh())
    assert [(f.item, f.found) for f in web.findings] == [("domain", "shut off")]
    assert [(f.item, f.found, f.ok) for f in db.findings] == [
        ("domain", "unknown (virsh qemu-agent-command: no answer within 30s)", False)
    ]


def _report(name: str, machine_id: str, keys: set[str]) -> VmReport:
    report = VmReport(name, machine_id=machine_id, fingerprints=frozenset(keys))
    report.add("domain", "running", "running")
    report.add("machine-id", machine_id, machine_id)
    return report


def test_shared_machine_ids_and_keys_are_mismatches() -> None:
    one = _report("one", "a" * 32, {"k1", "k2"})
    two = _report("two", "a" * 32, {"k3"})
    three = _report("three", "b" * 32, {"k2"})
    _shared([one, two, three])
    assert not one.ok and not two.ok and not three.ok
    assert [(f.item, f.found) for f in one.findings if not f.ok] == [
        ("machine-id unique", "shared with two"),
        ("host keys unique", "shared with three"),
    ]
    assert [(f.item, f.found) for f in three.findings if not f.ok] == [
        ("host keys unique", "shared with one")
    ]
    fine = [_report("x", "c" * 32, {"k4"}), _report("y", "d" * 32, {"k5"})]
    _shared(fine)
    assert all(report.ok for report in fine)


def test_table_marks_and_explains_each_mismatch() -> None:
    good = _report("web", "a" * 32, set())
    bad = VmReport("db")
    bad.add("domain", "running", "running")
    bad.add("hostname", "debian-golden", "db")
    text = table([good, bad])
    lines = text.splitlines()
    assert lines[0].split() == [
        "VM",
        "DOMAIN",
        "HOSTNAME",
        "IP",
        "MACHINE-ID",
        "HOST",
        "KEYS",
        "CLOUD-INIT",
    ]
    assert lines[1].startswith("web  ✓ running")
    assert "✓ aaaaaaaaaaaaaa…" in lines[1]
    assert "✗ debian-golden" in lines[2]
    assert "db: hostname: found debian-golden, expected db" in lines
    assert lines[-1] == "1 of 2 VMs differ from the bundle"
    assert table([good]).splitlines()[-1] == "1 VM matches the bundle"


def test_folders_qemu_cannot_enter_are_named(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as open_folder:
        top = Path(open_folder)
        top.chmod(0o755)
        (top / "vms").mkdir(mode=0o755)
        disk = top / "vms" / "disk.qcow2"
        disk.write_bytes(b"")
        assert unreachable_for_qemu([disk]) == []
        (top / "vms").chmod(0o700)
        top.chmod(0o750)
        other = top / "vms" / "other.qcow2"
        assert unreachable_for_qemu([disk, other]) == [
            f"{path} is behind {top} (mode 0750) and {top / 'vms'} (mode 0700)"
            for path in (disk, other)
        ]
        top.chmod(0o755)
