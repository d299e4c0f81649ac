"""The bundle's inventory/: hosts, known_hosts, ssh_config and an Ansible inventory.

A built-in plugin, written only against vmbuild's public hooks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from vmbuild.model.hosts import hosts_file
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.plugins.hookspecs import hookimpl


def known_hosts(lab: Plan, public_keys: Mapping[str, Mapping[str, str]]) -> str:
    """One line per VM and host key, naming the VM by hostname, FQDN and IP."""
    lines = []
    for vm in lab.vms:
        names = ",".join(dict.fromkeys([vm.hostname, vm.fqdn, vm.ip]))
        for _key_type, line in sorted(public_keys.get(vm.name, {}).items()):
            algorithm, blob = line.split()[:2]
            lines.append(f"{names} {algorithm} {blob}")
    return "\n".join(lines) + "\n" if lines else ""


def _login(vm: VmPlan) -> str | None:
    if vm.user is not None:
        return vm.user.name
    if vm.root is not None:
        return "root"
    return None


def ssh_config(lab: Plan, root: str) -> str:
    """``ssh -F inventory/ssh_config <vm>`` reaches a VM and checks its known key."""
    blocks = [f"# ssh -F {root}/inventory/ssh_config <vm>   (written by vmbuild)\n"]
    for vm in lab.vms:
        lines = [f"Host {vm.name}", f"    HostName {vm.ip}"]
        login = _login(vm)
        if login is not None:
            lines.append(f"    User {login}")
        lines += [
            f"    HostKeyAlias {vm.hostname}",
            f"    UserKnownHostsFile {root}/inventory/known_hosts",
            "    StrictHostKeyChecking yes",
        ]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def ansible_inventory(lab: Plan, root: str) -> str:
    """An INI inventory with one group, the lab, whose host keys Ansible checks
    against the bundle's known_hosts (it lists every VM's IP)."""
    group = re.sub(r"[^A-Za-z0-9_]", "_", lab.lab)
    if group[0].isdigit():
        group = "lab_" + group
    lines = [f"# ansible -i {root}/inventory/ansible.ini {group} -m ping   (written by vmbuild)"]
    lines.append(f"[{group}]")
    for vm in lab.vms:
        login = _login(vm)
        user = f" ansible_user={login}" if login is not None else ""
        lines.append(f"{vm.name} ansible_host={vm.ip}{user}")
    lines += [
        "",
        f"[{group}:vars]",
        f"ansible_ssh_common_args='-o UserKnownHostsFile={root}/inventory/known_hosts "
        "-o StrictHostKeyChecking=yes'",
    ]
    return "\n".join(lines) + "\n"


@hookimpl
def vmbuild_bundle_files(
    lab: Plan, root: str, host_keys: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    return {
        "inventory/hosts": hosts_file(lab),
        "inventory/known_hosts": known_hosts(lab, host_keys),
        "inventory/ssh_config": ssh_config(lab, root),
        "inventory/ansible.ini": ansible_inventory(lab, root),
    }
