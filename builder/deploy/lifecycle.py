"""The whole lab's life on its hosts: start, shut down, suspend, resume, reset,
destroy and status, for every VM or those named, each VM on its own host.

Only domains whose metadata names this lab are acted on (see ``names``). Each
command reports per VM and goes on with the others when one fails; the CLI exits
non-zero when any did.
"""

from __future__ import annotations

import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbuild.deploy import names, survey, volumes
from vmbuild.deploy.deploy import host_disk
from vmbuild.deploy.source import Source, check_built
from vmbuild.deploy.survey import Live
from vmbuild.errors import BuildError, VmbuildError
from vmbuild.libvirt.connection import Host, binding
from vmbuild.log import info
from vmbuild.model.plan import VmPlan, derive_uuid
from vmbuild.model.profile import NetType

#: How often a waiting command asks a domain's state again.
POLL = 1.0


@dataclass
class VmResult:
    vm: str
    host: str
    ok: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "host": self.host, "ok": self.ok, "message": self.message}


class NotDeployed(BuildError):
    """A named VM has no domain of this lab on its host."""


Action = Callable[[Host, VmPlan, Live], str]


def each(
    source: Source,
    hosts: Mapping[str, Host],
    vms: tuple[VmPlan, ...],
    action: Action,
    *,
    reverse: bool = False,
    missing_ok: bool = False,
) -> list[VmResult]:
    """``action`` on every VM of ``vms`` that is deployed, in profile order (or the
    reverse), each on its own host; one result per VM. A VM that is not deployed
    fails, unless ``missing_ok``."""
    found = _found(source, hosts, vms)
    results = []
    for vm in reversed(vms) if reverse else vms:
        host = hosts[vm.host]
        domain = found[vm.name]
        try:
            if domain is None and missing_ok:
                results.append(VmResult(vm.name, host.name, True, "not deployed"))
                continue
            if domain is None:
                raise NotDeployed("not deployed on this host", place=host.place)
            message = action(host, vm, domain)
            results.append(VmResult(vm.name, host.name, True, message))
        except VmbuildError as err:
            results.append(VmResult(vm.name, host.name, False, err.message))
    return results


def _found(
    source: Source, hosts: Mapping[str, Host], vms: tuple[VmPlan, ...]
) -> dict[str, Live | None]:
    out: dict[str, Live | None] = {}
    for name, host in hosts.items():
        on_host = tuple(vm for vm in vms if vm.host == name)
        if on_host:
            out.update(survey.lab_domains(host, source.plan, on_host))
    return out


def start(host: Host, vm: VmPlan, domain: Live) -> str:
    if domain.state == "running":
        return "running already"
    with host.calls(f'starting "{vm.name}"'):
        if domain.state == "paused":
            domain.handle.resume()
            return "resumed"
        domain.handle.create()
    return "started"


def suspend(host: Host, vm: VmPlan, domain: Live) -> str:
    if domain.state == "paused":
        return "paused already"
    if not domain.active:
        raise BuildError(f"it is {domain.state}", place=host.place)
    with host.calls(f'suspending "{vm.name}"'):
        domain.handle.suspend()
    return "paused"


def resume(host: Host, vm: VmPlan, domain: Live) -> str:
    if domain.state != "paused":
        return f"{domain.state}, not paused"
    with host.calls(f'resuming "{vm.name}"'):
        domain.handle.resume()
    return "resumed"


def down(
    source: Source,
    hosts: Mapping[str, Host],
    vms: tuple[VmPlan, ...],
    *,
    timeout: float,
    force: bool,
) -> list[VmResult]:
    """Ask every running VM to shut down (guest agent, else ACPI), wait up to
    ``timeout`` for all of them, then power off those still up when ``force``."""
    libvirt = binding()
    asked: dict[str, tuple[Host, Live]] = {}

    def ask(host: Host, vm: VmPlan, domain: Live) -> str:
        if not domain.active:
            return f"{domain.state} already"
        flags = libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        with host.calls(f'shutting down "{vm.name}"'):
            if domain.state == "paused":
                domain.handle.resume()
            domain.handle.shutdownFlags(flags)
        asked[vm.name] = (host, domain)
        return "shut down"

    results = each(source, hosts, vms, ask, reverse=True)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    waiting = dict(asked)
    while waiting and time.monotonic() < deadline:
        time.sleep(POLL)
        for name, (host, domain) in list(waiting.items()):
            with host.calls(f'reading "{name}"'):
                if not domain.handle.isActive():
                    del waiting[name]
    took = time.monotonic() - started
    for result in results:
        if result.vm not in asked:
            continue
        if result.vm not in waiting:
            result.message = f"shut down in {took:.0f}s" if waiting else "shut down"
            continue
        host, domain = waiting[result.vm]
        if force:
            try:
                with host.calls(f'powering off "{result.vm}"'):
                    domain.handle.destroy()
                result.message = f"powered off (still running after {timeout:.0f}s)"
            except VmbuildError as err:
                result.ok, result.message = False, err.message
        else:
            result.ok = False
            result.message = f"still running after {timeout:.0f}s (--force powers it off)"
    return results


def reset(source: Source, hosts: Mapping[str, Host], vms: tuple[VmPlan, ...]) -> list[VmResult]:
    """Each VM's disk back to the state it was built in: its volume written anew
    from the source's disk. A running VM is powered off first (what it has written
    is what a reset throws away) and started again afterwards."""

    def one(host: Host, vm: VmPlan, domain: Live) -> str:
        owner = domain.owner
        assert owner is not None
        disk_sha = source.sha256(vm.disk.file)
        if owner.disk != names.disk_volume(
            source.plan.lab, vm.name, disk_sha, vm.disk.format.value
        ):
            raise BuildError(
                "it was deployed from another build of the lab",
                place=host.place,
                hint="deploy this one first (vmbuild deploy), or reset from the source deployed",
            )
        was_running = domain.active
        with host.calls(f'powering off "{vm.name}"'):
            if was_running:
                domain.handle.destroy()
        storage = volumes.pool(host, owner.pool)
        golden_path = f"{survey.pool_path(host, storage)}/{owner.golden}"
        with tempfile.TemporaryDirectory(prefix="vmbuild-reset-", dir="/var/tmp") as tmp:
            disk = host_disk(source, vm, golden_path, Path(tmp))
            volumes.upload(host, storage, owner.disk, disk)
        if not was_running:
            return "disk restored"
        with host.calls(f'starting "{vm.name}"'):
            domain.handle.create()
        return "disk restored, started again"

    check_built(source, vms)
    return each(source, hosts, vms, one)


@dataclass(frozen=True)
class Row:
    vm: str
    host: str
    state: str
    autostart: bool | None
    ip: str
    vnc: str

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "host": self.host,
            "state": self.state,
            "autostart": self.autostart,
            "ip": self.ip,
            "vnc": self.vnc,
        }


def _vnc(host: Host, domain: Live) -> str:
    with host.calls(f'reading "{domain.name}"'):
        xml = ET.fromstring(domain.handle.XMLDesc(0))
    graphics = xml.find("devices/graphics[@type='vnc']")
    if graphics is None:
        return ""
    return f"{graphics.get('listen', '')}:{graphics.get('port', '')}"


def status(source: Source, hosts: Mapping[str, Host], vms: tuple[VmPlan, ...]) -> list[Row]:
    found = _found(source, hosts, vms)
    rows = []
    for vm in vms:
        host, domain = hosts[vm.host], found[vm.name]
        if domain is None:
            rows.append(Row(vm.name, vm.host, "not deployed", None, f"{vm.ip}/{vm.prefix}", ""))
            continue
        state = domain.state
        if domain.owner is not None and domain.owner.source != source.digest:
            state += " (other build)"
        rows.append(
            Row(
                vm.name,
                vm.host,
                state,
                domain.autostart,
                f"{vm.ip}/{vm.prefix}",
                _vnc(host, domain),
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    lines = [("VM", "HOST", "STATE", "AUTOSTART", "IP", "VNC")]
    for row in rows:
        auto = "" if row.autostart is None else ("yes" if row.autostart else "no")
        lines.append((row.vm, row.host, row.state, auto, row.ip, row.vnc))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


@dataclass
class Removed:
    host: str
    items: list[str] = field(default_factory=list)
    error: str = ""


def destroy(
    source: Source, hosts: Mapping[str, Host], vms: tuple[VmPlan, ...], whole_lab: bool
) -> tuple[list[VmResult], list[Removed]]:
    """Stop and undefine the lab's domains and delete their volumes; for the whole
    lab also the lab's network (when this lab made it and no domain uses it) and the
    golden volume (when no domain on the host uses it any more)."""
    libvirt = binding()
    removed = {name: Removed(name) for name in hosts}

    def one(host: Host, vm: VmPlan, domain: Live) -> str:
        with host.calls(f'removing "{vm.name}"'):
            if domain.active:
                domain.handle.destroy()
            domain.handle.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            )
        removed[host.name].items.append(f"domain {vm.name}")
        return "removed"

    results = each(source, hosts, vms, one, missing_ok=True)
    for name, host in hosts.items():
        on_host = tuple(vm for vm in vms if vm.host == name)
        if not on_host:
            continue
        try:
            _remove_volumes(source, host, on_host, whole_lab, removed[name])
            if whole_lab:
                _remove_network(source, host, removed[name])
        except VmbuildError as err:
            removed[name].error = err.message
    return results, list(removed.values())


def _remove_volumes(
    source: Source, host: Host, vms: tuple[VmPlan, ...], whole_lab: bool, removed: Removed
) -> None:
    pool_names = {source.plan.host(host.name).pool}
    remaining = survey.domains(host)
    used = {v for d in remaining if d.owner is not None for v in d.owner.volumes}
    goldens_used = {d.owner.golden for d in remaining if d.owner is not None}
    prefixes = (
        (names.lab_prefix(source.plan.lab),)
        if whole_lab
        else tuple(f"{names.lab_prefix(source.plan.lab)}{vm.name}+" for vm in vms)
    )
    for pool_name in pool_names:
        storage = volumes.pool(host, pool_name)
        vols = volumes.volumes(host, storage)
        for name, volume in sorted(vols.items()):
            if name.startswith(prefixes) and name not in used:
                volumes.delete(host, volume)
                removed.items.append(f"volume {name}")
        if not whole_lab:
            continue
        golden = names.golden_volume(source.golden_sha256, source.golden_format)
        if golden in vols and golden not in goldens_used and not _in_use(remaining, vols[golden]):
            for name in (golden, names.marker_volume(golden)):
                if name in vols:
                    volumes.delete(host, vols[name])
                    removed.items.append(f"volume {name}")


def _in_use(domains: list[Live], volume: Any) -> bool:
    """Does any domain's XML name the volume's path (as a disk or a backing file)?"""
    path = volume.path()
    for domain in domains:
        xml = ET.fromstring(domain.handle.XMLDesc(0))
        if any(source.get("file") == path for source in xml.iter("source")):
            return True
    return False


def _remove_network(source: Source, host: Host, removed: Removed) -> None:
    net = source.plan.network
    if net.type is not NetType.NETWORK or not net.create or net.source is None:
        return
    present = survey.networks(host).get(net.source)
    if present is None or present[0] != derive_uuid(source.plan.seed, f"network/{net.source}"):
        return  # not made by this lab's deploy
    for domain in survey.domains(host):
        xml = ET.fromstring(domain.handle.XMLDesc(0))
        if any(s.get("network") == net.source for s in xml.iterfind("devices/interface/source")):
            info(f"  {host.place}: network {net.source} kept: domain {domain.name} uses it")
            return
    with host.calls(f'removing network "{net.source}"'):
        if present[1]:
            present[2].destroy()
        present[2].undefine()
    removed.items.append(f"network {net.source}")


def _verb(
    action: Action,
) -> Callable[[Source, Mapping[str, Host], tuple[VmPlan, ...]], list[VmResult]]:
    return lambda source, hosts, vms: each(source, hosts, vms, action)


#: The commands that act on each VM alone, by name.
VERBS = {"suspend": _verb(suspend), "resume": _verb(resume), "reset": reset}
