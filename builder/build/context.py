"""What the stages of a build share: the bundle being replaced, and one frozen
context fixed before the first disk is touched."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmbuild.build.base import BaseImage
from vmbuild.build.decide import Decision
from vmbuild.model.facts import GuestFacts
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.output.bundle import MANIFEST, MANIFEST_FORMAT
from vmbuild.output.seed import SeedImages

if TYPE_CHECKING:
    from vmbuild.build.customize import Planned
    from vmbuild.plugins.manager import Plugins


@dataclass(frozen=True)
class Previous:
    """What the bundle being replaced says about itself."""

    manifest: dict[str, Any]
    guest: GuestFacts | None

    def vm(self, name: str) -> dict[str, Any] | None:
        vms: dict[str, Any] = self.manifest.get("vms", {})
        return vms.get(name)

    def base_known(self) -> tuple[str, str] | None:
        """(stat key, sha256) of the golden image the previous build checked."""
        base = self.manifest.get("base", {})
        if "stat_key" in base and "sha256" in base:
            return str(base["stat_key"]), str(base["sha256"])
        return None

    def seeds_known(self) -> dict[str, tuple[str, str]]:
        """Each VM's seed ISO as recorded: (its seed_inputs, its sha256)."""
        known = {}
        for name, vm in self.manifest.get("vms", {}).items():
            with contextlib.suppress(AttributeError, KeyError, TypeError):
                inputs, sha256 = vm["seed_inputs"], vm["artifacts"]["seed"]["sha256"]
                if isinstance(inputs, str) and isinstance(sha256, str):
                    known[name] = (inputs, sha256)
        return known


def read_previous(final: Path) -> Previous | None:
    """The bundle at ``final`` as its manifest and plan.json describe it, or None
    when there is none this version of vmbuild can read."""
    try:
        manifest = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    guest = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        guest = Plan.guest_from_json((final / "plan.json").read_text())
    return Previous(manifest, guest)


@dataclass(frozen=True)
class BuildContext:
    """Everything a stage needs to know, decided before any disk is written."""

    plan: Plan
    plugins: Plugins
    #: The bundle this build replaces or creates, in the output folder.
    final: Path
    previous: Previous | None
    base: BaseImage
    decision: Decision
    #: Each VM's ``disk_inputs``, and the lab's ``hosts_inputs``.
    inputs: Mapping[str, str]
    hosts: str
    #: Each VM's seed ISO (made when first read) and domain XML, as bytes.
    seeds: SeedImages
    xmls: Mapping[str, bytes]
    #: The disks of the current bundle that this build replaces, removes or copies,
    #: with what it does to each (see ``libvirt.inuse.refuse_running``).
    touched: tuple[dict[str, str], dict[str, tuple[Path, str]]]
    #: The plan with its disk operations, when no disk needs the appliance and the
    #: previous build recorded the golden image's facts; otherwise the identity
    #: stage plans them right after it inspects the golden image.
    recorded: Planned | None
    #: How many appliances edit the disks at once; None: from the host's cores and
    #: memory (``customize.appliance_count``).
    appliances: int | None = None

    @property
    def output(self) -> Path:
        """The output folder the bundle, its lock and its staging folder are in."""
        return self.final.parent

    def vms(self, names: tuple[str, ...]) -> list[VmPlan]:
        """The plan's VMs of ``names``, in the plan's order."""
        chosen = set(names)
        return [vm for vm in self.plan.vms if vm.name in chosen]
