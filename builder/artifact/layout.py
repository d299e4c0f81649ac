"""An OCI image layout on disk: ``oci-layout``, ``index.json`` and ``blobs/sha256/``.

The layout is the artifact's one form: the same folder is copied with rsync, read by
any OCI tool (``skopeo inspect --raw oci:DIR:TAG``) and pushed to a registry as it
is. Blobs are content-addressed, so two labs packed into one layout share every
blob they have in common, and a blob already there is never written again.

The media types and annotation keys that vmbuild gives its blobs are declared here
and documented in docs/artifact.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vmbuild.errors import UserError
from vmbuild.host.files import write_atomic

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"

#: The artifact a tag names: an index of the lab's manifest and its golden image's.
LAB_ARTIFACT = "application/vnd.vmbuild.lab.v1"
LAB_CONFIG = "application/vnd.vmbuild.lab.manifest.v1+json"
GOLDEN_ARTIFACT = "application/vnd.vmbuild.golden.v1"
GOLDEN_CONFIG = "application/vnd.vmbuild.golden.config.v1+json"
#: One piece of a disk image (the golden image, or a VM's disk), zstd-compressed.
PIECE = "application/vnd.vmbuild.disk.piece.v1+zstd"
SEED = "application/vnd.vmbuild.seed.v1+iso"
DOMAIN = "application/vnd.vmbuild.domain.v1+xml"
FILE = "application/vnd.vmbuild.file.v1"
SIGNATURE_ARTIFACT = "application/vnd.vmbuild.signature.v1"
SIGNATURE = "application/vnd.vmbuild.signature.v1+sshsig"

TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
#: The VM a blob belongs to.
VM = "dev.vmbuild.vm"
#: The lab, on the index and the lab manifest.
LAB = "dev.vmbuild.lab"
#: The digest of the golden image's manifest, on the lab manifest.
GOLDEN = "dev.vmbuild.golden.manifest"
#: A piece's place in its file and what it holds once decompressed.
OFFSET = "dev.vmbuild.piece.offset"
SIZE = "dev.vmbuild.piece.size"
SHA256 = "dev.vmbuild.piece.sha256"
#: A signature's namespace and key fingerprint.
SIGNED_NAMESPACE = "dev.vmbuild.signature.namespace"
SIGNED_KEY = "dev.vmbuild.signature.key"

_EMPTY_BYTES = b"{}"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes vmbuild writes for a JSON document: sorted keys, no spaces, so the
    same content is always the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest or an index says about a blob."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            data["artifactType"] = self.artifact_type
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data

    @classmethod
    def from_data(cls, data: Any, where: str) -> Descriptor:
        try:
            media_type, digest, size = data["mediaType"], data["digest"], data["size"]
            annotations = data.get("annotations") or {}
            artifact_type = data.get("artifactType")
        except (TypeError, KeyError, AttributeError):
            raise ArtifactError(f"{where}: not an OCI descriptor") from None
        if not (
            isinstance(media_type, str)
            and isinstance(digest, str)
            and digest.startswith("sha256:")
            and len(digest) == 71
            and all(c in "0123456789abcdef" for c in digest[7:])
            and isinstance(size, int)
            and size >= 0
            and isinstance(annotations, dict)
        ):
            raise ArtifactError(f"{where}: not an OCI descriptor")
        return cls(media_type, digest, size, dict(annotations), artifact_type)

    def title(self) -> str:
        return self.annotations.get(TITLE, self.digest)


class ArtifactError(UserError):
    """An artifact that is not what it should be: missing, damaged or unsigned."""


def empty_config() -> Descriptor:
    return Descriptor(EMPTY, digest_of(_EMPTY_BYTES), len(_EMPTY_BYTES))


def manifest_document(
    config: Descriptor,
    layers: list[Descriptor],
    *,
    artifact_type: str,
    annotations: Mapping[str, str] | None = None,
    subject: Descriptor | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": config.to_data(),
        "layers": [layer.to_data() for layer in layers],
    }
    if subject is not None:
        document["subject"] = subject.to_data()
    if annotations:
        document["annotations"] = dict(annotations)
    return document


class Layout:
    """An OCI image layout folder, created on first write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def blobs(self) -> Path:
        return self.path / "blobs" / "sha256"

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file() and (self.path / "index.json").is_file()

    def create(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        if not (self.path / "oci-layout").is_file():
            write_atomic(self.path / "oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
        if not (self.path / "index.json").is_file():
            self.write_index([])

    # ------------------------------------------------------------------ blobs

    def has(self, descriptor: Descriptor) -> bool:
        path = self.blob_path(descriptor.digest)
        try:
            return path.stat().st_size == descriptor.size
        except OSError:
            return False

    def add_bytes(self, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        descriptor = Descriptor(media_type, digest_of(data), len(data), **extra)
        if not self.has(descriptor):
            write_atomic(self.blob_path(descriptor.digest), data)
        return descriptor

    def add_document(self, document: Mapping[str, Any], **extra: Any) -> Descriptor:
        return self.add_bytes(canonical(document), str(document["mediaType"]), **extra)

    @contextlib.contextmanager
    def writing(self) -> Iterator[BlobWriter]:
        """A blob written as a stream; moved into place by its digest when the block
        ends without an error, removed otherwise."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs / f".tmp-{uuid.uuid4().hex[:12]}"
        writer = BlobWriter(tmp.open("wb"))
        try:
            yield writer
            writer.file.flush()
            os.fsync(writer.file.fileno())
            writer.file.close()
            final = self.blob_path(writer.digest)
            if final.is_file() and final.stat().st_size == writer.size:
                tmp.unlink()
            else:
                os.replace(tmp, final)
        finally:
            writer.file.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def read(self, descriptor: Descriptor, what: str) -> bytes:
        """A small blob's bytes, checked against its descriptor."""
        path = self.blob_path(descriptor.digest)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ArtifactError(
                f"{what}: blob {descriptor.digest} is missing ({err.strerror})",
                place=str(self.path),
            ) from None
        if len(data) != descriptor.size or digest_of(data) != descriptor.digest:
            raise ArtifactError(
                f"{what}: blob {descriptor.digest} is damaged "
                f"({len(data)} bytes, sha256 {digest_of(data)[7:19]}…)",
                place=str(self.path),
            )
        return data

    def read_json(self, descriptor: Descriptor, what: str) -> dict[str, Any]:
        try:
            document = json.loads(self.read(descriptor, what))
        except ValueError:
            raise ArtifactError(f"{what}: blob {descriptor.digest} is not JSON") from None
        if not isinstance(document, dict):
            raise ArtifactError(f"{what}: blob {descriptor.digest} is not a JSON object")
        return document

    # ------------------------------------------------------------------ index

    def index(self) -> list[Descriptor]:
        where = str(self.path / "index.json")
        document = read_json_file(
            self.path / "index.json",
            f"{self.path} is not an OCI image layout (it has no index.json)",
            "`vmbuild pack BUNDLE -o DIR` writes one",
        )
        manifests = document.get("manifests") if isinstance(document, dict) else None
        if not isinstance(manifests, list):
            raise ArtifactError(f"{where} has no list of manifests")
        return [Descriptor.from_data(entry, where) for entry in manifests]

    def write_index(self, entries: list[Descriptor]) -> None:
        document = {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [entry.to_data() for entry in entries],
        }
        write_atomic(self.path / "index.json", canonical(document))

    def tags(self) -> dict[str, Descriptor]:
        return {
            entry.annotations[REF_NAME]: entry
            for entry in self.index()
            if REF_NAME in entry.annotations
        }

    def tag(self, name: str, descriptor: Descriptor) -> None:
        """Point ``name`` at ``descriptor``, replacing what it named before."""
        entries = [e for e in self.index() if e.annotations.get(REF_NAME) != name]
        tagged = Descriptor(
            descriptor.media_type,
            descriptor.digest,
            descriptor.size,
            {**descriptor.annotations, REF_NAME: name},
            descriptor.artifact_type,
        )
        self.write_index([*entries, tagged])

    def add_referrer(self, descriptor: Descriptor) -> None:
        """List a manifest that refers to another (a signature) in index.json."""
        entries = self.index()
        if all(entry.digest != descriptor.digest for entry in entries):
            self.write_index([*entries, descriptor])

    def reachable(self, top: Descriptor) -> list[Descriptor]:
        """``top`` and every blob below it (manifests, configs, layers), each once."""
        seen: dict[str, Descriptor] = {}
        todo = [top]
        while todo:
            descriptor = todo.pop()
            if descriptor.digest in seen:
                continue
            seen[descriptor.digest] = descriptor
            if descriptor.media_type in (INDEX, MANIFEST):
                document = self.read_json(descriptor, "manifest")
                children = [*document.get("manifests", []), *document.get("layers", [])]
                if "config" in document:
                    children.append(document["config"])
                todo += [Descriptor.from_data(child, str(self.path)) for child in children]
        return list(seen.values())

    def resolve(self, tag: str | None) -> tuple[str, Descriptor]:
        """The entry ``tag`` names; without a tag, the layout's only tagged entry."""
        tags = self.tags()
        if tag is None:
            if len(tags) != 1:
                names = ", ".join(sorted(tags)) or "none"
                raise ArtifactError(
                    f"{self.path} holds {len(tags)} tagged artifacts ({names})",
                    hint=f"name one: {self.path}:TAG",
                )
            tag = next(iter(tags))
        if tag not in tags:
            raise ArtifactError(
                f"{self.path} has no artifact tagged {tag!r}",
                hint="its tags: " + (", ".join(sorted(tags)) or "none"),
            )
        return tag, tags[tag]


class BlobWriter:
    """A blob being written: counts its bytes and hashes them on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def read_json_file(path: Path, missing: str, hint: str) -> Any:
    """A JSON file's document; ``missing`` (with ``hint``) when there is no file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(missing, hint=hint) from None
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} cannot be read: {err}") from None


def split_reference(artifact: str) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR:TAG`` (as skopeo's ``oci:DIR:TAG``) as the folder and the tag;
    the tag may hold colons itself (a registry reference, as `vmbuild pull` tags)."""
    path = Path(artifact)
    if path.is_dir() or ":" not in artifact:
        return path, None
    for found in re.finditer(":", artifact):
        if Path(artifact[: found.start()]).is_dir():
            return Path(artifact[: found.start()]), artifact[found.end() :] or None
    folder, _, tag = artifact.partition(":")
    return Path(folder), tag or None
