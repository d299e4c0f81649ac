"""Which of a bundle's disks a running VM holds.

A rebuild must never replace, copy or edit the disk of a running VM: QEMU would go
on writing to the old file after it was unlinked, and whatever the guest wrote
from then on would be lost. Two witnesses are asked, because either may be absent:

* libvirt, through its Python binding: every active domain (running or paused) on
  the connection and the disk files it uses. That names the domain in the message;
* QEMU's own image lock, which every QEMU takes on the images it opens for
  writing (libvirt's or not): ``qemu-img info`` without ``-U`` fails on a locked
  image.
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from vmbuild.errors import BuildError, ExitCode
from vmbuild.host import qemuimg

#: libvirt connections asked for running domains, comma-separated.
URI_ENV = "VMBUILD_LIBVIRT_URI"
#: How long asking one libvirt connection may take.
LIBVIRT_TIMEOUT = 10.0


def libvirt_uris() -> list[str]:
    """The connections to ask: $VMBUILD_LIBVIRT_URI, else $LIBVIRT_DEFAULT_URI, else
    the system instance (readable by anyone through its read-only socket)."""
    text = os.environ.get(URI_ENV) or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"
    return [uri.strip() for uri in text.split(",") if uri.strip()]


def _domain_disks(uri: str) -> dict[str, str]:
    """Real path of every disk file of an active domain -> 'libvirt domain "X" on URI'.
    Empty when libvirt or its binding is not there."""
    try:
        import libvirt
    except ImportError:
        return {}
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no noise on stderr
    found: dict[str, str] = {}
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError:
        return {}
    try:
        for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            state = "paused" if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED else "running"
            xml = ET.fromstring(domain.XMLDesc(0))
            for source in xml.iterfind("devices/disk/source"):
                file = source.get("file")
                if file:
                    found[os.path.realpath(file)] = (
                        f'libvirt domain "{domain.name()}" on {uri} is {state}'
                    )
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
    return found


def _libvirt_disks() -> dict[str, str]:
    """Every asked connection's active disks, each connection bounded in time."""
    found: dict[str, str] = {}
    for uri in libvirt_uris():
        answer: list[dict[str, str]] = []
        worker = threading.Thread(target=lambda u=uri, a=answer: a.append(_domain_disks(u)))
        worker.daemon = True
        worker.start()
        worker.join(LIBVIRT_TIMEOUT)
        if answer:
            found.update(answer[0])
    return found


def holders(disks: Mapping[str, tuple[Path, str]]) -> dict[str, str]:
    """For each VM whose disk (name -> (path, format)) a running VM holds, why."""
    present = {name: pair for name, pair in disks.items() if pair[0].is_file()}
    if not present:
        return {}
    domains = _libvirt_disks()
    out = {}
    for name, (path, fmt) in present.items():
        why = domains.get(os.path.realpath(path))
        if why is None and qemuimg.is_locked(path, fmt):
            why = "a QEMU process holds its image lock"
        if why is not None:
            out[name] = why
    return out


class LabInUseError(BuildError):
    """A build would replace, copy or edit the disk of a running VM."""

    exit_code = ExitCode.BUSY


def refuse_running(changes: Mapping[str, str], disks: Mapping[str, tuple[Path, str]]) -> None:
    """Raise LabInUseError when a running VM holds a disk this build would touch.
    ``changes`` says, per VM, what the build would do to its disk."""
    held = holders({name: disks[name] for name in changes})
    if not held:
        return
    lines = [
        f'vm "{name}": {held[name]}, and this build would {changes[name]} its disk {disks[name][0]}'
        for name in sorted(held)
    ]
    raise LabInUseError(
        "; ".join(lines),
        hint=f"nothing was changed; shut {'that VM' if len(held) == 1 else 'those VMs'} down "
        f"first (virsh -c {libvirt_uris()[0]} shutdown <domain>) and build again. "
        "--force does not override this",
    )
