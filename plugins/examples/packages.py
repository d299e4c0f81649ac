"""Install packages and run a command at first boot, through cloud-init's user-data.

cloud-init installs ``PACKAGES`` (it needs a package mirror the VM can reach) and runs
``FIRST_BOOT`` once per instance, after the network is up.
"""

from __future__ import annotations

from typing import Any

from vmbuild.model.plan import Plan, VmPlan
from vmbuild.plugins.hookspecs import hookimpl

PACKAGES = ["htop", "tmux"]
FIRST_BOOT = ["sh", "-c", "echo first boot of $(hostname) >> /var/log/lab-first-boot.log"]


@hookimpl
def vmbuild_user_data(lab: Plan, vm: VmPlan) -> dict[str, Any]:
    return {"packages": list(PACKAGES), "runcmd": [list(FIRST_BOOT)]}
