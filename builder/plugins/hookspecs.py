"""The hooks a vmbuild plugin can implement, one per stage of a build.

Every hook is prefixed ``vmbuild_``. Hooks *return data* that vmbuild combines; only
``vmbuild_domain_xml`` changes an object in place. Plugins are registered in a fixed
order: the built-in plugins first, then installed ones (entry-point group
``vmbuild``, by entry-point name), then the lab's own in the order the profile lists
them.

*Call order* is pluggy's: the implementation registered last is called first (so
the lab's last plugin first and the built-ins last); ``@hookimpl(tryfirst=True)``
moves an implementation ahead of every one that is not tryfirst, and
``trylast=True`` behind every one that is not trylast. Several tryfirst ones are
called the last registered first; several trylast ones the first registered first,
so the trylast one registered last is called last of all.

*Precedence*: results are combined in call order reversed, each laid over the ones
before it, so the implementation called first has the last word. Without tryfirst
or trylast that is registration order: a lab plugin extends and overrides an
installed one, which extends and overrides a built-in. A tryfirst result overrides
every other; a trylast one is overridden by every other (a default).

How results combine, in that order:

- *deep-merged*: nested mappings merge key by key, lists are concatenated, and any
  other value from a later result replaces the earlier one;
- *concatenated*: lists are joined, the result of the implementation called last
  first;
- *called in turn*: every implementation runs, in call order; the one called last
  (a trylast one, else a built-in) sees what the others did.

No hook is ``firstresult``, and hook wrappers (``hookwrapper=True``,
``wrapper=True``) are refused when the plugin is loaded: vmbuild calls each
implementation itself, with its own timeout, so that an exception names the plugin,
the hook and the VM. A plugin may accept any subset of a hook's arguments, by name.

Hooks must be deterministic: the same profile and golden image must give the same
results, or rebuilds are no longer byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

import pluggy

if TYPE_CHECKING:
    from vmbuild.errors import Problem
    from vmbuild.guest.diskops import Operation
    from vmbuild.model.facts import GuestFacts
    from vmbuild.model.plan import Plan, VmPlan
    from vmbuild.model.profile import Profile

PROJECT = "vmbuild"
hookspec = pluggy.HookspecMarker(PROJECT)
#: The marker plugins use: ``from vmbuild.plugins.hookspecs import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vmbuild_check_profile(profile: Profile) -> Iterable[Problem] | None:
    """Check a profile beyond vmbuild's own rules.

    Fires once, after the profile was loaded and passed vmbuild's own checks, before
    anything is planned (``vmbuild plan``, ``validate`` and ``build``).

    :param profile: the loaded profile (``vmbuild.model.profile.Profile``).
    :return: problems as ``vmbuild.errors.Problem(place, message, hint)``, or None.
        All plugins' problems are concatenated and reported together, each on its own
        line with its place, exactly like vmbuild's own checks (exit status 2).
    """


@hookspec
def vmbuild_plan_vm(lab: Plan, vm: VmPlan) -> Mapping[str, Any] | None:
    """Annotate a VM's plan with data of the plugin's own.

    Fires once per VM, after vmbuild derived every VM's identity (MAC, UUID, ports,
    paths), in ``vmbuild plan`` and every build. Identity itself cannot be changed.

    :param lab: the whole lab's plan, before any annotation.
    :param vm: the VM being planned.
    :return: a JSON-able mapping, or None. All results are deep-merged into
        ``vm.extra``, which later hooks read, ``plan.json`` records, and which counts
        as an input of the VM's disk (a change rebuilds it).
    """


@hookspec
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation] | None:
    """Edits to make inside a VM's disk, as ``vmbuild.guest.diskops.Operation`` objects.

    Fires once per VM on every build, for every VM of the lab: right after the
    golden image was inspected, before any disk is edited, or, when no disk needs
    writing, with the facts the previous build recorded. The same operations go to
    the appliance, which applies them to the disks that are written, and into
    ``plan.json`` (which is how a rebuild notices that they changed). ``vmbuild plan
    --inspect`` calls it too, to list them.

    :param lab: the whole lab's plan.
    :param vm: the VM whose disk this is.
    :param guest: what inspection found in the golden image: distro, version,
        network stack (``guest.network``), init system, cloud-init.
    :return: a list of operations, or None. All lists are concatenated, then
        ordered by phase (clean-up first, passwords last), stably, and applied in
        that order: within a phase, the operations of the implementation called
        first run last.
    """


@hookspec
def vmbuild_user_data(lab: Plan, vm: VmPlan) -> Mapping[str, Any] | None:
    """Contribute to a VM's cloud-init ``user-data`` (the ``#cloud-config`` mapping).

    Fires once per VM while the build writes the VM's seed ISO.

    :param lab: the whole lab's plan.
    :param vm: the VM whose seed is being written.
    :return: a mapping, or None. All results are deep-merged.
    """


@hookspec
def vmbuild_network_config(lab: Plan, vm: VmPlan) -> Mapping[str, Any] | None:
    """Contribute to a VM's cloud-init ``network-config`` (version 2).

    Fires once per VM while the build writes the VM's seed ISO, after user-data.

    :param lab: the whole lab's plan.
    :param vm: the VM whose seed is being written.
    :return: a mapping, or None. All results are deep-merged.
    """


@hookspec
def vmbuild_seed_files(lab: Plan, vm: VmPlan) -> Mapping[str, bytes | str] | None:
    """Extra files for a VM's NoCloud seed ISO, beside meta-data, user-data and
    network-config.

    Fires once per VM while the build writes the VM's seed ISO, after
    network-config.

    :param lab: the whole lab's plan.
    :param vm: the VM whose seed is being written.
    :return: file name -> contents (str is written as UTF-8), or None. Names are
        plain file names at the ISO's root: letters, digits, ``.``, ``_`` and ``-``,
        at most 30 characters. All results are merged; a file of the same name from
        a later result (see precedence above) replaces an earlier one. The three
        NoCloud files themselves come only from their own hooks.
    """


@hookspec
def vmbuild_domain_xml(lab: Plan, vm: VmPlan, domain: Element) -> None:
    """Change a VM's libvirt domain XML before it is checked and written.

    Fires once per VM, after vmbuild rendered its domain XML template.

    :param lab: the whole lab's plan.
    :param vm: the VM whose domain this is.
    :param domain: the ``<domain>`` element; change it in place.
    :return: nothing. Every implementation is called in turn, in call order, on the
        same element; vmbuild then checks the result (name, MACs, VNC port) as for
        its own XML.
    """


@hookspec
def vmbuild_bundle_files(
    lab: Plan, root: str, host_keys: Mapping[str, Mapping[str, str]]
) -> Mapping[str, bytes | str] | None:
    """Extra files for the lab's bundle, such as the inventory.

    Fires once per build, after every disk was written, while the build writes the
    manifest (and once more when checking whether an unchanged lab is up to date).

    :param lab: the whole lab's plan, with the golden image's facts (``lab.guest``)
        and every VM's disk operations.
    :param root: the bundle's final, absolute folder.
    :param host_keys: VM name -> key type -> public key line of the SSH host keys
        in that VM's disk.
    :return: path relative to the bundle -> contents (str is written as UTF-8), or
        None. All results are merged; a file of the same path from a later result
        (see precedence above) replaces an earlier one. Paths may not leave the
        bundle nor replace
        vmbuild's own files (``manifest.json``, ``SHA256SUMS``, ``plan.json``,
        ``define.sh``, ``vms/``). Every file is listed in ``SHA256SUMS``.
    """


@hookspec
def vmbuild_build_finished(lab: Plan, bundle: Path, manifest: Mapping[str, Any]) -> None:
    """The build is over and the bundle is in place.

    Fires once per successful build, after the bundle was published, or after vmbuild
    found that the lab was up to date. Not called when the build failed.

    :param lab: the whole lab's plan.
    :param bundle: the bundle's folder.
    :param manifest: the bundle's ``manifest.json``, as data.
    :return: nothing. Every implementation is called in turn, in call order. An
        exception here is reported, but the bundle stays published.
    """
