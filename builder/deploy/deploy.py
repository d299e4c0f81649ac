"""``vmbuild deploy``: a lab's VMs defined on their hosts, through libvirt's API.

For each host of the lab's placement, in order:

1. **survey** what the host has (domains, volumes, networks), for every host
   before anything changes anywhere;
2. **decide**, per VM, to keep, create, update or replace its domain — or refuse:
   a domain that this lab did not deploy, or a running one that would change, is
   never touched (``--replace`` lifts the first, never the second). Any refusal on
   any host stops the deploy before it has sent a byte;
3. **apply**, host by host: the golden image (once per host, by digest), each new
   VM's overlay (re-pointed to the host's golden volume) and seed, the lab's
   network, then the domains. Whatever this run made on a host is undone when a
   later step on that host fails, so each host ends either as it was or with the
   whole new lab; a host that stopped answering is reported, and a rerun sends
   only what is missing;
4. **retire** the volumes that an updated VM no longer uses.
"""

from __future__ import annotations

import contextlib
import enum
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbuild.deploy import names, survey, volumes
from vmbuild.deploy.names import Owner, Placed
from vmbuild.deploy.source import Source, check_built
from vmbuild.deploy.survey import Live
from vmbuild.errors import BuildError, UserError, VmbuildError
from vmbuild.host import qemuimg
from vmbuild.libvirt.connection import Host, binding
from vmbuild.log import Progress, info, size_text, step
from vmbuild.model.plan import VmPlan, derive_uuid
from vmbuild.model.profile import DiskFormat, DiskMode, NetType

#: Room left in a pool beyond what a deploy sends there.
SPACE_MARGIN = 16 << 20


class Action(enum.StrEnum):
    KEEP = "keep"
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"


@dataclass(frozen=True)
class Decision:
    action: Action | None
    #: Why nothing may be done (action None).
    refusal: str = ""
    hint: str = ""
    #: This lab's domain for the VM, as deployed before.
    previous: Live | None = None
    #: Domains not of this lab that --replace undefines first.
    foreign: tuple[Live, ...] = ()


def decide(
    lab: str,
    vm: str,
    digest: str,
    intact: bool,
    found: tuple[Live, ...],
    replace: bool,
) -> Decision:
    """What to do with one VM, given the domains of the host that have its name or
    UUID (``found``) and whether its volumes are all there (``intact``)."""
    ours = [d for d in found if d.owned_by(lab, vm)]
    previous = ours[0] if ours else None
    foreign = tuple(d for d in found if not d.owned_by(lab, vm))
    if foreign:
        names_ = ", ".join(f'"{d.name}" ({d.uuid})' for d in foreign)
        if any(d.active for d in foreign):
            return Decision(
                None,
                f"domain {names_} is {foreign[0].state} and was not deployed by this lab",
                "a running domain that is not the lab's is never touched, --replace or not",
            )
        if not replace:
            return Decision(
                None,
                f"domain {names_} has this VM's name or UUID and was not deployed by this lab",
                "rename the VM, or give --replace to undefine that domain and deploy this one",
            )
        return Decision(Action.REPLACE, previous=previous, foreign=foreign)
    if previous is None:
        return Decision(Action.CREATE)
    if previous.owner is not None and previous.owner.digest == digest and intact:
        return Decision(Action.KEEP, previous=previous)
    if previous.active:
        return Decision(
            None,
            f"domain {previous.name!r} is {previous.state}, and deploying would change it",
            "shut it down first (vmbuild down ... " + vm + "), then deploy again",
        )
    return Decision(Action.UPDATE, previous=previous)


@dataclass(frozen=True)
class Want:
    """One VM as it is to be on its host."""

    vm: VmPlan
    owner: Owner
    xml: str
    decision: Decision


@dataclass
class HostJob:
    """Everything known about one host before it is changed."""

    host: Host
    pool_name: str
    storage: Any
    pool_path: str
    volumes: dict[str, Any]
    networks: dict[str, tuple[str, bool, Any]]
    domains: list[Live]
    golden: str | None
    golden_ok: bool
    #: Free bytes in the pool, as the host says.
    available: int = 0
    wants: list[Want] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.host.name

    def path(self, volume: str) -> str:
        return f"{self.pool_path}/{volume}"


@dataclass
class HostReport:
    host: str
    uri: str
    sent: volumes.Sent = field(default_factory=volumes.Sent)
    actions: dict[str, str] = field(default_factory=dict)
    #: Volumes removed after the domains no longer used them.
    retired: list[str] = field(default_factory=list)
    network: str = ""
    error: str = ""
    #: What a failed host still has of this run (could not be undone).
    left: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "uri": self.uri,
            "ok": not self.error,
            "vms": self.actions,
            "sent_bytes": self.sent.bytes,
            "sent_volumes": self.sent.volumes,
            "retired": self.retired,
            "network": self.network,
            "error": self.error,
            "left": self.left,
        }


class DeployError(BuildError):
    """A deploy failed on one or more hosts (each host's report says how)."""

    def __init__(self, message: str, reports: list[HostReport], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reports = reports


# ------------------------------------------------------------------ survey/decide


def _golden_ok(job_host: Host, vols: Mapping[str, Any], golden: str, sha256: str) -> bool:
    marker = vols.get(names.marker_volume(golden))
    if golden not in vols or marker is None:
        return False
    return volumes.read_small(job_host, marker).decode(errors="replace").strip() == sha256


def plan_host(
    host: Host, source: Source, vms: tuple[VmPlan, ...], pool_name: str, replace: bool
) -> HostJob:
    """Survey one host and decide for each of its VMs."""
    storage = volumes.pool(host, pool_name)
    vols = volumes.volumes(host, storage)
    overlay = any(vm.disk.mode is DiskMode.OVERLAY for vm in vms)
    golden = names.golden_volume(source.golden_sha256, source.golden_format) if overlay else None
    job = HostJob(
        host=host,
        pool_name=pool_name,
        storage=storage,
        pool_path=survey.pool_path(host, storage),
        volumes=vols,
        networks=survey.networks(host),
        domains=survey.domains(host),
        golden=golden,
        golden_ok=golden is not None and _golden_ok(host, vols, golden, source.golden_sha256),
    )
    with host.calls(f'reading storage pool "{pool_name}"'):
        job.available = int(storage.info()[3])
    for vm in vms:
        job.wants.append(_want(job, source, vm, replace))
    return job


def _want(job: HostJob, source: Source, vm: VmPlan, replace: bool) -> Want:
    lab = source.plan.lab
    disk_sha, seed_sha = source.sha256(vm.disk.file), source.sha256(vm.seed.file)
    disk = names.disk_volume(lab, vm.name, disk_sha, vm.disk.format.value)
    seed = names.seed_volume(lab, vm.name, seed_sha)
    overlay = vm.disk.mode is DiskMode.OVERLAY
    placed = Placed(
        job.path(disk),
        job.path(seed),
        job.path(job.golden) if overlay and job.golden else None,
        source.golden_format,
    )
    xml = names.host_xml(source.path(vm.xml).read_text(), vm.disk.target, vm.seed.target, placed)
    digest = names.deployed_digest(xml, disk_sha, seed_sha)
    owner = Owner(
        lab, vm.name, source.digest, digest, job.pool_name,
        job.golden if overlay and job.golden else "", disk, seed,
    )  # fmt: skip
    intact = disk in job.volumes and seed in job.volumes and (not overlay or job.golden_ok)
    found = tuple(
        {d.uuid: d for d in job.domains if d.name == vm.name or d.uuid == vm.uuid}.values()
    )
    decision = decide(lab, vm.name, digest, intact, found, replace)
    return Want(vm, owner, names.with_owner(xml, owner), decision)


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _needs(job: HostJob, name: str) -> bool:
    """Must volume ``name`` be sent? Yes unless it is there and a domain names it
    (one that is there but named by none may be what a cut upload left)."""
    return name not in job.volumes or name not in _referenced(job)


def space_needed(job: HostJob, source: Source) -> int:
    """What the volumes this deploy sends to the host take in its pool."""
    todo = [w for w in job.wants if w.decision.action not in (Action.KEEP, None)]
    needed = 0
    if todo and job.golden is not None and not job.golden_ok:
        needed += _allocated(source.golden)
    for want in todo:
        if _needs(job, want.owner.disk):
            needed += _allocated(source.path(want.vm.disk.file))
        if _needs(job, want.owner.seed):
            needed += _allocated(source.path(want.vm.seed.file))
    return needed


def refusals(jobs: list[HostJob], source: Source) -> list[str]:
    """Every reason not to start, on every host."""
    out = []
    net = source.plan.network
    for job in jobs:
        needed = space_needed(job, source)
        if needed and needed + SPACE_MARGIN > job.available:
            out.append(
                f'{job.host.place}: storage pool "{job.pool_name}" has '
                f"{size_text(job.available)} free, and this deploy sends "
                f"{size_text(needed)} there (free some, or choose another pool with --pool)"
            )
        for want in job.wants:
            if want.decision.action is None:
                out.append(
                    f'{job.host.place}, vm "{want.vm.name}": {want.decision.refusal}'
                    + (f" ({want.decision.hint})" if want.decision.hint else "")
                )
        if net.type is NetType.NETWORK and not net.create and net.source not in job.networks:
            out.append(
                f'{job.host.place}: the lab\'s libvirt network "{net.source}" does not exist '
                "there (define it, or set network.create = true)"
            )
    return out


# ------------------------------------------------------------------------- apply


class Undo:
    """What to take back, newest first, if a later step on the host fails. Each
    step is done by name on the connection it is given: the one this run used may
    be the casualty (libvirt closes a connection whose upload failed)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[Any], None]]] = []

    def add(self, what: str, action: Callable[[Any], None]) -> None:
        self.steps.append((what, action))

    def run(self, host: Host) -> list[str]:
        """Undo everything; what could not be undone."""
        if not self.steps:
            return []
        try:
            if not host.conn.isAlive():
                host.reconnect()
        except VmbuildError:
            return [what for what, _ in reversed(self.steps)]
        except Exception:
            with contextlib.suppress(VmbuildError):
                host.reconnect()
        left = []
        for what, action in reversed(self.steps):
            try:
                action(host.conn)
            except Exception:  # the host may be gone: say what is left there
                left.append(what)
        return left


def _delete_volume(pool: str, name: str) -> Callable[[Any], None]:
    def delete(conn: Any) -> None:
        libvirt = binding()
        try:
            conn.storagePoolLookupByName(pool).storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise

    return delete


@dataclass
class HostRun:
    """One host being brought to the new lab: what is known of it, what this run
    sent there, and how to take that back."""

    job: HostJob
    source: Source
    work: Path
    progress: Progress
    report: HostReport
    undo: Undo = field(default_factory=Undo)

    def upload(self, name: str, file: Path, what: str = "", mode: str = "0600") -> None:
        job = self.job

        def shown(done: int, total: int) -> None:
            self.progress(f"{job.name}: {what}", done, total)

        # Before the upload: a cut one leaves a volume behind too.
        self.undo.add(f"volume {name}", _delete_volume(job.pool_name, name))
        volume, sent = volumes.upload(
            job.host, job.storage, name, file, mode=mode, progress=shown if what else None
        )
        self.report.sent.add(name, sent)
        job.volumes[name] = volume


def _send_golden(run: HostRun) -> None:
    job = run.job
    if job.golden is None or job.golden_ok:
        return
    with step(f"{job.host.place}: sending the golden image as volume {job.golden}"):
        run.upload(job.golden, run.source.golden, "golden image", mode="0644")
        marker = run.work / names.marker_volume(job.golden)
        marker.write_text(run.source.golden_sha256 + "\n")
        run.upload(marker.name, marker, mode="0644")


def _referenced(job: HostJob) -> set[str]:
    """Volumes that a domain of any vmbuild lab on the host names."""
    return {v for d in job.domains if d.owner is not None for v in d.owner.volumes}


def _send_vm(run: HostRun, want: Want) -> None:
    job, vm, owner = run.job, want.vm, want.owner
    if _needs(job, owner.disk):
        disk = host_disk(run.source, vm, job.path(owner.golden), run.work)
        run.upload(owner.disk, disk, f"{vm.name} disk")
    if _needs(job, owner.seed):
        run.upload(owner.seed, run.source.path(vm.seed.file))


def host_disk(source: Source, vm: VmPlan, golden_path: str, work: Path) -> Path:
    """The file to send as the VM's disk: an overlay copied into ``work`` and
    re-pointed to the golden image's path on the host; a standalone disk as it is."""
    disk = source.path(vm.disk.file)
    if vm.disk.mode is not DiskMode.OVERLAY:
        return disk
    copy = work / f"{vm.name}.{vm.disk.format.value}"
    copy.unlink(missing_ok=True)
    volumes.copy_sparse(disk, copy)
    qemuimg.rebase_unsafe(copy, golden_path, DiskFormat(source.golden_format))
    return copy


def _network(run: HostRun) -> None:
    plan, host = run.source.plan, run.job.host
    net = plan.network
    if net.type is not NetType.NETWORK or not net.create or net.source is None:
        return
    name = net.source
    present = run.job.networks.get(name)
    if present is None:
        xml = names.network_xml(name, derive_uuid(plan.seed, f"network/{name}"))
        with host.calls(f'defining network "{name}"'):
            network = host.conn.networkDefineXML(xml)
        run.undo.add(f'network "{name}"', lambda conn: conn.networkLookupByName(name).undefine())
        with host.calls(f'starting network "{name}"'):
            network.setAutostart(1)
            network.create()
        run.undo.add(
            f'network "{name}" (running)', lambda conn: conn.networkLookupByName(name).destroy()
        )
        run.report.network = f"{name} defined"
    elif not present[1]:
        with host.calls(f'starting network "{name}"'):
            present[2].create()
        run.report.network = f"{name} started"


def _redefine(xml: str) -> Callable[[Any], None]:
    """An undo step: the domain defined from ``xml`` again."""
    return lambda conn: conn.defineXML(xml)


def _define(run: HostRun, want: Want) -> None:
    libvirt = binding()
    decision = want.decision
    host = run.job.host
    for other in decision.foreign:
        with host.calls(f'reading domain "{other.name}"'):
            old = other.handle.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        with host.calls(f'undefining domain "{other.name}" (--replace)'):
            other.handle.undefine()
        run.undo.add(f'domain "{other.name}" (undefined)', _redefine(old))
    old_xml = None
    if decision.previous is not None and decision.previous.handle is not None:
        with host.calls(f'reading domain "{decision.previous.name}"'):
            old_xml = decision.previous.handle.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    with host.calls(f'defining domain "{want.vm.name}"'):
        host.conn.defineXML(want.xml)
    if old_xml is not None:
        run.undo.add(f'domain "{want.vm.name}" (redefined)', _redefine(old_xml))
    else:
        name = want.vm.name
        run.undo.add(f'domain "{name}"', lambda conn: conn.lookupByName(name).undefine())
    run.report.actions[want.vm.name] = str(decision.action)


def _settle(job: HostJob, report: HostReport) -> None:
    """After the domains are defined: autostart as planned, and the volumes that no
    domain of the lab uses any more removed (a changed VM's old disk and seed, and
    what a failed earlier run left)."""
    prefix = names.lab_prefix(job.wants[0].owner.lab) if job.wants else None
    for want in job.wants:
        with job.host.calls(f'setting autostart of "{want.vm.name}"'):
            domain = job.host.conn.lookupByName(want.vm.name)
            if bool(domain.autostart()) != want.vm.autostart:
                domain.setAutostart(int(want.vm.autostart))
    if prefix is None:
        return
    used = {v for want in job.wants for v in want.owner.volumes}
    used |= {v for d in survey.domains(job.host) if d.owner is not None for v in d.owner.volumes}
    for name, volume in sorted(job.volumes.items()):
        if name.startswith(prefix) and name not in used:
            volumes.delete(job.host, volume)
            report.retired.append(name)


def apply_host(job: HostJob, source: Source, progress: Progress) -> HostReport:
    """Bring one host to the new lab; undo this run's work there on failure."""
    report = HostReport(job.name, job.host.uri)
    todo = [w for w in job.wants if w.decision.action is not Action.KEEP]
    for want in job.wants:
        if want.decision.action is Action.KEEP:
            report.actions[want.vm.name] = str(Action.KEEP)
    with tempfile.TemporaryDirectory(prefix="vmbuild-deploy-", dir="/var/tmp") as tmp:
        run = HostRun(job, source, Path(tmp), progress, report)
        try:
            if todo:
                _send_golden(run)
            for want in todo:
                _send_vm(run, want)
            _network(run)
            for want in todo:
                _define(run, want)
            _settle(job, report)
        except (VmbuildError, OSError) as err:
            report.error = err.lines()[0] if isinstance(err, VmbuildError) else str(err)
            report.left = run.undo.run(job.host)
            report.actions = {w.vm.name: "unchanged" for w in job.wants}
    return report


def deploy(
    source: Source,
    hosts: Mapping[str, Host],
    pools: Mapping[str, str],
    *,
    replace: bool = False,
    progress: Progress,
) -> list[HostReport]:
    """Deploy ``source`` onto its hosts (opened by the caller); raises UserError for
    refusals (nothing changed anywhere) and DeployError when a host failed."""
    placement = source.plan.placement()
    check_built(source, source.plan.vms)
    jobs = []
    with step(f"Looking at {len(placement)} host(s)"):
        for name, vms in placement.items():
            jobs.append(plan_host(hosts[name], source, vms, pools[name], replace))
    problems = refusals(jobs, source)
    if problems:
        raise UserError(
            "; ".join(problems),
            place=source.name,
            hint="nothing was changed on any host",
        )
    reports = []
    for job in jobs:
        todo = sum(w.decision.action is not Action.KEEP for w in job.wants)
        if todo:
            info(f"‣ {job.host.place}: {todo} of {len(job.wants)} VM(s) to define")
        reports.append(apply_host(job, source, progress))
    failed = [r for r in reports if r.error]
    if failed:
        done = [f'"{r.host}"' for r in reports if not r.error]
        raise DeployError(
            "; ".join(
                f'host "{r.host}": {r.error} '
                + (
                    f"(left there: {', '.join(r.left)})"
                    if r.left
                    else "(this run's work there undone)"
                )
                for r in failed
            ),
            reports,
            place=source.name,
            hint=(f"host {', '.join(done)} has its part of the lab; " if done else "")
            + "run the deploy again to finish",
        )
    return reports
