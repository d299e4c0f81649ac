"""vmbuild.golden: recipes, cache paths and mirrors (fast), and one real golden image
built from Debian's packages and booted once under QEMU (slow: needs root,
debootstrap, the Debian mirror and libguestfs).

The boot proves what the image is for: it starts from an overlay, cloud-init finds
the NoCloud seed on an IDE CD-ROM, applies hostname and a static IP matched by MAC,
sshd and the guest agent run, the machine-id is new, and the VM powers itself off.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from debiangolden import Built, require_builder
from vmbuild.errors import BuildError, UserError
from vmbuild.golden import recipe as golden
from vmbuild.golden.builder import build_golden
from vmbuild.golden.recipe import GoldenRecipe, cached_golden, golden_path, host_mirror
from vmbuild.guest.appliance import kvm_usable
from vmbuild.output.seed import dump_yaml, seed_iso_bytes

MIRROR = "http://mirror.example/debian"


# ---------------------------------------------------------------------------
# Fast: no root, no network, no appliance


def test_digest_is_stable_and_ignores_package_order() -> None:
    one = GoldenRecipe(packages=("less", "vim-tiny"), mirror=MIRROR)
    two = GoldenRecipe(packages=("vim-tiny", "less"), mirror=MIRROR)
    assert one.digest() == two.digest()
    assert re.fullmatch(r"[0-9a-f]{64}", one.digest())


@pytest.mark.parametrize(
    "other",
    [
        GoldenRecipe(packages=("less",), mirror=MIRROR),
        GoldenRecipe(size=8 << 30, mirror=MIRROR),
        GoldenRecipe(mirror="http://other.example/debian"),
        GoldenRecipe(release="trixie", mirror=MIRROR),
    ],
)
def test_each_input_changes_the_path(other: GoldenRecipe, tmp_path: Path) -> None:
    base = golden_path(GoldenRecipe(mirror=MIRROR), tmp_path)
    assert golden_path(other, tmp_path) != base


def test_path_layout_and_default_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    recipe = GoldenRecipe(mirror=MIRROR)
    monkeypatch.delenv("VMBUILD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = golden_path(recipe)
    assert path == tmp_path / "xdg/vmbuild/golden" / (
        f"debian-bookworm-{recipe.digest()[:16]}.qcow2"
    )
    assert golden_path(recipe, tmp_path / "c").parent == tmp_path / "c/golden"


def test_root_caches_where_libvirts_qemu_can_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recipe = GoldenRecipe(mirror=MIRROR)
    monkeypatch.delenv("VMBUILD_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert golden_path(recipe).parent == Path("/var/cache/vmbuild/golden")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert golden_path(recipe).parent == Path.home() / ".cache/vmbuild/golden"
    monkeypatch.setenv("VMBUILD_CACHE", str(tmp_path / "mine"))
    assert golden_path(recipe).parent == tmp_path / "mine/golden"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"packages": ("less,sudo",)}, "not a Debian package name"),
        ({"packages": ("--foo",)}, "not a Debian package name"),
        ({"release": "../etc"}, "not a Debian release name"),
        ({"size": 1000}, "at least 1 GiB"),
        ({"mirror": "ftp://x y"}, "not an http, https or file URL"),
    ],
)
def test_bad_recipes_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        GoldenRecipe(**kwargs)  # type: ignore[arg-type]


def test_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root") as caught:
        build_golden(GoldenRecipe(mirror=MIRROR), tmp_path, progress=lambda _: None)
    assert "sudo" in caught.value.hint
    assert not list((tmp_path / "golden").glob("*.qcow2"))


def test_host_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    apt = tmp_path / "etc/apt"
    (apt / "sources.list.d").mkdir(parents=True)
    assert host_mirror("bookworm", tmp_path) == golden.DEFAULT_MIRROR
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert host_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    assert host_mirror("trixie", tmp_path) == golden.DEFAULT_MIRROR
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/x.gpg] https://one.example/debian bookworm main\n"
    )
    assert host_mirror("bookworm", tmp_path) == "https://one.example/debian"


def test_cached_image_must_match_its_sha256(tmp_path: Path) -> None:
    recipe = GoldenRecipe(mirror=MIRROR)
    image = golden_path(recipe, tmp_path)
    image.parent.mkdir(parents=True)
    image.write_bytes(b"an image")
    assert cached_golden(recipe, tmp_path) is None  # no .sha256 recorded
    sha = hashlib.sha256(b"an image").hexdigest()
    image.with_name(image.name + ".sha256").write_text(f"{sha}  {image.name}\n")
    assert cached_golden(recipe, tmp_path) == (image, sha)
    assert build_golden(recipe, tmp_path, progress=lambda _: None) == (image, sha)
    image.write_bytes(b"an image, truncated or changed")
    assert cached_golden(recipe, tmp_path) is None


# ---------------------------------------------------------------------------
# Slow: a real build and a real boot


@pytest.fixture(scope="module")
def can_build() -> None:
    require_builder()


@pytest.fixture(scope="module")
def built(debian_golden: Built) -> Built:
    return debian_golden


@pytest.mark.slow
@pytest.mark.guestfs
@pytest.mark.golden_image
def test_build_is_published_whole_and_cached(built: Built) -> None:
    folder = built.path.parent
    assert built.path == golden_path(built.recipe, built.cache)
    assert built.path.with_name(built.path.name + ".sha256").read_text() == (
        f"{built.sha256}  {built.path.name}\n"
    )
    record = (built.path.with_name(built.path.name + ".json")).read_text()
    assert built.recipe.digest() in record
    # Nothing of the build is left beside the image: no tree, tarball or partial disk.
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        built.path.name + suffix for suffix in ("", ".sha256", ".json", ".lock")
    )
    assert any("debootstrap" in line for line in built.log)

    start = time.monotonic()
    again = build_golden(built.recipe, built.cache, progress=lambda _: None)
    cached_seconds = time.monotonic() - start
    print(f"build {built.seconds:.1f}s, cached call {cached_seconds:.2f}s")
    assert again == (built.path, built.sha256)
    assert cached_seconds < 15  # hashing the image, no rebuild
    other = GoldenRecipe(packages=("less",))
    assert golden_path(other, built.cache) != built.path
    assert cached_golden(other, built.cache) is None


GUEST_MAC = "52:54:00:00:00:11"
GUEST_IP = "192.0.2.10"
CHECK = "VMBUILD-CHECK"
PROBES = (
    f'echo "{CHECK} host=$(hostname) ssh=$(systemctl is-active ssh)'
    ' qga=$(systemctl is-active qemu-guest-agent) machine-id=$(cat /etc/machine-id)"',
    f'echo "{CHECK} addr $(ip -4 -o addr show scope global)"',
    f'echo "{CHECK} dbus $(readlink /var/lib/dbus/machine-id)'
    ' keys $(ls /etc/ssh | grep -c "^ssh_host_.*_key$")"',
)
USER_DATA = {
    "runcmd": [["sh", "-c", probe] for probe in PROBES],
    "power_state": {"mode": "poweroff", "timeout": 30},
}
NETWORK_CONFIG = {
    "version": 2,
    "ethernets": {
        "lan0": {
            "match": {"macaddress": GUEST_MAC},
            "dhcp4": False,
            "addresses": [f"{GUEST_IP}/24"],
        }
    },
}


@pytest.mark.slow
@pytest.mark.guestfs
@pytest.mark.golden_image
@pytest.mark.boot
def test_image_boots_runs_cloud_init_and_powers_off(built: Built, tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    overlay = tmp_path / "overlay.qcow2"
    backing = ["-b", str(built.path), "-F", "qcow2"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(overlay)], check=True)
    seed = tmp_path / "seed.iso"
    seed.write_bytes(
        seed_iso_bytes(
            {
                "meta-data": b"instance-id: golden-test-1\nlocal-hostname: goldentest\n",
                "user-data": ("#cloud-config\n" + dump_yaml(USER_DATA)).encode(),
                "network-config": dump_yaml(NETWORK_CONFIG).encode(),
            },
            0,
        )
    )
    console = tmp_path / "console.log"
    accel = "kvm" if kvm_usable()[0] else "tcg"
    command = [
        qemu,
        "-accel",
        accel,
        "-m",
        "1024",
        "-nographic",
        "-nodefaults",
        "-monitor",
        "none",
        "-no-reboot",
        "-drive",
        f"file={overlay},if=virtio,format=qcow2",
        "-drive",
        f"file={seed},if=ide,media=cdrom,readonly=on,format=raw",
        "-netdev",
        "user,id=n,restrict=on",
        "-device",
        f"virtio-net-pci,netdev=n,mac={GUEST_MAC}",
        # The agent's port, so udev has something to start qemu-guest-agent for.
        "-device",
        "virtio-serial",
        "-chardev",
        f"socket,id=qga,path={tmp_path / 'qga.sock'},server=on,wait=off",
        "-device",
        "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
        "-serial",
        f"file:{console}",
    ]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.monotonic() - start
    text = console.read_text(errors="replace")
    lines = [line for line in text.splitlines() if "cloud-init" in line.lower() or CHECK in line]
    print(f"boot to poweroff under {accel}: {seconds:.1f}s")
    print("\n".join(line for line in lines if "ci-info" not in line))
    assert result.returncode == 0, result.stderr
    assert "Cloud-init v." in text and "running 'modules:final'" in text
    assert re.search(r"Cloud-init v\. \S+ finished .*Datasource DataSourceNoCloud", text)
    check = next(line for line in lines if f"{CHECK} host=" in line)
    assert "host=goldentest " in check
    assert "ssh=active " in check
    assert "qga=active " in check
    machine_id = re.search(r"machine-id=([0-9a-f]{32})\b", check)
    assert machine_id is not None  # made at first boot: the golden's is empty
    assert f"inet {GUEST_IP}/24" in text
    assert f"{CHECK} dbus /etc/machine-id keys 3" in text  # rsa, ecdsa, ed25519: no dsa
    assert "reboot: Power down" in text


@pytest.mark.slow
@pytest.mark.golden_image
def test_failed_build_leaves_nothing(can_build: None, tmp_path: Path) -> None:
    recipe = GoldenRecipe(packages=("no-such-package-vmbuild",))
    with pytest.raises(BuildError, match="Couldn't find these debs: no-such-package-vmbuild"):
        build_golden(recipe, tmp_path, progress=lambda _: None)
    assert [p.name for p in (tmp_path / "golden").iterdir()] == [
        golden_path(recipe, tmp_path).name + ".lock"
    ]
