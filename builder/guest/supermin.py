"""The appliance vmbuild boots: libguestfs's own, with one layer of vmbuild's on top.

libguestfs builds its appliance with supermin from the files in ``<path>/supermin.d``,
and packages add layers there (Debian's libguestfs-xfs adds ``zz-packages-xfs``).
vmbuild keeps a path of its own, whose ``supermin.d`` links every file of the
system's and adds ``zz-vmbuild.tar.gz``, and a cache folder of its own for the built
appliance, so that the appliance other libguestfs tools boot stays as it was.

The layer holds the host's udev rule for persistent storage names without its serial
probes: the stock rule runs ``scsi_id`` (a program) for every disk at boot, which
under TCG doubled the time udev takes to settle (17 s and 13 s of a launch with 100
drives, against 8 s and 6 s without it). Nothing in
the appliance reads a disk's serial: guestfsd names disks from /dev/disk/by-path,
which the rule still makes, as it still imports each filesystem's blkid properties
that the LVM, MD and btrfs rules act on. Only the /dev/disk/by-id links are gone.

``VMBUILD_APPLIANCE=stock`` boots libguestfs's appliance as it is; a
``LIBGUESTFS_PATH`` of the user's own is kept too.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import tarfile
from pathlib import Path

from vmbuild.host.files import user_cache

#: The rule the layer replaces, where the host's udev keeps it.
RULE_NAME = "60-persistent-storage.rules"
RULE_DIRS = (Path("/usr/lib/udev/rules.d"), Path("/lib/udev/rules.d"))
LAYER = "zz-vmbuild.tar.gz"
#: Rule lines that run a program for a disk's serial number.
_SERIAL_PROBE = re.compile(r'IMPORT\{program\}="(scsi_id|ata_id)\b')


def appliance_home() -> Path:
    return user_cache() / "appliance"


def quiet_rule(text: str) -> str:
    """The rule ``text`` without the lines that probe a disk's serial number."""
    kept = [line for line in text.splitlines(keepends=True) if not _SERIAL_PROBE.search(line)]
    return "".join(kept)


def layer_bytes(rule: str) -> bytes:
    """The layer as a tar.gz that is the same bytes for the same rule (no times in
    it), so that an unchanged layer never makes supermin build the appliance again."""
    data = rule.encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for folder in ("etc", "etc/udev", "etc/udev/rules.d"):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        entry = tarfile.TarInfo(f"etc/udev/rules.d/{RULE_NAME}")
        entry.size, entry.mode = len(data), 0o644
        tar.addfile(entry, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _host_rule() -> str | None:
    for folder in RULE_DIRS:
        try:
            return (folder / RULE_NAME).read_text()
        except OSError:
            continue
    return None


def layered_path(system: Path, home: Path | None = None) -> tuple[Path, Path] | None:
    """(path, cache folder) of vmbuild's appliance over the system's supermin path
    ``system``; None where there is nothing to layer (no supermin appliance there, or
    no rule to quieten), and libguestfs's own appliance is booted.

    The path is made again, in a new folder renamed over the old, when the system's
    layers or the host's rule change; otherwise it is left as it is, its files' times
    included, since supermin rebuilds whenever an input is newer than its appliance.
    """
    source = system / "supermin.d"
    rule = _host_rule()
    if rule is None or not source.is_dir():
        return None
    home = home or appliance_home()
    wanted = {entry.name: str(entry) for entry in source.iterdir() if entry.name != LAYER}
    layer = layer_bytes(quiet_rule(rule))
    path = home / "path"
    current = path / "supermin.d"
    if not _matches(current, wanted, layer):
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = home / f".path.{os.getpid()}"
        old = home / f".old.{os.getpid()}"
        shutil.rmtree(fresh, ignore_errors=True)
        try:
            (fresh / "supermin.d").mkdir(parents=True)
            for name, target in sorted(wanted.items()):
                (fresh / "supermin.d" / name).symlink_to(target)
            (fresh / "supermin.d" / LAYER).write_bytes(layer)
            if path.exists():
                path.rename(old)
            try:
                fresh.rename(path)
            except OSError:
                # Another vmbuild put its own in place meanwhile: the same, or wrong.
                if not _matches(current, wanted, layer):
                    raise
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    cache = home / "cache"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path, cache


def _matches(current: Path, wanted: dict[str, str], layer: bytes) -> bool:
    try:
        names = {entry.name for entry in current.iterdir()}
        if names != set(wanted) | {LAYER}:
            return False
        if any(os.readlink(current / name) != target for name, target in wanted.items()):
            return False
        return (current / LAYER).read_bytes() == layer
    except OSError:
        return False
