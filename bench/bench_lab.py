"""Benchmark whole lab builds: vmbuild at several lab sizes against the per-VM loop
people script today.

Run from the repository root:

    .venv/bin/python bench/bench_lab.py [--vms 8,32,100] [--loop-vms 8]
                                        [--golden debian|fake] [--keep]

The golden image is the Debian 12 image ``vmbuild golden`` builds (cached once
built; its making is not counted), or with ``--golden fake`` the small test image of
tests/guestimages.py. The reference lab (static IPs from 192.0.2.10 in
192.0.2.0/24, a user ``lab`` with an SSH key, the default host key types) is built
two ways:

A. ``vmbuild PROFILE -o OUT`` as a subprocess, for 1 VM and for each size of
   ``--vms``; each build is followed by the same command again (a no-op rebuild).
   A build of 1 VM comes first and is not counted: the first build of a run has
   taken as long as the next one of 8 VMs (one-time costs such as a cold page
   cache), which made the base of the marginal time too large and the marginal
   time too small.
   The marginal time per VM is (T_N - T_1) / (N - 1). The build's own output says
   how many appliances ran and how many launches they made, and how long they
   waited for ssh-keygen.
B. The loop, one VM after the other, on ``--loop-vms`` VMs: three ``ssh-keygen``
   host keys, ``qemu-img create -f qcow2 -b golden -F qcow2``, ONE ``virt-customize
   -a`` call (``--hostname``, ``--write /etc/network/interfaces``, ``--truncate
   /etc/machine-id``, ``--upload`` of the six host key files, ``--chmod`` of each),
   then the NoCloud seed with ``cloud-localds`` when installed, else the
   ``genisoimage -output seed.iso -volid cidata -joliet -rock ...`` it runs. The loop
   is linear by construction, so for a lab of N VMs it is taken as N times its
   measured time per VM; the output says so. It too is warmed up by one VM that is
   not counted.

Printed for each size: wall time, the loop's (scaled) time, their ratio, the
marginal time per VM, appliances and launches, peak memory (the largest sum of RSS
over the build's process tree, sampled 4 times a second), the host-key wait and the
no-op rebuild time; then each target with OK or MISSED: ratio <= 0.06 at 8 VMs,
<= 0.025 at 32, <= 0.012 at 100; marginal <= 0.4 s per VM; no-op rebuild <= 0.5 s;
every overlay under 10 MiB. When KVM is unusable every appliance runs under TCG
(vmbuild finds that out itself; virt-customize gets LIBGUESTFS_BACKEND=direct and
LIBGUESTFS_BACKEND_SETTINGS=force_tcg). Under TCG a default run takes about 10
minutes, most of it the loop.

vmbuild's modules are compiled to bytecode before the first timed run, as an
installed package has them, so that no run (the no-op least of all) compiles them.
Everything is written to a temporary folder, removed at the end unless ``--keep``.
Exit status 0 unless something fails: a failed command prints its stderr and the
script exits 1. Timings vary by 10-30% on a busy machine, and these machines' speed
drifts by up to 2x over an hour: compare only figures of one run. The load average
is printed before each part.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import vmbuild as vmbuild_package
from vmbuild.guest.appliance import kvm_usable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from guestimages import ImageSpec, make_images  # noqa: E402

#: The lab sizes vmbuild builds, and the size of the loop's lab.
DEFAULT_SIZES = (8, 32, 100)
LOOP_VMS = 8
LAB = "bench-lab"
DOMAIN = "lab.example"
SUBNET_PREFIX = "192.0.2."
FIRST_HOST = 10
PREFIX_LEN = 24
GATEWAY = "192.0.2.1"
DNS = "192.0.2.1"
USER = "lab"
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C bench@vmbuild"
)
#: The NIC the golden image configures (eth0, from its udev persistent-net rule).
GOLDEN_NIC = "eth0"
#: The host key types vmbuild installs; ssh-keygen's defaults, RSA at 3072 bits.
KEY_TYPES = ("ed25519", "ecdsa", "rsa")

#: vmbuild / loop wall time, by lab size (the loop scaled linearly to that size).
RATIO_TARGETS = {8: 0.06, 32: 0.025, 100: 0.012}
MARGINAL_TARGET_S = 0.4
OVERLAY_TARGET_BYTES = 10 << 20
NOOP_TARGET_S = 0.5
#: No-op rebuilds after each build: the figure is their median (one run after a
#: big build has varied from 0.37 s to 0.51 s on the same code).
NOOP_RUNS = 3

SAMPLE_INTERVAL_S = 0.25
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class CommandFailed(Exception):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{shlex.join(argv)} exited with status {returncode}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


# ------------------------------------------------------------ running and measuring


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after it.
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class TreeSampler:
    """The largest sum of RSS over a process and its descendants, sampled."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        children = _children_map()
        total, todo = 0, [self.root]
        while todo:
            pid = todo.pop()
            total += _rss_bytes(pid)
            todo.extend(children.get(pid, ()))
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Usage:
    """Wall time and memory of one or more commands."""

    wall: float = 0.0
    #: max RSS of the largest single process (wait4: the child and what it reaped)
    max_rss: int = 0
    #: largest sampled sum of RSS over the child's process tree
    tree_peak: int = 0
    commands: int = 0
    #: what the command wrote on stderr
    err: str = ""

    def add(self, other: Usage) -> None:
        self.wall += other.wall
        self.max_rss = max(self.max_rss, other.max_rss)
        self.tree_peak = max(self.tree_peak, other.tree_peak)
        self.commands += other.commands


#: GNU time reports a command's max RSS from its own small process; os.wait4 on a
#: child of this Python process would count Python's RSS too (Popen forks with vfork,
#: and Linux carries the pre-exec high-water mark over an exec).
GNU_TIME = "/usr/bin/time"


def run(argv: Sequence[str | Path], env: Mapping[str, str] | None = None) -> Usage:
    """Run a command to completion, its output in temporary files; raise on failure."""
    args = [str(arg) for arg in argv]
    timed = os.access(GNU_TIME, os.X_OK)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", prefix="bench-lab-rss-") as rss_file,
    ):
        wrapper = [GNU_TIME, "-f", "%M", "-o", rss_file.name] if timed else []
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*wrapper, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env or os.environ),
        )
        with TreeSampler(proc.pid) as sampler:
            _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            out.seek(0)
            text = err.read().decode(errors="replace") or out.read().decode(errors="replace")
            raise CommandFailed(args, proc.returncode, text)
        max_rss_kib = rusage.ru_maxrss
        if timed:
            lines = rss_file.read().split()
            max_rss_kib = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Usage(wall, max_rss_kib * 1024, sampler.peak, 1, text)


def allocated(paths: Sequence[Path]) -> list[int]:
    """Allocated bytes of each file, as ``du --block-size=1`` counts them."""
    result = subprocess.run(
        ["du", "--block-size=1", "--count-links", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise CommandFailed(["du", *map(str, paths)], result.returncode, result.stderr)
    return [int(line.split("\t", 1)[0]) for line in result.stdout.splitlines()]


@contextlib.contextmanager
def environment(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -------------------------------------------------------------------- formatting


def mib(size: float) -> str:
    return f"{size / (1 << 20):.2f} MiB"


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def vms(count: int) -> str:
    return f"{count} VM" + ("s" if count != 1 else "")


def vm_name(number: int) -> str:
    return f"node{number}"


def vm_ip(number: int) -> str:
    return f"{SUBNET_PREFIX}{FIRST_HOST + number - 1}"


def vm_mac(number: int) -> str:
    return f"52:54:00:be:{number >> 8:02x}:{number & 0xFF:02x}"


# ------------------------------------------------------------------------ tools


@dataclass(frozen=True)
class Tools:
    vmbuild: list[str]
    iso: str  # "cloud-localds" or "genisoimage"
    guestfs_env: dict[str, str]
    accel: str


def find_tools() -> Tools:
    missing = [
        tool for tool in ("qemu-img", "virt-customize", "ssh-keygen") if not shutil.which(tool)
    ]
    if missing:
        raise SystemExit(
            f"bench_lab: missing {', '.join(missing)} (apt-get install qemu-utils "
            "libguestfs-tools openssh-client)"
        )
    iso = "cloud-localds" if shutil.which("cloud-localds") else "genisoimage"
    if iso == "genisoimage" and not shutil.which("genisoimage"):
        print("genisoimage is missing: apt-get install -y genisoimage", flush=True)
        run(["apt-get", "install", "-y", "-q", "genisoimage"])
    # An installed vmbuild has its bytecode compiled, so this one gets it too (in
    # its __pycache__ folders, whatever PYTHONDONTWRITEBYTECODE says): no timed run,
    # the no-op rebuild least of all, spends its time compiling vmbuild's modules.
    compileall.compile_dir(Path(vmbuild_package.__file__).parent, quiet=1)
    script = Path(sys.executable).parent / "vmbuild"
    vmbuild = [str(script)] if script.exists() else [sys.executable, "-m", "vmbuild"]
    # Warm vmbuild's cached KVM probe now, so that no timed run pays for it.
    usable, reason = kvm_usable()
    # The direct backend, as vmbuild uses when LIBGUESTFS_BACKEND is not set.
    guestfs_env = {"LIBGUESTFS_BACKEND": os.environ.get("LIBGUESTFS_BACKEND", "direct")}
    if not usable:
        guestfs_env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return Tools(vmbuild, iso, guestfs_env, f"{'kvm' if usable else 'tcg'} ({reason})")


def version(argv: Sequence[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "?"


# ------------------------------------------------------------------ A. vmbuild


def profile_text(golden: Path, count: int) -> str:
    return f"""# Generated by bench/bench_lab.py
[lab]
name = "{LAB}"
domain = "{DOMAIN}"

[base]
image = "{golden}"

[network]
type = "bridge"
source = "br-bench"
subnet = "{SUBNET_PREFIX}0/{PREFIX_LEN}"
gateway = "{GATEWAY}"
dns = ["{DNS}"]

[user]
name = "{USER}"
ssh_authorized_keys = ["{SSH_KEY}"]

[[vm]]
name = "node{{n}}"
count = {count}
ip = "{vm_ip(1)}"
"""


@dataclass
class VmbuildResult:
    count: int
    full: Usage
    #: The no-op rebuilds, in the order they ran; ``noop`` is the median one.
    noops: list[Usage]
    noop_wrote: bool
    disks: list[int]
    seeds: list[int]

    @property
    def noop(self) -> Usage:
        return sorted(self.noops, key=lambda usage: usage.wall)[len(self.noops) // 2]

    @property
    def launches(self) -> int:
        return len(re.findall(r"starting with \d+ disks", self.full.err))

    @property
    def appliances(self) -> int:
        found = re.findall(r"appliance \d+ of (\d+)", self.full.err)
        return int(found[0]) if found else 1

    @property
    def keys_waited(self) -> float:
        found = re.findall(r"waited ([0-9.]+)s in all for ssh-keygen", self.full.err)
        return float(found[0]) if found else 0.0


def bench_vmbuild(tools: Tools, root: Path, golden: Path, count: int) -> VmbuildResult:
    """A full build of ``count`` VMs, then the same command again NOOP_RUNS times
    (no-ops, none of which may rewrite the manifest or a disk)."""
    lab_dir = root / f"vmbuild-{count}"
    lab_dir.mkdir()
    profile = lab_dir / "lab.toml"
    profile.write_text(profile_text(golden, count))
    out = lab_dir / "out"

    full = run([*tools.vmbuild, profile, "-o", out])
    bundle = out / LAB
    watched = [bundle / "manifest.json"] + [
        bundle / "vms" / vm_name(n) / "disk.qcow2" for n in range(1, count + 1)
    ]
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in watched]
    noops = [run([*tools.vmbuild, profile, "-o", out, "-q"]) for _ in range(NOOP_RUNS)]
    after = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in watched]
    vms = [bundle / "vms" / vm_name(n) for n in range(1, count + 1)]
    return VmbuildResult(
        count=count,
        full=full,
        noops=noops,
        noop_wrote=before != after,
        disks=allocated([vm / "disk.qcow2" for vm in vms]),
        seeds=allocated([vm / "seed.iso" for vm in vms]),
    )


# --------------------------------------------------------------------- B. loop


def interfaces_text(number: int) -> str:
    return (
        "source /etc/network/interfaces.d/*\n\n"
        "auto lo\niface lo inet loopback\n\n"
        f"auto {GOLDEN_NIC}\n"
        f"iface {GOLDEN_NIC} inet static\n"
        f"    address {vm_ip(number)}/{PREFIX_LEN}\n"
        f"    gateway {GATEWAY}\n"
        f"    dns-nameservers {DNS}\n"
        f"    dns-search {DOMAIN}\n"
    )


def seed_texts(number: int) -> dict[str, str]:
    name = vm_name(number)
    return {
        "meta-data": f"instance-id: iid-{LAB}-{name}\nlocal-hostname: {name}\n",
        "user-data": (
            "#cloud-config\n"
            f"hostname: {name}\n"
            f"fqdn: {name}.{DOMAIN}\n"
            "manage_etc_hosts: false\n"
            "ssh_pwauth: false\n"
            "ssh_deletekeys: false\n"  # keep the host keys put in below
            "users:\n"
            f"- name: {USER}\n"
            "  shell: /bin/bash\n"
            "  sudo: ALL=(ALL) NOPASSWD:ALL\n"
            "  ssh_authorized_keys:\n"
            f"  - {SSH_KEY}\n"
        ),
        "network-config": (
            "version: 2\n"
            "ethernets:\n"
            f"  {GOLDEN_NIC}:\n"
            "    match:\n"
            f"      macaddress: '{vm_mac(number)}'\n"
            "    dhcp4: false\n"
            "    dhcp6: false\n"
            "    addresses:\n"
            f"    - {vm_ip(number)}/{PREFIX_LEN}\n"
            "    routes:\n"
            f"    - to: 0.0.0.0/0\n      via: {GATEWAY}\n"
            "    nameservers:\n"
            f"      addresses: [{DNS}]\n"
            f"      search: [{DOMAIN}]\n"
        ),
    }


@dataclass
class LoopResult:
    total: Usage = field(default_factory=Usage)
    #: step -> summed usage over the VMs
    steps: dict[str, Usage] = field(default_factory=dict)
    disks: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    per_vm_wall: list[float] = field(default_factory=list)

    def record(self, step: str, usage: Usage) -> None:
        self.steps.setdefault(step, Usage()).add(usage)


def loop_one(tools: Tools, folder: Path, golden: Path, number: int, result: LoopResult) -> None:
    name = vm_name(number)
    folder.mkdir()
    keys = folder / "hostkeys"
    keys.mkdir()
    for key_type in KEY_TYPES:
        bits = ["-b", "3072"] if key_type == "rsa" else []
        key = keys / f"ssh_host_{key_type}_key"
        argv = ["ssh-keygen", "-q", "-t", key_type, *bits, "-N", "", "-C", f"root@{name}"]
        result.record("ssh-keygen (3 keys)", run([*argv, "-f", key]))

    overlay = folder / "disk.qcow2"
    result.record(
        "qemu-img create",
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", golden, "-F", "qcow2", overlay]),
    )

    customize: list[str | Path] = [
        "virt-customize",
        "-q",
        "-a",
        overlay,
        "--hostname",
        name,
        "--write",
        f"/etc/network/interfaces:{interfaces_text(number)}",
        "--truncate",
        "/etc/machine-id",
    ]
    for key_type in KEY_TYPES:
        guest = f"/etc/ssh/ssh_host_{key_type}_key"
        host = keys / f"ssh_host_{key_type}_key"
        customize += ["--upload", f"{host}:{guest}", "--upload", f"{host}.pub:{guest}.pub"]
        customize += ["--chmod", f"0600:{guest}", "--chmod", f"0644:{guest}.pub"]
    result.record("virt-customize", run(customize, env={**os.environ, **tools.guestfs_env}))

    seed_dir = folder / "seed"
    seed_dir.mkdir()
    for file_name, text in seed_texts(number).items():
        (seed_dir / file_name).write_text(text)
    seed = folder / "seed.iso"
    if tools.iso == "cloud-localds":
        argv_iso: list[str | Path] = [
            "cloud-localds",
            "-N",
            seed_dir / "network-config",
            seed,
            seed_dir / "user-data",
            seed_dir / "meta-data",
        ]
        result.record("cloud-localds", run(argv_iso))
    else:
        argv_iso = ["genisoimage", "-output", seed, "-volid", "cidata", "-joliet", "-rock"]
        argv_iso += [seed_dir / "user-data", seed_dir / "meta-data", seed_dir / "network-config"]
        result.record("genisoimage", run(argv_iso))


def bench_loop(tools: Tools, root: Path, golden: Path, count: int) -> LoopResult:
    result = LoopResult()
    lab_dir = root / "loop"
    lab_dir.mkdir()
    # One VM first, not counted, as for vmbuild: one-time costs (a cold page cache)
    # would otherwise fall on the loop's first VM.
    loop_one(tools, lab_dir / "warm-up", golden, 1, LoopResult())
    start = time.perf_counter()
    for number in range(1, count + 1):
        vm_start = time.perf_counter()
        loop_one(tools, lab_dir / vm_name(number), golden, number, result)
        result.per_vm_wall.append(time.perf_counter() - vm_start)
    result.total.wall = time.perf_counter() - start
    for usage in result.steps.values():
        result.total.max_rss = max(result.total.max_rss, usage.max_rss)
        result.total.tree_peak = max(result.total.tree_peak, usage.tree_peak)
        result.total.commands += usage.commands
    vms = [lab_dir / vm_name(n) for n in range(1, count + 1)]
    result.disks = allocated([vm / "disk.qcow2" for vm in vms])
    result.seeds = allocated([vm / "seed.iso" for vm in vms])
    return result


# ---------------------------------------------------------------------- report


def print_usage(label: str, usage: Usage, count: int, disks: list[int], seeds: list[int]) -> None:
    print(f"  {label}")
    commands = f"{usage.commands} command" + ("s" if usage.commands != 1 else "")
    print(f"    wall time            {usage.wall:8.2f} s    ({commands})")
    print(f"    per VM               {usage.wall / count:8.2f} s")
    print(f"    peak RSS, 1 process  {mib(usage.max_rss):>14}")
    print(f"    peak RSS, tree sum   {mib(usage.tree_peak):>14}   (sampled every 0.25 s)")
    print(
        f"    disk per VM          overlay {mib(max(disks))} max, {mib(sum(disks) / count)} mean;"
        f" seed {mib(max(seeds))}; total {mib(sum(disks) + sum(seeds))} for {vms(count)}"
    )


def report(
    tools: Tools,
    golden: tuple[str, float, int],
    single: VmbuildResult,
    results: list[VmbuildResult],
    loop: LoopResult,
) -> None:
    loop_count = len(loop.per_vm_wall)
    per_vm = loop.total.wall / loop_count
    print()
    print(f"== Results: appliance under {tools.accel.split()[0]}, {os.cpu_count()} CPUs ==")
    name, golden_s, golden_bytes = golden
    print(f"  golden image (not counted): {name}, ready in {golden_s:.1f} s, {mib(golden_bytes)}")
    print()
    print_usage(
        f"B. per-VM loop, {vms(loop_count)}", loop.total, loop_count, loop.disks, loop.seeds
    )
    for step, usage in loop.steps.items():
        print(
            f"    {step:<20} {usage.wall:8.2f} s    ({usage.wall / loop_count:.2f} s per VM, "
            f"peak RSS {mib(usage.max_rss)})"
        )
    fastest, slowest = min(loop.per_vm_wall), max(loop.per_vm_wall)
    print(f"    one VM               {fastest:8.2f} s to {slowest:.2f} s")
    print(
        f"  The loop is linear by construction (one virt-customize per VM): for N VMs it\n"
        f"  is taken as N x {per_vm:.2f} s, measured on {vms(loop_count)} in this run."
    )
    print()
    print(f"  A. vmbuild, 1 VM: {single.full.wall:.2f} s (the base of the marginal time)")
    header = (
        f"  {'VMs':>4} {'wall':>8} {'loop':>8} {'ratio':>7} {'target':>7} {'marginal':>9} "
        f"{'appl.':>5} {'launch':>6} {'peak RSS':>10} {'keys wait':>9} {'no-op':>7}"
    )
    print(header)
    for result in results:
        count = result.count
        loop_s = per_vm * count
        ratio = result.full.wall / loop_s
        target = RATIO_TARGETS.get(count)
        marginal = (result.full.wall - single.full.wall) / max(1, count - 1)
        print(
            f"  {count:>4} {result.full.wall:7.2f}s {loop_s:7.0f}s {ratio:7.4f} "
            f"{'-' if target is None else f'{target:.3f}':>7} {marginal:8.3f}s "
            f"{result.appliances:>5} {result.launches:>6} {mib(result.full.tree_peak):>10} "
            f"{result.keys_waited:8.1f}s {result.noop.wall:6.2f}s"
        )
    print("  (peak RSS: the largest sum over vmbuild's process tree, sampled every 0.25 s;")
    print("   keys wait: how long the appliance waited for ssh-keygen, as vmbuild reports it)")
    print()
    print("== Targets ==")
    for result in results:
        count = result.count
        ratio = result.full.wall / (per_vm * count)
        target = RATIO_TARGETS.get(count)
        if target is not None:
            ok = ratio <= target
            print(f"  N={count:<4} vmbuild / loop   {ratio:7.4f} (<= {target})  {verdict(ok)}")
        marginal = (result.full.wall - single.full.wall) / max(1, count - 1)
        ok = marginal <= MARGINAL_TARGET_S
        limit = f"(<= {MARGINAL_TARGET_S} s)"
        print(f"  N={count:<4} marginal per VM  {marginal:7.3f} s {limit} {verdict(ok)}")
        ok = result.noop.wall <= NOOP_TARGET_S and not result.noop_wrote
        wrote = "  (rewrote files!)" if result.noop_wrote else ""
        print(
            f"  N={count:<4} no-op rebuild    {result.noop.wall:7.3f} s (<= {NOOP_TARGET_S} s) "
            f"{verdict(ok)}{wrote}  (median of {', '.join(f'{u.wall:.3f}' for u in result.noops)})"
        )
        biggest = max(result.disks)
        ok = biggest < OVERLAY_TARGET_BYTES
        print(f"  N={count:<4} largest overlay  {mib(biggest)} (< 10 MiB) {verdict(ok)}")


# ------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--vms",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="lab sizes vmbuild builds, comma-separated (default %(default)s)",
    )
    parser.add_argument(
        "--loop-vms", type=int, default=LOOP_VMS, help="VMs in the loop's lab (default %(default)s)"
    )
    parser.add_argument(
        "--golden",
        choices=("debian", "fake"),
        default="debian",
        help="debian: the Debian 12 golden image `vmbuild golden` builds (cached); "
        "fake: the small test image of tests/guestimages.py (default %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(size) for size in args.vms.split(",")})
    except ValueError:
        parser.error("--vms takes sizes like 8,32,100")
    if not all(1 <= size <= 250 for size in args.sizes) or not 1 <= args.loop_vms <= 50:
        parser.error("sizes must be between 1 and 250, --loop-vms between 1 and 50")
    return args


def make_golden(tools: Tools, root: Path, kind: str) -> tuple[Path, tuple[str, float, int]]:
    start = time.perf_counter()
    if kind == "debian":
        print("\nThe Debian 12 golden image (vmbuild golden; cached once built) ...", flush=True)
        made = subprocess.run(
            [*tools.vmbuild, "golden", "--debian", "bookworm"],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise CommandFailed(["vmbuild", "golden"], made.returncode, made.stderr)
        golden = Path(made.stdout.strip().splitlines()[-1])
        name = "Debian 12 (vmbuild golden)"
    else:
        golden = root / "golden.qcow2"
        print("\nMaking the golden image (debian-ifupdown, 1G) ...", flush=True)
        with environment(tools.guestfs_env):
            make_images({golden: ImageSpec("debian-ifupdown", size="1G")})
        name = "the test image debian-ifupdown"
    return golden, (name, time.perf_counter() - start, allocated([golden])[0])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools()
    print(f"bench_lab: labs of {', '.join(map(str, args.sizes))} VMs on {os.cpu_count()} CPUs")
    print(f"  libguestfs appliance: {tools.accel}")
    print(f"  {version(['virt-customize', '--version'])}; {version(['qemu-img', '--version'])}")
    print(f"  seed ISO in the loop: {tools.iso}")
    print(f"  load average at start: {load()}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    try:
        golden, golden_info = make_golden(tools, root, args.golden)
        print(f"A. vmbuild: 1 VM to warm up, not counted  [load {load()}]", flush=True)
        (root / "warm-up").mkdir()
        bench_vmbuild(tools, root / "warm-up", golden, 1)
        print(f"A. vmbuild: 1 VM  [load {load()}]", flush=True)
        single = bench_vmbuild(tools, root, golden, 1)
        results = []
        for count in args.sizes:
            print(f"A. vmbuild: {vms(count)}, then again (no-op)  [load {load()}]", flush=True)
            results.append(bench_vmbuild(tools, root, golden, count))
        print(f"B. per-VM loop: {vms(args.loop_vms)}  [load {load()}]", flush=True)
        loop = bench_loop(tools, root, golden, args.loop_vms)
        print(f"   done  [load {load()}]", flush=True)
        report(tools, golden_info, single, results, loop)
    except CommandFailed as err:
        print(f"\nbench_lab: {err}", file=sys.stderr)
        print(err.stderr.rstrip() or "(no output)", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"\nKept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
