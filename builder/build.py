"""The build, top to bottom: check the base, make the disks, write the seeds and
the domain XML, then the manifest, and publish the bundle in one rename.

Only this stage does I/O. Everything it writes goes into a staging folder beside
the bundle; a failure or an interrupt anywhere leaves the previous bundle as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import __version__, qemuimg
from .base import BaseImage, inspect_base
from .bundle import (
    MANIFEST,
    SUMS,
    check_target,
    file_digest,
    lab_lock,
    publish,
    remove_stale,
    staging,
    sums_text,
    tree_files,
)
from .domain import domain_xml
from .errors import BuildError, UserError
from .inventory import hosts_file
from .log import detail, step
from .plan import Plan, VmPlan, make_plan
from .plugins import make_plugin_manager
from .profile import DiskMode, Profile, format_size
from .render import render
from .seed import seed_files, source_date_epoch, write_file_atomic, write_seed

#: Room an overlay needs before first boot, and a margin for the rest.
OVERLAY_ESTIMATE = 16 << 20
MARGIN = 64 << 20


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    plan: Plan
    manifest: dict[str, Any]


def _prepare_output(output: Path) -> Path:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output folder {output}: {err.strerror}") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise UserError(f"the output folder {output} is not writable")
    return output.resolve()


def _check_space(output: Path, plan: Plan, base: BaseImage) -> None:
    need = MARGIN + sum(
        OVERLAY_ESTIMATE if vm.disk.mode is DiskMode.OVERLAY else base.actual_size
        for vm in plan.vms
    )
    free = shutil.disk_usage(output).free
    if free < need:
        raise BuildError(
            f"not enough free space in {output}: the lab needs about {format_size(need)}, "
            f"{format_size(free)} is free",
            hint="free some space or choose another --output",
        )


def _make_disk(stage: Path, final: Path, vm: VmPlan, base: BaseImage) -> None:
    dest = stage / vm.disk.file
    detail(f"{vm.name}: {vm.disk.mode.value} {vm.disk.format.value} {dest.name}")
    if vm.disk.mode is DiskMode.OVERLAY:
        # Relative to where the disk will live once published; the staging
        # folder sits beside the bundle, so the path is the same from there.
        backing = os.path.relpath(base.path, final / vm.folder)
        qemuimg.create_overlay(dest, backing, base.format, vm.disk.size)
    else:
        qemuimg.create_copy(dest, base.path, base.format, vm.disk.format, vm.disk.size)
    os.chmod(dest, 0o644)


def _check_lab_macs(lab: Plan, xml_by_vm: dict[str, bytes]) -> None:
    import xml.etree.ElementTree as ET

    seen: dict[str, str] = {}
    for name, data in xml_by_vm.items():
        for mac in ET.fromstring(data).iter("mac"):
            address = mac.get("address", "").lower()
            if address in seen and seen[address] != name:
                other = seen[address]
                raise BuildError(f'vm "{name}": MAC {address} is also used by vm "{other}"')
            seen[address] = name


def _manifest(plan: Plan, base: BaseImage, final: Path, digests: dict[str, str]) -> dict[str, Any]:
    vms = {}
    for vm in plan.vms:
        vms[vm.name] = {
            "hostname": vm.hostname,
            "fqdn": vm.fqdn,
            "ip": f"{vm.ip}/{vm.prefix}",
            "mac": vm.mac,
            "uuid": vm.uuid,
            "instance_id": vm.instance_id,
            "vnc_port": vm.vnc.port,
            "artifacts": {
                kind: {"file": file, "sha256": digests[file]}
                for kind, file in (
                    ("disk", vm.disk.file),
                    ("seed", vm.seed.file),
                    ("domain", vm.xml),
                )
            },
        }
    return {
        "format": 1,
        "generator": f"vmbuild {__version__}",
        "lab": plan.lab,
        "root": str(final),
        "profile_digest": plan.profile_digest,
        "base": {
            "path": str(base.path),
            "format": base.format.value,
            "virtual_size": base.virtual_size,
            "sha256": base.sha256,
        },
        "vms": vms,
    }


def build(profile: Profile, output: Path, hooks: pluggy.HookRelay | None = None) -> BuildResult:
    """Build the lab's bundle at ``output/<lab>``; see the module docstring."""
    plan = make_plan(profile)
    relay = hooks if hooks is not None else make_plugin_manager().hook
    output = _prepare_output(output)
    final = output / plan.lab
    check_target(final)
    with lab_lock(output, plan.lab):
        remove_stale(output, plan.lab)
        with step(f"Checking the golden image {profile.base.image}"):
            base = inspect_base(profile, plan)
            detail(f"{base.format.value}, {format_size(base.virtual_size)}, sha256 {base.sha256}")
        _check_space(output, plan, base)
        epoch = source_date_epoch()
        with staging(output, plan.lab) as stage:
            for vm in plan.vms:
                (stage / vm.folder).mkdir(parents=True)
            with step(f"Creating {len(plan.vms)} disks"):
                for vm in plan.vms:
                    _make_disk(stage, final, vm, base)
            with step(f"Writing {len(plan.vms)} seed ISOs"):
                for vm in plan.vms:
                    write_seed(stage / vm.seed.file, seed_files(plan, vm, relay), epoch)
            with step(f"Writing {len(plan.vms)} domain XML files"):
                xml_by_vm = {vm.name: domain_xml(plan, vm, str(final), relay) for vm in plan.vms}
                _check_lab_macs(plan, xml_by_vm)
                for vm in plan.vms:
                    write_file_atomic(stage / vm.xml, xml_by_vm[vm.name])
            with step("Writing the manifest"):
                (stage / "inventory").mkdir()
                write_file_atomic(stage / "inventory" / "hosts", hosts_file(plan).encode())
                write_file_atomic(stage / "plan.json", plan.to_json().encode())
                define = render("define.sh.j2", lab=plan, root=str(final))
                write_file_atomic(stage / "define.sh", define.encode(), mode=0o755)
                digests = {name: file_digest(stage / name) for name in tree_files(stage)}
                manifest = _manifest(plan, base, final, digests)
                text = json.dumps(manifest, indent=2) + "\n"
                write_file_atomic(stage / MANIFEST, text.encode())
                digests[MANIFEST] = file_digest(stage / MANIFEST)
                write_file_atomic(stage / SUMS, sums_text(stage, digests).encode())
            with step(f"Publishing {final}"):
                publish(stage, final)
    return BuildResult(final, plan, manifest)
