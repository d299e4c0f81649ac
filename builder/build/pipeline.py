"""The build, top to bottom: make and check the golden image, decide what to keep,
then keep, create and write the disks, write the seeds, the domain XML and the lab's
files into a staging folder, export it for the lab's target hypervisor (when that is
not libvirt's), and publish it in one rename.

Rebuilds are incremental: a VM whose disk inputs are unchanged keeps its disk
(hard-linked into the new bundle), and seeds, XML and lab files are compared by
content. An unchanged lab launches no appliance and rewrites nothing. A failure or
an interrupt anywhere before the publish leaves the previous bundle as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild.build.context import BuildContext, read_previous
from vmbuild.build.stages import (
    check_golden_image,
    check_room,
    create_new_disks,
    export_target,
    keep_unchanged_disks,
    make_golden_image,
    plan_build,
    prepare_output,
    publish_bundle,
    start_host_keys,
    unchanged,
    write_identities,
    write_lab_files,
    write_seeds_and_xml,
)
from vmbuild.host.interrupts import Interrupted
from vmbuild.libvirt.inuse import refuse_running
from vmbuild.model.plan import Plan
from vmbuild.output.bundle import check_target, lab_lock, remove_stale, staging
from vmbuild.plugins.manager import Plugins


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    plan: Plan
    manifest: dict[str, Any]
    #: Names of the VMs whose disks were made anew by this build.
    rebuilt: tuple[str, ...]
    #: False when the lab was up to date and nothing was written.
    changed: bool


def build(
    plan: Plan,
    plugins: Plugins,
    output: Path,
    *,
    source: Path,
    force: bool = False,
    appliances: int | None = None,
) -> BuildResult:
    """Build (or bring up to date) the plan's bundle at ``output/<lab>``. ``source`` is
    the profile the plan came from: paths in it are relative to its folder, and
    problems with the golden image are reported against it. ``force`` makes every
    disk anew; ``appliances`` says how many appliances edit the disks at once (by
    default, as many as the host's cores and memory allow)."""
    output = prepare_output(output)
    final = output / plan.lab
    check_target(final)
    with lab_lock(output, plan.lab):
        remove_stale(output, plan.lab)
        previous = None if force else read_previous(final)
        make_golden_image(plan)
        base = check_golden_image(plan, source, previous)
        ctx = plan_build(plan, plugins, final, previous, base, appliances)
        manifest = unchanged(ctx)
        if manifest is not None:
            return finish(ctx, manifest, changed=False)
        check_room(ctx)
        refuse_running(*ctx.touched)
        with staging(output, plan.lab) as stage, start_host_keys(ctx, stage) as keys:
            keep_unchanged_disks(ctx, stage)
            create_new_disks(ctx, stage)
            planned, new_keys = write_identities(ctx, stage, keys)
            write_seeds_and_xml(ctx, stage)
            manifest = write_lab_files(ctx, stage, planned, new_keys)
            export_target(ctx, stage)
            publish_bundle(ctx, stage)
    return finish(ctx, manifest, changed=True)


def finish(ctx: BuildContext, manifest: dict[str, Any], *, changed: bool) -> BuildResult:
    """Tell the plugins the build is done (``vmbuild_build_finished``). An interrupt
    there comes after a publish, and says so."""
    try:
        ctx.plugins.build_finished(ctx.plan, ctx.final, manifest)
    except (KeyboardInterrupt, Interrupted) as err:
        if not changed:
            raise
        signum = err.signum if isinstance(err, Interrupted) else 2
        raise Interrupted(signum, ctx.final) from None
    return BuildResult(ctx.final, ctx.plan, manifest, ctx.decision.make if changed else (), changed)
