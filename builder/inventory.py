"""Lab-wide text files derived from the plan: hosts, known_hosts, ssh_config."""

from __future__ import annotations

from collections.abc import Mapping

from .plan import Plan


def hosts_file(lab: Plan) -> str:
    """An /etc/hosts for every VM of the lab: localhost lines, then one per VM."""
    lines = [
        "127.0.0.1 localhost",
        "::1 localhost ip6-localhost ip6-loopback",
        "ff02::1 ip6-allnodes",
        "ff02::2 ip6-allrouters",
        "",
        f"# {lab.lab} (written by vmbuild)",
    ]
    for vm in lab.vms:
        names = [vm.fqdn, vm.hostname] if vm.fqdn != vm.hostname else [vm.hostname]
        lines.append(f"{vm.ip} {' '.join(names)}")
    return "\n".join(lines) + "\n"


def known_hosts(lab: Plan, public_keys: Mapping[str, Mapping[str, str]]) -> str:
    """One line per VM and host key, naming the VM by hostname, FQDN and IP."""
    lines = []
    for vm in lab.vms:
        names = ",".join(dict.fromkeys([vm.hostname, vm.fqdn, vm.ip]))
        for _key_type, line in sorted(public_keys.get(vm.name, {}).items()):
            algorithm, blob = line.split()[:2]
            lines.append(f"{names} {algorithm} {blob}")
    return "\n".join(lines) + "\n" if lines else ""


def ssh_config(lab: Plan, root: str) -> str:
    """``ssh -F inventory/ssh_config <vm>`` reaches a VM and checks its known key."""
    blocks = [f"# ssh -F {root}/inventory/ssh_config <vm>   (written by vmbuild)\n"]
    for vm in lab.vms:
        lines = [f"Host {vm.name}", f"    HostName {vm.ip}"]
        if vm.user is not None:
            lines.append(f"    User {vm.user.name}")
        elif vm.root is not None:
            lines.append("    User root")
        lines += [
            f"    HostKeyAlias {vm.hostname}",
            f"    UserKnownHostsFile {root}/inventory/known_hosts",
            "    StrictHostKeyChecking yes",
        ]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
