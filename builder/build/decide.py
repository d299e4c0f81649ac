"""What a rebuild does with each VM's disk: keep it, refresh it or make it anew.

A disk is what its inputs made it: the golden image, the VM's identity, the network,
the seed settings, the plugins and vmbuild's own version (``disk_inputs``). The lab's
hosts table is written into every disk too, but it changes whenever a VM is added,
so it is tracked on its own (``hosts_inputs``): a disk whose inputs are unchanged
but whose hosts table is not gets a copy with the new table written into it, rather
than being made again.

Everything here is pure: plans and digests in, digests and a ``Decision`` out.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild import __version__
from vmbuild.build.base import BaseImage
from vmbuild.model.hosts import hosts_file
from vmbuild.model.plan import Plan, VmPlan, to_data
from vmbuild.model.profile import json_digest

#: Plan fields that do not go into a disk: they change the domain XML or the seed.
_NOT_ON_THE_DISK = (
    "vnc",
    "xml",
    "seed",
    "autostart",
    "vcpus",
    "memory",
    "nic_model",
    "index",
    "operations",
)


@dataclass(frozen=True)
class Decision:
    """Each VM of the lab in exactly one of three lists, in the plan's order."""

    #: Disks kept as they are (hard-linked into the new bundle).
    keep: tuple[str, ...]
    #: Disks kept, but copied and given the lab's new hosts table.
    refresh: tuple[str, ...]
    #: Disks made anew from the golden image.
    make: tuple[str, ...]

    @property
    def edit(self) -> tuple[str, ...]:
        """The disks the appliance writes into: the new ones, then the refreshed."""
        return self.make + self.refresh


def decide(
    names: Sequence[str],
    inputs: Mapping[str, str],
    hosts: str,
    previous: Mapping[str, Mapping[str, Any]] | None,
    on_disk: Set[str],
) -> Decision:
    """Keep, refresh or make each VM's disk.

    ``inputs`` is each VM's ``disk_inputs`` and ``hosts`` the lab's ``hosts_inputs``;
    ``previous`` is what the previous manifest recorded per VM (None when there is no
    usable previous bundle, or every disk is to be made again), and ``on_disk`` the
    VMs whose disk file is still there. A disk is kept only when all of those agree.
    """
    keep: list[str] = []
    refresh: list[str] = []
    make: list[str] = []
    for name in names:
        old = previous.get(name) if previous is not None else None
        if old is None or old.get("disk_inputs") != inputs[name] or name not in on_disk:
            make.append(name)
        elif old.get("hosts") != hosts:
            refresh.append(name)
        else:
            keep.append(name)
    return Decision(tuple(keep), tuple(refresh), tuple(make))


def disk_inputs(lab: Plan, vm: VmPlan, base: BaseImage, plugins: list[Any]) -> str:
    """The digest of what a VM's disk is made from, except the lab's hosts table and
    where the golden image lies (see ``same_backing``). The golden image counts by
    its content."""
    data = to_data(vm)
    for key in _NOT_ON_THE_DISK:
        data.pop(key, None)
    return json_digest(
        {
            "generator": __version__,
            "plugins": plugins,
            "base": [base.sha256, base.format.value],
            "network": to_data(lab.network),
            "seed": lab.seed,
            "vm": data,
        }
    )


def same_backing(previous: Mapping[str, Any], base: Path, final: Path) -> bool:
    """Whether the previous bundle's overlays still find the golden image ``base``
    from ``final``: they name it by a path relative to their folder, so the bundle
    and the golden image must lie as they did (an unpacked or rebuilt bundle records
    where it is, ``root``, and where its golden image is, ``base.path``)."""
    root, image = previous.get("root"), previous.get("base", {}).get("path")
    if not isinstance(root, str) or not isinstance(image, str):
        return False
    return os.path.relpath(image, root) == os.path.relpath(base, final)


def hosts_inputs(lab: Plan) -> str:
    """The digest of the lab's hosts table, as every disk carries it."""
    return hashlib.sha256(hosts_file(lab).encode()).hexdigest()
