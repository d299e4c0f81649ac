"""``vmbuild check``: do a bundle's running VMs have the identity the bundle gave them?

Each VM is asked through its QEMU guest agent, from inside the guest: its hostname,
the addresses of the NIC with its MAC, ``/etc/machine-id``, the SSH host keys in
``/etc/ssh`` and ``cloud-init status``. The answers are compared with the bundle's
``manifest.json`` and ``inventory/known_hosts``, and machine-ids and host keys must
also differ between the VMs. VMs are checked in parallel; with ``wait`` each VM is
given that long to boot, start its agent and finish cloud-init.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbuild.errors import UserError
from vmbuild.host import hostkeys
from vmbuild.libvirt.virsh import Agent, Virsh, VirshError

#: cloud-init states that mean it has not finished yet.
_CLOUD_INIT_BUSY = {"not run", "not started", "running"}
#: How often a waiting check asks again.
_POLL = 2.0


@dataclass(frozen=True)
class Expected:
    """What the bundle says one VM is."""

    name: str
    hostname: str
    mac: str
    ip: str  # with its prefix length: 192.0.2.10/24
    machine_id: str
    fingerprints: frozenset[str]  # "ssh-ed25519 SHA256:..." from known_hosts


@dataclass
class Finding:
    item: str
    ok: bool
    found: str
    expected: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "ok": self.ok, "found": self.found, "expected": self.expected}


@dataclass
class VmReport:
    name: str
    findings: list[Finding] = field(default_factory=list)
    #: Seconds from the start of the check until the VM was ready (agent answering,
    #: cloud-init finished); None when it never was.
    ready_after: float | None = None
    #: Raw facts, kept to compare VMs with each other.
    machine_id: str = ""
    fingerprints: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return all(finding.ok for finding in self.findings)

    def add(
        self, item: str, found: str, expected: str | None = None, ok: bool | None = None
    ) -> None:
        good = ok if ok is not None else (found == expected)
        self.findings.append(Finding(item, good, found, expected or ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "ready_after": None if self.ready_after is None else round(self.ready_after, 1),
            "checks": [finding.to_json() for finding in self.findings],
        }


# ------------------------------------------------------------------ the bundle


def fingerprint(key_type: str, blob_base64: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key, prefixed with its type."""
    return f"{key_type} {hostkeys.fingerprint(f'{key_type} {blob_base64}')}"


def _known_hosts(path: Path) -> list[tuple[set[str], str]]:
    """(host names, fingerprint) of each line of a known_hosts file."""
    out = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 3 or line.startswith(("#", "@")):
            continue
        out.append((set(fields[0].split(",")), fingerprint(fields[1], fields[2])))
    return out


def load_expected(bundle: Path) -> list[Expected]:
    """Each VM's expected identity, from a bundle's manifest and known_hosts."""
    manifest_path = bundle / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        vms: Mapping[str, Mapping[str, Any]] = manifest["vms"]
    except FileNotFoundError:
        raise UserError(f"{bundle} is not a vmbuild bundle: it has no manifest.json") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{manifest_path}: not a readable vmbuild manifest ({err})") from None
    known_path = bundle / "inventory" / "known_hosts"
    try:
        known = _known_hosts(known_path)
    except FileNotFoundError:
        known = []
    except (OSError, ValueError) as err:
        raise UserError(f"{known_path}: cannot be read ({err})") from None
    out = []
    for name, vm in vms.items():
        try:
            names = {vm["hostname"], vm["fqdn"], vm["ip"].split("/")[0]}
            prints = frozenset(fp for hosts, fp in known if hosts & names)
            if not prints:  # no inventory: the keys the manifest recorded
                prints = frozenset(
                    fingerprint(*line.split()[:2]) for line in vm.get("host_keys", {}).values()
                )
            out.append(
                Expected(
                    name, vm["hostname"], vm["mac"].lower(), vm["ip"], vm["machine_id"], prints
                )
            )
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise UserError(f"{manifest_path}: vm {name!r} lacks {err}") from None
    return out


# ------------------------------------------------------------------- the guests


def _cloud_init(agent: Agent) -> tuple[str, str]:
    """(status, detail) of ``cloud-init status --long`` in the guest."""
    result = agent.run(["cloud-init", "status", "--long"])
    status = ""
    errors = []
    for line in result.out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "status":
            status = value.strip()
        elif key.strip() == "errors" and value.strip() not in ("", "[]"):
            errors.append(value.strip())
    if not status:
        status = "unknown"
    if result.status != 0 and status == "done":
        status = "done with errors"
    detail = "; ".join(errors) or result.err.strip()
    return status, detail


def _wait_until_ready(agent: Agent, deadline: float) -> tuple[str, str]:
    """Wait for the agent to answer and cloud-init to finish; return the latter's state."""
    while True:
        if agent.ping():
            try:
                status, detail = _cloud_init(agent)
            except VirshError as err:
                status, detail = "unknown", str(err)
            if status not in _CLOUD_INIT_BUSY:
                return status, detail
        else:
            status, detail = "no agent", ""
        if time.monotonic() >= deadline:
            return status, detail
        time.sleep(_POLL)


def check_vm(virsh: Virsh, want: Expected, wait: float, start: float) -> VmReport:
    """Ask one VM's guest agent everything the bundle says about it."""
    report = VmReport(want.name)
    deadline = start + wait
    try:
        state = virsh.state(want.name)
        while state != "running" and time.monotonic() < deadline:
            time.sleep(_POLL)
            state = virsh.state(want.name)  # the domain may be undefined meanwhile
    except VirshError as err:
        report.add("domain", _domain_problem(err), "running")
        return report
    report.add("domain", state, "running")
    if state != "running":
        return report
    agent = Agent(virsh, want.name)
    status, detail = _wait_until_ready(agent, deadline)
    if status == "no agent":
        report.add("agent", "no answer", "answering")
        return report
    report.ready_after = time.monotonic() - start
    try:
        _ask(agent, want, report)
    except VirshError as err:
        report.add("agent", str(err), "answering")
    report.add("cloud-init", f"{status} ({detail})" if detail else status, "done")
    return report


def _domain_problem(err: VirshError) -> str:
    """What a failed virsh call on a domain means for its check: most often that the
    domain is not (or no longer) defined; virsh's own message says the rest."""
    message = str(err)
    if any(text in message.lower() for text in ("failed to get domain", "domain not found")):
        return f"not defined ({message})"
    return f"unknown ({message})"


def _ask(agent: Agent, want: Expected, report: VmReport) -> None:
    report.add("hostname", agent.command("guest-get-host-name")["host-name"], want.hostname)

    found_ip = "no NIC with this MAC"
    for nic in agent.command("guest-network-get-interfaces"):
        if nic.get("hardware-address", "").lower() == want.mac:
            addresses = [
                f"{a['ip-address']}/{a['prefix']}"
                for a in nic.get("ip-addresses", [])
                if a.get("ip-address-type") == "ipv4"
            ]
            found_ip = want.ip if want.ip in addresses else ", ".join(addresses) or "no IPv4"
            found_ip = f"{found_ip} on {nic['name']}"
    report.add("ip", found_ip, f"{want.ip} on {want.mac}", ok=found_ip.startswith(f"{want.ip} "))

    machine = agent.run(["cat", "/etc/machine-id"])
    report.machine_id = machine.out.strip()
    report.add("machine-id", report.machine_id or machine.err.strip(), want.machine_id)

    keys = agent.run(["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"])
    prints = set()
    for line in keys.out.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            prints.add(fingerprint(fields[0], fields[1]))
    report.fingerprints = frozenset(prints)
    report.add(
        "host keys",
        _describe_keys(prints, want.fingerprints),
        f"{len(want.fingerprints)} keys of known_hosts",
        ok=bool(prints) and prints == want.fingerprints,
    )


def _describe_keys(found: set[str], expected: frozenset[str]) -> str:
    if found == expected:
        return f"{len(found)} match known_hosts"
    missing, extra = len(expected - found), len(found - expected)
    return f"{len(found)} keys: {missing} of known_hosts missing, {extra} unknown"


def _shared(reports: list[VmReport]) -> None:
    """Flag machine-ids and host keys that more than one VM has."""
    facts: list[tuple[str, Callable[[VmReport], set[str]]]] = [
        ("machine-id", lambda r: {r.machine_id} - {""}),
        ("host keys", lambda r: set(r.fingerprints)),
    ]
    for item, value in facts:
        owners: dict[str, list[str]] = {}
        for report in reports:
            for one in value(report):
                owners.setdefault(one, []).append(report.name)
        for report in reports:
            others = sorted({n for one in value(report) for n in owners[one] if n != report.name})
            if others:
                report.add(f"{item} unique", f"shared with {', '.join(others)}", ok=False)


def check_bundle(
    bundle: Path,
    virsh: Virsh,
    wait: float = 0.0,
    progress: Callable[[str], None] = lambda _: None,
    on_hosts: Mapping[str, Virsh] | None = None,
) -> list[VmReport]:
    """Check every VM of ``bundle``, in parallel; ``wait`` seconds for each to be ready.
    A VM is asked through ``on_hosts[vm]`` (its own host's libvirt), else ``virsh``."""
    wanted = load_expected(bundle)
    start = time.monotonic()

    def one(want: Expected) -> VmReport:
        try:
            report = check_vm((on_hosts or {}).get(want.name, virsh), want, wait, start)
        except VirshError as err:  # one VM's trouble must not cost the others' report
            report = VmReport(want.name)
            report.add("domain", _domain_problem(err), "running")
        when = f" after {report.ready_after:.0f}s" if report.ready_after is not None else ""
        progress(f"  {want.name}: {'ok' if report.ok else 'differs'}{when}")
        return report

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(wanted)))) as pool:
        reports = list(pool.map(one, wanted))
    _shared(reports)
    return reports


# ---------------------------------------------------------------------- output

_COLUMNS = ("domain", "hostname", "ip", "machine-id", "host keys", "cloud-init")


def table(reports: list[VmReport]) -> str:
    """One row per VM, one column per item; a mismatch is marked and explained below."""
    rows = [["VM", *(c.upper() for c in _COLUMNS)]]
    notes = []
    for report in reports:
        by_item = {finding.item: finding for finding in report.findings}
        row = [report.name]
        for column in _COLUMNS:
            finding = by_item.get(column)
            if finding is None:
                row.append("-")
                continue
            shown = finding.found[:14] + "…" if column == "machine-id" else finding.found
            row.append(f"{'✓' if finding.ok else '✗'} {shown}")
        rows.append(row)
        for finding in report.findings:
            if not finding.ok:
                want = f", expected {finding.expected}" if finding.expected else ""
                notes.append(f"{report.name}: {finding.item}: found {finding.found}{want}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    bad = sum(not report.ok for report in reports)
    lines += notes
    count = len(reports)
    if not bad:
        lines.append(f"{count} VMs match the bundle" if count != 1 else "1 VM matches the bundle")
    else:
        lines.append(f"{bad} of {count} VMs differ from the bundle")
    return "\n".join(lines)
