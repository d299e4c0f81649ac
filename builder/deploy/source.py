"""What is deployed: a bundle on this machine, or an artifact made into one.

An artifact (an OCI layout ``DIR[:TAG]``, or a registry reference pulled into
vmbuild's artifact cache) is verified and unpacked once into vmbuild's cache, under
its digest: deploying it again, or resetting one of its VMs, reads that bundle
without unpacking anything. A bundle is deployed only as it was built: each VM's
files must match its SHA256SUMS (a VM that ran on the bundle's own disk changed
it), and the golden image the sha256 its manifest records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbuild.artifact.layout import split_reference
from vmbuild.artifact.trust import Trust
from vmbuild.artifact.unpack import unpack
from vmbuild.artifact.verify import open_artifact
from vmbuild.errors import UserError
from vmbuild.golden.recipe import default_cache
from vmbuild.host.files import file_digest, stat_key
from vmbuild.log import Progress, info
from vmbuild.model.plan import Plan, VmPlan
from vmbuild.output.bundle import MANIFEST, SUMS, read_sums


@dataclass(frozen=True)
class Source:
    """A bundle ready to deploy, and the digest that names what it came from."""

    bundle: Path
    plan: Plan
    manifest: dict[str, Any]
    #: "sha256:..." of the artifact's index, or of the bundle's manifest.json.
    digest: str
    #: How the user named it, for messages.
    name: str

    def path(self, file: str) -> Path:
        return self.bundle / file

    def sha256(self, file: str) -> str:
        for record in self.manifest["vms"].values():
            for artifact in record["artifacts"].values():
                if artifact["file"] == file:
                    return str(artifact["sha256"])
        raise KeyError(file)

    @property
    def golden(self) -> Path:
        return Path(self.manifest["base"]["path"])

    @property
    def golden_format(self) -> str:
        return str(self.manifest["base"]["format"])

    @property
    def golden_sha256(self) -> str:
        return str(self.manifest["base"]["sha256"])

    def vms(self, names: tuple[str, ...] = ()) -> tuple[VmPlan, ...]:
        """The lab's VMs, or those named (in profile order); a UserError for a name
        that is not in the lab."""
        known = {vm.name for vm in self.plan.vms}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise UserError(
                f"{', '.join(unknown)}: not a VM of lab {self.plan.lab!r}",
                place=self.name,
                hint=f"its VMs: {', '.join(vm.name for vm in self.plan.vms)}",
            )
        return tuple(vm for vm in self.plan.vms if not names or vm.name in names)


def read_bundle(bundle: Path, digest: str | None = None, name: str | None = None) -> Source:
    """A bundle's plan and manifest, without checking its files."""
    place = name or str(bundle)
    try:
        manifest_bytes = (bundle / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
        plan = Plan.from_json((bundle / "plan.json").read_text())
    except FileNotFoundError as err:
        raise UserError(
            f"{err.filename} is missing: not a vmbuild bundle",
            place=place,
            hint="give a bundle folder (output/<lab>), an artifact or a profile",
        ) from None
    except ValueError as err:
        raise UserError(f"not a bundle this vmbuild can read: {err}", place=place) from None
    return Source(
        bundle=bundle.resolve(),
        plan=plan,
        manifest=manifest,
        digest=digest or "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
        name=place,
    )


def check_built(source: Source, vms: tuple[VmPlan, ...]) -> None:
    """Refuse a bundle whose files are not as built: each VM's disk, seed and XML
    against SHA256SUMS, the golden image against the manifest's sha256."""
    sums = read_sums((source.bundle / SUMS).read_text())
    for vm in vms:
        for file in (vm.disk.file, vm.seed.file, vm.xml):
            found = file_digest(source.path(file)) if source.path(file).is_file() else "missing"
            if sums.get(file) != found:
                raise UserError(
                    f"{file} is not as built (sha256 {found[:12]}, SHA256SUMS says "
                    f"{sums.get(file, 'nothing')[:12]})",
                    place=f'{source.name}, vm "{vm.name}"',
                    hint="a VM that ran on the bundle's own disk changed it; build the lab "
                    "again (vmbuild build) and deploy the new bundle",
                )
    if not any(vm.disk.mode.value == "overlay" for vm in vms):
        return
    golden = source.golden
    base = source.manifest["base"]
    if not golden.is_file():
        raise UserError(f"the golden image {golden} is missing", place=source.name)
    if base.get("stat_key") != stat_key(golden) and file_digest(golden) != base["sha256"]:
        raise UserError(
            f"the golden image {golden} is not the one the lab was built on "
            f"(sha256 {base['sha256'][:12]})",
            place=source.name,
        )


def is_local(text: str) -> bool:
    """Does ``text`` name something on this machine (a bundle, a layout, DIR:TAG)?"""
    return Path(text).exists() or Path(split_reference(text)[0]).is_dir()


def from_artifact(text: str, trust: Trust, progress: Progress | None = None) -> Source:
    """An artifact's bundle in vmbuild's cache (deployed/), unpacked there on first use."""

    opened = open_artifact(text, trust)
    digest = opened.index.digest
    folder = default_cache() / "deployed" / digest.removeprefix("sha256:")[:16]
    bundle = folder / opened.lab_name
    if not (bundle / SUMS).is_file():
        unpack(text, folder, trust=trust, progress=progress)
    else:
        info(f"‣ {text}: {digest}, unpacked before in {bundle}")
    return read_bundle(bundle, digest, text)


def open_source(
    text: str, trust: Trust, *, insecure: bool = False, progress: Progress | None = None
) -> Source:
    """A bundle folder, an OCI layout (DIR or DIR:TAG) or a registry reference
    (pulled into vmbuild's artifact cache, fetching only what is not there)."""
    path = Path(text)
    if path.is_dir() and (path / MANIFEST).is_file():
        return read_bundle(path)
    if is_local(text):
        return from_artifact(text, trust, progress)
    from vmbuild.artifact.registry import RegistryError, parse_ref, pull

    try:
        parse_ref(text)
    except RegistryError:
        raise UserError(
            f"{text} is neither a bundle, an OCI layout nor a registry reference",
            hint="give OUTPUT/<lab>, an artifact folder (DIR[:TAG]) or HOST/REPOSITORY:TAG",
        ) from None
    layout = default_cache() / "artifacts"
    pulled = pull(text, layout, tag=text, insecure=insecure, progress=progress)
    info(f"‣ {text}: {pulled.digest}, {pulled.fetched_blobs} blobs fetched")
    source = from_artifact(f"{layout}:{text}", trust, progress)
    return dataclasses.replace(source, name=text)
