"""What a host has: its domains (and which are a lab's), volumes and networks.

Every lab command starts here, for each host of the lab, before it changes
anything: what it then does follows from what this found.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmbuild.deploy.names import Owner, read_owner
from vmbuild.errors import UserError
from vmbuild.libvirt.connection import Host, binding, connect, default_uri
from vmbuild.model.plan import LOCAL_HOST, Plan, VmPlan
from vmbuild.model.profile import is_hostname_label

#: libvirt's domain states, as `virsh domstate` names them.
STATES = {
    0: "no state",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutting down",
    5: "shut off",
    6: "crashed",
    7: "suspended",
}


@dataclass(frozen=True)
class Live:
    """One domain defined on a host."""

    name: str
    uuid: str
    state: str
    owner: Owner | None
    autostart: bool
    handle: Any

    @property
    def active(self) -> bool:
        return self.state not in ("shut off", "crashed")

    def owned_by(self, lab: str, vm: str) -> bool:
        return self.owner is not None and self.owner.lab == lab and self.owner.vm == vm


def live(host: Host, domain: Any) -> Live:
    libvirt = binding()
    with host.calls(f'reading domain "{domain.name()}"'):
        state = domain.state()[0]
        xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        autostart = bool(domain.autostart())
        return Live(
            domain.name(), domain.UUIDString(), STATES.get(state, str(state)), read_owner(xml),
            autostart, domain,
        )  # fmt: skip


def domains(host: Host) -> list[Live]:
    with host.calls("listing domains"):
        found = host.conn.listAllDomains(0)
    return [live(host, domain) for domain in found]


def networks(host: Host) -> dict[str, tuple[str, bool, Any]]:
    """name -> (uuid, active, handle)."""
    with host.calls("listing networks"):
        return {
            n.name(): (n.UUIDString(), bool(n.isActive()), n) for n in host.conn.listAllNetworks(0)
        }


def pool_path(host: Host, storage: Any) -> str:
    with host.calls("reading the storage pool"):
        target = ET.fromstring(storage.XMLDesc(0)).findtext("target/path")
    if not target:
        raise UserError(f"storage pool {storage.name()!r} has no target path", place=host.place)
    return target.rstrip("/")


def uris(plan: Plan, overrides: Mapping[str, str]) -> dict[str, str]:
    """Each host of the lab's placement -> the URI to reach it: --connect's, else the
    profile's, else (for ``local``) libvirt's default."""
    out = {}
    for name in plan.placement():
        declared = plan.host(name)
        out[name] = overrides.get(name) or declared.uri or default_uri()
    return out


def open_hosts(plan: Plan, overrides: Mapping[str, str]) -> dict[str, Host]:
    """A connection to every host of the lab, or a HostError naming the first that
    does not answer (after closing those already opened)."""
    opened: dict[str, Host] = {}
    try:
        for name, uri in uris(plan, overrides).items():
            opened[name] = connect(name, uri)
    except BaseException:
        close(opened)
        raise
    return opened


def close(hosts: Mapping[str, Host]) -> None:
    for host in hosts.values():
        with contextlib.suppress(Exception):
            host.close()


def lab_domains(host: Host, plan: Plan, vms: tuple[VmPlan, ...]) -> dict[str, Live | None]:
    """Each of ``vms`` -> its domain on ``host`` when this lab deployed it there."""
    mine = {d.owner.vm: d for d in domains(host) if d.owner is not None and d.owner.lab == plan.lab}
    return {vm.name: mine.get(vm.name) for vm in vms}


def parse_pairs(values: list[str], what: str, option: str) -> dict[str, str]:
    """``--connect URI`` / ``--connect NAME=URI`` (and --pool alike) as host name ->
    value; a bare value is the local host's."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and is_hostname_label(name) and ("://" in rest or what != "uri"):
            out[name] = rest
        elif what == "uri" and "://" not in value:
            raise UserError(
                f"{option} {value!r} is not a libvirt URI",
                hint=f"{option} qemu+ssh://root@hv2.example/system, or {option} NAME=URI",
            )
        else:
            out[LOCAL_HOST] = value
    return out
