"""One real Debian golden image per test run, built the way `vmbuild golden` builds
it, shared by the golden-image tests and the boot tier.

It is built into a cache under /var/tmp (mode 0755) rather than pytest's private
tmp folder: libvirt runs QEMU as an unprivileged user, which must be able to reach
the golden image behind every VM's overlay.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from vmbuild.golden import builder as golden
from vmbuild.golden.builder import build_golden
from vmbuild.golden.recipe import GoldenRecipe


@dataclass(frozen=True)
class Built:
    recipe: GoldenRecipe
    cache: Path
    path: Path
    sha256: str
    seconds: float
    log: tuple[str, ...]


def _mirror_reachable(mirror: str, release: str) -> bool:
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{release}/Release", timeout=15) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def require_builder() -> None:
    """Skip unless this host can build: root, the tools, and the Debian mirror."""
    if os.geteuid() != 0:
        pytest.skip("building a golden image needs root (debootstrap)")
    for tool in ("debootstrap", "qemu-img", "qemu-system-x86_64"):
        if golden._which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    mirror = GoldenRecipe().resolved_mirror()
    if not _mirror_reachable(mirror, "bookworm"):
        pytest.skip(f"the Debian mirror {mirror} is not reachable")


def build_once(release: str = "bookworm") -> Iterator[Built]:
    """Build the default recipe (of ``release``) into a fresh cache; remove the cache
    afterwards."""
    require_builder()
    cache = Path(tempfile.mkdtemp(prefix="vmbuild-test-golden-", dir="/var/tmp"))
    cache.chmod(0o755)
    try:
        recipe = GoldenRecipe(release=release)
        log: list[str] = []

        def progress(line: str) -> None:
            log.append(line)
            print(line, flush=True)  # shown by pytest when the build fails

        start = time.monotonic()
        path, sha = build_golden(recipe, cache, progress=progress)
        yield Built(recipe, cache, path, sha, time.monotonic() - start, tuple(log))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
