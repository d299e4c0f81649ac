"""What a golden image is, as data: its distribution, version, network stack, init
system and filesystems. Found by inspection (``vmbuild.guest.inspect``, the guest side),
kept in the plan and the bundle, read by plugins; this module itself does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class NetStack(enum.StrEnum):
    IFUPDOWN = "ifupdown"
    NETPLAN = "netplan"
    NETWORKMANAGER = "networkmanager"
    NETWORKD = "networkd"
    IFCFG = "ifcfg"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class GuestFacts:
    os_type: str
    distro: str
    product_name: str
    major: int
    minor: int
    hostname: str
    network: NetStack
    init: str
    cloud_init: bool
    #: Filesystems as (mountpoint, device in the golden image), "/" first.
    mounts: tuple[tuple[str, str], ...]
    #: Their types, as (device, type): mounting with a known type spares the
    #: appliance a probe of each clone's filesystems.
    filesystems: tuple[tuple[str, str], ...] = ()

    def to_data(self) -> dict[str, Any]:
        data = asdict(self)
        data["network"] = self.network.value
        data["mounts"] = [list(mount) for mount in self.mounts]
        data["filesystems"] = [list(item) for item in self.filesystems]
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> GuestFacts:
        return cls(
            **{
                **data,
                "network": NetStack(data["network"]),
                "mounts": tuple((m, d) for m, d in data["mounts"]),
                "filesystems": tuple((d, t) for d, t in data.get("filesystems", ())),
            }
        )

    @property
    def family(self) -> str:
        return f"{self.distro} {self.major}.{self.minor} ({self.network.value})"
