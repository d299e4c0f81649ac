"""``vmbuild pack``: a built bundle as an OCI artifact, optionally signed.

What a tag names (docs/artifact.md has the whole format)::

    index (artifactType application/vnd.vmbuild.lab.v1)
    ├── lab manifest      config: the bundle's manifest.json
    │                     layers: each VM's disk (zstd pieces), seed ISO and domain
    │                             XML, then the lab files (plan.json, inventory, ...)
    │                     annotation dev.vmbuild.golden.manifest → the golden manifest
    └── golden manifest   config: the golden image's size, format, sha256, recipe
                          layers: the golden image in zstd pieces
    signature manifests, each with ``subject`` → the lab manifest (OCI 1.1 referrers)

The golden image is stored once per layout, however many labs use it: its pieces
and manifest depend only on its bytes, and a layout that already holds them (from
another lab) is not written again. Nothing here depends on time or on the machine,
so packing the same bundle twice gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vmbuild.artifact import layout as oci
from vmbuild.artifact.layout import ArtifactError, Descriptor, Layout, read_json_file
from vmbuild.artifact.pieces import LEVEL, MAX_PIECE, for_file, pack_file
from vmbuild.artifact.sign import NAMESPACE, fingerprint, sign
from vmbuild.golden.recipe import sidecar
from vmbuild.host import qemuimg
from vmbuild.host.files import file_digest
from vmbuild.host.space import write_error
from vmbuild.log import Progress, info, step
from vmbuild.output.bundle import MANIFEST, MANIFEST_FORMAT, SUMS, read_sums

LAB_BUNDLE = "application/vnd.vmbuild.lab.bundle.v1"
GOLDEN_CONFIG_FORMAT = 1


@dataclass(frozen=True)
class PackResult:
    layout: Path
    tag: str
    #: The index the tag names, the lab manifest in it and the golden image's manifest.
    index: Descriptor
    lab: Descriptor
    golden: Descriptor
    #: The signature manifest, when the lab was signed.
    signature: Descriptor | None
    #: Bytes of blobs that this pack wrote, and of those the layout already had.
    written: int
    reused: int
    #: The lab manifest's layers: every file of the bundle, a disk in pieces.
    layers: tuple[Descriptor, ...] = ()

    def to_json(self) -> dict[str, Any]:
        files: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            entry = files.setdefault(
                layer.title(), {"vm": layer.annotations.get(oci.VM), "blobs": 0, "size": 0}
            )
            entry["blobs"] += 1
            entry["size"] += layer.size
        return {
            "layout": str(self.layout),
            "tag": self.tag,
            "digest": self.index.digest,
            "lab_manifest": self.lab.digest,
            "golden_manifest": self.golden.digest,
            "signature": self.signature.digest if self.signature else None,
            "size": self.written + self.reused,
            "written_bytes": self.written,
            "reused_bytes": self.reused,
            "files": files,
        }


def read_bundle_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST
    manifest = read_json_file(
        path,
        f"{bundle} is not a vmbuild bundle (it has no {MANIFEST})",
        "pack the folder that `vmbuild build` printed: OUTPUT/<lab>",
    )
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(
            f"{path} is not a manifest this vmbuild reads (format {MANIFEST_FORMAT})",
            hint="rebuild the lab with this vmbuild",
        )
    return manifest


def _bundle_files(bundle: Path) -> dict[str, str]:
    """Every file of the bundle with its sha256, as SHA256SUMS records it, after
    checking that the files are those: a bundle whose VMs ran, or that was edited,
    is not what was built."""
    try:
        recorded = read_sums((bundle / SUMS).read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{bundle / SUMS} cannot be read: {err}") from None
    for name, digest in recorded.items():
        path = bundle / name
        parts = PurePosixPath(name).parts
        if not parts or parts[0] in ("/", "..") or ".." in parts:
            raise ArtifactError(f"{bundle / SUMS} names a file outside the bundle: {name!r}")
        try:
            mode = path.lstat().st_mode
        except OSError as err:
            raise ArtifactError(f"{path} is missing ({err.strerror})", place=str(bundle)) from None
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"{path} is not a regular file", place=str(bundle))
        if file_digest(path) != digest:
            raise ArtifactError(
                f"{name} is not the file that was built (its sha256 differs from {SUMS})",
                place=str(bundle),
                hint="a VM that ran on the bundle changed its disk; rebuild the lab "
                "(vmbuild build --force) and pack the fresh bundle",
            )
    return recorded


def _golden_config(path: Path, base: Mapping[str, Any], piece_size: int, level: int) -> bytes:
    recipe = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recipe = json.loads(sidecar(path, ".json").read_text()).get("recipe")
    config = {
        "format": GOLDEN_CONFIG_FORMAT,
        "name": path.name,
        "disk_format": base["format"],
        "virtual_size": base["virtual_size"],
        "size": path.stat().st_size,
        "sha256": base["sha256"],
        "piece_size": piece_size,
        "level": level,
        "recipe": recipe,
    }
    return oci.canonical(config)


def _pack_golden(
    layout: Layout, base: Mapping[str, Any], piece_size: int, progress: Progress | None
) -> tuple[Descriptor, int]:
    """The golden image's manifest, written unless the layout has it; the bytes written."""
    path = Path(base["path"])
    if not path.is_file():
        raise ArtifactError(
            f"the golden image {path} is gone",
            hint="rebuild the lab (vmbuild build), which makes or finds it again",
        )
    image = qemuimg.info(path, base["format"], force_share=True)
    if image.backing_file:
        raise ArtifactError(
            f"the golden image {path} is an overlay on {image.backing_file}",
            hint=f"flatten it first: qemu-img convert -O {base['format']} {path} NEW, "
            "and build the lab on NEW",
        )
    config_bytes = _golden_config(path, base, piece_size, LEVEL)
    config = Descriptor(oci.GOLDEN_CONFIG, oci.digest_of(config_bytes), len(config_bytes))
    known = _known_golden(layout, config)
    if known is not None:
        info(f"  golden image {path.name}: already in {layout.path}")
        return known, 0
    whole = hashlib.sha256()
    with step(f"Packing the golden image {path.name}"):
        pieces = pack_file(
            layout,
            path,
            {oci.TITLE: path.name},
            piece_size=piece_size,
            progress=for_file(progress, path.name),
            whole=whole,
        )
    sha = whole.hexdigest()
    if sha != base["sha256"]:
        raise ArtifactError(
            f"the golden image {path} changed since the lab was built "
            f"(sha256 {sha}, the manifest records {base['sha256']})",
            hint="rebuild the lab (vmbuild build) and pack it again",
        )
    layout.add_bytes(config_bytes, oci.GOLDEN_CONFIG)
    document = oci.manifest_document(
        config, pieces, artifact_type=oci.GOLDEN_ARTIFACT, annotations={oci.TITLE: path.name}
    )
    written = sum(piece.size for piece in pieces) + len(config_bytes)
    return layout.add_document(document, artifact_type=oci.GOLDEN_ARTIFACT), written


def _known_golden(layout: Layout, config: Descriptor) -> Descriptor | None:
    """The golden manifest with this config that a lab in the layout already uses,
    with all of its blobs there."""
    for entry in layout.index():
        if entry.artifact_type != oci.LAB_ARTIFACT or not layout.has(entry):
            continue
        try:
            index = layout.read_json(entry, "index")
            for child in index.get("manifests", []):
                golden = Descriptor.from_data(child, "index")
                if golden.artifact_type != oci.GOLDEN_ARTIFACT or not layout.has(golden):
                    continue
                document = layout.read_json(golden, "golden manifest")
                if Descriptor.from_data(document["config"], "config").digest != config.digest:
                    continue
                layers = [Descriptor.from_data(d, "layer") for d in document["layers"]]
                if all(layout.has(layer) for layer in layers):
                    return golden
        except (ArtifactError, KeyError, TypeError):
            continue
    return None


def _vm_of(name: str) -> str | None:
    parts = PurePosixPath(name).parts
    return parts[1] if len(parts) == 3 and parts[0] == "vms" else None


def _pack_file(
    layout: Layout, bundle: Path, name: str, piece_size: int, progress: Progress | None
) -> list[Descriptor]:
    annotations = {oci.TITLE: name}
    vm = _vm_of(name)
    if vm is not None:
        annotations[oci.VM] = vm
    filename = PurePosixPath(name).name
    if vm is not None and filename.startswith("disk."):
        return pack_file(
            layout,
            bundle / name,
            annotations,
            piece_size=piece_size,
            progress=for_file(progress, name),
        )
    media_type = {"seed.iso": oci.SEED, "domain.xml": oci.DOMAIN}.get(filename, oci.FILE)
    if vm is None:
        media_type = oci.FILE
    return [layout.add_bytes((bundle / name).read_bytes(), media_type, annotations=annotations)]


def _order(name: str) -> tuple[int, str]:
    """Each VM's files first (disk, seed, XML), in the order of the plan; then the rest."""
    return (0 if _vm_of(name) else 1, name)


def pack(
    bundle: Path,
    out: Path,
    *,
    tag: str | None = None,
    sign_key: Path | None = None,
    piece_size: int = MAX_PIECE,
    progress: Progress | None = None,
) -> PackResult:
    """Write ``bundle`` into the OCI layout ``out`` under ``tag`` (default: the
    lab's name); sign the lab manifest with ``sign_key`` when given."""
    manifest = read_bundle_manifest(bundle)
    lab = str(manifest["lab"])
    tag = tag or lab
    files = _bundle_files(bundle)
    try:
        layout = Layout(out)
        layout.create()
        before = {path.name for path in layout.blobs.iterdir()}
        golden, _ = _pack_golden(layout, manifest["base"], piece_size, progress)
        layers: list[Descriptor] = []
        with step(f"Packing lab {lab!r}: {len(manifest['vms'])} VMs"):
            for name in sorted(files, key=_order):
                if name in (MANIFEST, SUMS):
                    continue
                layers += _pack_file(layout, bundle, name, piece_size, progress)
        config = layout.add_bytes((bundle / MANIFEST).read_bytes(), oci.LAB_CONFIG)
        lab_document = oci.manifest_document(
            config,
            layers,
            artifact_type=LAB_BUNDLE,
            annotations={oci.LAB: lab, oci.GOLDEN: golden.digest},
        )
        lab_manifest = layout.add_document(lab_document, artifact_type=LAB_BUNDLE)
        index = layout.add_document(
            _index(lab, lab_manifest, golden), artifact_type=oci.LAB_ARTIFACT
        )
        signature = None
        if sign_key is not None:
            signature = _sign(layout, lab_manifest, sign_key)
            layout.add_referrer(signature)
        layout.tag(tag, index)
    except OSError as err:
        raise write_error(
            err,
            err.filename or out,
            out,
            "; the layout's index was not changed",
            hint="free some space (or choose another -o DIR) and pack again",
        ) from None
    blobs = layout.reachable(index) + ([signature] if signature else [])
    written = sum(blob.size for blob in blobs if blob.digest[7:] not in before)
    reused = sum(blob.size for blob in blobs if blob.digest[7:] in before)
    info(f"‣ Packed {lab!r} as {out}:{tag} ({index.digest[:19]}…)")
    return PackResult(
        out, tag, index, lab_manifest, golden, signature, written, reused, tuple(layers)
    )


def _index(lab: str, lab_manifest: Descriptor, golden: Descriptor) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": oci.INDEX,
        "artifactType": oci.LAB_ARTIFACT,
        "manifests": [lab_manifest.to_data(), golden.to_data()],
        "annotations": {oci.LAB: lab},
    }


def _sign(layout: Layout, lab_manifest: Descriptor, key: Path) -> Descriptor:
    with step(f"Signing the lab manifest with {key}"):
        signature = sign(key, lab_manifest.digest)
        blob = layout.add_bytes(signature, oci.SIGNATURE)
        layout.add_bytes(b"{}", oci.EMPTY)
        document = oci.manifest_document(
            oci.empty_config(),
            [blob],
            artifact_type=oci.SIGNATURE_ARTIFACT,
            annotations={oci.SIGNED_NAMESPACE: NAMESPACE, oci.SIGNED_KEY: fingerprint(key)},
            subject=lab_manifest,
        )
        return layout.add_document(document, artifact_type=oci.SIGNATURE_ARTIFACT)
