"""SSH host keys made on the host, one set per VM, so no two clones share a key
and the bundle can publish every public key in its known_hosts before first boot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vmbuild.errors import BuildError

#: The key types OpenSSH makes by default, in the order sshd offers them.
KEY_TYPES = ("ed25519", "ecdsa", "rsa")

HostKeySet = dict[str, tuple[bytes, str]]


def _generate(key_type: str, comment: str) -> tuple[bytes, str]:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise BuildError("ssh-keygen is not installed", hint="apt-get install openssh-client")
    with tempfile.TemporaryDirectory(prefix="vmbuild-hostkey-") as folder:
        path = Path(folder) / "key"
        extra = ["-b", "3072"] if key_type == "rsa" else []
        # The keys are made while the appliance boots, and that boot is what the
        # build waits for: at the lowest priority, ssh-keygen takes only the CPU the
        # appliance leaves (a lab's RSA keys are seconds of CPU on a small host).
        nice = shutil.which("nice")
        result = subprocess.run(
            [
                *([nice, "-n", "19"] if nice else []),
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


def generate_host_keys(hostnames: dict[str, str]) -> dict[str, HostKeySet]:
    """Host keys for each VM (name -> hostname for the key comment), in parallel."""
    jobs = [(name, key_type) for name in hostnames for key_type in KEY_TYPES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda job: _generate(job[1], f"root@{hostnames[job[0]]}"), jobs)
        keys: dict[str, HostKeySet] = {name: {} for name in hostnames}
        for (name, key_type), pair in zip(jobs, results, strict=True):
            keys[name][key_type] = pair
    return keys


def fingerprint(public_line: str) -> str:
    """The SHA256 fingerprint ssh-keygen -l shows for a public key line."""
    import base64
    import hashlib

    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
