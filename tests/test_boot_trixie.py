"""The boot tier on Debian 13: a golden image built from trixie's packages (its
6.12 kernel has the virtio drivers built in, and its modules compressed), the demo
lab built on it, defined and started on the system libvirtd, and every VM found to
be the machine its bundle describes, running Debian 13.

Bookworm's lab is booted by test_boot.py; together they cover every release
Debian's mirror serves as stable or oldstable. The lab runs under TCG on an
isolated network that its define.sh makes (no uplink, no host address); every
domain, network and file made here is removed again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from debiangolden import Built, build_once
from libvirthelp import BOOT_TIER, URI, define, virsh
from vmbuild.cli import main

pytestmark = BOOT_TIER

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "profiles" / "demo.toml"
HOSTS = ("web", "db")
BOOT_WAIT = 900


@pytest.fixture(scope="module")
def trixie_golden() -> Iterator[Built]:
    yield from build_once("trixie")


@pytest.fixture(scope="module")
def trixie_lab(trixie_golden: Built, libvirtd: None) -> Iterator[tuple[Path, dict[str, str]]]:
    tag = uuid.uuid4().hex[:6]
    network = f"vmbuild-trixie-{tag}"
    domains = {host: f"vmbuild-trixie-{tag}-{host}" for host in HOSTS}
    work = Path(tempfile.mkdtemp(prefix="vmbuild-trixie-", dir="/var/tmp"))
    work.chmod(0o755)  # libvirt's QEMU runs unprivileged and must reach the disks
    defined: list[str] = []
    try:
        overrides = ["lab.domain_type=qemu", f"network.source={network}"]
        for position, host in enumerate(HOSTS, start=1):
            overrides += [f"vm.{position}.name={domains[host]}", f"vm.{position}.hostname={host}"]
        args = ["build", str(DEMO), "--base", str(trixie_golden.path), "-q"]
        args += [arg for item in overrides for arg in ("--set", item)]
        assert main([*args, "--output", str(work)]) == 0
        bundle = work / "demo"
        existing = set(virsh("list", "--all", "--name").stdout.split())
        assert not existing & set(domains.values()), "refusing to touch existing domains"
        defined = list(domains.values())
        define(bundle)
        for name in defined:
            virsh("start", name)
        yield bundle, domains
    finally:
        for name in defined:
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
        virsh("net-destroy", network, check=False)
        virsh("net-undefine", network, check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_the_trixie_golden_image_records_its_release(trixie_golden: Built) -> None:
    record = json.loads(Path(f"{trixie_golden.path}.json").read_text())
    assert record["recipe"]["release"] == "trixie", record


def test_a_trixie_lab_boots_as_built(trixie_lab: tuple[Path, dict[str, str]]) -> None:
    bundle, domains = trixie_lab
    result = subprocess.run(
        [str(REPO / ".venv/bin/vmbuild"), "check", str(bundle), "-c", URI, "--wait", "900"],
        capture_output=True,
        text=True,
        timeout=BOOT_WAIT + 120,
        check=False,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 VMs match the bundle" in result.stdout
    for name in domains.values():
        answer = virsh(
            "qemu-agent-command", name, json.dumps({"execute": "guest-get-osinfo"})
        ).stdout
        info = json.loads(answer)["return"]
        assert (info["id"], info["version-id"]) == ("debian", "13"), info
        assert info["kernel-release"].startswith("6.12"), info
