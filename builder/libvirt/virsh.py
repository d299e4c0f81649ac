"""Talking to libvirt through ``virsh``, and to a running guest through its QEMU guest
agent (``virsh qemu-agent-command``): no libvirt binding is needed, and every call
is bounded in time."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild.errors import BuildError, UserError

#: How long one virsh call may take before it counts as failed.
VIRSH_TIMEOUT = 60.0


class VirshError(BuildError):
    """A virsh call failed; the message is virsh's own, without its ``error:``."""


@dataclass(frozen=True)
class Virsh:
    """virsh on one connection (None: virsh's default, ``LIBVIRT_DEFAULT_URI``)."""

    uri: str | None = None

    def __post_init__(self) -> None:
        if shutil.which("virsh") is None:
            raise UserError("virsh is not installed", hint="apt-get install libvirt-clients")

    def run(self, *args: str, timeout: float = VIRSH_TIMEOUT) -> str:
        command = ["virsh", *(["-c", self.uri] if self.uri else []), *args]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise VirshError(f"virsh {args[0]}: no answer within {timeout:.0f}s") from None
        if done.returncode != 0:
            message = " ".join(
                line.removeprefix("error: ").strip()
                for line in done.stderr.splitlines()
                if line.strip()
            )
            raise VirshError(message or f"virsh {args[0]} exited with {done.returncode}")
        return done.stdout

    def state(self, domain: str) -> str:
        """The domain's state as virsh names it (``running``, ``shut off``...)."""
        return self.run("domstate", domain).strip()


@dataclass(frozen=True)
class ExecResult:
    status: int
    out: str
    err: str


class Agent:
    """The QEMU guest agent of one running domain."""

    def __init__(self, virsh: Virsh, domain: str) -> None:
        self.virsh = virsh
        self.domain = domain

    def command(self, execute: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one agent command and return its ``return`` value."""
        message: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        text = self.virsh.run(
            "qemu-agent-command", self.domain, json.dumps(message), "--timeout", "10"
        )
        try:
            return json.loads(text)["return"]
        except (ValueError, KeyError, TypeError):
            raise VirshError(f"the guest agent answered {execute} with {text.strip()!r}") from None

    def ping(self) -> bool:
        try:
            self.command("guest-ping")
        except VirshError:
            return False
        return True

    def run(self, argv: list[str], timeout: float = 60.0) -> ExecResult:
        """Run a program in the guest (``guest-exec``) and wait for it to end."""
        started = self.command(
            "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True}
        )
        pid = started["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = self.command("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return ExecResult(
                    int(status.get("exitcode", -1)),
                    _decoded(status.get("out-data", "")),
                    _decoded(status.get("err-data", "")),
                )
            if time.monotonic() > deadline:
                raise VirshError(f"{' '.join(argv)}: still running after {timeout:.0f}s")
            time.sleep(0.2)


def _decoded(data: str) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""


def unreachable_for_qemu(paths: list[Path]) -> list[str]:
    """For each of ``paths`` that an unprivileged QEMU could not reach, one line
    naming the folders on its way that keep other users out.

    libvirt gives QEMU the disk files themselves (it changes their owner), but QEMU
    has to reach them through their folders: a golden image under root's home
    (mode 0700) is a VM that does not start.
    """
    out = []
    for path in paths:
        blocked = []
        for folder in reversed(path.resolve().parents):
            try:
                mode = folder.stat().st_mode
            except OSError:
                continue
            if not mode & stat.S_IXOTH:
                blocked.append(f"{folder} (mode {stat.S_IMODE(mode):04o})")
        if blocked:
            out.append(f"{path} is behind {' and '.join(blocked)}")
    return out
