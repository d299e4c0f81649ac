"""The hooks a vmbuild plugin can implement.

Every hook is prefixed ``vmbuild_``. Hooks that *return data* are preferred: vmbuild
collects the results of all plugins and merges them in a fixed order (built-in
plugins first, then installed ones, then the lab's own, in the order the profile
lists them), so a lab plugin can extend or override what a built-in produced.

Merging rule for mappings ("deep-merged"): nested mappings merge key by key, lists
are concatenated, and any other value from a later plugin replaces the earlier one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

import pluggy

if TYPE_CHECKING:
    from .diskops import Operation
    from .inspect import GuestFacts
    from .plan import Plan, VmPlan

PROJECT = "vmbuild"
hookspec = pluggy.HookspecMarker(PROJECT)
#: The marker plugins use: ``from vmbuild.hookspecs import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vmbuild_user_data(lab: Plan, vm: VmPlan) -> dict[str, Any] | None:
    """Contribute to a VM's cloud-init ``user-data`` (the ``#cloud-config`` mapping).

    Fires once per VM while the build writes the VM's seed ISO.

    :param lab: the whole lab's plan.
    :param vm: the VM whose seed is being written.
    :return: a mapping to deep-merge into the user-data, or None.
        All results are collected and deep-merged in plugin order.
    """


@hookspec
def vmbuild_network_config(lab: Plan, vm: VmPlan) -> dict[str, Any] | None:
    """Contribute to a VM's cloud-init ``network-config`` (version 2).

    Fires once per VM while the build writes the VM's seed ISO.

    :param lab: the whole lab's plan.
    :param vm: the VM whose seed is being written.
    :return: a mapping to deep-merge into the network-config, or None.
        All results are collected and deep-merged in plugin order.
    """


@hookspec
def vmbuild_domain_xml(lab: Plan, vm: VmPlan, domain: Element) -> None:
    """Change a VM's libvirt domain XML before it is checked and written.

    Fires once per VM, after vmbuild rendered its domain XML template.

    :param lab: the whole lab's plan.
    :param vm: the VM whose domain this is.
    :param domain: the ``<domain>`` element; change it in place.
    :return: nothing. Every plugin's implementation is called, in plugin order.
    """


@hookspec
def vmbuild_disk_operations(lab: Plan, vm: VmPlan, guest: GuestFacts) -> list[Operation] | None:
    """Edits to make inside a VM's disk, as ``vmbuild.diskops.Operation`` objects.

    Fires once per VM, after the golden image was inspected and before the VM's disk
    is opened; the operations are listed by ``vmbuild plan --inspect --json``.

    :param lab: the whole lab's plan.
    :param vm: the VM whose disk this is.
    :param guest: what inspection found in the golden image: distro, version,
        network stack (``guest.network``), init system, cloud-init.
    :return: a list of operations, or None. All lists are concatenated in plugin
        order, then ordered by phase (clean-up first, passwords last) and applied.
    """
