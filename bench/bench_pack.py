"""Benchmark shipping a lab: vmbuild's artifact against the archives people make today.

Run from the repository root (as root, like the build: the golden image is made
with debootstrap on first use, then cached):

    .venv/bin/python bench/bench_pack.py [--keep]

The demo lab (profiles/demo.toml, two VMs on the Debian golden image) is built,
then shipped three ways, each timed in this run on this machine:

A. ``vmbuild pack BUNDLE -o LAYOUT`` (zstd pieces; the golden image once).
B. ``qemu-img convert -c -O qcow2`` of the golden image, and of each VM's overlay
   onto it (``-B golden -F qcow2``: still an overlay, its own clusters
   compressed), then ``tar -cf`` of those and the bundle's other files.
C. ``tar --zstd -S -cf`` of the bundle and its golden image.

For each: wall time and size (bytes of the layout's blobs, or of the archive).
Then, against Docker Distribution on 127.0.0.1 (``docker-registry``, htpasswd
auth): ``vmbuild push`` and ``vmbuild pull`` throughput, and the bytes a second lab
on the same golden image (the demo under another name) sends when pushed to the
other repository, against the first lab's.

Targets (OK or MISSED beside each): the artifact no larger than the smaller of B
and C; pack at least 3x faster than B's ``qemu-img convert -c``; the second lab
sends under 5 % of the first lab's bytes.
"""

from __future__ import annotations

import argparse
import base64
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

from registry import running_registry  # noqa: E402


def run(args: Sequence[str | Path], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.monotonic()
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, check=False
    )
    took = time.monotonic() - start
    if result.returncode != 0:
        print(f"failed: {' '.join(map(str, args))}\n{result.stderr}", file=sys.stderr)
        sys.exit(1)
    return took, result.stdout


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mib(count: float) -> str:
    return f"{count / (1 << 20):8.1f} MiB"


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmbuild-bench-pack-", dir="/var/tmp"))
    try:
        return bench(work)
    finally:
        if options.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path) -> int:
    print(f"load average: {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    took, _ = run([VMBUILD, "build", DEMO, "-o", work / "out", "-q"])
    bundle = work / "out" / "demo"
    manifest = json.loads((bundle / "manifest.json").read_text())
    golden = Path(manifest["base"]["path"])
    print(f"demo lab built in {took:.1f}s on {golden} ({mib(golden.stat().st_size).strip()})")
    disks = [bundle / vm["artifacts"]["disk"]["file"] for vm in manifest["vms"].values()]
    raw_total = golden.stat().st_size + size_of(bundle)
    print(f"bundle and golden image: {mib(raw_total)}")
    print()

    # A. vmbuild pack
    layout = work / "layout"
    pack_time, _ = run([VMBUILD, "pack", bundle, "-o", layout, "-q"])
    pack_size = size_of(layout / "blobs")

    # B. qemu-img convert -c of every disk, then tar
    converted = work / "converted"
    (converted / "vms").mkdir(parents=True)
    convert_time, _ = run(
        ["qemu-img", "convert", "-c", "-O", "qcow2", golden, converted / golden.name]
    )
    for disk in disks:
        dest = converted / "vms" / disk.parent.name / disk.name
        dest.parent.mkdir(parents=True)
        t, _ = run(
            [
                "qemu-img", "convert", "-c", "-O", "qcow2", "-B", converted / golden.name,
                "-F", "qcow2", disk, dest,
            ]
        )  # fmt: skip
        convert_time += t
    for name in ("manifest.json", "plan.json", "define.sh", "SHA256SUMS", "inventory"):
        source = bundle / name
        if source.is_dir():
            shutil.copytree(source, converted / name)
        elif source.exists():
            shutil.copy(source, converted / name)
    for vm in manifest["vms"].values():
        for kind in ("seed", "domain"):
            shutil.copy(
                bundle / vm["artifacts"][kind]["file"], converted / vm["artifacts"][kind]["file"]
            )
    tar_time, _ = run(["tar", "-cf", work / "converted.tar", "-C", converted, "."])
    convert_size = size_of(work / "converted.tar")

    # C. tar --zstd -S of the bundle and the golden image
    zstd_time, _ = run(
        [
            "tar", "--zstd", "-S", "-cf", work / "bundle.tar.zst", "-C", bundle.parent, bundle.name,
            "-C", golden.parent, golden.name,
        ]
    )  # fmt: skip
    zstd_size = size_of(work / "bundle.tar.zst")

    print(f"{'':34} {'time':>8} {'size':>12} {'ratio':>7}")
    print(f"{'A vmbuild pack':34} {pack_time:7.2f}s {mib(pack_size)} {pack_size / raw_total:7.3f}")
    print(
        f"{'B qemu-img convert -c + tar':34} {convert_time + tar_time:7.2f}s "
        f"{mib(convert_size)} {convert_size / raw_total:7.3f}"
    )
    print(f"{'C tar --zstd -S':34} {zstd_time:7.2f}s {mib(zstd_size)} {zstd_size / raw_total:7.3f}")
    best = min(convert_size, zstd_size)
    print()
    print(
        f"artifact / best baseline size: {pack_size / best:.3f} (target <= 1.0) "
        f"{verdict(pack_size <= best)}"
    )
    speedup = convert_time / pack_time
    print(
        f"qemu-img convert -c time / pack time: {speedup:.1f}x (target >= 3) "
        f"{verdict(speedup >= 3)}"
    )
    print(f"(tar --zstd -S time / pack time: {zstd_time / pack_time:.1f}x)")
    print()

    # Registry: push, pull, and a second lab on the same golden image
    run([VMBUILD, "build", DEMO, "-o", work / "out", "-q", "--set", "lab.name=demo2"])
    run([VMBUILD, "pack", work / "out" / "demo2", "-o", layout, "-q"])
    with running_registry(work / "registry") as registry:
        docker = work / "docker"
        docker.mkdir()
        auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        env = {**os.environ, "DOCKER_CONFIG": str(docker), "VMBUILD_CACHE": str(work / "cache")}
        ref = f"{registry.host}/labs:demo"
        push_time, out = run([VMBUILD, "push", f"{layout}:demo", ref, "--json", "-q"], env)
        first = json.loads(out)
        pull_time, out = run(
            [VMBUILD, "pull", ref, "-o", work / "pulled", "--allow-unsigned", "--json", "-q"], env
        )
        pulled = size_of(work / "cache" / "artifacts" / "blobs")
        _, out = run(
            [
                VMBUILD,
                "push",
                f"{layout}:demo2",
                f"{registry.host}/other-labs:demo2",
                "--json",
                "-q",
            ],
            env,
        )
        second = json.loads(out)
    print(
        f"push: {mib(first['sent_bytes']).strip()} in {push_time:.2f}s "
        f"({first['sent_bytes'] / push_time / (1 << 20):.0f} MiB/s)"
    )
    print(
        f"pull + verify + unpack: {mib(pulled).strip()} in {pull_time:.2f}s "
        f"({pulled / pull_time / (1 << 20):.0f} MiB/s)"
    )
    share = second["sent_bytes"] / first["sent_bytes"]
    print(
        f"  (it mounted {second['mounted_blobs']} blobs, {mib(second['mounted_bytes']).strip()}, "
        "from the first lab's repository)"
    )
    print(
        f"second lab on the same golden image sent {second['sent_bytes']} bytes, "
        f"{share * 100:.2f} % of the first lab's {first['sent_bytes']} "
        f"(target < 5 %) {verdict(share < 0.05)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
