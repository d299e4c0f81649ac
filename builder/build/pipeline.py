"""The build, top to bottom: check the base, make the disks, write each VM's
identity into its disk, write the seeds and the domain XML, then the manifest and
inventory, and publish the bundle in one rename.

Only this stage does I/O. Everything it writes goes into a staging folder beside
the bundle; a failure or an interrupt anywhere leaves the previous bundle as it was.

Rebuilds are incremental. The manifest records what each VM's disk was built from;
a VM whose inputs are unchanged keeps its disk (hard-linked into the new bundle),
and seeds, XML and lab files are compared by content. An unchanged lab launches
no appliance and rewrites nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild import __version__
from vmbuild.build.base import BaseImage, golden_recipe, inspect_base, stat_key
from vmbuild.build.customize import customize, with_operations
from vmbuild.errors import BuildError, UserError
from vmbuild.golden.builder import build_golden
from vmbuild.host import qemuimg
from vmbuild.host.files import file_digest, write_atomic
from vmbuild.host.hostkeys import HostKeySet, generate_host_keys
from vmbuild.host.interrupts import Interrupted
from vmbuild.libvirt.inuse import refuse_running
from vmbuild.log import detail, info, step
from vmbuild.model.facts import GuestFacts
from vmbuild.model.hosts import hosts_file
from vmbuild.model.plan import Plan, VmPlan, to_data
from vmbuild.model.profile import DiskMode, control_character, format_size, json_digest
from vmbuild.output.bundle import (
    MANIFEST,
    SUMS,
    check_target,
    lab_lock,
    publish,
    remove_stale,
    staging,
    sums_text,
    tree_files,
)
from vmbuild.output.domain import domain_xml
from vmbuild.output.render import render
from vmbuild.output.seed import seed_files, seed_iso_bytes, source_date_epoch
from vmbuild.plugins.manager import Plugins

MANIFEST_FORMAT = 2
#: Room an overlay needs before first boot, and a margin for the rest.
OVERLAY_ESTIMATE = 16 << 20
MARGIN = 64 << 20
#: Files and folders a VM's part of the bundle takes (folder, disk, seed, XML and
#: their temporary names), and the lab's own (lab files, inventory, staging).
INODES_PER_VM = 6
INODES_PER_LAB = 32


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    plan: Plan
    manifest: dict[str, Any]
    #: Names of the VMs whose disks were made anew by this build.
    rebuilt: tuple[str, ...]
    #: False when the lab was up to date and nothing was written.
    changed: bool


def _prepare_output(output: Path) -> Path:
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


def _check_space(output: Path, vms: list[VmPlan], base: BaseImage, count: int) -> None:
    """Room for the new disks and inodes for every file of a lab of ``count`` VMs."""
    need = MARGIN + sum(
        OVERLAY_ESTIMATE if vm.disk.mode is DiskMode.OVERLAY else base.actual_size for vm in vms
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
    need_inodes = INODES_PER_VM * count + INODES_PER_LAB
    if fs.f_files and inodes < need_inodes:  # f_files is 0 where inodes are not counted
        raise BuildError(
            f"not enough free inodes in {output}: the lab needs about {need_inodes} files "
            f"and folders, {inodes} are free",
            hint="remove some files or choose another --output",
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


def _check_lab_macs(xml_by_vm: Mapping[str, bytes]) -> None:
    seen: dict[str, str] = {}
    for name, data in xml_by_vm.items():
        for mac in ET.fromstring(data).iter("mac"):
            address = mac.get("address", "").lower()
            if address in seen and seen[address] != name:
                other = seen[address]
                raise BuildError(f'vm "{name}": MAC {address} is also used by vm "{other}"')
            seen[address] = name


def disk_inputs(lab: Plan, vm: VmPlan, base: BaseImage, final: Path, plugins: list[Any]) -> str:
    """What a VM's disk is made from, except the lab's hosts (see hosts_inputs)."""
    data = to_data(vm)
    for key in (
        "vnc",
        "xml",
        "seed",
        "autostart",
        "vcpus",
        "memory",
        "nic_model",
        "index",
        "operations",
    ):
        data.pop(key, None)
    return json_digest(
        {
            "generator": __version__,
            "plugins": plugins,
            "base": [base.sha256, base.format.value, os.path.relpath(base.path, final / vm.folder)],
            "network": to_data(lab.network),
            "seed": lab.seed,
            "vm": data,
        }
    )


def hosts_inputs(lab: Plan) -> str:
    return hashlib.sha256(hosts_file(lab).encode()).hexdigest()


# ------------------------------------------------------------------ previous bundle


@dataclass(frozen=True)
class Previous:
    """What the bundle being replaced says about itself."""

    manifest: dict[str, Any]
    guest: GuestFacts | None

    def vm(self, name: str) -> dict[str, Any] | None:
        vms: dict[str, Any] = self.manifest.get("vms", {})
        return vms.get(name)

    def base_known(self) -> tuple[str, str] | None:
        base = self.manifest.get("base", {})
        if "stat_key" in base and "sha256" in base:
            return str(base["stat_key"]), str(base["sha256"])
        return None


def _previous(final: Path) -> Previous | None:
    try:
        manifest = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    guest = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        guest = Plan.from_json((final / "plan.json").read_text()).guest
    return Previous(manifest, guest)


def _unchanged_file(final: Path, name: str, data: bytes) -> bool:
    path = final / name
    try:
        return path.is_file() and not path.is_symlink() and path.read_bytes() == data
    except OSError:
        return False


# --------------------------------------------------------------------- the build


def build(
    plan: Plan,
    plugins: Plugins,
    output: Path,
    *,
    source: Path,
    force: bool = False,
) -> BuildResult:
    """Build (or bring up to date) the plan's bundle at ``output/<lab>``. ``source`` is
    the profile the plan came from: paths in it are relative to its folder, and
    problems with the golden image are reported against it."""
    output = _prepare_output(output)
    final = output / plan.lab
    check_target(final)
    with lab_lock(output, plan.lab):
        remove_stale(output, plan.lab)
        previous = None if force else _previous(final)
        recipe = golden_recipe(plan.base)
        if recipe is not None:
            with step(f"Golden image: {plan.base.describe()}"):
                build_golden(recipe, progress=info)
        with step(f"Checking the golden image {plan.base.describe()}"):
            base = inspect_base(plan, source, previous.base_known() if previous else None)
            detail(f"{base.format.value}, {format_size(base.virtual_size)}, sha256 {base.sha256}")
        epoch = source_date_epoch()
        hosts_digest = hosts_inputs(plan)
        inputs = {vm.name: disk_inputs(plan, vm, base, final, plugins.inputs()) for vm in plan.vms}

        def reusable(vm: VmPlan) -> bool:
            old = previous.vm(vm.name) if previous else None
            return (
                old is not None
                and old.get("disk_inputs") == inputs[vm.name]
                and (final / vm.disk.file).is_file()
            )

        keep = [vm for vm in plan.vms if reusable(vm)]
        make = [vm for vm in plan.vms if vm not in keep]
        refresh = [
            vm
            for vm in keep
            if previous is not None and (previous.vm(vm.name) or {}).get("hosts") != hosts_digest
        ]
        touched = _touched_disks(final, plan, keep, refresh)
        facts = previous.guest if previous is not None and not make else None

        seeds = {vm.name: seed_iso_bytes(seed_files(plan, vm, plugins), epoch) for vm in plan.vms}
        backing = _backing_chain(base)
        xmls = {vm.name: domain_xml(plan, vm, str(final), plugins, backing) for vm in plan.vms}
        _check_lab_macs(xmls)

        if facts is not None and not refresh:
            built = _lab_files(
                plan, facts, plugins, final, base, previous, inputs, hosts_digest, seeds, xmls, {}
            )
            if all(
                _unchanged_file(final, vm.seed.file, seeds[vm.name])
                and _unchanged_file(final, vm.xml, xmls[vm.name])
                for vm in plan.vms
            ) and all(_unchanged_file(final, name, data) for name, data in built.items()):
                info(f"‣ {plan.lab} is up to date: nothing to do")
                manifest = json.loads((final / MANIFEST).read_text())
                plugins.build_finished(plan, final, manifest)
                return BuildResult(final, plan, manifest, (), False)

        _check_space(output, make, base, len(plan.vms))
        refuse_running(*touched)
        with staging(output, plan.lab) as stage:
            for vm in plan.vms:
                (stage / vm.folder).mkdir(parents=True)
            keys_future = _start_host_keys(make)
            if keep:
                with step(f"Keeping {len(keep)} unchanged disks"):
                    for vm in keep:
                        source = final / vm.disk.file
                        if vm in refresh:
                            shutil.copy2(source, stage / vm.disk.file)
                        else:
                            os.link(source, stage / vm.disk.file)
            if make:
                with step(f"Creating {len(make)} disks"):
                    for vm in make:
                        _make_disk(stage, final, vm, base)
            edit = make + refresh
            new_keys: Mapping[str, HostKeySet] = {}
            if edit:
                names = ", ".join(vm.name for vm in edit)
                with step(f"Writing identities into {len(edit)} disks in one appliance: {names}"):
                    done = customize(
                        plan,
                        edit,
                        {vm.name: stage / vm.disk.file for vm in edit},
                        base,
                        plugins,
                        lambda: keys_future.result(),
                        hosts_only={vm.name for vm in refresh},
                    )
                    facts = done.facts
                    new_keys = keys_future.result()
            assert facts is not None
            with step(f"Writing {len(plan.vms)} seed ISOs and domain XML files"):
                for vm in plan.vms:
                    _place(final, stage, vm.seed.file, seeds[vm.name])
                    _place(final, stage, vm.xml, xmls[vm.name])
            with step("Writing the manifest and inventory"):
                public = {
                    name: {t: pair[1] for t, pair in keys.items()}
                    for name, keys in new_keys.items()
                }
                files = _lab_files(
                    plan,
                    facts,
                    plugins,
                    final,
                    base,
                    previous,
                    inputs,
                    hosts_digest,
                    seeds,
                    xmls,
                    public,
                    stage=stage,
                )
                for name, data in files.items():
                    mode = 0o755 if name == "define.sh" else 0o644
                    (stage / name).parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(stage / name, data, mode=mode)
                manifest = json.loads(files[MANIFEST])
            # What was checked before the disks were made must still hold: no VM
            # started on a disk being replaced, the golden image is the one checked.
            refuse_running(*touched)
            _check_base_unchanged(base)
            with step(f"Publishing {final}"):
                publish(stage, final)
    try:
        plugins.build_finished(plan, final, manifest)
    except (KeyboardInterrupt, Interrupted) as err:
        signum = err.signum if isinstance(err, Interrupted) else 2
        raise Interrupted(signum, final) from None
    return BuildResult(final, plan, manifest, tuple(vm.name for vm in make), True)


def _touched_disks(
    final: Path, plan: Plan, keep: list[VmPlan], refresh: list[VmPlan]
) -> tuple[dict[str, str], dict[str, tuple[Path, str]]]:
    """Every disk of the current bundle that this build replaces, removes or copies
    (all but those kept as they are), with what it does to each: a running VM must
    hold none of them."""
    kept = {vm.disk.file for vm in keep if vm not in refresh}
    refreshed = {vm.disk.file for vm in refresh}
    changes: dict[str, str] = {}
    disks: dict[str, tuple[Path, str]] = {}
    for path in sorted(final.glob("vms/*/disk.*")):
        name = str(path.relative_to(final))
        fmt = path.suffix.lstrip(".")
        if name in kept or fmt not in ("qcow2", "raw") or path.is_symlink():
            continue
        vm = path.parent.name
        if name in refreshed:
            changes[vm] = "copy and edit"
        else:
            changes[vm] = "replace" if any(v.name == vm for v in plan.vms) else "remove"
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


def _place(final: Path, stage: Path, name: str, data: bytes) -> None:
    """Keep the previous file (hard link) when its bytes are the same."""
    if _unchanged_file(final, name, data):
        os.link(final / name, stage / name)
    else:
        write_atomic(stage / name, data)


def _start_host_keys(vms: list[VmPlan]) -> Future[dict[str, HostKeySet]]:
    """Make the new disks' host keys in the background, while the appliance boots."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(generate_host_keys, {vm.name: vm.fqdn for vm in vms})
    pool.shutdown(wait=False)
    return future


def _lab_files(
    plan: Plan,
    facts: GuestFacts,
    plugins: Plugins,
    final: Path,
    base: BaseImage,
    previous: Previous | None,
    inputs: Mapping[str, str],
    hosts_digest: str,
    seeds: Mapping[str, bytes],
    xmls: Mapping[str, bytes],
    new_keys: Mapping[str, Mapping[str, str]],
    stage: Path | None = None,
) -> dict[str, bytes]:
    """plan.json, define.sh, the plugins' files, manifest.json and SHA256SUMS, as bytes."""
    full = with_operations(plan, facts, plugins)
    public: dict[str, Mapping[str, str]] = {}
    for vm in plan.vms:
        if vm.name in new_keys:
            public[vm.name] = new_keys[vm.name]
        else:
            old = previous.vm(vm.name) if previous else None
            public[vm.name] = (old or {}).get("host_keys", {})
    files: dict[str, bytes] = {
        "plan.json": full.to_json().encode(),
        "define.sh": render("define.sh.j2", lab=plan, root=str(final)).encode(),
        **(
            {"network.xml": render("network.xml.j2", net=plan.network).encode()}
            if plan.network.create
            else {}
        ),
        **plugins.bundle_files(full, str(final), public),
    }
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    for vm in plan.vms:
        digests[vm.seed.file] = hashlib.sha256(seeds[vm.name]).hexdigest()
        digests[vm.xml] = hashlib.sha256(xmls[vm.name]).hexdigest()
        if stage is not None:
            digests[vm.disk.file] = file_digest(stage / vm.disk.file)
        else:
            old = previous.vm(vm.name) if previous else None
            digests[vm.disk.file] = (
                (old or {}).get("artifacts", {}).get("disk", {}).get("sha256", "")
            )
    manifest = {
        "format": MANIFEST_FORMAT,
        "generator": f"vmbuild {__version__}",
        "lab": plan.lab,
        "root": str(final),
        "profile_digest": plan.profile_digest,
        "base": {
            "path": str(base.path),
            "format": base.format.value,
            "virtual_size": base.virtual_size,
            "sha256": base.sha256,
            "stat_key": base.stat_key,
        },
        "guest": facts.to_data(),
        "vms": {
            vm.name: {
                "hostname": vm.hostname,
                "fqdn": vm.fqdn,
                "ip": f"{vm.ip}/{vm.prefix}",
                "mac": vm.mac,
                "uuid": vm.uuid,
                "instance_id": vm.instance_id,
                "machine_id": vm.machine_id,
                "vnc_port": vm.vnc.port,
                "disk_inputs": inputs[vm.name],
                "hosts": hosts_digest,
                "host_keys": dict(public[vm.name]),
                "artifacts": {
                    kind: {"file": file, "sha256": digests[file]}
                    for kind, file in (
                        ("disk", vm.disk.file),
                        ("seed", vm.seed.file),
                        ("domain", vm.xml),
                    )
                },
            }
            for vm in plan.vms
        },
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()
    digests[MANIFEST] = hashlib.sha256(files[MANIFEST]).hexdigest()
    if stage is None:
        digests.update(
            {
                name: file_digest(final / name)
                for name in tree_files(final)
                if name not in digests and name != SUMS
            }
        )
    else:
        digests.update(
            {
                name: file_digest(stage / name)
                for name in tree_files(stage)
                if name not in digests and name != SUMS
            }
        )
    files[SUMS] = sums_text(Path(), digests).encode()
    return files
