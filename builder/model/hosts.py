"""The lab's hosts table: every VM's address and names, as /etc/hosts lists them.

The identity plugin writes it into every disk and the inventory plugin publishes it;
the build compares its digest to know when the disks it kept need it anew.
"""

from __future__ import annotations

from vmbuild.model.plan import Plan


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
