"""SSH host keys made on the host, one set per VM, so no two clones share a key
and the bundle can publish every public key in its known_hosts before first boot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from vmbuild.errors import BuildError
from vmbuild.model.profile import HOST_KEY_TYPES as KEY_TYPES

HostKeySet = dict[str, tuple[bytes, str]]


def _generate(key_type: str, comment: str, niceness: int = 19) -> tuple[bytes, str]:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise BuildError("ssh-keygen is not installed", hint="apt-get install openssh-client")
    with tempfile.TemporaryDirectory(prefix="vmbuild-hostkey-") as folder:
        path = Path(folder) / "key"
        extra = ["-b", "3072"] if key_type == "rsa" else []
        # The keys are made while the appliance boots and edits, and that is what
        # the build waits for: at the lowest priority, ssh-keygen takes only the CPU
        # the appliance leaves (a lab's RSA keys are seconds of CPU on a small host).
        nice = shutil.which("nice")
        result = subprocess.run(
            [
                *([nice, "-n", str(niceness)] if nice and niceness else []),
                keygen,
                "-q",
                "-t",
                key_type,
                *extra,
                "-N",
                "",
                "-C",
                comment,
                "-f",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if result.returncode != 0:
            raise BuildError(f"ssh-keygen -t {key_type} failed: {result.stderr.strip()}")
        return path.read_bytes(), path.with_suffix(".pub").read_text().strip()


def generate_host_keys(
    hostnames: Mapping[str, str], types: Sequence[str] = KEY_TYPES, niceness: int = 19
) -> dict[str, HostKeySet]:
    """Host keys of ``types`` for each VM (name -> hostname for the key comment), made
    by ssh-keygen at ``niceness``."""
    return {
        name: {key_type: _generate(key_type, f"root@{host}", niceness) for key_type in types}
        for name, host in hostnames.items()
    }


class HostKeyMaker:
    """Makes the VMs' host keys in the background, in the order the VMs are edited,
    so that the appliance waits, if at all, only for the keys of the VM it is at.

    Each VM's keys are one job (its cheap types first: RSA is most of the CPU), on
    as many workers as the host has cores, at the lowest priority until the first
    time a caller has to wait: the appliance then stands idle, and the keys it
    waits for are the critical path (on a busy host, niced ssh-keygen may get no
    CPU at all). ``waited`` sums how long callers waited."""

    def __init__(
        self, hostnames: Mapping[str, str], types: Sequence[str], workers: int | None = None
    ) -> None:
        self.types = tuple(types)
        cheap_first = tuple(sorted(types, key=lambda kind: kind == "rsa"))
        self.waited = 0.0
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, workers or os.cpu_count() or 1), thread_name_prefix="hostkeys"
        )
        self._behind = threading.Event()
        self._jobs: dict[str, Future[dict[str, HostKeySet]]] = {
            name: self._pool.submit(self._make, {name: host}, cheap_first)
            for name, host in hostnames.items()
        }
        self._pool.shutdown(wait=False)

    def _make(self, hostnames: Mapping[str, str], types: Sequence[str]) -> dict[str, HostKeySet]:
        return generate_host_keys(hostnames, types, niceness=0 if self._behind.is_set() else 19)

    def keys(self, name: str) -> HostKeySet:
        """The keys of the VM ``name``, once made (in the order the profile gives
        them); BuildError if ssh-keygen failed."""
        if not self._jobs[name].done():
            self._behind.set()
        start = time.monotonic()
        try:
            made = self._jobs[name].result()[name]
        finally:
            self.waited += time.monotonic() - start
        return {kind: made[kind] for kind in self.types}

    def all(self) -> dict[str, HostKeySet]:
        return {name: self.keys(name) for name in self._jobs}

    def cancel(self) -> None:
        """Drop the jobs not yet started (a failed build needs no more keys)."""
        for job in self._jobs.values():
            job.cancel()

    def __enter__(self) -> HostKeyMaker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def fingerprint(public_line: str) -> str:
    """The SHA256 fingerprint ssh-keygen -l shows for a public key line."""
    import base64
    import hashlib

    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
