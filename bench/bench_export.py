"""Benchmark `vmbuild export` of the demo lab to every target, against converting
the same disks by hand.

Run from the repository root (as root, like the build: the golden image is made
with debootstrap on first use, then cached):

    .venv/bin/python bench/bench_export.py [--keep]

The demo lab (profiles/demo.toml, two VMs on the Debian golden image) is built,
then exported to each target with ``vmbuild export BUNDLE -t TARGET -o DIR``. For
each: wall time, the export's size (apparent, and allocated on disk: the disks are
sparse where the format allows), and its files. For the targets that convert disks,
the baseline is what a person does by hand for the same disks, timed in this run:
``qemu-img convert -O vhdx -o subformat=dynamic`` (Hyper-V) and ``qemu-img convert
-O vmdk -o subformat=streamOptimized`` plus ``-o subformat=monolithicSparse``
(VMware: OVA and .vmx), one disk after another, with the ratio vmbuild/baseline.
The Xen targets convert nothing (Xen reads the bundle's qcow2 disks): no baseline.

Target (OK or MISSED): each converting export within 1.5x of its baseline, for
all it adds (checksums of every file, the OVF, the scripts).
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
TARGETS = ("xen-hvm", "xen-pv", "xen-pvh", "hyperv", "vmware")
#: The qemu-img conversions a person would run by hand, per target.
BASELINES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "hyperv": (("vhdx", "subformat=dynamic", "vhdx"),),
    "vmware": (
        ("vmdk", "subformat=streamOptimized", "stream.vmdk"),
        ("vmdk", "subformat=monolithicSparse", "vmdk"),
    ),
}
RATIO_TARGET = 1.5


def run(args: Sequence[str | Path]) -> float:
    start = time.monotonic()
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if result.returncode != 0:
        print(f"failed: {' '.join(map(str, args))}\n{result.stderr}", file=sys.stderr)
        sys.exit(1)
    return took


def sizes(folder: Path) -> tuple[int, int]:
    """(apparent, allocated) bytes of the files under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def mib(count: float) -> str:
    return f"{count / (1 << 20):7.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmbuild-bench-export-", dir="/var/tmp"))
    try:
        return bench(work)
    finally:
        if options.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path) -> int:
    print(f"load average: {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    took = run([VMBUILD, "build", DEMO, "-o", work / "out", "-q"])
    bundle = work / "out" / "demo"
    manifest = json.loads((bundle / "manifest.json").read_text())
    disks = [bundle / vm["artifacts"]["disk"]["file"] for vm in manifest["vms"].values()]
    golden = Path(manifest["base"]["path"])
    print(
        f"demo lab built in {took:.1f}s: {len(disks)} VMs on {golden.name} "
        f"({mib(golden.stat().st_size).strip()} on disk)"
    )
    print()
    print(f"{'target':<9} {'export':>8} {'apparent':>12} {'allocated':>12} {'baseline':>9}  ratio")
    missed = 0
    for target in TARGETS:
        out = work / target
        took = run([VMBUILD, "export", bundle, "-t", target, "-o", out, "-q"])
        apparent, allocated = sizes(out)
        line = f"{target:<9} {took:7.2f}s {mib(apparent)} {mib(allocated)}"
        if target in BASELINES:
            by_hand = work / f"by-hand-{target}"
            by_hand.mkdir()
            baseline = 0.0
            for fmt, opts, suffix in BASELINES[target]:
                for disk in disks:
                    dest = by_hand / f"{disk.parent.name}.{suffix}"
                    baseline += run(["qemu-img", "convert", "-O", fmt, "-o", opts, disk, dest])
            ratio = took / baseline
            verdict = "OK" if ratio <= RATIO_TARGET else "MISSED"
            line += f" {baseline:8.2f}s  {ratio:.2f}x (target <= {RATIO_TARGET}x) {verdict}"
            missed += ratio > RATIO_TARGET
        else:
            line += "        -  (configs only: Xen reads the bundle's qcow2 disks)"
        print(line)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        print(f"          files: {', '.join(files)}")
    print()
    print("ratios: export time / the same conversions by hand, one disk after another")
    return 0 if missed == 0 or os.environ.get("BENCH_STRICT") != "1" else 1


if __name__ == "__main__":
    sys.exit(main())
