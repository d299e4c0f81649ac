"""Labs as signed OCI artifacts: pack, verify and unpack real bundles.

Two labs are built on the session's small golden image (one appliance launch each),
packed with a real SSH key into real OCI layouts, read by skopeo (an OCI tool that
vmbuild did not write), damaged in every way the format must catch, and unpacked
into another folder and golden cache, where the disks' identity is read back with
libguestfs and the next build of the profile finds nothing to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli, small_tmpfs
from guestimages import read_guest_files
from labs import USER, WEB_DB, write_lab
from registry import LocalRegistry, registry_fixture  # noqa: F401 (the fixture registry)
from vmbuild.artifact import layout as oci
from vmbuild.artifact.layout import ArtifactError, Descriptor, Layout
from vmbuild.artifact.pack import LAB_BUNDLE, PackResult, pack
from vmbuild.artifact.trust import Trust
from vmbuild.artifact.unpack import unpack
from vmbuild.artifact.verify import verify
from vmbuild.build.base import golden_recipe
from vmbuild.cli import main
from vmbuild.golden.recipe import golden_path, sidecar
from vmbuild.host.files import file_digest
from vmbuild.model.plan import make_plan
from vmbuild.model.profile import load_profile

pytestmark = pytest.mark.guestfs

PIECE = 1 << 20
IDENTITY = ("/etc/hostname", "/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub")


@dataclass(frozen=True)
class Keys:
    key: Path
    allowed: Path
    stranger: Path


@dataclass(frozen=True)
class Labs:
    profile: Path
    golden: Path
    bundle: Path
    other: Path
    keys: Keys


def _key(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory, os_image: Path) -> Labs:
    work = tmp_path_factory.mktemp("artifact")
    golden = work / "golden.qcow2"
    shutil.copyfile(os_image, golden)
    profile = write_lab(work, golden, name="art", network=USER, vms=WEB_DB)
    assert main(["build", str(profile), "-o", str(work / "out"), "-q"]) == 0
    assert (
        main(["build", str(profile), "-o", str(work / "out"), "-q", "--set", "lab.name=art2"]) == 0
    )
    keys = work / "keys"
    keys.mkdir()
    key, stranger = _key(keys, "signer"), _key(keys, "stranger")
    allowed = keys / "allowed_signers"
    allowed.write_text(
        f'signer@example.org namespaces="vmbuild-lab" {(keys / "signer.pub").read_text()}'
    )
    return Labs(
        profile, golden, work / "out" / "art", work / "out" / "art2", Keys(key, allowed, stranger)
    )


@pytest.fixture(scope="module")
def packed(labs: Labs, tmp_path_factory: pytest.TempPathFactory) -> PackResult:
    out = tmp_path_factory.mktemp("layout") / "labs"
    return pack(labs.bundle, out, sign_key=labs.keys.key, piece_size=PIECE)


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_packing_is_reproducible(labs: Labs, packed: PackResult, tmp_path: Path) -> None:
    again = pack(labs.bundle, tmp_path / "again", sign_key=labs.keys.key, piece_size=PIECE)
    assert again.index == packed.index
    assert _tree(tmp_path / "again") == _tree(packed.layout)


def test_skopeo_reads_the_layout(packed: PackResult) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{packed.layout}:{packed.tag}"],
        capture_output=True,
        check=True,
    ).stdout
    assert raw == Layout(packed.layout).blob_path(packed.index.digest).read_bytes()
    index = json.loads(raw)
    assert index["artifactType"] == oci.LAB_ARTIFACT
    assert [m["artifactType"] for m in index["manifests"]] == [LAB_BUNDLE, oci.GOLDEN_ARTIFACT]


def test_the_golden_image_is_in_pieces_and_every_file_is_a_blob(
    labs: Labs, packed: PackResult
) -> None:
    layout = Layout(packed.layout)
    golden = layout.read_json(packed.golden, "golden")
    pieces = golden["layers"]
    size = labs.golden.stat().st_size
    assert len(pieces) == -(-size // PIECE) > 1
    offsets = [int(p["annotations"][oci.OFFSET]) for p in pieces]
    assert offsets == [n * PIECE for n in range(len(pieces))]
    assert all(p["mediaType"] == oci.PIECE for p in pieces)
    lab = layout.read_json(packed.lab, "lab")
    titles = [layer["annotations"][oci.TITLE] for layer in lab["layers"]]
    files = sorted(str(p.relative_to(labs.bundle)) for p in labs.bundle.rglob("*") if p.is_file())
    assert sorted(set(titles)) == [f for f in files if f not in ("manifest.json", "SHA256SUMS")]
    config = Descriptor.from_data(lab["config"], "lab")
    assert layout.read(config, "manifest.json") == (labs.bundle / "manifest.json").read_bytes()
    assert lab["annotations"][oci.GOLDEN] == packed.golden.digest


def test_verify_names_the_signer(packed: PackResult, labs: Labs, run_cli: RunCli) -> None:
    result = run_cli("verify", packed.layout, "--allowed-signers", labs.keys.allowed, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["signed_by"]["principal"] == "signer@example.org"
    assert report["lab_manifest"] == packed.lab.digest
    assert "signed by signer@example.org" in result.err


def test_an_unsigned_lab_needs_allow_unsigned(labs: Labs, tmp_path: Path, run_cli: RunCli) -> None:
    pack(labs.bundle, tmp_path / "unsigned", piece_size=PIECE)
    result = run_cli("verify", tmp_path / "unsigned", "--allowed-signers", labs.keys.allowed)
    assert result.code == 2
    assert "is not signed" in result.err and "--allow-unsigned" in result.err
    assert run_cli("verify", tmp_path / "unsigned", "--allow-unsigned").code == 0


def test_a_terminal_gets_a_progress_bar(labs: Labs, tmp_path: Path) -> None:
    """On a terminal, pack draws a bar per file with bytes, rate and time left; on
    a pipe, one line per file."""
    main_fd, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "150"}
    vmbuild = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "vmbuild")
    process = subprocess.Popen(
        [vmbuild, "pack", str(labs.bundle), "-o", str(tmp_path / "tty")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal, env=env,
    )  # fmt: skip
    os.close(terminal)
    seen = b""
    with contextlib.suppress(OSError):  # EIO once the process has closed its end
        while chunk := os.read(main_fd, 65536):
            seen += chunk
    os.close(main_fd)
    assert process.wait(timeout=120) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert "packing golden.qcow2" in text and "━" in text
    assert re.search(r"[0-9.]+/[0-9.]+ (KiB|MiB)", text), text[-2000:]
    piped = subprocess.run(
        [vmbuild, "pack", str(labs.bundle), "-o", str(tmp_path / "pipe")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "    vms/web/disk.qcow2: " in piped.stderr and "━" not in piped.stderr


# ---------------------------------------------------------------- refusals


def _copy(layout: Path, dest: Path) -> Layout:
    """A copy of the layout that shares the blob files' inodes: a damage replaces
    a blob file, never writes into it."""
    shutil.copytree(layout, dest, copy_function=os.link)
    return Layout(dest)


def _replace(layout: Layout, digest: str, data: bytes) -> None:
    path = layout.blob_path(digest)
    path.unlink()
    path.write_bytes(data)


def _layers(layout: Layout, manifest: Descriptor, title: str) -> list[dict[str, Any]]:
    """The layers of ``manifest`` titled ``title``: a file's pieces, in order."""
    document = layout.read_json(manifest, "manifest")
    return [layer for layer in document["layers"] if layer["annotations"][oci.TITLE] == title]


def _layer(layout: Layout, manifest: Descriptor, title: str) -> dict[str, Any]:
    return _layers(layout, manifest, title)[0]


def _flip(layout: Layout, digest: str, truncate: bool = False) -> None:
    data = bytearray(layout.blob_path(digest).read_bytes())
    if truncate:
        del data[len(data) // 2 :]
    else:
        data[len(data) // 3] ^= 0x40
    _replace(layout, digest, bytes(data))


def _rewrite(
    layout: Layout, descriptor: Descriptor, change: Callable[[dict[str, Any]], None]
) -> Descriptor:
    document = layout.read_json(descriptor, "manifest")
    change(document)
    return layout.add_document(document, artifact_type=descriptor.artifact_type)


def _edit_lab_and_resign(layout: Layout, packed: PackResult) -> None:
    """An edited lab manifest, with the old signature pointed at it."""

    def drop_seed(document: dict[str, Any]) -> None:
        document["layers"] = [
            layer
            for layer in document["layers"]
            if not layer["annotations"][oci.TITLE].endswith("web/seed.iso")
        ]

    lab = _rewrite(layout, packed.lab, drop_seed)

    def point(document: dict[str, Any]) -> None:
        document["manifests"][0] = lab.to_data()

    index = _rewrite(layout, packed.index, point)
    layout.tag(packed.tag, index)
    assert packed.signature is not None
    signature = _rewrite(layout, packed.signature, lambda d: d.update(subject=lab.to_data()))
    layout.write_index(
        [e for e in layout.index() if e.digest != packed.signature.digest] + [signature]
    )


def _swap_golden(layout: Layout, packed: PackResult) -> None:
    """Another golden image in the index than the one the lab manifest names."""

    def other_config(document: dict[str, Any]) -> None:
        document["annotations"] = {oci.TITLE: "other.qcow2"}

    golden = _rewrite(layout, packed.golden, other_config)
    index = _rewrite(
        layout, packed.index, lambda d: d["manifests"].__setitem__(1, golden.to_data())
    )
    layout.tag(packed.tag, index)


DAMAGES: dict[str, tuple[Callable[[Layout, PackResult], None], str]] = {
    "disk piece flipped": (
        lambda layout, p: _flip(layout, _layer(layout, p.lab, "vms/web/disk.qcow2")["digest"]),
        # {pieces}: the overlay's size differs between builds by a few clusters (1.00
        # MiB and 1.19 MiB seen), which is one PIECE or two.
        'vm "web", vms/web/disk.qcow2, piece 1 of {pieces}: blob sha256:',
    ),
    "golden piece truncated": (
        lambda layout, p: _flip(
            layout, layout.read_json(p.golden, "g")["layers"][1]["digest"], truncate=True
        ),
        "golden image golden.qcow2, piece 2 of",
    ),
    "seed flipped": (
        lambda layout, p: _flip(layout, _layer(layout, p.lab, "vms/db/seed.iso")["digest"]),
        'vm "db", vms/db/seed.iso: blob sha256:',
    ),
    "lab file flipped": (
        lambda layout, p: _flip(layout, _layer(layout, p.lab, "define.sh")["digest"]),
        "define.sh: blob sha256:",
    ),
    "manifest.json flipped": (
        lambda layout, p: _flip(layout, layout.read_json(p.lab, "lab")["config"]["digest"]),
        "manifest.json: blob sha256:",
    ),
    "golden config flipped": (
        lambda layout, p: _flip(layout, layout.read_json(p.golden, "g")["config"]["digest"]),
        "the golden image's config: blob sha256:",
    ),
    "domain XML truncated": (
        lambda layout, p: _flip(
            layout, _layer(layout, p.lab, "vms/web/domain.xml")["digest"], truncate=True
        ),
        'vm "web", vms/web/domain.xml: blob sha256:',
    ),
    "manifest edited after signing": (
        _edit_lab_and_resign,
        "does not verify",
    ),
    "golden image swapped": (_swap_golden, "the lab manifest names the golden image"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damage_is_refused_and_nothing_is_unpacked(
    packed: PackResult, labs: Labs, tmp_path: Path, damage: str, run_cli: RunCli
) -> None:
    change, expected = DAMAGES[damage]
    layout = _copy(packed.layout, tmp_path / "layout")
    expected = expected.format(pieces=len(_layers(layout, packed.lab, "vms/web/disk.qcow2")))
    change(layout, packed)
    result = run_cli("verify", layout.path, "--allowed-signers", labs.keys.allowed)
    assert result.code == 2, result.err
    assert expected in result.err
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        unpack(layout.path, tmp_path / "out", trust=Trust(labs.keys.allowed), cache=cache)
    assert not (tmp_path / "out" / "art").exists()
    assert not cache.exists() or not any(cache.rglob("*.qcow2"))


def test_a_signer_not_allowed_is_refused(labs: Labs, tmp_path: Path, run_cli: RunCli) -> None:
    pack(labs.bundle, tmp_path / "layout", sign_key=labs.keys.stranger, piece_size=PIECE)
    result = run_cli("verify", tmp_path / "layout", "--allowed-signers", labs.keys.allowed)
    assert result.code == 2
    assert "signed by a key that" in result.err and "does not allow" in result.err
    assert (
        run_cli("verify", tmp_path / "layout", "--allow-unsigned").code == 2
    )  # a bad signature is never ignored


# ---------------------------------------------------------------- unpack


def _backing_chain(disk: Path) -> list[str]:
    text = subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", "-U", str(disk)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [os.path.realpath(entry["filename"]) for entry in json.loads(text)]


def test_unpack_lays_out_a_bundle_the_build_calls_its_own(
    labs: Labs, packed: PackResult, tmp_path: Path, run_cli: RunCli
) -> None:
    cache = tmp_path / "cache"
    result = unpack(packed.layout, tmp_path / "out", trust=Trust(labs.keys.allowed), cache=cache)
    bundle = tmp_path / "out" / "art"
    assert result.bundle == bundle and result.golden_written
    assert result.golden.parent == cache / "golden"
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, check=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["root"] == str(bundle)
    assert manifest["base"]["path"] == str(result.golden)
    for vm in ("web", "db"):
        disk = bundle / "vms" / vm / "disk.qcow2"
        assert _backing_chain(disk) == [str(disk), str(result.golden)]
        xml = (bundle / "vms" / vm / "domain.xml").read_text()
        assert f'<source file="{bundle}/vms/{vm}/disk.qcow2"' in xml
        assert f'<source file="{result.golden}"' in xml
    for path in bundle.rglob("*"):
        if path.is_file() and path.suffix not in (".qcow2", ".iso"):
            assert str(labs.bundle) not in path.read_text(), path
    assert f"built_for={bundle}\n" in (bundle / "define.sh").read_text()

    # The disks are the built ones: read back in one appliance.
    disks = {f"built-{vm}": labs.bundle / "vms" / vm / "disk.qcow2" for vm in ("web", "db")}
    disks |= {f"unpacked-{vm}": bundle / "vms" / vm / "disk.qcow2" for vm in ("web", "db")}
    found = read_guest_files(disks, IDENTITY)
    for vm in ("web", "db"):
        assert found[f"unpacked-{vm}"] == found[f"built-{vm}"]
        assert found[f"unpacked-{vm}"]["/etc/hostname"] == f"{vm}\n".encode()

    # The build of the profile on the unpacked golden image keeps every disk.
    inodes = {p: p.stat().st_ino for p in bundle.glob("vms/*/disk.qcow2")}
    built = run_cli(labs.profile, "-o", tmp_path / "out", "--base", result.golden)
    assert built.code == 0, built.err
    assert "(0 disks made, 2 kept)" in built.err or "up to date" in built.err
    assert {p: p.stat().st_ino for p in bundle.glob("vms/*/disk.qcow2")} == inodes

    # A second unpack, elsewhere, finds the golden image in the cache.
    again = unpack(
        packed.layout, tmp_path / "elsewhere", trust=Trust(labs.keys.allowed), cache=cache
    )
    assert again.golden == result.golden and not again.golden_written
    assert sorted(p.name for p in (cache / "golden").glob("*.qcow2")) == [result.golden.name]


def test_two_labs_share_the_golden_images_blobs(labs: Labs, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    first = pack(labs.bundle, out, sign_key=labs.keys.key, piece_size=PIECE)
    second = pack(labs.other, out, sign_key=labs.keys.key, piece_size=PIECE)
    assert first.golden == second.golden
    layout = Layout(out)
    # The second lab wrote exactly the blobs the first does not have: not the
    # golden image's (the bench measures the share on a real golden image).
    ones = {d.digest: d.size for d in layout.reachable(first.index)}
    twos = {d.digest: d.size for d in layout.reachable(second.index)}
    assert second.signature is not None
    own = sum(size for digest, size in twos.items() if digest not in ones) + second.signature.size
    golden = {d.digest for d in layout.reachable(first.golden)}
    assert golden <= set(ones) & set(twos)
    assert second.written == own
    assert second.reused >= sum(ones[digest] for digest in golden)
    assert set(layout.tags()) == {"art", "art2"}
    pieces = layout.read_json(first.golden, "golden")["layers"]
    stored = {p.name for p in layout.blobs.iterdir()}
    assert all(piece["digest"][7:] in stored for piece in pieces)
    for tag in ("art", "art2"):
        verify(f"{out}:{tag}", trust=Trust(labs.keys.allowed))


def test_pack_refuses_a_bundle_whose_disk_changed(
    labs: Labs, tmp_path: Path, run_cli: RunCli
) -> None:
    bundle = tmp_path / "art"
    shutil.copytree(labs.bundle, bundle)
    with (bundle / "vms" / "db" / "disk.qcow2").open("r+b") as disk:
        disk.seek(0, os.SEEK_END)
        disk.write(b"\0" * 512)
    result = run_cli("pack", bundle, "-o", tmp_path / "layout")
    assert result.code == 2
    assert "vms/db/disk.qcow2 is not the file that was built" in result.err
    assert (
        not (tmp_path / "layout" / "index.json").exists() or not Layout(tmp_path / "layout").tags()
    )


def test_a_recipes_golden_image_is_unpacked_where_base_debian_finds_it(
    os_image: Path, tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lab on ``base.debian``: its golden image lands in the target's cache under
    the recipe's own name, so the same profile builds there without debootstrap and
    keeps every disk."""
    monkeypatch.setenv("VMBUILD_CACHE", str(tmp_path / "build-cache"))
    base = {"debian": "bookworm", "size": "1G"}
    profile = write_lab(tmp_path, None, name="deb", network=USER, vms=WEB_DB[:1], base=base)
    recipe = golden_recipe(make_plan(load_profile(profile)).base)
    assert recipe is not None
    image = golden_path(recipe)
    image.parent.mkdir(parents=True)
    shutil.copyfile(os_image, image)  # stands in for the debootstrap image
    sidecar(image, ".sha256").write_text(f"{file_digest(image)}  {image.name}\n")
    sidecar(image, ".json").write_text(json.dumps({"recipe": recipe.to_json()}))
    assert main(["build", str(profile), "-o", str(tmp_path / "out"), "-q"]) == 0
    pack(tmp_path / "out" / "deb", tmp_path / "layout", piece_size=PIECE)

    monkeypatch.setenv("VMBUILD_CACHE", str(tmp_path / "target-cache"))
    result = unpack(tmp_path / "layout", tmp_path / "target", trust=Trust(allow_unsigned=True))
    assert result.golden == golden_path(recipe)
    assert result.golden.is_relative_to(tmp_path / "target-cache")
    built = run_cli("build", profile, "-o", tmp_path / "target")
    assert built.code == 0, built.err
    assert "deb is up to date: nothing to do" in built.err


@pytest.mark.parametrize("full", ["cache", "output"])
def test_a_full_disk_while_unpacking_leaves_nothing_behind(
    labs: Labs, packed: PackResult, tmp_path: Path, full: str, run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The golden image or the bundle does not fit: a clear error, no cache entry,
    no bundle and no staging folder."""
    size = {"cache": "256k", "output": "600k"}[full]
    with small_tmpfs(tmp_path / "small", size) as small:
        cache = small if full == "cache" else tmp_path / "cache"
        output = small / "out" if full == "output" else tmp_path / "out"
        monkeypatch.setenv("VMBUILD_CACHE", str(cache))
        result = run_cli(
            "unpack", packed.layout, "-o", output, "--allowed-signers", labs.keys.allowed
        )
        assert result.code != 0
        assert "No space left on device" in result.err or "is full" in result.err, result.err
        assert "Traceback" not in result.err
        assert not (output / "art").exists()
        assert not list(output.glob(".art.staging-*")) if output.exists() else True
        golden = cache / "golden"
        leftovers = [p.name for p in golden.iterdir()] if golden.exists() else []
        assert full == "output" or leftovers == [], leftovers


# ---------------------------------------------------------------- registry


def test_push_pull_round_trip_through_a_registry(
    labs: Labs,
    packed: PackResult,
    registry: LocalRegistry,
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pack --sign → push → pull elsewhere → verified, unpacked; skopeo reads the
    pushed artifact; a second lab on the same golden image sends none of its blobs."""
    monkeypatch.setenv("DOCKER_CONFIG", str(registry.write_auth(tmp_path / "docker").parent))
    monkeypatch.setenv("VMBUILD_CACHE", str(tmp_path / "cache"))
    ref = registry.ref("labs", "art")
    pushed = run_cli("push", packed.layout, ref, "--json")
    assert pushed.code == 0, pushed.err
    first = json.loads(pushed.out)
    assert first["digest"] == packed.index.digest and first["referrers"]
    if shutil.which("skopeo"):
        raw = subprocess.run(
            [
                "skopeo", "inspect", "--raw", "--tls-verify=false",
                "--creds", f"{registry.username}:{registry.password}", f"docker://{ref}",
            ],
            capture_output=True,
            check=True,
        ).stdout  # fmt: skip
        assert raw == Layout(packed.layout).blob_path(packed.index.digest).read_bytes()

    pulled = run_cli("pull", ref, "-o", tmp_path / "out", "--allowed-signers", labs.keys.allowed)
    assert pulled.code == 0, pulled.err
    bundle = tmp_path / "out" / "art"
    assert pulled.out.strip() == str(bundle)
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, check=True)
    assert "signed by signer@example.org" in pulled.err

    # The second lab, packed beside the first and pushed to the same repository.
    both = _copy(packed.layout, tmp_path / "layout")
    second = pack(labs.other, both.path, sign_key=labs.keys.key, piece_size=PIECE)
    other = run_cli("push", f"{both.path}:{second.tag}", registry.ref("labs", "art2"), "--json")
    assert other.code == 0, other.err
    sent = json.loads(other.out)
    # Every golden blob (config and pieces; its manifest is not a blob) was there.
    golden = [d for d in both.reachable(packed.golden) if d.digest != packed.golden.digest]
    assert sent["skipped_bytes"] >= sum(d.size for d in golden)
    assert second.signature is not None
    own = {d.digest: d.size for d in both.reachable(second.index)}
    own |= {d.digest: d.size for d in both.reachable(second.signature)}
    for descriptor in golden:
        own.pop(descriptor.digest, None)
    assert 0 < sent["sent_bytes"] <= sum(own.values())
    # And its pull reuses the golden image's blobs from the cache's layout.
    again = run_cli(
        "pull", registry.ref("labs", "art2"), "-o", tmp_path / "out", "--allowed-signers",
        labs.keys.allowed, "--json",
    )  # fmt: skip
    assert again.code == 0, again.err
    reused = json.loads(again.out)["pulled"]["reused_bytes"]
    assert reused >= sum(d.size for d in golden)
    assert sorted(p.name for p in (tmp_path / "cache" / "golden").glob("*.qcow2")) == [
        "golden.qcow2"
    ]


def test_a_wrong_password_is_a_clear_error(
    packed: PackResult,
    registry: LocalRegistry,
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = registry.write_auth(tmp_path / "docker", password="wrong").parent
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    result = run_cli("push", packed.layout, registry.ref("labs", "denied"))
    assert result.code == 3
    assert registry.host in result.err and "refused the credentials" in result.err
