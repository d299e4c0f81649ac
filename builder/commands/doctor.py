"""What this host has for vmbuild: tools, libguestfs and its appliance, KVM, libvirt."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

from vmbuild.errors import BuildError
from vmbuild.golden.recipe import default_cache
from vmbuild.guest.appliance import Appliance, guestfs_module, kvm_usable
from vmbuild.libvirt.virsh import unreachable_for_qemu


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: A build cannot work without it.
    required: bool

    @property
    def headline(self) -> str:
        """The detail's first non-empty line: what fits in the check's row."""
        return (_lines(self.detail) or [""])[0]

    @property
    def more(self) -> list[str]:
        """The detail's other non-empty lines (a subprocess's message may have several)."""
        return _lines(self.detail)[1:]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _version(command: list[str], pick: str = "") -> tuple[bool, str]:
    if shutil.which(command[0]) is None:
        return False, "not installed"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    lines = (result.stdout or result.stderr).strip().splitlines()
    chosen = [line for line in lines if pick in line] or lines
    return result.returncode == 0, chosen[0].strip() if chosen else f"exit {result.returncode}"


def _appliance() -> tuple[bool, str]:
    try:
        guestfs_module()
    except BuildError as err:
        return False, err.message
    start = time.monotonic()
    try:
        with Appliance(call_timeout=60) as app:
            app.call("adding a scratch drive", app.handle.add_drive_scratch, 16 << 20)
            app.launch()
            version = app.call("asking for the version", app.handle.version)
            accel = app.accel
    except BuildError as err:
        return False, err.message
    seconds = time.monotonic() - start
    return True, (
        f"libguestfs {version['major']}.{version['minor']}.{version['release']}: "
        f"appliance started in {seconds:.1f}s with {accel}"
    )


def run_checks(launch: bool = True) -> list[Check]:
    checks = []
    ok, detail = _version(["qemu-img", "--version"])
    checks.append(Check("qemu-img", ok, detail, True))
    keygen = shutil.which("ssh-keygen")
    checks.append(
        Check("ssh-keygen", keygen is not None, keygen or "not installed (openssh-client)", True)
    )
    if launch:
        ok, detail = _appliance()
    else:
        try:
            guestfs_module()
            ok, detail = True, "Python binding installed (appliance not started: --quick)"
        except BuildError as err:
            ok, detail = False, err.message
    checks.append(Check("libguestfs", ok, detail, True))
    usable, reason = kvm_usable()
    if not usable:
        # QEMU's reason may be several lines: the consequence belongs on the first.
        first, *rest = _lines(reason) or [""]
        reason = "\n".join([f"not usable: {first}; libguestfs uses TCG (slower)", *rest])
    checks.append(Check("kvm", usable, reason, False))
    ok, detail = _version(["virsh", "-c", "qemu:///system", "version", "--daemon"], "daemon")
    checks.append(
        Check("libvirt", ok, detail if ok else f"no libvirtd reachable ({detail})", False)
    )
    debootstrap = shutil.which("debootstrap")
    checks.append(
        Check(
            "debootstrap",
            debootstrap is not None,
            debootstrap or "not installed: needed for [base] debian golden images",
            False,
        )
    )
    cache = default_cache() / "golden"
    blocked = unreachable_for_qemu([cache / "image.qcow2"])
    behind = blocked[0].partition(" is behind ")[2] if blocked else ""
    detail = (
        f"{cache}: behind {behind}, out of reach of libvirt's QEMU user (set VMBUILD_CACHE)"
        if blocked
        else str(cache)
    )
    checks.append(Check("golden cache", not blocked, detail, False))
    validate = shutil.which("virt-xml-validate")
    checks.append(
        Check(
            "virt-xml-validate",
            validate is not None,
            validate or "not installed (libvirt-clients)",
            False,
        )
    )
    return checks


def table(checks: list[Check], verbose: bool = False) -> str:
    """One row per check, its detail's first line in the row; with ``verbose`` the
    rest of the detail follows, indented under the row, so rows stay one line each."""
    width = max(len(check.name) for check in checks)
    indent = " " * (width + 2 + 7 + 2)
    lines = []
    for check in checks:
        mark = "ok" if check.ok else ("MISSING" if check.required else "no")
        lines.append(f"{check.name.ljust(width)}  {mark.ljust(7)}  {check.headline}".rstrip())
        if verbose:
            lines += [indent + line for line in check.more]
    return "\n".join(lines)
