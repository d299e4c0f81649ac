"""What every target writer is given: the built bundle, its plan and a folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmbuild.model.plan import Plan, VmPlan
from vmbuild.model.profile import Target


def _quiet(message: str) -> None:
    del message


@dataclass(frozen=True)
class ExportJob:
    """One export of a bundle to one target.

    ``out`` exists and is empty; the writer puts every file of the target there and
    nothing anywhere else. The caller publishes ``out`` as a whole once the writer
    returns, and removes it if the writer raises.
    """

    plan: Plan
    #: The built bundle: plan.json, vms/<vm>/disk.*, vms/<vm>/seed.iso, ...
    bundle: Path
    out: Path
    target: Target
    progress: Callable[[str], None] = _quiet
    #: The absolute folder the bundle will be in on the target host; None: the
    #: bundle's own absolute path.
    root: str | None = None

    def disk(self, vm: VmPlan) -> Path:
        """The VM's built disk: an overlay on the golden image, or a standalone copy."""
        return self.bundle / vm.disk.file

    def seed(self, vm: VmPlan) -> Path:
        """The VM's NoCloud seed ISO (label cidata)."""
        return self.bundle / vm.seed.file
