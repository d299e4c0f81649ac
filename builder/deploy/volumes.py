"""Volumes in a host's storage pool, written through libvirt's storage API.

A file is sent as a sparse stream: holes are announced, not sent, so a 4 GiB
overlay with 30 MiB of data costs 30 MiB on the wire; data goes in 1 MiB sends
(small sends make uploads crawl). No path on the host is ever opened by vmbuild:
the host's libvirtd writes the volume, wherever its pool keeps it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbuild.libvirt.connection import Host, HostError, binding, reason
from vmbuild.log import info

#: Bytes per stream send.
CHUNK = 1 << 20


@dataclass
class Sent:
    """What went over the wire to one host."""

    volumes: list[str] = field(default_factory=list)
    #: Data bytes sent (holes are not sent).
    bytes: int = 0

    def add(self, volume: str, count: int) -> None:
        self.volumes.append(volume)
        self.bytes += count


#: Where a missing "default" pool is made, as virt-install makes it.
DEFAULT_POOL_PATH = "/var/lib/libvirt/images"


def pool(host: Host, name: str) -> Any:
    """The host's storage pool ``name``, active and refreshed. A missing pool named
    ``default`` is made (a folder pool at /var/lib/libvirt/images, autostarted), as
    virt-install does; any other must exist."""
    libvirt = binding()
    try:
        found = host.conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL or name != "default":
            raise HostError(
                f'storage pool "{name}": {reason(err)}',
                place=host.place,
                hint=f"make it (virsh -c {host.uri} pool-define-as {name} dir --target DIR; "
                "pool-build, pool-start, pool-autostart) or choose another with --pool",
            ) from None
        found = _make_default_pool(host)
    with host.calls(f'storage pool "{name}"'):
        if not found.isActive():
            found.create(0)
        found.refresh(0)
    return found


def _make_default_pool(host: Host) -> Any:
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = "default"
    ET.SubElement(ET.SubElement(root, "target"), "path").text = DEFAULT_POOL_PATH
    with host.calls('making storage pool "default"'):
        made = host.conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
        made.build(0)
        made.setAutostart(1)
    info(f"  {host.place}: made storage pool default ({DEFAULT_POOL_PATH})")
    return made


def volumes(host: Host, storage: Any) -> dict[str, Any]:
    """The pool's volumes by name."""
    with host.calls("listing volumes"):
        return {volume.name(): volume for volume in storage.listAllVolumes(0)}


def _volume_xml(name: str, size: int, mode: str) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(size)
    ET.SubElement(root, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(root, "target")
    # The bytes are the image as it is (qcow2 or raw): the pool sees its format on refresh.
    ET.SubElement(target, "format", type="raw")
    permissions = ET.SubElement(target, "permissions")
    ET.SubElement(permissions, "mode").text = mode
    return ET.tostring(root, encoding="unicode")


def _extents(fd: int, size: int) -> list[tuple[bool, int, int]]:
    """(is data, offset, length) over the whole file, from SEEK_DATA/SEEK_HOLE."""
    out = []
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # no data after offset
            data = size
        if data > offset:
            out.append((False, offset, data - offset))
        if data >= size:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        out.append((True, data, hole - data))
        offset = hole
    return out


def upload(
    host: Host,
    storage: Any,
    name: str,
    path: Path,
    *,
    mode: str = "0600",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, int]:
    """Create volume ``name`` holding ``path``'s bytes, sent sparse, and read it back
    to check that the host holds exactly those bytes; the volume and the data bytes
    sent. A volume of that name already there is replaced. On failure the new
    volume is deleted again (when the host still answers) and a HostError raised.

    The read-back is not optional: a pool that fills up during a sparse upload can
    leave a short or hollow volume behind while libvirt reports success."""
    libvirt = binding()
    size = path.stat().st_size
    existing = volumes(host, storage).get(name)
    if existing is not None:
        delete(host, existing)
    with host.calls(f"creating volume {name}"):
        volume = storage.createXML(_volume_xml(name, size, mode), 0)
    try:
        with host.calls(f"uploading {path} to volume {name}"), path.open("rb") as handle:
            stream = host.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            volume.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            try:
                sent, digest = _send(stream, handle.fileno(), size, progress)
                stream.finish()
            except OSError as err:
                with contextlib.suppress(Exception):
                    stream.abort()
                raise HostError(
                    f"uploading {path} to volume {name}: {err}", place=host.place
                ) from None
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.abort()
                raise
            if progress is not None:
                progress(size, size)
        with host.calls(f"refreshing volume {name}"):
            storage.refresh(0)
            volume = storage.storageVolLookupByName(name)
        held = volume_sha256(host, volume, size)
        if held != digest:
            raise HostError(
                f"volume {name} does not hold what was sent (sha256 {held[:12]}, "
                f"sent {digest[:12]})",
                place=host.place,
                hint="is its storage pool full? (virsh pool-info)",
            )
    except BaseException:
        with contextlib.suppress(Exception):
            volume.delete(0)
        raise
    return volume, sent


_ZEROS = bytes(CHUNK)
#: How long a host may take no data before the upload counts as failed: a host
#: whose pool filled up may stop reading without saying so.
STALL_TIMEOUT = 60.0


def _retrying(call: Callable[[], int], what: str = "data") -> int:
    """A non-blocking stream call, again until the host takes it (-2: its buffers
    are full) or STALL_TIMEOUT passes."""
    deadline = time.monotonic() + STALL_TIMEOUT
    pause = 0.001
    while True:
        result = call()
        if result != -2:
            return result
        if time.monotonic() > deadline:
            raise OSError(f"the host took no {what} for {STALL_TIMEOUT:.0f}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _send_all(stream: Any, chunk: bytes) -> None:
    while chunk:
        count = _retrying(functools.partial(stream.send, chunk))
        chunk = chunk[count:]


def _hash_zeros(digest: Any, length: int) -> None:
    while length > 0:
        digest.update(_ZEROS[: min(length, CHUNK)])
        length -= CHUNK


def _send(
    stream: Any, fd: int, size: int, progress: Callable[[int, int], None] | None
) -> tuple[int, str]:
    """Send the file's data and announce its holes; the data bytes sent and the
    sha256 of the file's bytes (holes read as zeros)."""
    digest = hashlib.sha256()
    done = sent = 0
    for is_data, offset, length in _extents(fd, size):
        if not is_data:
            _retrying(functools.partial(stream.sendHole, length, 0))
            _hash_zeros(digest, length)
            done += length
            continue
        os.lseek(fd, offset, os.SEEK_SET)
        left = length
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                raise OSError(f"file shrank while it was being sent at offset {offset}")
            digest.update(chunk)
            _send_all(stream, chunk)
            left -= len(chunk)
            sent += len(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, size)
    return sent, digest.hexdigest()


def volume_sha256(host: Host, volume: Any, size: int) -> str:
    """sha256 of a volume's first ``size`` bytes, downloaded as a sparse stream
    (holes are not sent, and count as zeros)."""
    libvirt = binding()
    digest = hashlib.sha256()
    got = [0]

    def data(_stream: Any, chunk: bytes, _opaque: Any) -> int:
        digest.update(chunk)
        got[0] += len(chunk)
        return len(chunk)

    def hole(_stream: Any, length: int, _opaque: Any) -> int:
        _hash_zeros(digest, length)
        got[0] += length
        return 0

    with host.calls(f"reading volume {volume.name()} back"):
        stream = host.conn.newStream(0)
        volume.download(stream, 0, size, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        stream.sparseRecvAll(data, hole, None)
        stream.finish()
    if got[0] < size:  # a short volume: what is missing counts as nothing
        return f"short-{got[0]}"
    return digest.hexdigest()


def read_small(host: Host, volume: Any, limit: int = 4096) -> bytes:
    """The first ``limit`` bytes of a small volume (a marker)."""
    with host.calls(f"reading volume {volume.name()}"):
        stream = host.conn.newStream(0)
        volume.download(stream, 0, limit, 0)
        data = b""
        while len(data) < limit:
            chunk = stream.recv(limit - len(data))
            if not isinstance(chunk, bytes) or not chunk:
                break
            data += chunk
        stream.finish()
    return data


def delete(host: Host, volume: Any) -> None:
    with host.calls(f"deleting volume {volume.name()}"):
        volume.delete(0)


def copy_sparse(source: Path, dest: Path) -> None:
    """``source``'s bytes into a new file ``dest``, its holes left holes."""
    with source.open("rb") as src, dest.open("xb") as out:
        size = os.fstat(src.fileno()).st_size
        for is_data, offset, length in _extents(src.fileno(), size):
            if not is_data:
                continue
            src.seek(offset)
            out.seek(offset)
            left = length
            while left:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
        out.truncate(size)
