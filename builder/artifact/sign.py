"""SSH signatures over a lab manifest's digest, made and checked by ``ssh-keygen -Y``.

The signed message is the lab manifest's digest (``sha256:<hex>``, no newline), in
the namespace ``vmbuild-lab``: a signature made for anything else (git commits,
files) does not verify here. Who may sign is an ``allowed_signers`` file, as for
git and OpenSSH (see ssh-keygen(1), ALLOWED SIGNERS).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmbuild.artifact.layout import ArtifactError

NAMESPACE = "vmbuild-lab"
_TIMEOUT = 60


@dataclass(frozen=True)
class Signer:
    principal: str
    fingerprint: str


def _ssh_keygen(
    args: list[str], what: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise ArtifactError(f"{what}: ssh-keygen is not installed", hint="install openssh-client")
    try:
        return subprocess.run(
            [tool, *args], input=stdin, capture_output=True, timeout=_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise ArtifactError(
            f"{what}: ssh-keygen did not finish in {_TIMEOUT}s",
            hint="is the key protected by a passphrase? Load it into ssh-agent first",
        ) from None


def _said(result: subprocess.CompletedProcess[bytes]) -> str:
    text = (result.stderr or result.stdout).decode(errors="replace").strip()
    return text.splitlines()[-1] if text else f"exit status {result.returncode}"


def fingerprint(key: Path) -> str:
    result = _ssh_keygen(["-l", "-f", str(key)], f"reading the key {key}")
    if result.returncode != 0:
        raise ArtifactError(f"cannot read the SSH key {key}: {_said(result)}", place="--sign")
    return result.stdout.decode().split()[1]


def sign(key: Path, digest: str) -> bytes:
    """An armored SSH signature of ``digest`` by ``key`` (a private key, or a public
    key whose private half ssh-agent holds)."""
    if not key.is_file():
        raise ArtifactError(f"the signing key {key} does not exist", place="--sign")
    result = _ssh_keygen(
        ["-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE],
        f"signing with {key}",
        digest.encode(),
    )
    if result.returncode != 0 or not result.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        raise ArtifactError(
            f"ssh-keygen could not sign with {key}: {_said(result)}",
            place="--sign",
            hint="a key with a passphrase must be loaded into ssh-agent",
        )
    return result.stdout


def verify(signature: bytes, digest: str, allowed_signers: Path) -> Signer:
    """Who made ``signature`` over ``digest``, as ``allowed_signers`` names them;
    an ArtifactError when nobody it allows did."""
    if not allowed_signers.is_file():
        raise ArtifactError(
            f"the allowed signers file {allowed_signers} does not exist",
            place="--allowed-signers",
            hint='one line per signer: `PRINCIPAL namespaces="vmbuild-lab" KEYTYPE KEY`',
        )
    with tempfile.TemporaryDirectory(prefix="vmbuild-verify-") as folder:
        sig = Path(folder) / "lab.sig"
        sig.write_bytes(signature)
        found = _ssh_keygen(
            ["-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers), "-n", NAMESPACE],
            "finding the signer",
        )
        principals = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not principals:
            raise ArtifactError(
                f"the lab is signed by a key that {allowed_signers} does not allow "
                f"(for the namespace {NAMESPACE})",
                hint="add the signer's public key to the allowed signers file, if you trust it",
            )
        checked = _ssh_keygen(
            [
                "-Y", "verify", "-f", str(allowed_signers), "-I", principals[0],
                "-n", NAMESPACE, "-s", str(sig),
            ],
            "checking the signature",
            digest.encode(),
        )  # fmt: skip
        if checked.returncode != 0:
            raise ArtifactError(
                f"the signature over the lab manifest {digest} does not verify: {_said(checked)}",
                hint="the manifest was changed after it was signed, or the signature is damaged",
            )
        said = checked.stdout.decode(errors="replace") + checked.stderr.decode(errors="replace")
        key = next((word for word in said.split() if word.startswith("SHA256:")), "")
        return Signer(principals[0], key)
