"""The second libvirt host of tests/secondhost.py: it answers at its own URI, keeps
domains, networks and pools of its own, stores uploaded volumes where this machine
cannot see them, runs QEMU guests (TCG), survives a restart of its libvirtd, and
leaves nothing behind when closed, also when it fails to start.

Every name a test makes is unique (the session's host is shared) and removed in a
``finally``, whatever the test's outcome.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import secondhost
from libvirthelp import REQUIRED
from libvirthelp import virsh as system_virsh
from secondhost import (  # noqa: F401 (the fixture second_host)
    SecondHost,
    SecondHostError,
    second_host_fixture,
    start_second_host,
)

try:
    import libvirt
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("the libvirt Python binding is not installed", allow_module_level=True)

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024


def _unique(what: str) -> str:
    return f"vmbuild-test-{what}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn(second_host: SecondHost) -> Iterator[Any]:
    """A connection to the second host through the Python binding."""
    connection = second_host.open()
    try:
        yield connection
    finally:
        connection.close()


def _domain_xml(name: str, *devices: str) -> str:
    """A small TCG guest: no KVM here. With no bootable disk it stays in the BIOS,
    which is enough to show that QEMU runs."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    {"".join(devices)}
    <graphics type='vnc' listen='127.0.0.1' autoport='yes'/>
  </devices>
</domain>"""


def _send(conn: Any, vol: Any, data: bytes) -> None:
    """Upload ``data`` into ``vol`` through a libvirt stream."""
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    try:
        view = memoryview(data)
        while view:
            sent = stream.send(bytes(view[: 256 * 1024]))
            assert sent > 0, f"stream.send returned {sent}"
            view = view[sent:]
        stream.finish()
    except BaseException:
        stream.abort()
        raise


def _volume(pool: Any, name: str, size: int, form: str = "raw") -> Any:
    return pool.createXML(
        f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
        f"<target><format type='{form}'/></target></volume>",
        0,
    )


def _netns_list() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split(" ")[0] for line in listed.stdout.splitlines()]


# ------------------------------------------------------------------ 1. independent


def test_answers_at_its_own_uri_with_its_own_identity(second_host: SecondHost) -> None:
    version = second_host.virsh("version").stdout
    assert "Running hypervisor: QEMU" in version, version
    assert second_host.virsh("uri").stdout.strip() == second_host.uri
    assert second_host.uri == f"qemu+tcp://{second_host.address}/system"
    assert second_host.name == "hv2"
    address = ipaddress.ip_address(second_host.address)
    assert address in secondhost.RANGE and str(address) != "198.51.100.2"
    hostname = second_host.virsh("hostname").stdout.strip()
    assert hostname == second_host.hostname
    assert hostname != socket.gethostname()
    caps = ET.fromstring(second_host.virsh("capabilities").stdout)
    assert caps.findtext("host/uuid") == second_host.host_uuid
    ours = ET.fromstring(system_virsh("capabilities").stdout)
    assert ours.findtext("host/uuid") != second_host.host_uuid
    # The pool of setup: a dir pool at its /var/lib/libvirt/images, running, autostarted.
    info = dict(
        (key.strip(), value.strip())
        for key, _, value in (
            line.partition(":")
            for line in second_host.virsh("pool-info", second_host.pool).stdout.splitlines()
        )
    )
    assert info["State"] == "running" and info["Autostart"] == "yes", info
    pool = ET.fromstring(second_host.virsh("pool-dumpxml", second_host.pool).stdout)
    assert pool.get("type") == "dir"
    assert pool.findtext("target/path") == "/var/lib/libvirt/images"


def test_domains_networks_and_pools_are_its_own(second_host: SecondHost, tmp_path: Path) -> None:
    there, here, network = _unique("there"), _unique("here"), _unique("net")
    try:
        for name, run in ((there, second_host.virsh), (here, system_virsh)):
            (tmp_path / f"{name}.xml").write_text(_domain_xml(name))
            run("define", str(tmp_path / f"{name}.xml"))
        (tmp_path / "net.xml").write_text(f"<network><name>{network}</name></network>")
        second_host.virsh("net-define", str(tmp_path / "net.xml"))

        remote = second_host.virsh("list", "--all", "--name").stdout.split()
        local = system_virsh("list", "--all", "--name").stdout.split()
        assert there in remote and there not in local
        assert here in local and here not in remote
        assert network in second_host.virsh("net-list", "--all", "--name").stdout.split()
        assert network not in system_virsh("net-list", "--all", "--name").stdout.split()
        # Pools: even one of the same name ("default") is another pool.
        remote_pools = set(second_host.virsh("pool-list", "--all", "--uuid").stdout.split())
        local_pools = set(system_virsh("pool-list", "--all", "--uuid").stdout.split())
        assert remote_pools and not remote_pools & local_pools
    finally:
        second_host.virsh("undefine", there, check=False)
        system_virsh("undefine", here, check=False)
        second_host.virsh("net-undefine", network, check=False)


# ------------------------------------------------------------------ 2. upload


def test_uploaded_volume_is_on_the_second_host_only(second_host: SecondHost, conn: Any) -> None:
    data = os.urandom(3 * MiB + 12345)
    name = _unique("upload") + ".raw"
    pool = conn.storagePoolLookupByName(second_host.pool)
    vol = _volume(pool, name, len(data))
    try:
        _send(conn, vol, data)
        path = vol.path()
        assert path == f"{second_host.pool_path}/{name}"
        # Not on this machine: its /var/lib/libvirt/images is another folder.
        here = Path(path)
        assert not here.exists() or here.read_bytes() != data
        # On the second host, with the bytes sent.
        digest = second_host.run_inside("sha256sum", path).stdout.split()[0]
        assert digest == hashlib.sha256(data).hexdigest()
        listing = second_host.run_inside("ls", "-l", second_host.pool_path).stdout
        assert name in listing
        assert vol.info()[1] == len(data)  # capacity
    finally:
        vol.delete(0)
    assert second_host.run_inside("test", "-e", path, check=False).returncode == 1


# ------------------------------------------------------------------ 3. a guest


def test_a_qemu_guest_runs_on_the_second_host(second_host: SecondHost, conn: Any) -> None:
    name, net_name, disk_name = _unique("guest"), _unique("iso"), _unique("disk") + ".qcow2"
    pool = conn.storagePoolLookupByName(second_host.pool)
    network = disk = domain = None
    try:
        # An isolated network: a name only, so no forward and no address, and a
        # bridge in the second host's network namespace.
        network = conn.networkDefineXML(f"<network><name>{net_name}</name></network>")
        network.create()
        net_xml = ET.fromstring(network.XMLDesc(0))
        assert net_xml.find("forward") is None and net_xml.find("ip") is None
        disk = _volume(pool, disk_name, 64 * MiB, "qcow2")
        domain = conn.defineXML(
            _domain_xml(
                name,
                f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file='{disk.path()}'/><target dev='vda' bus='virtio'/></disk>",
                f"<interface type='network'><source network='{net_name}'/>"
                "<model type='virtio'/></interface>",
                "<channel type='unix'>"
                "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
            )
        )
        domain.create()
        assert second_host.virsh("domstate", name).stdout.strip() == "running"
        time.sleep(0.5)  # a QEMU that dies on its first steps would be gone by now
        assert second_host.virsh("domstate", name).stdout.strip() == "running"
        assert name not in system_virsh("list", "--all", "--name").stdout.split()

        live = ET.fromstring(domain.XMLDesc(0))
        assert live.get("type") == "qemu"
        pid = int(second_host.inside(f"/run/libvirt/qemu/{name}.pid").read_text())
        assert pid in second_host.pids()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"tcg" in command[command.index(b"-accel") + 1]
        agent = live.find("devices/channel/source")
        assert agent is not None
        socket_path = agent.get("path", "")
        assert second_host.run_inside("test", "-S", socket_path, check=False).returncode == 0
        graphics = live.find("devices/graphics")
        assert graphics is not None and graphics.get("listen") == "127.0.0.1"
        assert int(graphics.get("port", "-1")) >= 5900
        bridge = live.find("devices/interface/source")
        assert bridge is not None and bridge.get("network") == net_name
    finally:
        if domain is not None:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        if disk is not None:
            disk.delete(0)
        if network is not None:
            if network.isActive():
                network.destroy()
            network.undefine()
    assert name not in second_host.virsh("list", "--all", "--name").stdout.split()


# ------------------------------------------------------------------ 4. restart


def test_daemon_stops_and_starts_with_its_state(second_host: SecondHost) -> None:
    data = os.urandom(MiB)
    name = _unique("kept") + ".raw"
    conn = second_host.open()
    try:
        vol = _volume(conn.storagePoolLookupByName(second_host.pool), name, len(data))
        _send(conn, vol, data)
        path = vol.path()
    finally:
        conn.close()
    stopped = False
    try:
        virtlogd = second_host.inside("/run/libvirt/virtlogd.pid").read_text().strip()
        second_host.stop_daemon()
        stopped = True
        # Its libvirtd only: its virtlogd runs on, and this machine's libvirtd answers.
        assert secondhost._alive(int(virtlogd))
        assert system_virsh("version", check=False).returncode == 0
        started = time.monotonic()
        with pytest.raises(libvirt.libvirtError):
            libvirt.open(second_host.uri)
        assert time.monotonic() - started < 5, "a refused connection should fail at once"
        assert second_host.virsh("version", check=False, timeout=20).returncode != 0
        # The volume is still in its tmpfs while the daemon is gone.
        assert second_host.run_inside("test", "-f", path, check=False).returncode == 0

        second_host.start_daemon()
        stopped = False
        conn = second_host.open()
        try:
            pool = conn.storagePoolLookupByName(second_host.pool)
            assert pool.isActive() and pool.autostart()
            assert name in pool.listVolumes()
            digest = second_host.run_inside("sha256sum", path).stdout.split()[0]
            assert digest == hashlib.sha256(data).hexdigest()
            pool.storageVolLookupByName(name).delete(0)
        finally:
            conn.close()
    finally:
        if stopped:  # leave the session's host answering for the next tests
            second_host.start_daemon()
        second_host.run_inside("rm", "-f", path, check=False)


# ------------------------------------------------------------------ 5. clean up


def _state(host: SecondHost) -> dict[str, Any]:
    return {
        "netns": host.netns,
        "veth": host.veth,
        "folder": host.folder,
        "address": host.local_address,
        "pids": host.pids(),
        "mntns": os.readlink(f"/proc/{host.holder.pid}/ns/mnt") if host.holder else None,
    }


def _assert_nothing_left(state: dict[str, Any]) -> None:
    assert state["netns"] not in _netns_list()
    assert not Path(f"/run/netns/{state['netns']}").exists()
    for end in state["veth"]:
        assert not Path(f"/sys/class/net/{end}").exists(), end
    assert not state["folder"].exists()
    addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert f" {state['address']}/" not in addresses
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert all(end not in routes for end in state["veth"])
    assert not [pid for pid in state["pids"] if secondhost._alive(pid)]
    if state["mntns"] is not None:
        assert not secondhost._members(None, state["mntns"])
    mounts = Path("/proc/self/mounts").read_text()
    assert state["netns"] not in mounts and str(state["folder"]) not in mounts


def test_close_leaves_nothing(second_host: SecondHost) -> None:
    with start_second_host() as other:
        state = _state(other)
        assert other.address != second_host.address
        assert other.netns != second_host.netns
        # A running QEMU too, which close() must kill with the daemons.
        conn = other.open()
        try:
            conn.createXML(_domain_xml(_unique("doomed")), 0)
        finally:
            conn.close()
        state["pids"] = other.pids()
        assert len(state["pids"]) >= 4, state  # holder, virtlogd, libvirtd, QEMU
    _assert_nothing_left(state)
    other.close()  # twice is fine
    # The session's host is untouched.
    assert second_host.virsh("version", check=False).returncode == 0


def test_a_failed_start_says_why_and_leaves_nothing(second_host: SecondHost) -> None:
    before = set(_netns_list())
    with pytest.raises(SecondHostError, match="libvirtd") as failed:
        start_second_host(libvirtd_conf="this is not a libvirtd setting", timeout=10)
    netns = f"{secondhost.PREFIX}{os.getpid()}-{secondhost._counter}"
    assert netns in str(failed.value)
    assert set(_netns_list()) == before
    assert not list(Path("/tmp").glob(f"{netns}-*"))
    assert second_host.virsh("version", check=False).returncode == 0
