"""What a golden image is, as data: its distribution, version, network stack, init
system and filesystems. Found by inspection (``vmbuild.guest.inspect``, the guest side),
kept in the plan and the bundle, read by plugins; this module itself does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from vmbuild.model import codec


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
        data: dict[str, Any] = codec.to_data(self)
        return data

    @classmethod
    def from_data(cls, data: Any) -> GuestFacts:
        return codec.from_data(cls, data)

    @property
    def family(self) -> str:
        return f"{self.distro} {self.major}.{self.minor} ({self.network.value})"
