"""The boot tier, over two hosts: the demo lab placed on this machine's libvirtd
(web) and on a second, independent libvirtd reached only over qemu+tcp (db, see
tests/secondhost.py), deployed through libvirt's API, booted under TCG and driven
as a whole: check, status, a second deploy that sends nothing, reset, down, up and
destroy.

Each host has the demo's isolated network (no uplink, no host address) under a
name unique to the run; the guests use documentation addresses. Everything made
here is removed again, also when a test fails.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from debiangolden import Built
from libvirthelp import BOOT_TIER, URI, virsh
from secondhost import SecondHost, second_host_fixture  # noqa: F401 (the fixture)
from vmbuild.cli import main

pytestmark = BOOT_TIER

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "profiles" / "demo.toml"
BOOT_WAIT = 900
#: A file the test writes inside db, which a reset must take away.
MARKER = "/var/tmp/written-after-boot"


@dataclass(frozen=True)
class TwoHostLab:
    bundle: Path
    web: str
    db: str
    hv2: SecondHost
    args: tuple[str, ...]

    def vmbuild(
        self, *args: str, timeout: float = BOOT_WAIT + 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / ".venv/bin/vmbuild"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def lab(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        done = self.vmbuild(command, str(self.bundle), *self.args, *extra)
        print(f"$ vmbuild {command} {' '.join(extra)}\n{done.stdout}{done.stderr}")
        return done


def _agent(lab: TwoHostLab, vm: str, execute: str, **arguments: Any) -> Any:
    message: dict[str, Any] = {
        "execute": execute,
        **({"arguments": arguments} if arguments else {}),
    }
    run = lab.hv2.virsh if vm == lab.db else virsh
    answer = run("qemu-agent-command", vm, json.dumps(message), "--timeout", "30")
    return json.loads(answer.stdout)["return"]


def _guest_sh(lab: TwoHostLab, vm: str, script: str) -> tuple[int, str]:
    pid = _agent(
        lab, vm, "guest-exec", path="/bin/sh", arg=["-c", script], **{"capture-output": True}
    )["pid"]
    deadline = time.monotonic() + 60
    while True:
        status = _agent(lab, vm, "guest-exec-status", pid=pid)
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")).decode()
            return int(status.get("exitcode", -1)), out
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.fixture(scope="module")
def two_hosts(
    debian_golden: Built, libvirtd: None, second_host: SecondHost
) -> Iterator[TwoHostLab]:
    tag = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="vmbuild-boot2-", dir="/var/tmp"))
    work.chmod(0o755)
    web, db = f"vmbuild-b2-{tag}-web", f"vmbuild-b2-{tag}-db"
    overrides = [
        "lab.domain_type=qemu",
        f"network.source=vmbuild-b2-{tag}",
        f"vm.1.name={web}", "vm.1.hostname=web",
        f"vm.2.name={db}", "vm.2.hostname=db", "vm.2.host=hv2",
        f"hosts.hv2.uri={second_host.uri}",
    ]  # fmt: skip
    args = ("--connect", URI, "--allow-unsigned")
    lab = None
    try:
        built = main(["build", str(DEMO), "--base", str(debian_golden.path), "-q",
                      "--output", str(work / "out"),
                      *(a for item in overrides for a in ("--set", item))])  # fmt: skip
        assert built == 0
        lab = TwoHostLab(work / "out" / "demo", web, db, second_host, args)
        yield lab
    finally:
        if lab is not None:
            lab.lab("destroy")
        shutil.rmtree(work, ignore_errors=True)


def test_the_demo_lab_runs_over_two_hosts(two_hosts: TwoHostLab) -> None:
    lab = two_hosts
    started = time.monotonic()
    deployed = lab.lab("deploy", "--start", "--json")
    assert deployed.returncode == 0, deployed.stderr
    print(f"deploy to two hosts and start: {time.monotonic() - started:.1f}s")
    hosts = {h["host"]: h for h in json.loads(deployed.stdout)["hosts"]}
    assert hosts["hv2"]["vms"] == {lab.db: "create"} and hosts["local"]["vms"] == {
        lab.web: "create"
    }

    # Both boot, and each answers from its own host with the identity it was built with.
    checked = lab.vmbuild("check", str(lab.bundle), "-c", URI, "--wait", str(BOOT_WAIT), "--json")
    print(checked.stderr)
    assert checked.returncode == 0, checked.stdout
    assert json.loads(checked.stdout)["ok"] is True
    print(f"both VMs checked {time.monotonic() - started:.0f}s after deploy began")

    status = lab.lab("status", "--json")
    rows = {row["vm"]: row for row in json.loads(status.stdout)["vms"]}
    assert (rows[lab.web]["host"], rows[lab.web]["state"]) == ("local", "running")
    assert (rows[lab.db]["host"], rows[lab.db]["state"]) == ("hv2", "running")

    again = lab.lab("deploy", "--json")
    assert again.returncode == 0
    for host in json.loads(again.stdout)["hosts"]:
        assert host["sent_bytes"] == 0 and set(host["vms"].values()) == {"keep"}

    # A file written in db is gone after a reset: its disk is the built one again.
    code, _ = _guest_sh(lab, lab.db, f"echo changed > {MARKER} && sync")
    assert code == 0
    assert _guest_sh(lab, lab.db, f"test -e {MARKER}")[0] == 0
    reset = lab.lab("reset", lab.db)
    assert reset.returncode == 0 and "disk restored, started again" in reset.stdout
    rechecked = lab.vmbuild("check", str(lab.bundle), "-c", URI, "--wait", str(BOOT_WAIT))
    assert rechecked.returncode == 0, rechecked.stdout
    assert _guest_sh(lab, lab.db, f"test -e {MARKER}")[0] != 0

    down = lab.lab("down", "--timeout", "300")
    assert down.returncode == 0
    status = lab.lab("status", "--json")
    assert {row["state"] for row in json.loads(status.stdout)["vms"]} == {"shut off"}
    up = lab.lab("up")
    assert up.returncode == 0
    assert (
        lab.vmbuild("check", str(lab.bundle), "-c", URI, "--wait", str(BOOT_WAIT)).returncode == 0
    )

    destroyed = lab.lab("destroy")
    assert destroyed.returncode == 0
    assert lab.db not in lab.hv2.virsh("list", "--all", "--name").stdout.split()
    assert lab.web not in virsh("list", "--all", "--name").stdout.split()
