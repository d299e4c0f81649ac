"""vmbuild check --wait on a real libvirtd: a domain undefined while the check waits
for it becomes that VM's finding, and the other VMs are still reported.

The two domains are never started (no disks, nothing boots): the check waits for
them to run, and one of them is undefined during that wait. Their names are unique
to the run, and both are undefined again however the test ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from libvirthelp import URI, require_libvirtd, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

VMBUILD = Path(sys.executable).with_name("vmbuild")
WAIT = 20
#: When, into the check's wait, the first domain is undefined.
UNDEFINE_AFTER = 3.0


def _bundle(folder: Path, names: list[str]) -> Path:
    """A bundle with just the manifest that ``vmbuild check`` reads."""
    vms = {
        name: {
            "hostname": f"host{n}",
            "fqdn": f"host{n}.lab.example",
            "ip": f"192.0.2.{10 + n}/24",
            "mac": f"52:54:00:00:00:{10 + n:02x}",
            "machine_id": f"{n}" * 32,
            "host_keys": {},
        }
        for n, name in enumerate(names, start=1)
    }
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"vms": vms}))
    return folder


def _define(folder: Path, name: str) -> None:
    """Define a diskless plain-QEMU domain, which is never started."""
    xml = folder / f"{name}.xml"
    xml.write_text(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
    virsh("define", str(xml))


def test_a_domain_undefined_during_the_wait_is_a_finding(tmp_path: Path) -> None:
    require_libvirtd()
    tag = uuid.uuid4().hex[:8]
    gone, kept = f"vmbuild-test-{tag}-a", f"vmbuild-test-{tag}-b"
    bundle = _bundle(tmp_path / "bundle", [gone, kept])
    check: subprocess.Popen[str] | None = None
    try:
        for name in (gone, kept):
            assert virsh("dominfo", name, check=False).returncode != 0, f"{name} exists"
            _define(tmp_path, name)
        check = subprocess.Popen(
            [str(VMBUILD), "check", str(bundle), "-c", URI, "--wait", str(WAIT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(UNDEFINE_AFTER)
        assert check.poll() is None, "vmbuild check did not wait"
        virsh("undefine", gone)
        out, err = check.communicate(timeout=WAIT + 120)
    finally:
        if check is not None and check.poll() is None:
            check.kill()
            check.communicate()
        for name in (gone, kept):
            virsh("undefine", name, check=False)
    assert "Traceback" not in err, err
    assert check.returncode == 5, f"{out}\n{err}"
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "✗ not defined (" in rows[gone]
    assert "✗ shut off" in rows[kept]
    notes = [line for line in out.splitlines() if line.startswith(f"{gone}: domain: found ")]
    assert len(notes) == 1 and "not defined" in notes[0], out
    assert f"{kept}: domain: found shut off, expected running" in out.splitlines()
    assert out.splitlines()[-1] == "2 of 2 VMs differ from the bundle"
