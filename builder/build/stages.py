"""The stages of a build, in the order ``pipeline.build`` runs them.

Each stage is a function of the frozen ``BuildContext`` (and the staging folder,
once there is one) that returns early when it has nothing to do. Nothing before
``publish_bundle`` touches the bundle being replaced: everything is written into the
staging folder beside it, so a failure or an interrupt anywhere leaves the previous
bundle as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vmbuild.build.base import BaseImage, golden_recipe, inspect_base
from vmbuild.build.context import BuildContext, Previous
from vmbuild.build.customize import Edit, Planned, customize, inspect_only, plan_operations
from vmbuild.build.decide import decide, disk_inputs, hosts_inputs, same_backing
from vmbuild.build.manifest import lab_files
from vmbuild.errors import BuildError, UserError
from vmbuild.golden.builder import build_golden
from vmbuild.guest.diskops import listed
from vmbuild.host import qemuimg
from vmbuild.host.files import file_digest, fsync_path, stat_key, write_atomic
from vmbuild.host.hostkeys import HostKeyMaker
from vmbuild.libvirt.inuse import refuse_running
from vmbuild.log import detail, info, step
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.model.profile import DiskFormat, DiskMode, control_character, format_size
from vmbuild.output.bundle import MANIFEST, bundle_disks, publish
from vmbuild.output.domain import domain_xml
from vmbuild.output.seed import SeedImages, seed_files, source_date_epoch
from vmbuild.plugins.manager import Plugins
from vmbuild.targets import export

#: Room an overlay needs before first boot, and a margin for the rest.
OVERLAY_ESTIMATE = 16 << 20
MARGIN = 64 << 20
#: Files and folders a VM's part of the bundle takes (folder, disk, seed, XML and
#: their temporary names), and the lab's own (lab files, inventory, staging).
INODES_PER_VM = 6
INODES_PER_LAB = 32

#: The public host keys of the disks made by this build, per VM and key type.
NewKeys = Mapping[str, Mapping[str, str]]


def prepare_output(output: Path) -> Path:
    """The output folder, made if need be, as an absolute path."""
    bad = control_character(str(output.absolute()))
    if bad:
        raise UserError(
            f"the output folder {str(output)!r} contains a control character ({bad})",
            hint="its path goes into domain XML, define.sh and the manifest; choose another",
        )
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the output folder {output}: {err.strerror}") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise UserError(f"the output folder {output} is not writable")
    return output.resolve()


def make_golden_image(plan: Plan) -> None:
    """Build the golden image from Debian's packages, when the profile asks for one
    (``base.debian``) and it is not cached yet."""
    recipe = golden_recipe(plan.base)
    if recipe is None:
        return
    with step(f"Golden image: {plan.base.describe()}"):
        build_golden(recipe, progress=info)


def check_golden_image(plan: Plan, source: Path, previous: Previous | None) -> BaseImage:
    with step(f"Checking the golden image {plan.base.describe()}"):
        base = inspect_base(plan, source, previous.base_known() if previous else None)
        detail(f"{base.format.value}, {format_size(base.virtual_size)}, sha256 {base.sha256}")
    return base


def plan_build(
    plan: Plan,
    plugins: Plugins,
    final: Path,
    previous: Previous | None,
    base: BaseImage,
    appliances: int | None = None,
) -> BuildContext:
    """Decide what to keep, refresh and make, and render every seed and domain XML:
    everything the later stages need, before any of them writes a byte."""
    hosts = hosts_inputs(plan)
    inputs = {vm.name: disk_inputs(plan, vm, base, plugins.inputs()) for vm in plan.vms}
    on_disk = {vm.name for vm in plan.vms if (final / vm.disk.file).is_file()}
    decision = decide(
        [vm.name for vm in plan.vms],
        inputs,
        hosts,
        previous.manifest.get("vms", {})
        if previous is not None and same_backing(previous.manifest, base.path, final)
        else None,
        on_disk,
    )
    seeds = SeedImages(
        {vm.name: seed_files(plan, vm, plugins) for vm in plan.vms},
        source_date_epoch(),
        previous.seeds_known() if previous is not None else None,
    )
    backing = _backing_chain(base)
    xmls = {vm.name: domain_xml(plan, vm, str(final), plugins, backing) for vm in plan.vms}
    _check_lab_macs(xmls)
    recorded = None
    if not decision.edit and previous is not None and previous.guest is not None:
        recorded = plan_operations(plan, previous.guest, plugins)
    return BuildContext(
        plan=plan,
        plugins=plugins,
        final=final,
        previous=previous,
        base=base,
        decision=decision,
        inputs=inputs,
        hosts=hosts,
        seeds=seeds,
        xmls=xmls,
        touched=_touched_disks(final, plan, decision.keep, decision.refresh),
        recorded=recorded,
        appliances=appliances,
    )


def unchanged(ctx: BuildContext) -> dict[str, Any] | None:
    """The current manifest, when the bundle already is what this build would write."""
    if ctx.recorded is None:
        return None
    if not all(
        _has_digest(ctx.final, vm.seed.file, ctx.seeds.sha256(vm.name))
        and _unchanged_file(ctx.final, vm.xml, ctx.xmls[vm.name])
        for vm in ctx.plan.vms
    ):
        return None
    files = lab_files(ctx, ctx.recorded, {})
    if not all(_unchanged_file(ctx.final, name, data) for name, data in files.items()):
        return None
    info(f"‣ {ctx.plan.lab} is up to date: nothing to do")
    manifest: dict[str, Any] = json.loads((ctx.final / MANIFEST).read_text())
    return manifest


def check_room(ctx: BuildContext) -> None:
    """Room for the new disks and inodes for every file of the lab."""
    output, base = ctx.output, ctx.base
    need = MARGIN + sum(
        OVERLAY_ESTIMATE if vm.disk.mode is DiskMode.OVERLAY else base.actual_size
        for vm in ctx.vms(ctx.decision.make)
    )
    free = shutil.disk_usage(output).free
    if free < need:
        raise BuildError(
            f"not enough free space in {output}: the lab needs about {format_size(need)}, "
            f"{format_size(free)} is free",
            hint="free some space or choose another --output",
        )
    fs = os.statvfs(output)
    inodes = fs.f_ffree if os.geteuid() == 0 else fs.f_favail
    need_inodes = INODES_PER_VM * len(ctx.plan.vms) + INODES_PER_LAB
    if fs.f_files and inodes < need_inodes:  # f_files is 0 where inodes are not counted
        raise BuildError(
            f"not enough free inodes in {output}: the lab needs about {need_inodes} files "
            f"and folders, {inodes} are free",
            hint="remove some files or choose another --output",
        )


def start_host_keys(ctx: BuildContext, stage: Path) -> HostKeyMaker:
    """Make the VM folders in the staging folder, and start making the new disks'
    host keys in the background, while the disks are made and the appliance boots."""
    for vm in ctx.plan.vms:
        (stage / vm.folder).mkdir(parents=True)
    made = ctx.vms(ctx.decision.make)
    return HostKeyMaker({vm.name: vm.fqdn for vm in made}, ctx.plan.host_key_types)


def keep_unchanged_disks(ctx: BuildContext, stage: Path) -> None:
    """Hard-link the kept disks into the new bundle; copy those to be refreshed."""
    kept = ctx.decision.keep + ctx.decision.refresh
    if not kept:
        return
    with step(f"Keeping {len(kept)} unchanged disks"):
        for vm in ctx.vms(kept):
            source = ctx.final / vm.disk.file
            if vm.name in ctx.decision.refresh:
                shutil.copy2(source, stage / vm.disk.file)
            else:
                os.link(source, stage / vm.disk.file)


def create_new_disks(ctx: BuildContext, stage: Path) -> None:
    """An overlay on the golden image, or a copy of it, for each disk to be made."""
    if not ctx.decision.make:
        return
    with step(f"Creating {len(ctx.decision.make)} disks"):
        for vm in ctx.vms(ctx.decision.make):
            _make_disk(ctx, stage, vm)


def write_identities(ctx: BuildContext, stage: Path, keys: HostKeyMaker) -> tuple[Planned, NewKeys]:
    """Every new or refreshed disk gets its identity, in as few appliance launches as
    the lab's size allows.
    Returns the plan with its disk operations, and the new disks' public host keys."""
    edits = [
        Edit(vm, stage / vm.disk.file, hosts_only=vm.name in ctx.decision.refresh)
        for vm in ctx.vms(ctx.decision.edit)
    ]
    if not edits:
        if ctx.recorded is not None:
            return ctx.recorded, {}
        assert ctx.previous is None or ctx.previous.guest is None
        with step("Inspecting the golden image"):
            facts = inspect_only(ctx.base)
        return plan_operations(ctx.plan, facts, ctx.plugins), {}
    names = listed([edit.vm.name for edit in edits], 8)
    with step(f"Writing identities into {len(edits)} disks: {names}"):
        planned = customize(ctx.plan, ctx.base, ctx.plugins, edits, keys, ctx.appliances)
        settle_disks([edit.disk for edit in edits], [edit.vm.disk.format for edit in edits])
        public = {
            name: {kind: pair[1] for kind, pair in made.items()}
            for name, made in keys.all().items()
        }
    return planned, public


def settle_disks(disks: list[Path], formats: list[DiskFormat]) -> None:
    """The appliance wrote the disks without flushing them (scratch drives, thrown
    away on failure): before they are published, each is checked by qemu-img and
    flushed to stable storage."""

    def settle(disk: Path, fmt: DiskFormat) -> None:
        qemuimg.check(disk, fmt)
        fsync_path(disk)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(settle, disks, formats))
    for folder in sorted({disk.parent for disk in disks}):
        fsync_path(folder)


def write_seeds_and_xml(ctx: BuildContext, stage: Path) -> None:
    """Each VM's seed ISO and domain XML; a file whose bytes are unchanged is the
    previous bundle's, hard-linked."""
    with step(f"Writing {len(ctx.plan.vms)} seed ISOs and domain XML files"):
        for vm in ctx.plan.vms:
            _place(ctx.final, stage, vm.seed.file, ctx.seeds[vm.name])
            _place(ctx.final, stage, vm.xml, ctx.xmls[vm.name])


def write_lab_files(
    ctx: BuildContext, stage: Path, planned: Planned, new_keys: NewKeys
) -> dict[str, Any]:
    """plan.json, define.sh, the plugins' files, the manifest and SHA256SUMS."""
    with step("Writing the manifest and inventory"):
        files = lab_files(ctx, planned, new_keys, stage=stage)
        for name, data in files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(stage / name, data, mode=0o755 if name == "define.sh" else 0o644)
    manifest: dict[str, Any] = json.loads(files[MANIFEST])
    return manifest


def export_target(ctx: BuildContext, stage: Path) -> None:
    """The lab for its target's hypervisor, in ``<bundle>/<target>/``, exported from
    the staged bundle; the previous bundle's export is kept (hard links) when it was
    made from the same files for the same target."""
    target = ctx.plan.target
    if target.is_libvirt_kvm_or_qemu:
        return
    folder = stage / target.value
    previous = ctx.final / target.value
    record = export.previous_record(previous)
    wanted = export.inputs(stage, target, str(ctx.final))
    if record is not None and all(record.get(key) == value for key, value in wanted.items()):
        with step(f"Keeping the {target} export of the previous bundle"):
            folder.mkdir()
            export.keep(previous, folder)
        return
    # The plan as the bundle has it: with the golden image's facts (its OS, for one).
    plan = Plan.from_json((stage / "plan.json").read_text())
    with step(f"Exporting the lab to {target}"):
        folder.mkdir()
        export.fill(plan, stage, target, folder, root=str(ctx.final), progress=detail)


def publish_bundle(ctx: BuildContext, stage: Path) -> None:
    """Swap the staging folder in for the bundle, once what was checked before the
    disks were made still holds: no VM started on a disk being replaced, and the
    golden image is the one that was checked."""
    refuse_running(*ctx.touched)
    _check_base_unchanged(ctx.base)
    with step(f"Publishing {ctx.final}"):
        publish(stage, ctx.final)


# ------------------------------------------------------------------------ helpers


def _unchanged_file(final: Path, name: str, data: bytes) -> bool:
    path = final / name
    try:
        return path.is_file() and not path.is_symlink() and path.read_bytes() == data
    except OSError:
        return False


def _has_digest(final: Path, name: str, sha256: str) -> bool:
    path = final / name
    try:
        return path.is_file() and not path.is_symlink() and file_digest(path) == sha256
    except OSError:
        return False


def _place(final: Path, stage: Path, name: str, data: bytes) -> None:
    """Keep the previous file (hard link) when its bytes are the same."""
    if _unchanged_file(final, name, data):
        os.link(final / name, stage / name)
    else:
        write_atomic(stage / name, data)


def _make_disk(ctx: BuildContext, stage: Path, vm: VmPlan) -> None:
    base = ctx.base
    dest = stage / vm.disk.file
    detail(f"{vm.name}: {vm.disk.mode.value} {vm.disk.format.value} {dest.name}")
    if vm.disk.mode is DiskMode.OVERLAY:
        # Relative to where the disk will live once published; the staging
        # folder sits beside the bundle, so the path is the same from there.
        backing = os.path.relpath(base.path, ctx.final / vm.folder)
        qemuimg.create_overlay(dest, backing, base.format, vm.disk.size)
    else:
        qemuimg.create_copy(dest, base.path, base.format, vm.disk.format, vm.disk.size)
    os.chmod(dest, 0o644)


def _check_lab_macs(xml_by_vm: Mapping[str, bytes]) -> None:
    seen: dict[str, str] = {}
    for name, data in xml_by_vm.items():
        for mac in ET.fromstring(data).iter("mac"):
            address = mac.get("address", "").lower()
            if address in seen and seen[address] != name:
                other = seen[address]
                raise BuildError(
                    f'MAC {address} is also used by vm "{other}"', place=f'vm "{name}"'
                )
            seen[address] = name


def _touched_disks(
    final: Path, plan: Plan, keep: tuple[str, ...], refresh: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, tuple[Path, str]]]:
    """Every disk of the current bundle that this build replaces, removes or copies
    (all but those kept as they are), with what it does to each: a running VM must
    hold none of them."""
    by_name = {vm.name: vm for vm in plan.vms}
    kept = {by_name[name].disk.file for name in keep}
    refreshed = {by_name[name].disk.file for name in refresh}
    changes: dict[str, str] = {}
    disks: dict[str, tuple[Path, str]] = {}
    for vm, path, fmt in bundle_disks(final):
        name = str(path.relative_to(final))
        if name in kept:
            continue
        if name in refreshed:
            changes[vm] = "copy and edit"
        else:
            changes[vm] = "replace" if vm in by_name else "remove"
        disks[vm] = (path, fmt)
    return changes, disks


def _backing_chain(base: BaseImage) -> list[tuple[str, str]]:
    """The golden image and any image behind it, as the domain XML names them."""
    text = qemuimg.run(
        ["info", "--backing-chain", "--output=json", "-U", "-f", base.format.value, str(base.path)],
        f"reading the backing chain of {base.path}",
    )
    chain = [(str(base.path), base.format.value)]
    for entry in json.loads(text)[:-1]:  # each image names the next one down
        folder = os.path.dirname(chain[-1][0])
        name = entry.get("full-backing-filename") or entry["backing-filename"]
        chain.append((os.path.join(folder, name), entry.get("backing-filename-format", "raw")))
    return chain


def _check_base_unchanged(base: BaseImage) -> None:
    try:
        now = stat_key(base.path)
    except OSError as err:
        now = f"gone ({err.strerror})"
    if now != base.stat_key:
        raise BuildError(
            f"the golden image {base.path} changed during the build; nothing was published",
            hint="the disks were made on the image as it was; build again once it is settled",
        )
