"""Push and pull of OCI image layouts against a real registry (tests/registry.py:
Docker Distribution 2.8 on 127.0.0.1 with htpasswd accounts), read back with
skopeo as a third-party OCI client.

Each test uses its own repository and fresh random blob bytes: the registry is
shared by the session, and Distribution keeps blobs once for all repositories.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from registry import (  # noqa: F401 (the fixtures registry and token_registry)
    LocalRegistry,
    registry_fixture,
    token_registry_fixture,
)
from vmbuild.artifact import registry as reg
from vmbuild.artifact.registry import RegistryError, parse_ref, pull, push

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAB_CONFIG = "application/vnd.vmbuild.lab.manifest.v1+json"
GOLDEN_CONFIG = "application/vnd.vmbuild.golden.config.v1+json"
PIECE = "application/vnd.vmbuild.golden.piece.v1+zstd"
SIGNATURE = "application/vnd.vmbuild.signature.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"

Json = dict[str, Any]


# ------------------------------------------------------------------ layouts


@dataclass
class Layout:
    """A synthetic OCI image layout written by a test."""

    root: Path
    #: Every blob written, manifests included: digest -> bytes.
    blobs: dict[str, bytes] = field(default_factory=dict)
    #: The configs and layers only (what push and pull count).
    plain: set[str] = field(default_factory=set)
    entries: list[Json] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
        self.save()

    def _write(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        self.blobs[digest] = data
        return digest

    def blob(self, data: bytes, media_type: str, title: str = "") -> Json:
        digest = self._write(data)
        self.plain.add(digest)
        descriptor: Json = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if title:
            descriptor["annotations"] = {TITLE: title}
        return descriptor

    def manifest(self, body: Json) -> Json:
        # Indented on purpose: a client that re-serialised would change the digest.
        data = json.dumps(body, indent=3).encode() + b"\n"
        descriptor: Json = {
            "mediaType": body["mediaType"],
            "digest": self._write(data),
            "size": len(data),
        }
        if "artifactType" in body:
            descriptor["artifactType"] = body["artifactType"]
        return descriptor

    def image(self, config: Json, layers: list[Json], **extra: Any) -> Json:
        body = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers}
        return self.manifest({**body, **extra})

    def index(self, manifests: list[Json], **extra: Any) -> Json:
        return self.manifest(
            {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests, **extra}
        )

    def signature(self, subject: Json, payload: bytes, kind: str = SIGNATURE) -> Json:
        subject_ref = {k: subject[k] for k in ("mediaType", "digest", "size")}
        return self.image(
            self.blob(b"{}", EMPTY),
            [self.blob(payload, kind)],
            artifactType=kind,
            subject=subject_ref,
            annotations={"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
        )

    def add(self, descriptor: Json, name: str | None = None) -> None:
        entry = dict(descriptor)
        if name is not None:
            entry["annotations"] = {REF_NAME: name}
        self.entries.append(entry)
        self.save()

    def save(self) -> None:
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": self.entries}
        (self.root / "index.json").write_text(json.dumps(index, indent=2) + "\n")

    def data(self, descriptor: Json) -> bytes:
        return self.blobs[descriptor["digest"]]

    def size_of(self, digests: set[str]) -> int:
        return sum(len(self.blobs[d]) for d in digests)


@dataclass
class Lab:
    """The layout of one lab: an image index of a lab manifest (config and three
    pieces) and a golden manifest, and a signature of the index."""

    layout: Layout
    top: Json
    lab: Json
    golden: Json
    pieces: list[Json]
    signature: Json


def make_lab(root: Path, *, pieces: list[bytes] | None = None, tag: str = "2026-12") -> Lab:
    layout = Layout(root)
    pieces = pieces or [os.urandom(size) for size in (300_000, 200_000, 100_000)]
    piece_descs = [layout.blob(p, PIECE, f"disk.piece{i}") for i, p in enumerate(pieces)]
    lab_config = layout.blob(json.dumps({"lab": root.name}).encode(), LAB_CONFIG)
    lab = layout.image(lab_config, piece_descs, artifactType=LAB_CONFIG)
    golden_config = layout.blob(json.dumps({"golden": "debian-12"}).encode(), GOLDEN_CONFIG)
    golden = layout.image(golden_config, [layout.blob(os.urandom(50_000), PIECE, "golden")])
    top = layout.index([lab, golden], artifactType="application/vnd.vmbuild.lab.v1")
    layout.add(top, tag)
    signature = layout.signature(top, os.urandom(64))
    layout.add(signature)
    return Lab(layout, top, lab, golden, piece_descs, signature)


def arrived(result: reg.PushResult) -> tuple[int, int]:
    """Blobs (and bytes) the repository got from a push: sent, or mounted from
    another repository of the registry (the other tests' share the registry)."""
    return (
        result.sent_blobs + result.mounted_blobs,
        result.sent_bytes + result.mounted_bytes,
    )


def layout_blobs(root: Path) -> dict[str, bytes]:
    folder = root / "blobs" / "sha256"
    return {f"sha256:{p.name}": p.read_bytes() for p in folder.iterdir()}


def read_index(root: Path) -> list[Json]:
    entries: list[Json] = json.loads((root / "index.json").read_text())["manifests"]
    return entries


# ------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def auth(registry: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The right account in $DOCKER_CONFIG; no other credential source."""
    for name in (
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "VMBUILD_REGISTRY_USERNAME",
        "VMBUILD_REGISTRY_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "docker"
    registry.write_auth(folder)
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


def repo(request: pytest.FixtureRequest) -> str:
    """A repository of its own for each test."""
    name = request.node.name.lower().replace("_", "-").replace("[", "-").strip("]")
    return f"labs/{name[:60].strip('-')}"


# ------------------------------------------------------------------ tests


def test_round_trip(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = make_lab(tmp_path / "lab")
    ref = registry.ref(repo(request), "2026-12")
    # Small chunks, so a blob goes up in several PATCH requests.
    monkeypatch.setattr(reg, "UPLOAD_CHUNK", 64 << 10)
    seen: dict[str, list[tuple[int, int]]] = {}

    def progress(name: str, done: int, total: int) -> None:
        seen.setdefault(name, []).append((done, total))

    pushed = push(lab.layout.root, "2026-12", ref, progress=progress)
    layout = lab.layout
    assert pushed.digest == lab.top["digest"]
    assert arrived(pushed) == (len(layout.plain), layout.size_of(layout.plain))
    assert (pushed.skipped_blobs, pushed.skipped_bytes) == (0, 0)
    assert pushed.referrers == (lab.signature["digest"],)
    # 300 000 bytes in 64 KiB chunks: five steps, the last one the whole blob.
    assert seen["disk.piece0"][-1] == (300_000, 300_000)
    assert [done for done, _ in seen["disk.piece0"]] == [65536, 131072, 196608, 262144, 300_000]

    into = tmp_path / "pulled"
    pulled = pull(ref, into, progress=progress)
    assert pulled.digest == lab.top["digest"]
    assert pulled.tag == "2026-12"
    assert (pulled.fetched_blobs, pulled.fetched_bytes) == (
        len(layout.plain),
        layout.size_of(layout.plain),
    )
    assert (pulled.reused_blobs, pulled.reused_bytes) == (0, 0)
    assert pulled.referrers == (lab.signature["digest"],)
    assert layout_blobs(into) == layout.blobs
    assert json.loads((into / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    entries = read_index(into)
    tops = [e for e in entries if e.get("annotations", {}).get(REF_NAME) == "2026-12"]
    assert [(e["digest"], e["mediaType"], e["size"]) for e in tops] == [
        (lab.top["digest"], INDEX, lab.top["size"])
    ]
    (signature,) = (e for e in entries if e["digest"] == lab.signature["digest"])
    assert REF_NAME not in signature.get("annotations", {})
    assert signature["artifactType"] == SIGNATURE
    assert signature["subject"]["digest"] == lab.top["digest"]
    assert signature["mediaType"] == MANIFEST
    assert not list((into / "blobs" / "sha256").glob("*.partial"))

    # Distribution 2.8 has no referrers API: the fallback tag lists the signature.
    fallback = json.loads(
        skopeo_raw(registry, f"{repo(request)}:sha256-{lab.top['digest'][7:]}").decode()
    )
    assert [d["digest"] for d in fallback["manifests"]] == [lab.signature["digest"]]
    assert fallback["manifests"][0]["artifactType"] == SIGNATURE


def test_pull_under_another_name_replaces_the_old_entry(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    first = make_lab(tmp_path / "first")
    second = make_lab(tmp_path / "second")
    name = repo(request)
    push(first.layout.root, "2026-12", registry.ref(name, "one"))
    push(second.layout.root, "2026-12", registry.ref(name, "two"))
    into = tmp_path / "pulled"
    pull(registry.ref(name, "one"), into, tag="current")
    result = pull(registry.ref(name, "two"), into, tag="current")
    assert result.tag == "current"
    named = [e for e in read_index(into) if e.get("annotations", {}).get(REF_NAME)]
    assert [(e["digest"], e["annotations"][REF_NAME]) for e in named] == [
        (second.top["digest"], "current")
    ]
    # Both signatures stay listed: each is a referrer of content in the layout.
    signatures = {e["digest"] for e in read_index(into) if "subject" in e}
    assert signatures == {first.signature["digest"], second.signature["digest"]}


def test_second_push_sends_only_new_blobs(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    first = make_lab(tmp_path / "first")
    shared = [first.layout.data(p) for p in first.pieces[:2]]
    fresh = os.urandom(120_000)
    second = make_lab(tmp_path / "second", pieces=[*shared, fresh], tag="2027-01")
    name = repo(request)
    push(first.layout.root, "2026-12", registry.ref(name, "2026-12"))
    result = push(second.layout.root, "2027-01", registry.ref(name, "2027-01"))

    layout = second.layout
    on_registry = first.layout.plain
    new = layout.plain - on_registry
    # The new piece, the lab config (it names the folder), the golden layer (random)
    # and the golden config is shared; the signature's payload is new, its {} is not.
    assert arrived(result) == (len(new), layout.size_of(new))
    assert len(new) == 4
    assert result.skipped_blobs == len(layout.plain & on_registry) == 4
    assert result.skipped_bytes == layout.size_of(layout.plain & on_registry)
    assert fresh in {layout.blobs[d] for d in new}

    # Pushed again unchanged: nothing is sent.
    again = push(second.layout.root, "2027-01", registry.ref(name, "2027-01"))
    assert (again.sent_blobs, again.skipped_blobs) == (0, len(layout.plain))


def test_a_push_to_another_repository_mounts_the_shared_blobs(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A second lab pushed to its own repository: the blobs another repository of
    the registry has are mounted from it (cross-repository mount), not sent."""
    first = make_lab(tmp_path / "first")
    shared = [first.layout.data(p) for p in first.pieces[:2]]
    second = make_lab(tmp_path / "second", pieces=[*shared, os.urandom(120_000)])
    name = repo(request)
    push(first.layout.root, "2026-12", registry.ref(f"{name}-a", "2026-12"))
    result = push(second.layout.root, "2026-12", registry.ref(f"{name}-b", "2026-12"))

    layout = second.layout
    shared_blobs = layout.plain & first.layout.plain
    # At least what the first lab's repository has; other tests' repositories on
    # this registry may hold more (the empty config, say).
    assert result.mounted_blobs >= len(shared_blobs) > 0
    assert result.mounted_bytes >= layout.size_of(shared_blobs) >= 500_000
    assert arrived(result) == (len(layout.plain), layout.size_of(layout.plain))
    assert 120_000 <= result.sent_bytes < layout.size_of(layout.plain - shared_blobs) + 1
    assert result.skipped_blobs == 0
    # Mounted blobs belong to the new repository: it pulls back whole.
    pulled = pull(registry.ref(f"{name}-b", "2026-12"), tmp_path / "pulled")
    assert pulled.digest == second.top["digest"]
    assert layout_blobs(tmp_path / "pulled") == layout.blobs


def test_pull_reuses_blobs_already_there(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    lab = make_lab(tmp_path / "lab")
    ref = registry.ref(repo(request), "2026-12")
    push(lab.layout.root, "2026-12", ref)
    into = tmp_path / "pulled"
    (into / "blobs" / "sha256").mkdir(parents=True)
    kept = {p["digest"] for p in lab.pieces[:2]}
    for digest in kept:
        shutil.copy(lab.layout.root / "blobs/sha256" / digest[7:], into / "blobs/sha256")
    # A blob there with wrong bytes is fetched again, not reused.
    damaged = lab.pieces[2]["digest"]
    (into / "blobs/sha256" / damaged[7:]).write_bytes(b"x" * lab.pieces[2]["size"])

    result = pull(ref, into)
    plain = lab.layout.plain
    assert (result.reused_blobs, result.reused_bytes) == (2, lab.layout.size_of(kept))
    assert (result.fetched_blobs, result.fetched_bytes) == (
        len(plain) - 2,
        lab.layout.size_of(plain - kept),
    )
    assert layout_blobs(into) == lab.layout.blobs


def test_interrupted_push_resumes(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A push cut off after its first blob: pushed again, it sends only the rest."""
    lab = make_lab(tmp_path / "lab", pieces=[os.urandom(size) for size in (90_000, 80_000)])
    ref = registry.ref(repo(request), "2026-12")
    finished: list[str] = []

    def cut(name: str, done: int, total: int) -> None:
        if done == total:
            finished.append(name)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push(lab.layout.root, "2026-12", ref, progress=cut)
    assert len(finished) == 1
    again = push(lab.layout.root, "2026-12", ref)
    assert again.skipped_blobs >= 1
    assert again.skipped_blobs + arrived(again)[0] == len(lab.layout.plain)
    assert pull(ref, tmp_path / "pulled").digest == lab.top["digest"]
    assert layout_blobs(tmp_path / "pulled") == lab.layout.blobs


def test_interrupted_pull_resumes(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    lab = make_lab(tmp_path / "lab")
    ref = registry.ref(repo(request), "2026-12")
    push(lab.layout.root, "2026-12", ref)
    into = tmp_path / "pulled"
    pull(ref, into)

    # One blob gone; another cut short in its temporary file, as a killed pull
    # leaves it; a third with a temporary file of wrong bytes.
    blobs = into / "blobs" / "sha256"
    gone, cut, spoilt = lab.pieces
    (blobs / gone["digest"][7:]).unlink()
    whole = (blobs / cut["digest"][7:]).read_bytes()
    (blobs / cut["digest"][7:]).unlink()
    (blobs / (cut["digest"][7:] + ".partial")).write_bytes(whole[:70_000])
    (blobs / spoilt["digest"][7:]).unlink()
    (blobs / (spoilt["digest"][7:] + ".partial")).write_bytes(b"\0" * 1000)

    result = pull(ref, into)
    assert result.fetched_blobs == 3
    # The cut blob comes as a range: only the bytes it lacked. The spoilt one comes
    # as a range too, fails its digest, and comes again whole.
    assert result.fetched_bytes == (
        gone["size"] + cut["size"] - 70_000 + spoilt["size"] - 1000 + spoilt["size"]
    )
    assert result.reused_blobs == len(lab.layout.plain) - 3
    assert layout_blobs(into) == lab.layout.blobs


def test_damaged_blob_on_the_registry_is_refused(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    lab = make_lab(tmp_path / "lab")
    ref = registry.ref(repo(request), "2026-12")
    push(lab.layout.root, "2026-12", ref)
    bad = lab.pieces[1]
    registry.blob_data(bad["digest"]).write_bytes(os.urandom(bad["size"]))

    into = tmp_path / "pulled"
    with pytest.raises(RegistryError) as caught:
        pull(ref, into)
    assert bad["digest"] in caught.value.message
    assert registry.host in caught.value.message
    blobs = into / "blobs" / "sha256"
    assert not (blobs / bad["digest"][7:]).exists()
    assert not list(blobs.glob("*.partial"))
    # Nothing names the tag in the layout: index.json is written last.
    assert read_index(into) == []


def test_second_referrer_merges_into_the_fallback_tag(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    lab = make_lab(tmp_path / "lab")
    ref = registry.ref(repo(request), "2026-12")
    push(lab.layout.root, "2026-12", ref)
    # Later, an attestation of the same index, and a signature of that attestation.
    attestation = lab.layout.signature(lab.top, b'{"built": true}', "application/vnd.test.att+json")
    lab.layout.add(attestation)
    countersign = lab.layout.signature(attestation, os.urandom(32))
    lab.layout.add(countersign)
    result = push(lab.layout.root, "2026-12", ref)
    assert set(result.referrers) == {
        lab.signature["digest"],
        attestation["digest"],
        countersign["digest"],
    }
    fallback = json.loads(
        skopeo_raw(registry, f"{repo(request)}:sha256-{lab.top['digest'][7:]}").decode()
    )
    assert [d["digest"] for d in fallback["manifests"]] == [
        lab.signature["digest"],
        attestation["digest"],
    ]

    into = tmp_path / "pulled"
    pulled = pull(ref, into)
    assert set(pulled.referrers) == set(result.referrers)
    subjects = {e["digest"]: e["subject"]["digest"] for e in read_index(into) if "subject" in e}
    assert subjects == {
        lab.signature["digest"]: lab.top["digest"],
        attestation["digest"]: lab.top["digest"],
        countersign["digest"]: attestation["digest"],
    }
    assert layout_blobs(into) == lab.layout.blobs


def test_single_manifest_and_skopeo_reads_it(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    lab = make_lab(tmp_path / "lab")
    lab.layout.add(lab.golden, "golden")
    name = repo(request)
    push(lab.layout.root, "golden", registry.ref(name, "golden"))
    push(lab.layout.root, "2026-12", registry.ref(name, "2026-12"))
    # A third-party OCI client sees exactly the bytes of the layout.
    assert skopeo_raw(registry, f"{name}:golden") == lab.layout.data(lab.golden)
    assert skopeo_raw(registry, f"{name}:2026-12") == lab.layout.data(lab.top)
    assert skopeo_raw(registry, f"{name}@{lab.lab['digest']}") == lab.layout.data(lab.lab)

    into = tmp_path / "pulled"
    result = pull(registry.ref(name, "golden"), into)
    assert result.digest == lab.golden["digest"]
    assert (result.fetched_blobs, result.reused_blobs) == (2, 0)
    (entry,) = read_index(into)
    assert entry["mediaType"] == MANIFEST


def test_wrong_password_is_refused(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = make_lab(tmp_path / "lab")
    folder = tmp_path / "wrong"
    config = registry.write_auth(folder, password="not-the-password")
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    ref = registry.ref(repo(request), "2026-12")
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        push(lab.layout.root, "2026-12", ref)
    assert time.monotonic() - started < 5
    error = caught.value
    assert registry.host in error.message
    assert "refused" in error.message
    assert str(config) in error.message
    assert "VMBUILD_REGISTRY_USERNAME" in error.hint
    with pytest.raises(RegistryError, match="refused"):
        pull(ref, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


def test_no_credentials(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    with pytest.raises(RegistryError) as caught:
        pull(registry.ref(repo(request), "x"), tmp_path / "pulled")
    assert f"registry {registry.host} wants credentials" in caught.value.message
    assert str(tmp_path / "nowhere" / "config.json") in caught.value.hint


def test_credentials_from_the_environment_and_auth_file(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = make_lab(tmp_path / "lab")
    ref = registry.ref(repo(request), "2026-12")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    monkeypatch.setenv("VMBUILD_REGISTRY_USERNAME", registry.username)
    monkeypatch.setenv("VMBUILD_REGISTRY_PASSWORD", registry.password)
    assert arrived(push(lab.layout.root, "2026-12", ref))[0] == len(lab.layout.plain)
    monkeypatch.delenv("VMBUILD_REGISTRY_USERNAME")
    monkeypatch.delenv("VMBUILD_REGISTRY_PASSWORD")
    # podman's form: $REGISTRY_AUTH_FILE, a key with a scheme.
    auth_file = registry.write_auth(tmp_path / "podman")
    text = auth_file.read_text().replace(f'"{registry.host}"', f'"http://{registry.host}"')
    auth_file.write_text(text)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    assert pull(ref, tmp_path / "pulled").digest == lab.top["digest"]


def test_bearer_tokens(
    token_registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry that answers with a Bearer challenge: oras asks the token server
    for a token per scope, with the account's password."""
    lab = make_lab(tmp_path / "lab")
    name = repo(request)
    ref = token_registry.ref(name, "2026-12")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    with pytest.raises(RegistryError, match="wants credentials and none were found"):
        push(lab.layout.root, "2026-12", ref)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "wrong"))
    token_registry.write_auth(tmp_path / "wrong", password="not-the-password")
    with pytest.raises(RegistryError, match="refused the credentials"):
        push(lab.layout.root, "2026-12", ref)

    token_registry.write_auth(tmp_path / "right")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "right"))
    pushed = push(lab.layout.root, "2026-12", ref)
    assert arrived(pushed)[0] == len(lab.layout.plain)
    # First a token to read (is the blob there?), then one to write: oras's token
    # for the old scope is dropped and the new scope asked for.
    assert f"repository:{name}:pull" in token_registry.scopes
    writes = [
        scope
        for scope in token_registry.scopes
        if scope.startswith(f"repository:{name}:")
        and set(scope.rpartition(":")[2].split(",")) == {"pull", "push"}
    ]
    assert writes, token_registry.scopes
    into = tmp_path / "pulled"
    pulled = pull(ref, into)
    assert pulled.digest == lab.top["digest"]
    assert pulled.referrers == (lab.signature["digest"],)
    assert layout_blobs(into) == lab.layout.blobs


def test_unknown_tag(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    lab = make_lab(tmp_path / "lab")
    name = repo(request)
    push(lab.layout.root, "2026-12", registry.ref(name, "2026-12"))
    with pytest.raises(RegistryError) as caught:
        pull(registry.ref(name, "1999-01"), tmp_path / "pulled")
    assert "no such tag" in caught.value.message
    assert f"{name}:1999-01" in caught.value.message
    # And a repository nobody pushed to.
    with pytest.raises(RegistryError, match="no such tag"):
        pull(registry.ref(name + "-never", "2026-12"), tmp_path / "pulled")


def test_tag_missing_from_the_layout(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    lab = make_lab(tmp_path / "lab")
    with pytest.raises(RegistryError, match="no entry named 'nope'") as caught:
        push(lab.layout.root, "nope", registry.ref(repo(request), "x"))
    assert "2026-12" in caught.value.hint


@pytest.mark.parametrize("lost", ["piece", "manifest"])
def test_a_layout_missing_a_blob_or_manifest_is_refused_before_anything_is_tagged(
    registry: LocalRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    lost: str,
) -> None:
    lab = make_lab(tmp_path / "lab")
    digest = lab.pieces[1]["digest"] if lost == "piece" else lab.golden["digest"]
    (lab.layout.root / "blobs" / "sha256" / digest[7:]).unlink()
    ref = registry.ref(repo(request), "2026-12")
    with pytest.raises(RegistryError) as caught:
        push(lab.layout.root, "2026-12", ref)
    kind = "blob" if lost == "piece" else "manifest"
    assert caught.value.message == f"the layout lacks {kind} {digest}"
    assert caught.value.place == str(lab.layout.root)
    assert caught.value.hint == "the layout is incomplete: pack or pull it again"
    with pytest.raises(RegistryError, match="no such tag"):
        pull(ref, tmp_path / "pulled")


def test_registry_not_running(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lab = make_lab(tmp_path / "lab")
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        push(lab.layout.root, "2026-12", f"127.0.0.1:{port}/labs/demo:1")
    assert time.monotonic() - started < 5
    assert f"cannot reach registry 127.0.0.1:{port}" in caught.value.message
    assert "Connection refused" in caught.value.message


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("127.0.0.1:5000/labs/demo", "no tag"),
        ("127.0.0.1:5000/labs/demo:", "no tag"),
        ("127.0.0.1:5000", "no repository"),
        ("127.0.0.1:5000/:tag", "no repository"),
        ("labs/demo:tag", "not a registry host"),
        ("127.0.0.1:5000/Labs/demo:tag", "not a repository name"),
        ("127.0.0.1:5000/labs/demo@sha256:" + "0" * 64, "by digest"),
    ],
)
def test_bad_references(ref: str, why: str) -> None:
    with pytest.raises(RegistryError, match=why) as caught:
        parse_ref(ref)
    assert caught.value.place == ref
    assert "HOST[:PORT]/REPOSITORY:TAG" in caught.value.hint


def test_references_and_plain_http() -> None:
    ref = parse_ref("registry.example.org/labs/my.lab:2026-12")
    assert (ref.host, ref.repository, ref.tag) == ("registry.example.org", "labs/my.lab", "2026-12")
    assert parse_ref("[::1]:5000/demo:v1").host == "[::1]:5000"
    assert reg.is_loopback("127.0.0.2:5000")
    assert reg.is_loopback("[::1]:5000")
    assert reg.is_loopback("localhost")
    assert not reg.is_loopback("registry.example.org:5000")
    assert not reg.is_loopback("10.0.0.1")


PLAIN_HTTP_CHECK = """
import http.server, sys, threading
from pathlib import Path
from vmbuild.artifact.registry import RegistryError, push

class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)
        self.send_header("Www-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("192.0.2.77", 0), Answer)
threading.Thread(target=server.serve_forever, daemon=True).start()
ref = f"192.0.2.77:{server.server_address[1]}/labs/demo:v1"
for insecure in (False, True):
    try:
        push(Path(sys.argv[1]), "2026-12", ref, insecure=insecure)
    except RegistryError as err:
        print(f"insecure={insecure}: {err.message}")
"""


def test_plain_http_only_for_loopback_or_insecure(tmp_path: Path) -> None:
    """A registry on an address that is not loopback (a documentation address in a
    network namespace of its own, speaking plain HTTP): vmbuild speaks TLS to it and
    fails, unless --insecure, when it speaks HTTP and gets the registry's answer."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a network namespace")
    lab = make_lab(tmp_path / "lab")
    script = tmp_path / "check.py"
    script.write_text(PLAIN_HTTP_CHECK)
    shell = f'ip link set lo up && ip addr add 192.0.2.77/32 dev lo && exec {sys.executable} "$@"'
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell, "sh", str(script), str(lab.layout.root)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert lines[0].startswith("insecure=False: ") and "TLS" in lines[0], lines[0]
    assert lines[1].startswith("insecure=True: ") and "wants credentials" in lines[1], lines[1]


def skopeo_raw(registry: LocalRegistry, image: str) -> bytes:
    """What skopeo, a third-party OCI client, reads for ``image`` (repo:tag or repo@digest)."""
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    done = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            f"{registry.username}:{registry.password}",
            f"docker://{registry.host}/{image}",
        ],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout
