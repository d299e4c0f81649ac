"""Benchmark deploying a lab to a second libvirt host, against doing it by hand.

Run from the repository root, as root (the golden image is made with debootstrap on
first use, then cached; the second host needs network namespaces):

    .venv/bin/python bench/bench_deploy.py [--keep]

A second, independent libvirtd is started in namespaces of its own and reached over
qemu+tcp (tests/secondhost.py): its pool is a folder this machine does not see. The
demo lab (profiles/demo.toml, two VMs on the Debian golden image) is built with both
VMs placed on it, then, each timed in this run:

A. ``vmbuild deploy`` of the bundle to that host (golden image, overlays re-pointed,
   seeds, network, domains), with the data bytes it sent.
B. By hand: ``virsh vol-create-as`` and ``virsh vol-upload --sparse`` of the same
   files (the golden image, each overlay already re-pointed, each seed), without
   defining anything: the upload alone, which is what A must not be slower than.
C. ``vmbuild deploy`` of the same bundle again. Target: no bytes sent, under 2 s.
D. ``vmbuild deploy`` of a second lab built on the same golden image (the demo under
   another name and other VM names). Target: the golden image not sent again.

Everything made on the second host is destroyed and the host stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VMBUILD = str(REPO / ".venv" / "bin" / "vmbuild")
DEMO = REPO / "profiles" / "demo.toml"
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from secondhost import start_second_host  # noqa: E402


def run(args: Sequence[str | Path]) -> tuple[float, str]:
    start = time.monotonic()
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if result.returncode != 0:
        print(
            f"failed: {' '.join(map(str, args))}\n{result.stdout}{result.stderr}", file=sys.stderr
        )
        sys.exit(1)
    return took, result.stdout


def data_bytes(path: Path) -> int:
    """The bytes a sparse upload of ``path`` sends: its data extents."""
    total = 0
    with path.open("rb") as handle:
        fd, size, offset = handle.fileno(), path.stat().st_size, 0
        while offset < size:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            total += hole - data
            offset = hole
    return total


def mib(count: float) -> str:
    return f"{count / (1 << 20):8.1f} MiB"


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def build(work: Path, name: str, hv2_uri: str, tag: str) -> Path:
    sets = [
        "lab.domain_type=qemu", f"lab.name={name}", f"network.source=vmbuild-bench-{tag}",
        f"vm.1.name={name}-web", "vm.1.hostname=web", "vm.1.host=hv2",
        f"vm.2.name={name}-db", "vm.2.hostname=db", "vm.2.host=hv2",
        f"hosts.hv2.uri={hv2_uri}",
    ]  # fmt: skip
    took, out = run([VMBUILD, "build", DEMO, "-q", "-o", work / "out",
                     *(a for s in sets for a in ("--set", s))])  # fmt: skip
    print(f"built lab {name} in {took:.1f}s")
    return Path(out.strip())


def deploy(bundle: Path) -> tuple[float, dict[str, object]]:
    took, out = run([VMBUILD, "deploy", bundle, "-q", "--json"])
    hosts = json.loads(out)["hosts"]
    assert len(hosts) == 1
    return took, hosts[0]


def by_hand(bundle: Path, host_uri: str, pool: str, work: Path) -> tuple[float, int]:
    """vol-create-as + vol-upload --sparse of the golden image, each re-pointed
    overlay and each seed, into a pool of their own names; then deleted."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    golden = Path(manifest["base"]["path"])
    files: list[tuple[str, Path]] = [("byhand-golden.qcow2", golden)]
    pool_path = (
        subprocess.run(
            ["virsh", "-c", host_uri, "pool-dumpxml", pool],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.split("<path>")[1]
        .split("</path>")[0]
    )
    for vm in manifest["vms"]:
        copy = work / f"byhand-{vm}.qcow2"
        shutil.copyfile(bundle / "vms" / vm / "disk.qcow2", copy)
        subprocess.run(["qemu-img", "rebase", "-u", "-b", f"{pool_path}/byhand-golden.qcow2",
                        "-F", "qcow2", str(copy)], check=True)  # fmt: skip
        files += [(copy.name, copy), (f"byhand-{vm}-seed.iso", bundle / "vms" / vm / "seed.iso")]
    sent = sum(data_bytes(path) for _, path in files)
    start = time.monotonic()
    for name, path in files:
        run(["virsh", "-c", host_uri, "vol-create-as", pool, name, str(path.stat().st_size),
             "--format", "raw"])  # fmt: skip
        run(["virsh", "-c", host_uri, "vol-upload", "--sparse", "--pool", pool, name, path])
    took = time.monotonic() - start
    for name, _ in files:
        run(["virsh", "-c", host_uri, "vol-delete", "--pool", pool, name])
    return took, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmbuild-bench-deploy-", dir="/var/tmp"))
    work.chmod(0o755)
    tag = str(os.getpid())
    host = start_second_host()
    bundles: list[Path] = []
    try:
        first = build(work, "demo", host.uri, tag)
        bundles.append(first)
        golden_size = data_bytes(
            Path(json.loads((first / "manifest.json").read_text())["base"]["path"])
        )

        took_a, report_a = deploy(first)
        sent_a = int(report_a["sent_bytes"])  # type: ignore[call-overload]
        took_b, sent_b = by_hand(first, host.uri, host.pool, work)
        took_c, report_c = deploy(first)
        sent_c = int(report_c["sent_bytes"])  # type: ignore[call-overload]
        second = build(work / "second", "demo2", host.uri, tag)
        bundles.append(second)
        took_d, report_d = deploy(second)
        sent_d = int(report_d["sent_bytes"])  # type: ignore[call-overload]
        golden_again = any(str(v).startswith("vmbuild-golden-") for v in report_d["sent_volumes"])  # type: ignore[attr-defined]

        print()
        print(f"golden image data: {mib(golden_size)}; second host {host.uri}")
        print(f"A. vmbuild deploy (2 VMs)        {took_a:7.2f} s  {mib(sent_a)} sent")
        print(f"B. virsh vol-upload --sparse     {took_b:7.2f} s  {mib(sent_b)} sent (upload only)")
        print(
            f"   deploy / by hand: {took_a / took_b:.2f} x the time, "
            f"{sent_a / sent_b:.3f} x the bytes"
        )
        print(f"C. deploy again                  {took_c:7.2f} s  {sent_c} bytes sent   "
              f"{verdict(sent_c == 0 and took_c < 2)} (target: 0 bytes, under 2 s)")  # fmt: skip
        print(f"D. a second lab, same golden     {took_d:7.2f} s  {mib(sent_d)} sent   "
              f"{verdict(not golden_again)} (target: golden image not sent again)")  # fmt: skip
    finally:
        for bundle in bundles:
            subprocess.run([VMBUILD, "destroy", str(bundle), "-q"], check=False)
        host.close()
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
