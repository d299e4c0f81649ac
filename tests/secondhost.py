"""A second, independent libvirt host on this machine, for the tests that deploy to
a remote host through the libvirt API.

The host is a libvirtd (and its own virtlogd) in namespaces of its own:

* a network namespace joined to this machine by a veth pair carrying one /30 out
  of 198.51.100.0/24 (a documentation range) that nothing here uses yet. The
  namespace has no default route and nothing forwards out of it, so neither the
  daemon nor its guests can reach a real network. Its libvirtd listens on plain
  TCP (no TLS, no auth) on its end of the pair only: ``qemu+tcp://ADDRESS/system``;
* a private mount namespace, kept alive by a holder process (``sleep infinity``)
  for as long as the host lives, in which /run/libvirt, /var/lib/libvirt,
  /var/log/libvirt and /var/cache/libvirt are tmpfs that only this host sees, and
  /etc/libvirt is a temporary copy of this machine's, with none of its domains,
  networks, pools or secrets. The pool path /var/lib/libvirt/images of that host
  is therefore not this machine's /var/lib/libvirt/images: a volume uploaded there
  is not on our filesystem, which is what the deploy tests check;
* a UTS namespace, so that ``virsh hostname`` names the second host.

``start_second_host()`` makes one (failing with a SecondHostError that says which
step broke, after removing whatever it made); ``SecondHost.close()`` kills every
process of the namespace and removes the namespace, the veth pair and the temporary
folder. The session fixture ``second_host`` shares one between the tests of a
session: a test module imports ``second_host_fixture`` to have it, as with
tests/registry.py::

    from secondhost import SecondHost, second_host_fixture  # noqa: F401

Names are unique per run (``vmbuild-hv-<pid>-<n>``); the namespace and folders of
a test run that was killed before it could clean up are removed by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from libvirthelp import REQUIRED

#: The name the tests know the host by.
NAME = "hv2"
#: Where the /30 of each second host comes from.
RANGE = ipaddress.ip_network("198.51.100.0/24")
#: Never taken: the by-hand recipe's host (``vmbuild-hv2``, 198.51.100.2) uses it.
RESERVED = ipaddress.ip_network("198.51.100.0/30")
#: libvirtd's plain TCP port.
PORT = 16509
#: How long the daemons may take to answer (or to go away).
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
#: What every namespace, veth and folder of ours is named after: the prefix, the
#: pid of the test process, a counter. The manual ``vmbuild-hv2`` does not match.
PREFIX = "vmbuild-hv-"
_OURS = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(\d+)$")
#: The tools the host is made with.
TOOLS = ("ip", "unshare", "nsenter", "virsh", "libvirtd", "virtlogd")
#: Taken while a /30 is chosen and assigned, so two test runs do not pick the same.
LOCK = Path("/run/lock/vmbuild-secondhost.lock")
#: The folders of this machine that the second host has a tmpfs of its own for.
PRIVATE = ("/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt")
#: The pool every second host has.
POOL = "default"
POOL_PATH = "/var/lib/libvirt/images"
#: The daemons run with this environment, not the test process's.
DAEMON_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}

_counter = 0


class SecondHostError(RuntimeError):
    """A second host could not be started (or stopped): the step, and what it said."""


def _run(
    *argv: str, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        raise SecondHostError(f"`{shlex.join(argv)}` took more than {timeout:g} s") from err
    if check and done.returncode != 0:
        raise SecondHostError(
            f"`{shlex.join(argv)}` failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, already dead, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _ns(pid: int, kind: str) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    return None


def _members(netns: str | None, mntns: str | None) -> set[int]:
    """The processes in the network namespace named ``netns`` (as ``ip netns pids``
    lists them) or in the mount namespace ``mntns`` (a ``mnt:[inode]`` link)."""
    pids: set[int] = set()
    if netns is not None:
        listed = _run("ip", "netns", "pids", netns, check=False, timeout=10)
        pids.update(int(word) for word in listed.stdout.split() if word.isdigit())
    if mntns is not None:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _ns(int(entry), "mnt") == mntns:
                pids.add(int(entry))
    return {pid for pid in pids if pid != os.getpid() and _alive(pid)}


def _kill_all(netns: str | None, mntns: str | None, timeout: float = STOP_TIMEOUT) -> set[int]:
    """SIGKILL every process of the namespaces, again until none is left (libvirtd
    could fork between a listing and the kill); the pids killed."""
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while pids := _members(netns, mntns):
        if time.monotonic() > deadline:
            raise SecondHostError(f"processes {sorted(pids)} of {netns} would not die")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.05)
    return killed


def _wait_reaped(pids: set[int], timeout: float = 5) -> None:
    """Wait a little for the dead daemons to leave the process table. They were
    orphans (daemonized), so init reaps them, not us; this machine's init does so
    every second or so, and ``ps`` shows them <defunct> until then."""
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        if time.monotonic() > deadline:
            return  # dead all the same: only init's bookkeeping is late
        time.sleep(0.05)


def _port_state(address: str, port: int = PORT) -> str:
    """Whether libvirtd's port is "open", "refused" or "silent" (a timeout or
    another error)."""
    try:
        with socket.create_connection((address, port), timeout=1):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"


# ------------------------------------------------------------------ addresses


#: The route types ``ip route`` may print before a route's destination.
_ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "anycast", "throw"}
_ROUTE_TYPES |= {"unreachable", "prohibit", "blackhole", "nat"}


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network assigned or routed on this machine."""
    used = []
    for line in _run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        words = line.split()
        if "inet" in words:
            used.append(ipaddress.ip_interface(words[words.index("inet") + 1]).network)
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in _ROUTE_TYPES:
            words = words[1:]
        if words and words[0] != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(words[0], strict=False))
    return used


def _free_slash30() -> ipaddress.IPv4Network:
    """The first /30 of RANGE that overlaps nothing assigned or routed here."""
    used = [RESERVED, *_used_networks()]
    for candidate in RANGE.subnets(new_prefix=30):
        if not any(candidate.overlaps(net) for net in used):
            assert isinstance(candidate, ipaddress.IPv4Network)
            return candidate
    raise SecondHostError(f"no free /30 left in {RANGE} on this machine")


@contextlib.contextmanager
def _address_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------ stale hosts


def _reap_stale() -> None:
    """Remove the namespaces, veths and folders of second hosts whose test process
    is gone (killed before it could clean up). Only names of ours, of dead pids."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        match = _OURS.match(name)
        if match and not _alive(int(match[1])):
            _kill_all(name, None)
            _run("ip", "netns", "delete", name, check=False)
    for line in _run("ip", "-o", "link", "show").stdout.splitlines():
        match = re.match(r"^\d+: (vmbh([0-9a-f]+)x[0-9a-f]+a)[@:]", line)
        if match and not _alive(int(match[2], 16)):
            _run("ip", "link", "delete", match[1], check=False)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        match = re.match(rf"^{re.escape(PREFIX)}(\d+)-", folder.name)
        if match and not _alive(int(match[1])):
            shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ the host


class SecondHost:
    """A libvirt host of its own, reachable from this machine at ``uri`` only."""

    name: str = NAME
    pool: str = POOL
    pool_path: str = POOL_PATH

    def __init__(self, netns: str, veth: tuple[str, str], network: ipaddress.IPv4Network):
        hosts = list(network.hosts())
        #: The network namespace, the veth pair (our end, its end), the /30.
        self.netns = netns
        self.veth = veth
        self.network = network
        #: Our end of the pair, and the second host's (which libvirtd listens on).
        self.local_address = str(hosts[0])
        self.address = str(hosts[1])
        self.uri = f"qemu+tcp://{self.address}/system"
        #: The second host's hostname (a UTS namespace of its own).
        self.hostname = f"{NAME}-{netns.removeprefix(PREFIX)}"
        #: The libvirt host UUID (libvirtd.conf's host_uuid): not this machine's.
        self.host_uuid = str(uuid.uuid4())
        #: The temporary folder: etc/ is bind-mounted on /etc/libvirt in there.
        self.folder = Path(tempfile.mkdtemp(prefix=f"{netns}-"))
        self.holder: subprocess.Popen[str] | None = None
        self._mntns: str | None = None
        self._closed = False

    # -------------------------------------------------------------- use

    def __repr__(self) -> str:
        return f"SecondHost({self.name!r}, {self.uri!r}, netns={self.netns!r})"

    def virsh(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``virsh -c URI ARGS...`` from this machine, over the network."""
        return subprocess.run(
            ["virsh", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def open(self) -> Any:
        """A libvirt connection (the Python binding) to the host; close it after use."""
        import libvirt

        return libvirt.open(self.uri)

    def _enter(self) -> list[str]:
        if self.holder is None or not _alive(self.holder.pid):
            raise SecondHostError(f"{self.netns}: the namespace holder is not running")
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "-u", "--"]

    def run_inside(
        self, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the second host (its mount, network and UTS namespaces),
        e.g. ``run_inside("ls", "-l", "/var/lib/libvirt/images")``."""
        return subprocess.run(
            [*self._enter(), *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def inside(self, path: str) -> Path:
        """``path`` of the second host, as this process can read it (through the
        holder's /proc/PID/root), e.g. to read its libvirtd log."""
        if self.holder is None:
            raise SecondHostError(f"{self.netns}: not started")
        return Path(f"/proc/{self.holder.pid}/root") / path.lstrip("/")

    def pids(self) -> list[int]:
        """Every live process of the host: the holder, the daemons, the QEMUs."""
        return sorted(_members(self.netns, self._mntns))

    def log_tail(self, lines: int = 15) -> str:
        """The end of the second host's libvirtd log (for error messages)."""
        with contextlib.suppress(OSError, SecondHostError):
            text = self.inside("/var/log/libvirt/libvirtd.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no libvirtd log)"

    # -------------------------------------------------------------- daemons

    def _daemon_pid(self, daemon: str) -> int | None:
        """The pid in the daemon's pid file, if that process runs in our namespace."""
        try:
            text = self.inside(f"/run/libvirt/{daemon}.pid").read_text().strip()
        except (OSError, SecondHostError):
            return None
        if not text.isdigit() or not _alive(int(text)):
            return None
        pid = int(text)
        return pid if _ns(pid, "mnt") == self._mntns else None

    def _start(self, daemon: str, *args: str) -> None:
        _run(
            *self._enter(),
            daemon,
            *args,
            "-d",
            "-p",
            f"/run/libvirt/{daemon}.pid",
            env=DAEMON_ENV,
        )

    def start_daemon(self, timeout: float = START_TIMEOUT) -> None:
        """Start the host's libvirtd (again) and wait until it answers at ``uri``.
        What it had (pools, volumes, networks, domains) is still there: the holder
        kept the tmpfs and the copy of /etc/libvirt."""
        if self._daemon_pid("virtlogd") is None:
            self._start("virtlogd")
        if self._daemon_pid("libvirtd") is None:
            try:
                self._start("libvirtd", "--listen")
            except SecondHostError as err:
                raise SecondHostError(f"{err}\nlibvirtd log:\n{self.log_tail()}") from None
        deadline = time.monotonic() + timeout
        while True:
            probe = self.virsh("version", check=False, timeout=10)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SecondHostError(
                    f"libvirtd of {self.netns} did not answer at {self.uri} within "
                    f"{timeout:g} s: {probe.stderr.strip()}\nlibvirtd log:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop_daemon(self, timeout: float = STOP_TIMEOUT) -> None:
        """Kill the host's libvirtd only (virtlogd and the QEMUs stay) and wait
        until its port refuses connections."""
        pid = self._daemon_pid("libvirtd")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (pid is not None and _alive(pid)) or _port_state(self.address) != "refused":
            if time.monotonic() > deadline:
                if pid is not None and _alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + 5
                    pid = None
                    continue
                raise SecondHostError(f"libvirtd of {self.netns} would not stop")
            time.sleep(0.05)

    # -------------------------------------------------------------- set up

    def _make_link(self) -> None:
        """The namespace and the veth pair, its addresses assigned and up."""
        ours, theirs = self.veth
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", ours, "type", "veth", "peer", "name", theirs)
        _run("ip", "link", "set", theirs, "netns", self.netns)
        prefix = self.network.prefixlen
        _run("ip", "addr", "add", f"{self.local_address}/{prefix}", "dev", ours)
        _run("ip", "link", "set", ours, "up")
        inside = ("ip", "netns", "exec", self.netns)
        _run(*inside, "ip", "addr", "add", f"{self.address}/{prefix}", "dev", theirs)
        _run(*inside, "ip", "link", "set", theirs, "up")
        # Its own lo, up: the VNC servers of its guests listen on its 127.0.0.1.
        _run(*inside, "ip", "link", "set", "lo", "up")

    def _start_host(self, *, libvirtd_conf: str = "", timeout: float = START_TIMEOUT) -> None:
        """The rest of start_second_host's steps, after _make_link."""
        etc = self._write_config(libvirtd_conf)
        self._start_holder(etc)
        self._make_skeleton()
        self.start_daemon(timeout)
        self._define_pool()

    def _write_config(self, libvirtd_conf: str) -> Path:
        """A copy of /etc/libvirt without this machine's state (domains, networks,
        pools, secrets: the second host starts empty), with the settings below."""
        etc = self.folder / "etc"
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        for state in ("qemu", "storage", "secrets", "qemu/networks"):
            folder = etc / state
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.is_file() or entry.is_symlink():
                    entry.unlink()
                elif entry.name == "autostart":
                    shutil.rmtree(entry)
                    entry.mkdir()
        with (etc / "libvirtd.conf").open("a") as conf:
            conf.write(
                "\n# tests/secondhost.py: the second host\n"
                # Plain TCP with no authentication, on its end of the veth only:
                # nothing but this machine can reach that address.
                "listen_tls = 0\n"
                "listen_tcp = 1\n"
                'auth_tcp = "none"\n'
                f'listen_addr = "{self.address}"\n'
                # The host UUID libvirt reports (capabilities, sysinfo) and checks
                # on migration ("same host"): not the SMBIOS one this machine's
                # libvirtd reports too.
                f'host_uuid = "{self.host_uuid}"\n'
                # Its own log, in its own /var/log/libvirt: read by log_tail().
                'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
                f"{libvirtd_conf}\n"
            )
        with (etc / "qemu.conf").open("a") as conf:
            conf.write(
                "\n# tests/secondhost.py: the second host\n"
                # No cgroups. The cgroup hierarchy is this machine's, shared with
                # the first libvirtd, which puts its QEMUs in machine/qemu-ID-NAME
                # .libvirt-qemu: IDs start at 1 on each host, so the same name
                # would be the same group. As it is, `ip netns exec` gives the
                # holder a fresh /sys without /sys/fs/cgroup's mounts and libvirtd
                # finds no controller; this says so outright, should they come back.
                "cgroup_controllers = [ ]\n"
            )
        return etc

    def _start_holder(self, etc: Path) -> None:
        """The holder: ``ip netns exec`` (the network namespace and a /sys of its
        own, which libvirt's network driver reads), then ``unshare`` a private
        mount namespace and a UTS namespace, mount the tmpfs and the copy of
        /etc/libvirt, and ``exec sleep infinity``: the pid stays the holder's."""
        # Its hostname resolves from its own /etc/hosts (libvirtd looks it up),
        # not through this machine's DNS, which it has no route to.
        hosts = self.folder / "hosts"
        hosts.write_text(Path("/etc/hosts").read_text() + f"\n127.0.1.1 {self.hostname}\n")
        mounts = []
        for folder in PRIVATE:
            # Same owner and mode as this machine's folder (/var/cache/libvirt is
            # 0711 root): a tmpfs root is 1777 otherwise.
            info = os.stat(folder) if os.path.isdir(folder) else None
            mode = f"{info.st_mode & 0o7777:o}" if info else "755"
            owner = f"uid={info.st_uid},gid={info.st_gid}" if info else "uid=0,gid=0"
            options = f"mode={mode},{owner}"
            mounts.append(f"mkdir -p {folder} && mount -t tmpfs -o {options} {self.netns} {folder}")
        script = "\n".join(
            [
                "set -e",
                f"hostname {shlex.quote(self.hostname)}",
                *mounts,
                f"mount --bind {shlex.quote(str(etc))} /etc/libvirt",
                f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
                "echo ready",
                "exec sleep infinity",
            ]
        )
        argv = ["ip", "netns", "exec", self.netns, "unshare", "-m", "-u"]
        argv += ["--propagation", "private", "sh", "-c", script]
        self.holder = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=DAEMON_ENV,
            # Its own session: a Ctrl-C at the terminal does not kill it before
            # close() has killed what runs inside.
            start_new_session=True,
        )
        assert self.holder.stdout is not None and self.holder.stderr is not None
        ready, _, _ = select.select([self.holder.stdout], [], [], 15)
        line = self.holder.stdout.readline() if ready else ""
        if line.strip() != "ready":
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout=1)
            error = self.holder.stderr.read() if self.holder.poll() is not None else ""
            raise SecondHostError(
                f"the namespace holder of {self.netns} did not get ready: {error.strip()}"
            )
        self._mntns = _ns(self.holder.pid, "mnt")
        if self._mntns is None or self._mntns == _ns(os.getpid(), "mnt"):
            raise SecondHostError(f"the holder of {self.netns} has no mount namespace of its own")

    def _make_skeleton(self) -> None:
        """This machine's /var/lib/libvirt folders, owners and modes, as Debian's
        package made them, in the second host's empty tmpfs. images/ is needed:
        a dir pool does not start without its folder (``pool-start``: "cannot open
        directory"). libvirtd makes qemu/ and its subfolders itself, but 0755; the
        package's are 0750 libvirt-qemu (channel/ with the guest agent sockets),
        and tests that look at the second host see what a real host has."""
        source = Path("/var/lib/libvirt")
        target = self.inside("/var/lib/libvirt")
        for folder, subfolders, _files in os.walk(source):
            depth = len(Path(folder).relative_to(source).parts)
            # A running domain's folders (domain-1-NAME/) are the first host's.
            subfolders[:] = [
                name for name in subfolders if depth < 3 and not name.startswith("domain-")
            ]
            for name in subfolders:
                here = Path(folder) / name
                info = here.lstat()
                made = target / here.relative_to(source)
                made.mkdir(exist_ok=True)
                os.chown(made, info.st_uid, info.st_gid)
                made.chmod(info.st_mode & 0o7777)
        (target / "images").mkdir(mode=0o711, exist_ok=True)
        # This machine's QEMU capabilities cache: the same QEMU binaries and the
        # same libvirtd, so the second libvirtd takes it (it checks the binaries'
        # ctimes, its own, the kernel's version...) instead of probing every QEMU
        # at startup, some 7 s. A stale copy is only probed again.
        cache = Path("/var/cache/libvirt/qemu/capabilities")
        if cache.is_dir():
            with contextlib.suppress(OSError):
                shutil.copytree(
                    cache, self.inside(str(cache)), dirs_exist_ok=True, copy_function=shutil.copy2
                )

    def _define_pool(self) -> None:
        """The pool ``default``: a dir pool at /var/lib/libvirt/images, started and
        autostarted."""
        for args in (
            ("pool-define-as", POOL, "dir", "--target", POOL_PATH),
            ("pool-start", POOL),
            ("pool-autostart", POOL),
        ):
            _run("virsh", "-c", self.uri, *args)

    # -------------------------------------------------------------- tear down

    def close(self) -> None:
        """Kill every process of the host, remove the namespace, the veth pair and
        the temporary folder (the tmpfs go with the last process of the mount
        namespace). Safe to call twice, and after a failed start."""
        if self._closed:
            return
        self._closed = True
        problems = []
        killed: set[int] = set()
        try:
            killed = _kill_all(self.netns, self._mntns)
        except SecondHostError as err:
            problems.append(str(err))
        if self.holder is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout=5)
            for stream in (self.holder.stdout, self.holder.stderr):
                if stream is not None:
                    stream.close()
        listed = _run("ip", "netns", "list", check=False).stdout.split()
        if self.netns in listed:
            deleted = _run("ip", "netns", "delete", self.netns, check=False)
            if deleted.returncode != 0:
                problems.append(deleted.stderr.strip())
        # Deleting the namespace deletes its end, and so the pair, a moment after
        # (the kernel frees a namespace asynchronously): wait for it. After a
        # failure between `ip link add` and moving its end, ours is deleted here.
        deadline = time.monotonic() + 5
        while left := [end for end in self.veth if Path(f"/sys/class/net/{end}").exists()]:
            if time.monotonic() > deadline:
                problems.append(f"the veth {', '.join(left)} would not go")
                break
            for end in left:
                _run("ip", "link", "delete", end, check=False)
            time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)
        _wait_reaped(killed)
        if problems:
            raise SecondHostError(f"closing {self.netns}: " + "; ".join(problems))

    def __enter__(self) -> SecondHost:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def missing_tools() -> list[str]:
    """Why a second host cannot be made here: not root, or tools missing."""
    why = [] if os.geteuid() == 0 else ["root"]
    return why + [tool for tool in TOOLS if shutil.which(tool) is None]


def start_second_host(*, libvirtd_conf: str = "", timeout: float = START_TIMEOUT) -> SecondHost:
    """Make and start a second host; close it (``with start_second_host() as host``,
    or ``host.close()``). On failure, everything made so far is removed and a
    SecondHostError says which step failed. ``libvirtd_conf`` adds lines to its
    libvirtd.conf; ``timeout`` bounds the wait for its libvirtd."""
    global _counter
    if missing := missing_tools():
        raise SecondHostError(f"a second host needs {', '.join(missing)}")
    _reap_stale()
    _counter += 1
    netns = f"{PREFIX}{os.getpid()}-{_counter}"
    tag = f"vmbh{os.getpid():x}x{_counter:x}"  # at most 15 characters with the end
    host = None
    try:
        # Under the lock until the address is assigned: another run then sees it.
        with _address_lock():
            host = SecondHost(netns, (f"{tag}a", f"{tag}b"), _free_slash30())
            host._make_link()
        host._start_host(libvirtd_conf=libvirtd_conf, timeout=timeout)
    except BaseException as err:
        if host is not None:
            with contextlib.suppress(SecondHostError):
                host.close()
        if isinstance(err, SecondHostError | subprocess.SubprocessError | OSError):
            raise SecondHostError(f"starting the second host {netns}: {err}") from err
        raise
    return host


@pytest.fixture(scope="session", name="second_host")
def second_host_fixture(libvirtd: None) -> Iterator[SecondHost]:
    """The fixture ``second_host``: one second libvirt host for the session (after
    the system libvirtd answers), closed at its end. Skipped (failed under
    VMBUILD_REQUIRE_LIBVIRT=1) where one cannot be made: not root, tools missing."""
    if missing := missing_tools():
        message = f"a second libvirt host needs {', '.join(missing)}"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    with start_second_host() as host:
        yield host
