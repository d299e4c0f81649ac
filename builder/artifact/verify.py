"""``vmbuild verify``: an artifact is what was packed, and signed by someone allowed.

Everything hangs from the lab manifest, whose digest is what is signed: it names
the bundle's manifest.json (config), every file's blob, and the golden image's
manifest by digest; manifest.json records the golden image's sha256 and every
VM's disk, seed and XML sha256. So one valid signature and these checks cover
every byte: each blob's digest and size, each piece's size and sha256 once
decompressed, and each reassembled disk's and golden image's sha256.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbuild.artifact import layout as oci
from vmbuild.artifact.layout import ArtifactError, Descriptor, Layout, split_reference
from vmbuild.artifact.pack import LAB_BUNDLE
from vmbuild.artifact.pieces import restore, unpacked_size
from vmbuild.artifact.sign import Signer
from vmbuild.artifact.sign import verify as verify_signature
from vmbuild.artifact.trust import Trust
from vmbuild.log import info, step


@dataclass(frozen=True)
class Entry:
    """One file of the bundle in the artifact: its blobs (pieces, for a disk)."""

    name: str
    vm: str | None
    blobs: tuple[Descriptor, ...]

    @property
    def is_disk(self) -> bool:
        return self.blobs[0].media_type == oci.PIECE

    @property
    def size(self) -> int:
        return unpacked_size(list(self.blobs)) if self.is_disk else self.blobs[0].size

    def what(self) -> str:
        return f'vm "{self.vm}", {self.name}' if self.vm else self.name


@dataclass(frozen=True)
class Artifact:
    """An artifact whose manifests, signature and small blobs have been checked."""

    layout: Layout
    tag: str
    index: Descriptor
    lab: Descriptor
    golden: Descriptor
    #: The bundle's manifest.json, as packed (bytes and parsed).
    manifest_bytes: bytes
    manifest: dict[str, Any]
    golden_config: dict[str, Any]
    golden_pieces: tuple[Descriptor, ...]
    entries: tuple[Entry, ...]
    signer: Signer | None
    checked: list[str] = field(default_factory=list)

    @property
    def lab_name(self) -> str:
        return str(self.manifest["lab"])

    def golden_what(self) -> str:
        return f"golden image {self.golden_config.get('name', '')}".strip()

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": f"{self.layout.path}:{self.tag}",
            "lab": self.lab_name,
            "digest": self.index.digest,
            "lab_manifest": self.lab.digest,
            "golden_manifest": self.golden.digest,
            "golden_sha256": self.golden_config["sha256"],
            "signed_by": (
                {"principal": self.signer.principal, "key": self.signer.fingerprint}
                if self.signer
                else None
            ),
            "size": self.index.size
            + self.lab.size
            + self.golden.size
            + sum(b.size for e in self.entries for b in e.blobs)
            + sum(p.size for p in self.golden_pieces),
            "files": {
                entry.name: {"vm": entry.vm, "size": entry.size, "blobs": len(entry.blobs)}
                for entry in self.entries
            },
            "checked": self.checked,
        }


def _one(manifests: list[Descriptor], artifact_type: str, what: str, where: str) -> Descriptor:
    found = [d for d in manifests if d.artifact_type == artifact_type]
    if len(found) != 1:
        raise ArtifactError(f"{where}: the index names {len(found)} {what} manifests, not one")
    return found[0]


def _signatures(layout: Layout, lab: Descriptor) -> list[tuple[Descriptor, bytes]]:
    """The signature blobs of the layout's referrers whose subject is ``lab``."""
    found = []
    for entry in layout.index():
        if entry.artifact_type != oci.SIGNATURE_ARTIFACT:
            continue
        document = layout.read_json(entry, "signature manifest")
        subject = document.get("subject") or {}
        if subject.get("digest") != lab.digest:
            continue
        for data in document.get("layers", []):
            blob = Descriptor.from_data(data, "signature manifest")
            if blob.media_type == oci.SIGNATURE:
                found.append((entry, layout.read(blob, "signature")))
    return found


def _check_signature(layout: Layout, lab: Descriptor, trust: Trust) -> Signer | None:
    signatures = _signatures(layout, lab)
    if not signatures:
        if trust.allow_unsigned:
            return None
        raise ArtifactError(
            f"the lab manifest {lab.digest} is not signed",
            place=str(layout.path),
            hint="pack it with --sign KEY, or accept an unsigned lab with --allow-unsigned",
        )
    allowed = trust.signers_file()
    failure: ArtifactError | None = None
    for _, signature in signatures:
        try:
            return verify_signature(signature, lab.digest, allowed)
        except ArtifactError as err:
            failure = err
    assert failure is not None
    raise failure


def _entries(layers: list[Descriptor]) -> tuple[Entry, ...]:
    by_name: dict[str, list[Descriptor]] = {}
    for layer in layers:
        name = layer.annotations.get(oci.TITLE)
        if not name:
            raise ArtifactError(f"the lab manifest names a blob {layer.digest} without a title")
        by_name.setdefault(name, []).append(layer)
    return tuple(
        Entry(name, blobs[0].annotations.get(oci.VM), tuple(blobs))
        for name, blobs in by_name.items()
    )


def open_artifact(artifact: str | Path, trust: Trust) -> Artifact:
    """Check the artifact's manifests, signature and lab files (everything but the
    disks' pieces, which `check_data` reads)."""
    folder, tag = split_reference(str(artifact))
    layout = Layout(folder)
    tag, index = layout.resolve(tag)
    where = f"{folder}:{tag}"
    if index.artifact_type not in (None, oci.LAB_ARTIFACT):
        raise ArtifactError(f"{where} is not a vmbuild lab ({index.artifact_type})")
    document = layout.read_json(index, "the lab's index")
    manifests = [Descriptor.from_data(d, where) for d in document.get("manifests", [])]
    lab = _one(manifests, LAB_BUNDLE, "lab", where)
    golden = _one(manifests, oci.GOLDEN_ARTIFACT, "golden image", where)
    lab_document = layout.read_json(lab, "the lab manifest")
    signer = _check_signature(layout, lab, trust)
    checked = [f"signed by {signer.principal} ({signer.fingerprint})" if signer else "unsigned"]
    named = (lab_document.get("annotations") or {}).get(oci.GOLDEN)
    if named != golden.digest:
        raise ArtifactError(
            f"{where}: the lab manifest names the golden image {named}, "
            f"but the index holds {golden.digest}"
        )
    config = Descriptor.from_data(lab_document.get("config"), "the lab manifest")
    manifest_bytes = layout.read(config, "manifest.json")
    try:
        manifest = json.loads(manifest_bytes)
        golden_sha256 = manifest["base"]["sha256"]
        vms = manifest["vms"]
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{where}: manifest.json is not a vmbuild manifest") from None
    golden_document = layout.read_json(golden, "the golden image's manifest")
    golden_config = layout.read_json(
        Descriptor.from_data(golden_document.get("config"), "golden manifest"),
        "the golden image's config",
    )
    if golden_config.get("sha256") != golden_sha256:
        raise ArtifactError(
            f"{where}: the golden image in the artifact has sha256 {golden_config.get('sha256')}, "
            f"but the lab was built on {golden_sha256}"
        )
    pieces = tuple(Descriptor.from_data(d, "golden manifest") for d in golden_document["layers"])
    entries = _entries(
        [Descriptor.from_data(d, "the lab manifest") for d in lab_document.get("layers", [])]
    )
    for entry in entries:
        if entry.is_disk:
            continue
        layout.read(entry.blobs[0], entry.what())
        recorded = _recorded_sha256(vms, entry)
        if recorded is not None and recorded != entry.blobs[0].digest[7:]:
            raise ArtifactError(
                f"{entry.what()}: blob {entry.blobs[0].digest} is not the file "
                f"manifest.json records (sha256 {recorded})"
            )
    checked.append(f"{len(entries)} files and their manifests")
    return Artifact(
        layout, tag, index, lab, golden, manifest_bytes, manifest, golden_config, pieces, entries,
        signer, checked,
    )  # fmt: skip


def _recorded_sha256(vms: dict[str, Any], entry: Entry) -> str | None:
    """What manifest.json says a VM's file is (None for the lab's own files)."""
    if entry.vm is None:
        return None
    artifacts = (vms.get(entry.vm) or {}).get("artifacts") or {}
    for recorded in artifacts.values():
        if recorded.get("file") == entry.name:
            return str(recorded.get("sha256"))
    raise ArtifactError(f"{entry.what()}: manifest.json does not list this file")


def check_data(artifact: Artifact, progress: Callable[[int, int], None] | None = None) -> None:
    """Read every piece: the disks' and the golden image's sha256, reassembled."""
    vms = artifact.manifest["vms"]
    for entry in artifact.entries:
        if entry.is_disk:
            expected = _recorded_sha256(vms, entry)
            assert expected is not None
            restore(artifact.layout, list(entry.blobs), entry.what(), expected)
    disks = sum(1 for entry in artifact.entries if entry.is_disk)
    artifact.checked.append(f"{disks} disks, reassembled")
    with step(f"Checking the {artifact.golden_what()}"):
        restore(
            artifact.layout,
            list(artifact.golden_pieces),
            artifact.golden_what(),
            artifact.golden_config["sha256"],
            progress=progress,
        )
    artifact.checked.append(
        f"the golden image, {len(artifact.golden_pieces)} pieces, sha256 "
        f"{artifact.golden_config['sha256']}"
    )


def verify(artifact: str | Path, trust: Trust) -> Artifact:
    with step(f"Verifying {artifact}"):
        opened = open_artifact(artifact, trust)
        check_data(opened)
    report(opened)
    return opened


def report(artifact: Artifact) -> None:
    """Say what was verified, and whose signature it carries."""
    info(
        f"‣ {artifact.layout.path}:{artifact.tag}: OK, lab {artifact.lab_name!r}, "
        + "; ".join(artifact.checked)
    )
