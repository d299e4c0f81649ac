"""NoCloud seed for each VM: user-data, meta-data and network-config on an ISO.

The ISO is written with pycdlib (no genisoimage): volume id ``cidata``, Joliet and
Rock Ridge, and every timestamp fixed so that two builds give identical bytes. Since
the bytes follow from the files, a build records each ISO's inputs as one digest
(``seed_inputs``), and a later build with the same inputs knows the ISO's sha256
without making it again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import os
import re
import threading
import time as _time
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pycdlib
import yaml
from vmbuild import __version__
from vmbuild.errors import BuildError, UserError
from vmbuild.host.files import write_atomic
from vmbuild.model.plan import Plan, VmPlan

if TYPE_CHECKING:
    from vmbuild.plugins.manager import Plugins

VOLUME_ID = "cidata"
#: The order files appear on the ISO and in listings.
SEED_FILES = ("meta-data", "user-data", "network-config")


#: libyaml's emitter when PyYAML has it: the pure-Python one is ~10x slower.
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _SeedDumper(_BaseDumper):  # type: ignore[valid-type,misc]
    """Multi-line strings as literal blocks, so files in user-data stay readable."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SeedDumper.add_representer(str, _str_presenter)


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.dump(
        dict(data), Dumper=_SeedDumper, sort_keys=False, default_flow_style=False, width=1000
    )


def seed_files(lab: Plan, vm: VmPlan, plugins: Plugins) -> dict[str, bytes]:
    """The NoCloud files for one VM, built as data and dumped as YAML, then the
    plugins' extra files."""
    user_data = plugins.user_data(lab, vm)
    network = plugins.network_config(lab, vm)
    extra = plugins.seed_files(lab, vm)
    meta = {"instance-id": vm.instance_id, "local-hostname": vm.hostname}
    return {
        "meta-data": dump_yaml(meta).encode(),
        "user-data": ("#cloud-config\n" + dump_yaml(user_data)).encode(),
        "network-config": dump_yaml(network).encode(),
        **extra,
    }


def iso9660_name(name: str) -> str:
    """The plain ISO 9660 name under the Rock Ridge and Joliet ones: upper case,
    one dot before the extension, anything else an underscore."""
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    clean = [re.sub(r"[^A-Z0-9_]", "_", part.upper()) for part in (stem, extension)]
    return f"/{clean[0]}.{clean[1]};1"


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds.org), else the Unix epoch."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH {text!r} is not a whole number of seconds") from None
    if value < 0:
        raise UserError(f"SOURCE_DATE_EPOCH {text!r} is negative")
    return value


class _FrozenClock(types.ModuleType):
    """Stands in for the ``time`` module inside pycdlib: a fixed now, in UTC."""

    def __init__(self, epoch: int) -> None:
        super().__init__("time")
        self._epoch = float(epoch)

    def time(self) -> float:
        return self._epoch

    def localtime(self, secs: float | None = None) -> _time.struct_time:
        return _time.gmtime(self._epoch if secs is None else secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


_PYCDLIB_MODULES = ("pycdlib", "headervd", "dates", "utils", "udf", "inplaceeditor", "dr")
_clock_lock = threading.Lock()


@contextlib.contextmanager
def _frozen_pycdlib_clock(epoch: int) -> Iterator[None]:
    """pycdlib reads the wall clock and local time zone in many places and has no
    option to fix them; swap its modules' view of ``time`` while we write."""
    import importlib

    clock = _FrozenClock(epoch)
    with _clock_lock:
        saved = []
        for short in _PYCDLIB_MODULES:
            try:
                module = importlib.import_module(f"pycdlib.{short}")
            except ImportError:
                continue
            original = getattr(module, "time", None)
            if original is not None:
                saved.append((module, original))
                setattr(module, "time", clock)  # noqa: B010
        try:
            yield
        finally:
            for module, original in saved:
                setattr(module, "time", original)  # noqa: B010


def check_seed_names(files: Mapping[str, bytes]) -> dict[str, str]:
    """Each file's ISO 9660 name; BuildError when two files would share one."""
    taken: dict[str, str] = {}
    for name in files:
        plain = iso9660_name(name)
        if plain in taken:
            raise BuildError(
                f"seed files {taken[plain]} and {name} have the same ISO 9660 name {plain}"
            )
        taken[plain] = name
    return {name: plain for plain, name in taken.items()}


@functools.cache
def _writer() -> str:
    """What writes the ISO's bytes: a new version may write other bytes."""
    return f"vmbuild {__version__}, pycdlib {importlib.metadata.version('pycdlib')}"


def seed_inputs(files: Mapping[str, bytes], epoch: int) -> str:
    """One sha256 of everything a seed ISO's bytes follow from: its files in order,
    the epoch of its timestamps and the writer's version."""
    digest = hashlib.sha256(f"{_writer()}\0{epoch}\0".encode())
    for name, data in files.items():
        digest.update(f"{len(name)}:{name}{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


class SeedImages(Mapping[str, bytes]):
    """Each VM's seed ISO, made when first asked for. ``known`` is what the previous
    bundle recorded for each VM's ISO, (seed_inputs, sha256): while the inputs are
    the same, ``sha256`` answers from it without making the ISO, so that checking an
    unchanged lab of a hundred VMs makes none."""

    def __init__(
        self,
        files: Mapping[str, Mapping[str, bytes]],
        epoch: int,
        known: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        for each in files.values():
            check_seed_names(each)
        self._files = files
        self._epoch = epoch
        self._known = known or {}
        self._inputs: dict[str, str] = {}
        self._made: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        if name not in self._made:
            self._made[name] = seed_iso_bytes(self._files[name], self._epoch)
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def inputs(self, name: str) -> str:
        if name not in self._inputs:
            self._inputs[name] = seed_inputs(self._files[name], self._epoch)
        return self._inputs[name]

    def sha256(self, name: str) -> str:
        recorded = self._known.get(name)
        if recorded is not None and name not in self._made and recorded[0] == self.inputs(name):
            return recorded[1]
        return hashlib.sha256(self[name]).hexdigest()


def seed_iso_bytes(files: Mapping[str, bytes], epoch: int) -> bytes:
    """An ISO 9660 image with Joliet and Rock Ridge holding ``files`` at its root."""
    plain_names = check_seed_names(files)
    with _frozen_pycdlib_clock(epoch):
        iso = pycdlib.PyCdlib()
        iso.new(
            interchange_level=3,
            joliet=3,
            rock_ridge="1.09",
            vol_ident=VOLUME_ID,
            sys_ident="LINUX",
            app_ident_str="VMBUILD",
        )
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                plain_names[name],
                rr_name=name,
                joliet_path="/" + name,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
    return out.getvalue()


def write_seed(dest: Path, files: Mapping[str, bytes], epoch: int) -> None:
    write_atomic(dest, seed_iso_bytes(files, epoch))
