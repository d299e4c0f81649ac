"""virsh for the tests, on the system libvirtd that .ci/run starts.

With VMBUILD_REQUIRE_LIBVIRT=1 (set by .ci/run) a missing virsh or libvirtd fails
the libvirt tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

URI = "qemu:///system"
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "profiles" / "demo.toml"
#: The demo profile's VMs, in its order.
DEMO_HOSTS = ("web", "db")
#: The marks of a test that boots guests: everything the boot tier needs.
BOOT_TIER = [
    pytest.mark.slow,
    pytest.mark.libvirt,
    pytest.mark.guestfs,
    pytest.mark.boot,
    pytest.mark.golden_image,
]
REQUIRED = os.environ.get("VMBUILD_REQUIRE_LIBVIRT") == "1"


def need(tool: str) -> None:
    """Skip (or, where libvirt is required, fail) when ``tool`` is not installed."""
    if shutil.which(tool) is None:
        if REQUIRED:
            pytest.fail(f"{tool} is not installed")
        pytest.skip(f"{tool} is not installed")


def virsh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def require_libvirtd() -> None:
    need("virsh")
    probe = subprocess.run(
        ["virsh", "-c", URI, "version"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        message = f"no libvirtd at {URI}: {probe.stderr.strip()}"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


def define(bundle: Path) -> None:
    """Run the bundle's own define.sh against the test libvirtd."""
    result = subprocess.run(
        ["sh", str(bundle / "define.sh"), "-c", URI],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"define.sh failed:\n{result.stdout}{result.stderr}"


@dataclass(frozen=True)
class DemoLab:
    """The demo lab built and defined under names unique to one test run."""

    work: Path
    bundle: Path
    #: hostname -> domain name
    domains: dict[str, str]
    network: str


@contextlib.contextmanager
def demo_lab(golden: Path, prefix: str, sets: Sequence[str] = ()) -> Iterator[DemoLab]:
    """profiles/demo.toml built on ``golden`` (under TCG, with ``--set`` ``sets``) in a
    folder libvirt's QEMU can reach, and defined with its own define.sh, which also
    makes its isolated network. Domain and network names are ``prefix`` and a tag
    unique to the run, so nothing already on the host is touched; the hostnames stay
    the profile's. Every domain and the network are removed again, and the folder."""
    from vmbuild.cli import main

    tag = uuid.uuid4().hex[:6]
    network = f"{prefix}-{tag}"
    domains = {host: f"{prefix}-{tag}-{host}" for host in DEMO_HOSTS}
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
    work.chmod(0o755)  # libvirt's QEMU runs unprivileged and must reach the disks
    defined: list[str] = []
    try:
        overrides = ["lab.domain_type=qemu", f"network.source={network}", *sets]
        for position, host in enumerate(DEMO_HOSTS, start=1):
            overrides += [f"vm.{position}.name={domains[host]}", f"vm.{position}.hostname={host}"]
        args = ["build", str(DEMO), "--base", str(golden), "-q", "--output", str(work)]
        assert main(args + [arg for item in overrides for arg in ("--set", item)]) == 0
        existing = set(virsh("list", "--all", "--name").stdout.split())
        assert not existing & set(domains.values()), "refusing to touch existing domains"
        defined = list(domains.values())
        define(work / "demo")
        yield DemoLab(work, work / "demo", domains, network)
    finally:
        for name in defined:
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
        virsh("net-destroy", network, check=False)
        virsh("net-undefine", network, check=False)
        shutil.rmtree(work, ignore_errors=True)


def check_lab(bundle: Path, wait: int = 900) -> subprocess.CompletedProcess[str]:
    """``vmbuild check BUNDLE --wait`` against the test libvirtd, as a user runs it."""
    return subprocess.run(
        [str(REPO / ".venv/bin/vmbuild"), "check", str(bundle), "-c", URI, "--wait", str(wait)],
        capture_output=True,
        text=True,
        timeout=wait + 120,
        check=False,
    )
