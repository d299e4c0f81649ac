"""Derive each VM's identity and artifact paths from a Profile. Pure: no I/O.

The plan is the single source of truth for the build: disk edits, seed ISO and
domain XML all read hostname, IP and MAC from here, so they cannot disagree.
The same profile gives the same plan, byte for byte, on any machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The codec reads the fields' types at run time: the model's types are imported here,
# not under TYPE_CHECKING.
from vmbuild.errors import Problem, ProfileError
from vmbuild.model.codec import from_data
from vmbuild.model.codec import to_data as to_data  # re-exported: the build imports it here
from vmbuild.model.facts import GuestFacts
from vmbuild.model.profile import (
    DEFAULT_POOL,
    HOST_KEY_TYPES,
    Account,
    Base,
    Bus,
    DiskFormat,
    DiskMode,
    DomainType,
    Machine,
    NetType,
    Profile,
    SeedBus,
    Target,
    VmSpec,
    find_duplicates,
)
from vmbuild.model.profile import LOCAL_HOST as LOCAL_HOST  # re-exported: deploy imports it here

if TYPE_CHECKING:
    from vmbuild.plugins.manager import Plugins

PLAN_FORMAT = 1
#: Namespace for derived domain UUIDs: uuid5(URL namespace, "https://vmbuild.dev/uuid").
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vmbuild.dev/uuid")
#: KVM's locally administered prefix, the one libvirt uses for its own MACs.
MAC_PREFIX = "52:54:00"
#: VMware's prefix for static MACs, whose fourth octet must be 00-3f: VMware's own
#: generated MACs use the rest of 00:50:56.
VMWARE_MAC_PREFIX = "00:50:56"
VMWARE_MAC_FOURTH_MAX = 0x3F


@dataclass(frozen=True)
class DiskPlan:
    #: Path inside the bundle, e.g. "vms/slave1/disk.qcow2".
    file: str
    mode: DiskMode
    format: DiskFormat
    #: Virtual size in bytes; None keeps the golden image's size.
    size: int | None
    bus: Bus
    #: Guest device name, e.g. "vda".
    target: str


@dataclass(frozen=True)
class SeedPlan:
    file: str
    bus: Bus
    #: "cdrom", or "disk" when attached as a read-only virtio disk.
    device: str
    target: str


@dataclass(frozen=True)
class VncPlan:
    port: int
    listen: str
    keymap: str | None


@dataclass(frozen=True)
class VmPlan:
    name: str
    #: Position in the lab, from 1.
    index: int
    hostname: str
    fqdn: str
    mac: str
    uuid: str
    instance_id: str
    #: /etc/machine-id of this clone: derived, so rebuilds agree and clones differ.
    machine_id: str
    ip: str
    prefix: int
    vcpus: int
    memory: int
    machine: Machine
    nic_model: str
    autostart: bool
    vnc: VncPlan
    disk: DiskPlan
    seed: SeedPlan
    xml: str
    root: Account | None
    user: Account | None
    #: The disk operations planned for this VM (filled by inspection, else empty).
    operations: tuple[dict[str, Any], ...] = ()
    #: Plugins' own data about this VM (``vmbuild_plan_vm``), JSON-able.
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The libvirt host the VM is deployed on: a name from the profile's [hosts], or
    #: LOCAL_HOST (this machine) when the profile places it nowhere else.
    host: str = LOCAL_HOST

    @property
    def folder(self) -> str:
        return f"vms/{self.name}"

    @property
    def place(self) -> str:
        return f'vm "{self.name}"'


@dataclass(frozen=True)
class NetworkPlan:
    type: NetType
    source: str | None
    subnet: str
    gateway: str | None
    dns: tuple[str, ...]
    search: tuple[str, ...]
    #: The bundle carries network.xml, and define.sh creates the network if missing.
    create: bool = False


@dataclass(frozen=True)
class HostPlan:
    """A libvirt host of the lab, as the profile names it."""

    name: str
    #: Its libvirt URI; None for a ``local`` the profile does not declare (deploy then
    #: uses --connect, $LIBVIRT_DEFAULT_URI or qemu:///system).
    uri: str | None
    #: The storage pool the lab's volumes go into.
    pool: str = DEFAULT_POOL


@dataclass(frozen=True)
class Plan:
    format: int
    lab: str
    seed: str
    domain: str | None
    domain_type: DomainType
    profile_digest: str
    base: Base
    network: NetworkPlan
    plugins: tuple[str, ...]
    vms: tuple[VmPlan, ...]
    #: What inspection found in the golden image, once it was inspected.
    guest: GuestFacts | None = None
    #: The hosts the profile declares, in its order.
    hosts: tuple[HostPlan, ...] = ()
    #: What the bundle is made for; targets other than libvirt's are exported into
    #: ``<bundle>/<target>/`` from the libvirt bundle.
    target: Target = Target.LIBVIRT_KVM
    #: The SSH host key types every VM gets (lab.host_key_types).
    host_key_types: tuple[str, ...] = HOST_KEY_TYPES

    def host(self, name: str) -> HostPlan:
        """A declared host, or the undeclared ``local``; KeyError for anything else."""
        for host in self.hosts:
            if host.name == name:
                return host
        if name == LOCAL_HOST:
            return HostPlan(LOCAL_HOST, None, DEFAULT_POOL)
        raise KeyError(name)

    def placement(self) -> dict[str, tuple[VmPlan, ...]]:
        """Each host that runs VMs of the lab -> its VMs, in profile order (hosts in the
        order of their first VM)."""
        out: dict[str, list[VmPlan]] = {}
        for vm in self.vms:
            out.setdefault(vm.host, []).append(vm)
        return {name: tuple(vms) for name, vms in out.items()}

    def vm(self, name: str) -> VmPlan:
        """The VM named ``name``; KeyError if the lab has none."""
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(to_data(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_data(json.loads(text))

    @staticmethod
    def guest_from_json(text: str) -> GuestFacts | None:
        """The golden image's facts a plan.json records, decoding nothing else of it:
        a no-op rebuild of a big lab needs only these."""
        data = json.loads(text)
        found = data.get("format") if isinstance(data, dict) else None
        if found != PLAN_FORMAT:
            raise ValueError(f"unsupported plan format {found!r}")
        guest = data.get("guest")
        return None if guest is None else from_data(GuestFacts, guest, "Plan.guest")

    @classmethod
    def from_data(cls, data: Any) -> Plan:
        """A plan as to_data wrote it; ValueError (a DecodeError naming the field,
        for data that does not fit) for anything else."""
        found = data.get("format") if isinstance(data, dict) else None
        if found != PLAN_FORMAT:
            raise ValueError(f"unsupported plan format {found!r}")
        return from_data(cls, data)


def placement_warnings(plan: Plan) -> list[str]:
    """What a lab spread over several hosts cannot do: only a bridge reaches from one
    host to another, while a libvirt network (and user-mode networking) is each host's
    own. Empty when every VM is on one host, or the network is a bridge."""
    hosts = list(plan.placement())
    net = plan.network
    if len(hosts) < 2 or net.type is NetType.BRIDGE:
        return []
    if net.type is NetType.USER:
        detail = "user-mode networking gives each VM a network of its own"
    elif net.create:
        detail = (
            f'network.create makes the isolated network "{net.source}" once per host, '
            "and the copies are not connected"
        )
    else:
        detail = (
            f'libvirt network "{net.source}" is each host\'s own '
            "(an isolated network.create network exists once per host)"
        )
    return [
        f"the lab's VMs are on {len(hosts)} hosts ({', '.join(hosts)}): VMs on different "
        'hosts can only reach each other over a bridged LAN (network.type = "bridge"); '
        f"{detail}"
    ]


# ------------------------------------------------------------------ derivation


def _hash(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def derive_mac(seed: str, name: str, attempt: int = 0, target: Target = Target.LIBVIRT_KVM) -> str:
    """A MAC from the lab's seed and the VM's name: in libvirt's 52:54:00 range, or in
    VMware's static range 00:50:56:00-3f for the vmware target."""
    digest = _hash("mac", seed, name, str(attempt))
    if target is Target.VMWARE:
        tail = bytes([digest[0] & VMWARE_MAC_FOURTH_MAX, digest[1], digest[2]])
        return VMWARE_MAC_PREFIX + "".join(f":{byte:02x}" for byte in tail)
    return MAC_PREFIX + "".join(f":{byte:02x}" for byte in digest[:3])


def vmware_static_mac(mac: str) -> bool:
    """Whether VMware accepts ``mac`` as a static address: 00:50:56:00-3f:xx:xx."""
    prefix, fourth = mac.lower()[:8], int(mac[9:11], 16)
    return prefix == VMWARE_MAC_PREFIX and fourth <= VMWARE_MAC_FOURTH_MAX


def derive_uuid(seed: str, name: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, f"{seed}/{name}"))


def derive_instance_id(seed: str, spec: VmSpec, mac: str, fqdn: str, network: NetworkPlan) -> str:
    """Changes whenever anything cloud-init applies once per instance changes."""
    inputs = {
        "seed": seed,
        "name": spec.name,
        "fqdn": fqdn,
        "mac": mac,
        "ip": str(spec.ip),
        # Where the network comes from is not something the guest sees.
        "network": {k: v for k, v in to_data(network).items() if k != "create"},
        "root": to_data(spec.root),
        "user": to_data(spec.user),
    }
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return f"{spec.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def derive_machine_id(seed: str, name: str, instance_id: str) -> str:
    return hashlib.sha256("\0".join(("machine-id", seed, name, instance_id)).encode()).hexdigest()[
        :32
    ]


_DEV_PREFIX = {Bus.VIRTIO: "vd", Bus.IDE: "hd", Bus.SATA: "sd", Bus.SCSI: "sd"}


def _devices(spec: VmSpec, problems: list[Problem]) -> tuple[DiskPlan, SeedPlan]:
    if spec.seed_bus is SeedBus.AUTO:
        seed_bus = Bus.IDE if spec.machine is Machine.PC else Bus.SCSI
    else:
        seed_bus = Bus(spec.seed_bus.value)
    if spec.machine is Machine.Q35:
        for what, bus in (("disk_bus", spec.disk_bus), ("seed_bus", seed_bus)):
            if bus is Bus.IDE:
                problems.append(
                    Problem(
                        spec.place,
                        f"{what} ide does not exist on machine q35",
                        "use virtio, scsi or sata, or machine pc",
                    )
                )
    used: dict[str, int] = {}

    def target(bus: Bus) -> str:
        prefix = _DEV_PREFIX[bus]
        number = used.get(prefix, 0)
        used[prefix] = number + 1
        return prefix + "abcdefghijklmnopqrstuvwxyz"[number]

    fmt = DiskFormat.QCOW2 if spec.disk_mode is DiskMode.OVERLAY else spec.disk_format
    disk = DiskPlan(
        file=f"vms/{spec.name}/disk.{fmt.value}",
        mode=spec.disk_mode,
        format=fmt,
        size=spec.disk_size,
        bus=spec.disk_bus,
        target=target(spec.disk_bus),
    )
    seed = SeedPlan(
        file=f"vms/{spec.name}/seed.iso",
        bus=seed_bus,
        device="disk" if seed_bus is Bus.VIRTIO else "cdrom",
        target=target(seed_bus),
    )
    return disk, seed


def make_plan(profile: Profile, plugins: Plugins | None = None) -> Plan:
    """Derive MAC, UUID, instance-id, VNC port and paths for every VM; then let the
    plugins annotate each VM (``vmbuild_plan_vm``)."""
    problems: list[Problem] = []
    net = profile.network
    # The profile's network with its addresses as text: the same fields, read back.
    network = from_data(NetworkPlan, to_data(net), "network")
    taken_macs = {spec.mac for spec in profile.vms if spec.mac}
    vms = []
    for index, spec in enumerate(profile.vms, start=1):
        mac = spec.mac
        if mac is not None and profile.target is Target.VMWARE and not vmware_static_mac(mac):
            problems.append(
                Problem(
                    spec.place,
                    f"mac {mac} is outside VMware's static range 00:50:56:00:00:00-"
                    "00:50:56:3f:ff:ff, which the vmware target needs",
                    "leave mac out to derive one in that range, or give one inside it",
                )
            )
        if mac is None:
            attempt = 0
            mac = derive_mac(profile.seed, spec.name, target=profile.target)
            while mac in taken_macs:
                attempt += 1
                mac = derive_mac(profile.seed, spec.name, attempt, profile.target)
            taken_macs.add(mac)
        fqdn = f"{spec.hostname}.{profile.domain}" if profile.domain else spec.hostname
        port = spec.vnc_port if spec.vnc_port is not None else profile.vnc_base + index
        if port > 65535:
            problems.append(Problem(spec.place, f"derived vnc_port {port} is above 65535"))
        disk, seed = _devices(spec, problems)
        instance_id = derive_instance_id(profile.seed, spec, mac, fqdn, network)
        vms.append(
            VmPlan(
                name=spec.name,
                index=index,
                hostname=spec.hostname,
                fqdn=fqdn,
                mac=mac,
                uuid=str(spec.uuid) if spec.uuid else derive_uuid(profile.seed, spec.name),
                instance_id=instance_id,
                machine_id=derive_machine_id(profile.seed, spec.name, instance_id),
                ip=str(spec.ip),
                prefix=net.subnet.prefixlen,
                vcpus=spec.vcpus,
                memory=spec.memory,
                machine=spec.machine,
                nic_model=spec.nic_model,
                autostart=spec.autostart,
                vnc=VncPlan(port, spec.vnc_listen, spec.vnc_keymap),
                disk=disk,
                seed=seed,
                xml=f"vms/{spec.name}/domain.xml",
                root=spec.root,
                user=spec.user,
                host=spec.host,
            )
        )

    def add(place: str, message: str, hint: str) -> None:
        problems.append(Problem(place, message, hint))

    # Given values were checked against each other while loading; these catch
    # derived values that collide with given ones.
    find_duplicates(add, vms, "vnc_port", lambda vm: vm.vnc.port)
    find_duplicates(add, vms, "uuid", lambda vm: vm.uuid)
    if problems:
        raise ProfileError(str(profile.path), problems)
    plan = Plan(
        format=PLAN_FORMAT,
        lab=profile.name,
        seed=profile.seed,
        domain=profile.domain,
        domain_type=profile.domain_type,
        profile_digest=profile.digest,
        base=profile.base,
        network=network,
        plugins=profile.plugins,
        vms=tuple(vms),
        hosts=tuple(HostPlan(host.name, host.uri, host.pool) for host in profile.hosts),
        target=profile.target,
        host_key_types=profile.host_key_types,
    )
    if plugins is None:
        return plan
    return dataclasses.replace(
        plan,
        vms=tuple(dataclasses.replace(vm, extra=plugins.plan_vm(plan, vm)) for vm in plan.vms),
    )
