"""The lab's own files, as bytes: plan.json, define.sh, network.xml, the plugins'
files, manifest.json and SHA256SUMS.

The manifest records what each VM's disk was made from, so the next build can tell
which disks to keep (see ``decide``), and the sha256 of every file of the bundle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmbuild import __version__
from vmbuild.build.context import BuildContext
from vmbuild.build.customize import Planned
from vmbuild.host.files import file_digest
from vmbuild.output.bundle import MANIFEST, MANIFEST_FORMAT, SUMS, sums_text, tree_files
from vmbuild.output.render import render


def lab_files(
    ctx: BuildContext,
    planned: Planned,
    new_keys: Mapping[str, Mapping[str, str]],
    stage: Path | None = None,
) -> dict[str, bytes]:
    """Every lab file of the bundle, with ``new_keys`` the public host keys of the
    disks made by this build (the others keep what the previous manifest says).
    ``stage`` is the staging folder the disks were written to, or None when the lab
    is being compared with the bundle as it is."""
    plan, final = ctx.plan, ctx.final
    host_keys = _host_keys(ctx, new_keys)
    files: dict[str, bytes] = {
        "plan.json": planned.plan.to_json().encode(),
        "define.sh": render("define.sh.j2", lab=plan, root=str(final)).encode(),
        **(
            {"network.xml": render("network.xml.j2", net=plan.network).encode()}
            if plan.network.create
            else {}
        ),
        **ctx.plugins.bundle_files(planned.plan, str(final), host_keys),
    }
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    for vm in plan.vms:
        digests[vm.seed.file] = ctx.seeds.sha256(vm.name)
        digests[vm.xml] = hashlib.sha256(ctx.xmls[vm.name]).hexdigest()
        digests[vm.disk.file] = (
            file_digest(stage / vm.disk.file)
            if stage is not None
            else _recorded(ctx, vm.name).get("artifacts", {}).get("disk", {}).get("sha256", "")
        )
    files[MANIFEST] = _manifest(ctx, planned, host_keys, digests)
    digests[MANIFEST] = hashlib.sha256(files[MANIFEST]).hexdigest()
    root = final if stage is None else stage
    digests.update(
        {
            name: file_digest(root / name)
            for name in tree_files(root)
            if name not in digests and name != SUMS
        }
    )
    files[SUMS] = sums_text(Path(), digests).encode()
    return files


def _recorded(ctx: BuildContext, name: str) -> dict[str, Any]:
    """What the previous manifest says about a VM ({} when it says nothing)."""
    old = ctx.previous.vm(name) if ctx.previous is not None else None
    return old or {}


def _host_keys(
    ctx: BuildContext, new_keys: Mapping[str, Mapping[str, str]]
) -> dict[str, Mapping[str, str]]:
    """Each VM's public host keys: the new disks', else those the disk already has."""
    keys: dict[str, Mapping[str, str]] = {}
    for vm in ctx.plan.vms:
        if vm.name in new_keys:
            keys[vm.name] = new_keys[vm.name]
        else:
            keys[vm.name] = _recorded(ctx, vm.name).get("host_keys", {})
    return keys


def _manifest(
    ctx: BuildContext,
    planned: Planned,
    host_keys: Mapping[str, Mapping[str, str]],
    digests: Mapping[str, str],
) -> bytes:
    plan, base = ctx.plan, ctx.base
    manifest = {
        "format": MANIFEST_FORMAT,
        "generator": f"vmbuild {__version__}",
        "lab": plan.lab,
        "root": str(ctx.final),
        "profile_digest": plan.profile_digest,
        "base": {
            "path": str(base.path),
            "format": base.format.value,
            "virtual_size": base.virtual_size,
            "sha256": base.sha256,
            "stat_key": base.stat_key,
        },
        "guest": planned.facts.to_data(),
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
                "disk_inputs": ctx.inputs[vm.name],
                "seed_inputs": ctx.seeds.inputs(vm.name),
                "hosts": ctx.hosts,
                "host_keys": dict(host_keys[vm.name]),
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
    return (json.dumps(manifest, indent=2) + "\n").encode()
