"""The appliance vmbuild boots: libguestfs's own, with one layer of vmbuild's on top.

libguestfs builds its appliance with supermin from the files in ``<path>/supermin.d``,
and packages add layers there (Debian's libguestfs-xfs adds ``zz-packages-xfs``).
vmbuild keeps a path of its own, whose ``supermin.d`` links every file of the
system's and adds ``zz-vmbuild.tar.gz``, and a cache folder of its own for the built
appliance, so that the appliance other libguestfs tools boot stays as it was.

The layer holds two things, each left out where the host has nothing to base it on:

- The host's udev rule for persistent storage names without its serial probes: the
  stock rule runs ``scsi_id`` (a program) for every disk at boot, which under TCG
  doubled the time udev takes to settle (17 s and 13 s of a launch with 100 drives,
  against 8 s and 6 s without it). Nothing in the appliance reads a disk's serial:
  guestfsd names disks from /dev/disk/by-path, which the rule still makes, as it
  still imports each filesystem's blkid properties that the LVM, MD and btrfs rules
  act on. Only the /dev/disk/by-id links are gone.
- ``/usr/sbin/udevadm``, ahead of the real one on the appliance's PATH: a few lines
  of ``sh`` that answer ``udevadm [--debug] settle -E FILE`` at once when FILE is
  there, and hand every other command to the real udevadm. guestfsd runs that
  settle before it opens a device: once per drive as it starts, and at every
  mount. In those calls the device node is there already (devtmpfs makes it),
  so udevadm would return at once too, but only after starting up, which costs
  more under TCG than ``sh`` does. Measured with 60 clones, alternating three times
  each: a launch took 27.9 s on average with the rule alone and 25.5 s with the
  shim too, a mount 190 ms and 159 ms (median): about 70 ms per VM of a lab.

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
#: Where the appliance has udevadm: the host's own files, at the host's paths.
UDEVADM_DIRS = (Path("/usr/bin"), Path("/bin"))
#: Where the layer puts its udevadm; the appliance's PATH is /sbin:/usr/sbin:/bin:...
SHIM = "usr/sbin/udevadm"
#: A udevadm of the host's own there would be replaced by the shim: no shim then.
SHADOWED = Path("/") / SHIM
SHIM_TEXT = """\
#!/bin/sh
# vmbuild's udevadm in the libguestfs appliance (see vmbuild/guest/supermin.py):
# "settle -E FILE" has nothing to wait for once FILE is there.
case $# in
3) [ "$1" = settle ] && [ "$2" = -E ] && [ -e "$3" ] && exit 0 ;;
4) [ "$1" = --debug ] && [ "$2" = settle ] && [ "$3" = -E ] && [ -e "$4" ] && exit 0 ;;
esac
exec {real} "$@"
"""
#: Rule lines that run a program for a disk's serial number.
_SERIAL_PROBE = re.compile(r'IMPORT\{program\}="(scsi_id|ata_id)\b')


def appliance_home() -> Path:
    return user_cache() / "appliance"


def quiet_rule(text: str) -> str:
    """The rule ``text`` without the lines that probe a disk's serial number."""
    kept = [line for line in text.splitlines(keepends=True) if not _SERIAL_PROBE.search(line)]
    return "".join(kept)


def shim(real: str) -> str:
    """The layer's udevadm, which hands what it does not answer to ``real``."""
    return SHIM_TEXT.format(real=real)


def layer_bytes(rule: str | None, udevadm: str | None) -> bytes:
    """The layer (the quietened ``rule`` and the shim for the real ``udevadm``, each
    where given) as a tar.gz that is the same bytes for the same inputs (no times in
    it), so that an unchanged layer never makes supermin build the appliance again."""
    files: list[tuple[str, bytes, int]] = []
    if rule is not None:
        files.append((f"etc/udev/rules.d/{RULE_NAME}", rule.encode(), 0o644))
    if udevadm is not None:
        files.append((SHIM, shim(udevadm).encode(), 0o755))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folders = sorted({str(parent) for name, _, _ in files for parent in Path(name).parents})
        for folder in folders:
            if folder != ".":
                entry = tarfile.TarInfo(folder)
                entry.type, entry.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(entry)
        for name, data, mode in files:
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(data), mode
            tar.addfile(entry, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _host_rule() -> str | None:
    for folder in RULE_DIRS:
        try:
            return (folder / RULE_NAME).read_text()
        except OSError:
            continue
    return None


def _host_udevadm() -> str | None:
    """The real udevadm the shim hands over to; None where there is none, or where
    the shim would take its place."""
    if SHADOWED.exists():
        return None
    for folder in UDEVADM_DIRS:
        if (folder / "udevadm").is_file():
            return str(folder / "udevadm")
    return None


def layered_path(system: Path, home: Path | None = None) -> tuple[Path, Path] | None:
    """(path, cache folder) of vmbuild's appliance over the system's supermin path
    ``system``; None where there is nothing to layer (no supermin appliance there, or
    neither a rule to quieten nor a udevadm to shim), and libguestfs's own appliance
    is booted.

    The path is made again, in a new folder renamed over the old, when the system's
    layers or the host's rule change; otherwise it is left as it is, its files' times
    included, since supermin rebuilds whenever an input is newer than its appliance.
    """
    source = system / "supermin.d"
    rule, udevadm = _host_rule(), _host_udevadm()
    if (rule is None and udevadm is None) or not source.is_dir():
        return None
    home = home or appliance_home()
    wanted = {entry.name: str(entry) for entry in source.iterdir() if entry.name != LAYER}
    layer = layer_bytes(None if rule is None else quiet_rule(rule), udevadm)
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
