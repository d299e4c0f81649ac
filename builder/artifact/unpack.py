"""``vmbuild unpack``: an artifact laid out as a working bundle, as a build would.

The golden image goes into vmbuild's golden cache (under the name its recipe gives
it, so that a ``base.debian`` build of the same recipe finds it), unless an image
with its sha256 is there already. The bundle is written into a staging folder and
published in one rename, as a build publishes: a failure anywhere leaves the
previous bundle, and the cache, as they were.

Moving a bundle changes what names paths: each overlay's backing path (rewritten
with ``qemu-img rebase -u``, which reads neither image), the domain XML, define.sh
and the inventory (the old folder and golden image path replaced by the new ones),
then manifest.json (``root``, ``base``, the new files' sha256) and SHA256SUMS.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild.artifact.layout import ArtifactError
from vmbuild.artifact.pieces import for_file, restore
from vmbuild.artifact.trust import Trust
from vmbuild.artifact.verify import Artifact, Entry, check_data, open_artifact, report
from vmbuild.golden.recipe import default_cache, sidecar
from vmbuild.host import qemuimg
from vmbuild.host.files import file_digest, stat_key, write_atomic
from vmbuild.host.space import write_error
from vmbuild.libvirt.inuse import refuse_running
from vmbuild.log import Progress, detail, info, step
from vmbuild.model.plan import Plan
from vmbuild.model.profile import DiskFormat, DiskMode
from vmbuild.output.bundle import (
    MANIFEST,
    SUMS,
    bundle_disks,
    check_target,
    lab_lock,
    publish,
    remove_stale,
    staging,
    sums_text,
    tree_files,
)


@dataclass(frozen=True)
class UnpackResult:
    bundle: Path
    golden: Path
    #: False when the golden image was in the cache already.
    golden_written: bool
    artifact: Artifact

    def to_json(self) -> dict[str, Any]:
        return {
            **self.artifact.to_json(),
            "bundle": str(self.bundle),
            "golden_image": str(self.golden),
            "golden_written": self.golden_written,
        }


def _cached(folder: Path, sha256: str, size: int) -> Path | None:
    """An image in the golden cache with this content (its .sha256 says so, and its
    bytes agree)."""
    for recorded in sorted(folder.glob("*.sha256")):
        try:
            digest = recorded.read_text().split()[0]
        except (OSError, IndexError):
            continue
        image = recorded.with_name(recorded.name.removesuffix(".sha256"))
        if digest != sha256 or image.is_symlink() or not image.is_file():
            continue
        if image.stat().st_size == size and file_digest(image) == sha256:
            return image
    return None


def place_golden(
    artifact: Artifact, cache: Path | None = None, progress: Progress | None = None
) -> tuple[Path, bool]:
    """The golden image in the cache: found by its sha256, else written there."""
    config = artifact.golden_config
    sha256, size = str(config["sha256"]), int(config["size"])
    folder = (cache if cache is not None else default_cache()) / "golden"
    folder.mkdir(parents=True, exist_ok=True)
    found = _cached(folder, sha256, size)
    if found is not None:
        info(f"  {artifact.golden_what()}: in the cache already, {found}")
        return found, False
    name = Path(str(config.get("name") or f"image-{sha256[:16]}.{config['disk_format']}")).name
    image = folder / name
    if image.exists() or image.is_symlink():
        # The recipe's name holds another build of it (debootstrap is not
        # reproducible): keep both, this one under its content's name.
        image = folder / f"{image.stem}-{sha256[:12]}{image.suffix}"
    tmp = folder / f".{image.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with step(f"Unpacking the {artifact.golden_what()} into {folder}"), tmp.open("wb") as dest:
            restore(
                artifact.layout,
                list(artifact.golden_pieces),
                artifact.golden_what(),
                sha256,
                dest,
                for_file(progress, image.name),
            )
            dest.flush()
            os.fsync(dest.fileno())
        os.chmod(tmp, 0o644)
        record = {
            "recipe": config.get("recipe"),
            "image": image.name,
            "sha256": sha256,
            "virtual_size": config.get("virtual_size"),
            "unpacked_from": artifact.golden.digest,
        }
        write_atomic(sidecar(image, ".json"), (json.dumps(record, indent=2) + "\n").encode())
        write_atomic(sidecar(image, ".sha256"), f"{sha256}  {image.name}\n".encode())
        os.replace(tmp, image)
    except OSError as err:
        for written in (sidecar(image, ".json"), sidecar(image, ".sha256")):
            if not image.exists():
                with contextlib.suppress(FileNotFoundError):
                    written.unlink()
        raise write_error(
            err,
            f"the golden image into {folder}",
            folder,
            "; nothing was unpacked",
            hint="free some space in the cache (or point VMBUILD_CACHE elsewhere) and unpack again",
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return image, True


def _same(text: str, _match: re.Match[str]) -> str:
    return text


def _replace_paths(text: str, moves: list[tuple[str, str]]) -> str:
    """Each old path replaced by its new one where it stands as a path (not as the
    start of a longer name)."""
    for old, new in moves:
        if old and old != new:
            # a function, so that backslashes in the new path stay as they are
            text = re.sub(re.escape(old) + r"(?![\w.-])", functools.partial(_same, new), text)
    return text


def _write_entry(
    artifact: Artifact, entry: Entry, dest: Path, moves: list[tuple[str, str]]
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if entry.is_disk:
        recorded = artifact.manifest["vms"][entry.vm]["artifacts"]["disk"]["sha256"]
        with dest.open("wb") as out:
            restore(artifact.layout, list(entry.blobs), entry.what(), recorded, out)
            out.flush()
            os.fsync(out.fileno())
        return
    data = artifact.layout.read(entry.blobs[0], entry.what())
    if not dest.name.endswith(".iso"):
        with contextlib.suppress(UnicodeDecodeError):
            data = _replace_paths(data.decode(), moves).encode()
    write_atomic(dest, data, mode=0o755 if entry.name == "define.sh" else 0o644)


def _rebase(stage: Path, final: Path, plan: Plan, golden: Path, fmt: DiskFormat) -> None:
    for vm in plan.vms:
        if vm.disk.mode is DiskMode.OVERLAY:
            backing = os.path.relpath(golden, final / vm.folder)
            qemuimg.rebase_unsafe(stage / vm.disk.file, backing, fmt)
            detail(f"{vm.name}: {vm.disk.file} → {backing}")


def _manifest(artifact: Artifact, stage: Path, final: Path, golden: Path) -> bytes:
    manifest = json.loads(artifact.manifest_bytes)
    manifest["root"] = str(final)
    manifest["base"]["path"] = str(golden)
    manifest["base"]["stat_key"] = stat_key(golden)
    for vm in manifest["vms"].values():
        for recorded in vm["artifacts"].values():
            recorded["sha256"] = file_digest(stage / recorded["file"])
    return (json.dumps(manifest, indent=2) + "\n").encode()


def unpack(
    artifact: str | Path,
    output: Path,
    *,
    trust: Trust,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> UnpackResult:
    """Verify ``artifact`` and lay it out as the bundle ``output/<lab>``."""
    with step(f"Verifying {artifact}"):
        opened = open_artifact(artifact, trust)
        check_data(opened, for_file(progress, "checking"))
    report(opened)
    lab = opened.lab_name
    plan = Plan.from_json(
        opened.layout.read(_entry(opened, "plan.json").blobs[0], "plan.json").decode()
    )
    output.mkdir(parents=True, exist_ok=True)
    output = output.resolve()
    final = output / lab
    check_target(final)
    with lab_lock(output, lab):
        remove_stale(output, lab)
        golden, written = place_golden(opened, cache, progress)
        base = opened.manifest["base"]
        moves = [(str(base["path"]), str(golden)), (str(opened.manifest["root"]), str(final))]
        with staging(output, lab, command="unpack") as stage:
            with step(f"Unpacking lab {lab!r} into {final}"):
                for entry in opened.entries:
                    _write_entry(opened, entry, stage / entry.name, moves)
                _rebase(stage, final, plan, golden, DiskFormat(base["format"]))
                write_atomic(stage / MANIFEST, _manifest(opened, stage, final, golden))
                digests = {
                    name: file_digest(stage / name) for name in tree_files(stage) if name != SUMS
                }
                write_atomic(stage / SUMS, sums_text(Path(), digests).encode())
            disks = {vm: (path, fmt) for vm, path, fmt in bundle_disks(final)}
            refuse_running({name: "replace" for name in disks}, disks)
            publish(stage, final)
    info(f"‣ Unpacked {lab!r} into {final}; define it with: sh {final}/define.sh")
    return UnpackResult(final, golden, written, opened)


def _entry(artifact: Artifact, name: str) -> Entry:
    for entry in artifact.entries:
        if entry.name == name:
            return entry
    raise ArtifactError(f"{artifact.layout.path}:{artifact.tag} has no {name}")
