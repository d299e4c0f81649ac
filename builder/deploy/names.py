"""What a deployed lab is called on a host, and how its domains say whose they are.

Pure: names and XML in, names and XML out.

* **Volumes** are named by what is in them, so a rerun finds what an earlier run
  sent and a changed disk never overwrites the one a defined domain still uses:
  ``<lab>+<vm>+disk-<sha256:12>.qcow2``, ``<lab>+<vm>+seed-<sha256:12>.iso``. ``+``
  is in no lab or VM name, so a lab's volumes are exactly those starting with
  ``<lab>+``. The golden image is ``vmbuild-golden-<sha256>.<format>``, one per
  host for every lab that uses it, with a marker volume beside it
  (``....sha256``, holding the digest) written only once its upload completed.
* **Domains** carry ``<metadata>`` in vmbuild's namespace naming the lab, the VM,
  the source's digest, the digest of what was deployed, the pool and the volumes.
  That is how vmbuild knows which domains are its own: one without it, or with
  another lab's, is never touched.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vmbuild.errors import BuildError

NS = "https://vmbuild.dev/xmlns/lab/1"
_TAG = f"{{{NS}}}lab"
ET.register_namespace("vmbuild", NS)


def lab_prefix(lab: str) -> str:
    return f"{lab}+"


def disk_volume(lab: str, vm: str, sha256: str, fmt: str) -> str:
    return f"{lab}+{vm}+disk-{sha256[:12]}.{fmt}"


def seed_volume(lab: str, vm: str, sha256: str) -> str:
    return f"{lab}+{vm}+seed-{sha256[:12]}.iso"


def golden_volume(sha256: str, fmt: str) -> str:
    return f"vmbuild-golden-{sha256}.{fmt}"


def marker_volume(golden: str) -> str:
    return f"{golden}.sha256"


@dataclass(frozen=True)
class Owner:
    """What a deployed domain's metadata records."""

    lab: str
    vm: str
    #: The deployed source: an artifact's manifest digest, or a bundle's manifest.json.
    source: str
    #: Digest of what was deployed for this VM (its XML, disk and seed).
    digest: str
    pool: str
    #: The golden image volume the disk is an overlay on ("" for a standalone disk).
    golden: str
    disk: str
    seed: str

    @property
    def volumes(self) -> tuple[str, ...]:
        return (self.disk, self.seed)


def read_owner(domain_xml: str) -> Owner | None:
    """The vmbuild metadata of a domain's XML; None when it has none (not ours)."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return None
    element = root.find(f"metadata/{_TAG}")
    if element is None:
        return None
    fields = {name: element.get(name, "") for name in Owner.__dataclass_fields__}
    if not fields["lab"] or not fields["vm"]:
        return None
    return Owner(**fields)


@dataclass(frozen=True)
class Placed:
    """Where one VM's files are on its host."""

    disk_path: str
    seed_path: str
    #: The golden image's path on the host, for an overlay; None for a standalone disk.
    golden_path: str | None
    golden_format: str


def host_xml(bundle_xml: str, disk_target: str, seed_target: str, placed: Placed) -> str:
    """The bundle's domain XML with its disk and seed read from the host's volumes
    and the overlay's backing image from the host's golden volume. No metadata yet:
    `with_owner` adds it, once the XML's digest is known."""
    root = ET.fromstring(bundle_xml)
    found = set()
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        source = disk.find("source")
        if source is None or dev not in (disk_target, seed_target):
            continue
        found.add(dev)
        source.set("file", placed.disk_path if dev == disk_target else placed.seed_path)
        backing = disk.find("backingStore")
        if dev != disk_target or backing is None or backing.find("source") is None:
            continue
        if placed.golden_path is None:
            raise BuildError(f"disk {dev} is an overlay, but no golden volume was given")
        backing_source = backing.find("source")
        assert backing_source is not None
        backing_source.set("file", placed.golden_path)
        fmt = backing.find("format")
        if fmt is not None:
            fmt.set("type", placed.golden_format)
        for deeper in backing.findall("backingStore"):
            backing.remove(deeper)
        ET.SubElement(backing, "backingStore")
    missing = {disk_target, seed_target} - found
    if missing:
        raise BuildError(f"the domain XML has no disk {', '.join(sorted(missing))}")
    for old in root.findall("metadata"):
        root.remove(old)
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def deployed_digest(xml: str, disk_sha256: str, seed_sha256: str) -> str:
    """What decides whether a deployed VM is up to date."""
    text = json.dumps({"xml": xml, "disk": disk_sha256, "seed": seed_sha256}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def with_owner(xml: str, owner: Owner) -> str:
    """``xml`` with vmbuild's metadata element naming ``owner``."""
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        # After <description>, where libvirt itself puts it.
        position = next(
            (i + 1 for i, child in enumerate(root) if child.tag == "description"),
            len([c for c in root if c.tag in ("name", "uuid")]),
        )
        root.insert(position, metadata)
    for old in metadata.findall(_TAG):
        metadata.remove(old)
    ET.SubElement(
        metadata, _TAG, {name: getattr(owner, name) for name in Owner.__dataclass_fields__}
    )
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def network_xml(name: str, uuid: str) -> str:
    """An isolated libvirt network: no <forward>, no <ip>, like the bundle's."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "uuid").text = uuid
    return ET.tostring(root, encoding="unicode") + "\n"
