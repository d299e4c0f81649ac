"""Export a built bundle to another hypervisor: the target's writer fills a staging
folder, its files get a SHA256SUMS and an ``export.json``, and the folder is put in
place in one rename, so that a failed or interrupted export leaves the previous one
(or nothing) where it was.

``export.json`` records what the export was made from: the target, the root the
files name, and the sha256 of the bundle's SHA256SUMS (which covers every disk, seed
and the plan). A build that finds a previous export with the same record keeps it
(hard links) instead of converting every disk again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmbuild.errors import UserError
from vmbuild.host.files import file_digest, write_atomic
from vmbuild.host.space import write_error
from vmbuild.log import info, step
from vmbuild.model.plan import Plan
from vmbuild.model.profile import Target
from vmbuild.output.bundle import SUMS, check_target, publish, sums_text
from vmbuild.targets import hyperv, vmware, xen
from vmbuild.targets.job import ExportJob

#: Bump when what the writers make changes: a build then exports its target anew.
EXPORT_FORMAT = 1
RECORD = "export.json"

Writer = Callable[[ExportJob], None]
WRITERS: Mapping[Target, Writer] = {
    Target.XEN_HVM: xen.export,
    Target.XEN_PV: xen.export,
    Target.XEN_PVH: xen.export,
    Target.HYPERV: hyperv.export,
    Target.VMWARE: vmware.export,
}


def exportable() -> list[str]:
    """The targets ``vmbuild export`` writes, in the order users see them."""
    return [target.value for target in Target if target in WRITERS]


def check_exportable(target: Target, place: str = "") -> None:
    if target not in WRITERS:
        raise UserError(
            f'a bundle is the "{target}" lab already: there is nothing to export',
            place=place,
            hint=f"export to one of {', '.join(exportable())}; define the bundle itself "
            "with its define.sh or vmbuild deploy",
        )


def inputs(bundle: Path, target: Target, root: str | None) -> dict[str, Any]:
    """What an export of ``bundle`` to ``target`` is made from."""
    sums = (bundle / SUMS).read_bytes()
    return {
        "format": EXPORT_FORMAT,
        "target": target.value,
        "root": root,
        "bundle_sums_sha256": hashlib.sha256(sums).hexdigest(),
    }


def previous_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def fill(
    plan: Plan,
    bundle: Path,
    target: Target,
    folder: Path,
    *,
    root: str | None = None,
    progress: Callable[[str], None] = info,
) -> dict[str, Any]:
    """Write the export into the empty ``folder``: the writer's files, then their
    SHA256SUMS and the record. Returns the record."""
    check_exportable(target, place=str(bundle))
    job = ExportJob(plan, bundle, folder, target, progress, root=root)
    WRITERS[target](job)
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    digests = {name: file_digest(folder / name) for name in files}
    write_atomic(folder / SUMS, sums_text(folder, digests).encode())
    record = {
        **inputs(bundle, target, root),
        "lab": plan.lab,
        "files": {name: digests[name] for name in files},
    }
    write_atomic(folder / RECORD, (json.dumps(record, indent=2) + "\n").encode())
    return record


def keep(previous: Path, folder: Path) -> None:
    """Hard-link a previous export's files into ``folder``."""
    for path in sorted(previous.rglob("*")):
        dest = folder / path.relative_to(previous)
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(exist_ok=True)
        elif path.is_file() and not path.is_symlink():
            os.link(path, dest)


def export_bundle(
    plan: Plan,
    bundle: Path,
    target: Target,
    out: Path,
    *,
    root: str | None = None,
    progress: Callable[[str], None] = info,
) -> Path:
    """Export ``bundle`` to ``target`` at ``out``, replacing an earlier export there
    (never anything else). Nothing is left at ``out`` but a whole export."""
    check_exportable(target, place=str(bundle))
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:12]}")
    check_target(out, RECORD, "export")
    try:
        stage.mkdir(mode=0o755)
        with step(f"Exporting lab {plan.lab} to {target} in {out}"):
            fill(plan, bundle, target, stage, root=root, progress=progress)
            publish(stage, out, marker=RECORD, what="export")
    except OSError as err:
        then = "; the previous export is as it was" if (out / RECORD).exists() else ""
        raise write_error(
            err,
            err.filename or stage,
            out.parent,
            then,
            hint="free some space (or choose another --output) and export again",
        ) from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out
