"""virsh for the tests, on the system libvirtd that .ci/run starts.

With VMBUILD_REQUIRE_LIBVIRT=1 (set by .ci/run) a missing virsh or libvirtd fails
the libvirt tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

URI = "qemu:///system"
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
