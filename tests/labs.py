"""The labs the tests write: one profile writer, and golden images that are only files.

A lab is given as data and written out with tomli_w, so that a test names only what
it varies and every profile is valid TOML. The defaults are a two-VM lab ("t",
node1 and node2 from 192.0.2.10) on a bridge, with documentation addresses.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
from vmbuild.model.facts import GuestFacts, NetStack

#: A bridge the tests never create: enough for a plan, a build and define.sh.
BRIDGE: Mapping[str, Any] = {"source": "br-test", "subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}
#: QEMU user networking.
USER: Mapping[str, Any] = {"type": "user", "subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}


def nodes(count: int = 2, ip: str = "192.0.2.10", **keys: Any) -> dict[str, Any]:
    """A group of ``count`` VMs, node1, node2, ..., from ``ip`` up."""
    return {"name": "node{n}", "count": count, "ip": ip, **keys}


#: Two VMs, web and db, with their own addresses; db has its own memory.
WEB_DB: tuple[Mapping[str, Any], ...] = (
    {"name": "web", "ip": "192.0.2.10"},
    {"name": "db", "ip": "192.0.2.20", "memory": "1G"},
)


def write_lab(
    folder: Path,
    image: Path | str | None = "golden.qcow2",
    *,
    name: str = "t",
    domain: str | None = "lab.example",
    lab: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    network: Mapping[str, Any] = BRIDGE,
    defaults: Mapping[str, Any] | None = None,
    vms: Sequence[Mapping[str, Any]] = (nodes(),),
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    plugins: Sequence[str] = (),
    plugin_files: Mapping[str, str] | None = None,
    file: str | None = None,
) -> Path:
    """Write a profile into ``folder`` (as ``file``, by default ``<name>.toml``).

    ``image`` is base.image (None: no image, e.g. for ``base={"debian": ...}``);
    ``lab``, ``base`` and ``defaults`` add keys to those tables (``defaults`` to
    ``memory = "1G"``); ``tables`` adds whole tables such as [root] and [user].
    ``plugin_files`` (path -> source) are written beside the profile and listed
    first in ``plugins = [...]``, then the ``plugins`` named."""
    listed = []
    for file_name, source in (plugin_files or {}).items():
        plugin = folder / file_name
        plugin.parent.mkdir(parents=True, exist_ok=True)
        plugin.write_text(textwrap.dedent(source))
        listed.append(file_name)
    listed += plugins
    doc: dict[str, Any] = {"plugins": listed} if listed else {}
    doc["lab"] = {"name": name, **({"domain": domain} if domain else {}), **(lab or {})}
    doc["base"] = {**({"image": str(image)} if image is not None else {}), **(base or {})}
    doc["network"] = dict(network)
    doc["defaults"] = {"memory": "1G", **(defaults or {})}
    doc.update({table: dict(keys) for table, keys in (tables or {}).items()})
    doc["vm"] = [dict(vm) for vm in vms]
    path = folder / (file or f"{name}.toml")
    path.write_text(tomli_w.dumps(doc))
    return path


def make_image(path: Path, size: str = "1G", fmt: str = "qcow2", data_mib: int = 0) -> Path:
    """An image with nothing in it (``size`` virtual), or ``data_mib`` MiB of random
    data and no filesystem: enough for every check before the appliance, which
    reads only the file (format, size, digest, locks, damage)."""
    if data_mib:
        raw = path.with_suffix(".raw")
        with raw.open("wb") as handle:
            for _ in range(data_mib):
                handle.write(os.urandom(1 << 20))
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, raw, path], check=True)
        raw.unlink()
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, size], check=True)
    return path


def debian_facts(network: NetStack = NetStack.IFUPDOWN) -> GuestFacts:
    """What inspection reports for a Debian 12 golden image with one root filesystem."""
    return GuestFacts(
        os_type="linux",
        distro="debian",
        product_name="Debian GNU/Linux 12 (bookworm)",
        major=12,
        minor=0,
        hostname="golden",
        network=network,
        init="systemd",
        cloud_init=True,
        mounts=(("/", "/dev/sda1"),),
    )
