"""Give every VM the host's own CPU model (``<cpu mode="host-passthrough">``).

Only with KVM: under TCG (``domain_type = "qemu"``) there is no host CPU to pass
through, and the XML is left as it is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vmbuild.model.plan import Plan, VmPlan
from vmbuild.model.profile import DomainType
from vmbuild.plugins.hookspecs import hookimpl


@hookimpl
def vmbuild_domain_xml(lab: Plan, vm: VmPlan, domain: ET.Element) -> None:
    if lab.domain_type is not DomainType.KVM:
        return
    for old in domain.findall("cpu"):
        domain.remove(old)
    cpu = ET.Element("cpu", mode="host-passthrough", check="none", migratable="on")
    features = domain.find("features")
    position = list(domain).index(features) + 1 if features is not None else len(domain)
    domain.insert(position, cpu)
