"""libvirt domain XML for each VM: rendered from a jinja2 template, passed to the
plugins as an element tree, checked, and serialised the same way every time."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vmbuild.errors import BuildError
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.model.profile import Bus
from vmbuild.output.render import render

if TYPE_CHECKING:
    from vmbuild.plugins.manager import Plugins


#: The golden image's backing chain: (absolute path, format) from the top down.
Backing = Sequence[tuple[str, str]]


def render_domain(lab: Plan, vm: VmPlan, root: str, backing: Backing | None = None) -> ET.Element:
    """The template's output as an element tree. ``root`` is the bundle's final,
    absolute folder: libvirt needs absolute disk paths. ``backing`` is the golden
    image and whatever it is backed by: given, libvirt uses that chain as it is
    (no probing) and leaves the shared images' owner alone (seclabel relabel="no");
    None leaves the chain to libvirt."""
    scsi = Bus.SCSI in (vm.disk.bus, vm.seed.bus)
    text = render(
        "domain.xml.j2",
        lab=lab,
        vm=vm,
        root=root.rstrip("/"),
        scsi=scsi,
        backing=None if backing is None else list(backing),
    )
    return ET.fromstring(text)


def check_domain(vm: VmPlan, domain: ET.Element) -> None:
    """What virt-xml-validate does not catch but libvirt or the lab would trip on."""
    where = f'vm "{vm.name}": domain XML'
    if domain.tag != "domain":
        raise BuildError(f"the root element is <{domain.tag}>, not <domain>", place=where)
    name = domain.findtext("name") or ""
    if not name or "/" in name:
        raise BuildError(f"name {name!r} is empty or contains '/'", place=where)
    for graphics in domain.iter("graphics"):
        if graphics.get("port") not in (None, "-1") and graphics.get("autoport") == "yes":
            raise BuildError("graphics has a fixed port and autoport='yes'", place=where)
    macs = [mac.get("address", "").lower() for mac in domain.iter("mac")]
    if len(macs) != len(set(macs)):
        raise BuildError("a MAC address is used twice", place=where)


def domain_xml(
    lab: Plan, vm: VmPlan, root: str, plugins: Plugins, backing: Backing | None = None
) -> bytes:
    domain = render_domain(lab, vm, root, backing)
    plugins.domain_xml(lab, vm, domain)
    check_domain(vm, domain)
    ET.indent(domain, space="  ")
    return ET.tostring(domain, encoding="unicode").encode() + b"\n"
