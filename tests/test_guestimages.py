"""The fake golden images of tests/guestimages.py: libguestfs inspection must
recognise each family, and each image must carry the leftovers and network
markers vmbuild has to deal with.

Two appliance launches for the whole module: one builds every image, one opens
them all read-only and records what is there; the tests then only compare.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from guestimages import (
    FAMILIES,
    GOLDEN_HOSTNAME,
    GOLDEN_INSTANCE_ID,
    GOLDEN_MAC,
    GOLDEN_MACHINE_ID,
    HOST_KEY_TYPES,
    ROOT_LABEL,
    ImageSpec,
    golden_facts,
    golden_host_public_keys,
    make_images,
    parse_os_release,
)

#: a debian-ifupdown image with the traps vmbuild must not fall into (and, for
#: coverage of that option, /bin, /sbin and /lib as plain directories)
TRAP = "trap"
TRAP_SPEC = ImageSpec(
    "debian-ifupdown",
    files={
        "/etc/cloud/cloud.cfg.d/99-net.cfg": "network: {config: disabled}\n",
        "/sbin/custom": b"\x00\x01binary",
    },
    symlinks={"/etc/hostname": "/etc/shadow"},
    fifos=("/etc/motd",),
    merged_usr=False,
)

BASICS = (
    "/bin",
    "/sbin",
    "/lib",
    "/usr/bin",
    "/usr/sbin",
    "/etc",
    "/root",
    "/home",
    "/var/lib",
    "/tmp",
    "/etc/fstab",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/hostname",
    "/etc/hosts",
    "/sbin/init",
    "/lib/systemd/systemd",
    "/etc/ssh/sshd_config",
    "/etc/cloud/cloud.cfg",
    "/etc/debian_version",
    "/etc/redhat-release",
)
TRAP_PATHS = ("/etc/motd", "/etc/cloud/cloud.cfg.d/99-net.cfg", "/sbin/custom")
#: files whose content the tests read (never a FIFO: reading one hangs)
READ = (
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/fstab",
    "/etc/os-release",
    "/etc/shadow",
    "/etc/udev/rules.d/70-persistent-net.rules",
)


@dataclass(frozen=True)
class Node:
    """One guest path as lstat sees it, and what it resolves to."""

    kind: str  # file, dir, symlink, fifo, other
    mode: int  # permission bits
    uid: int
    gid: int
    target: str | None  # symlinks only
    resolves_to: str  # file, dir, fifo or missing, after following symlinks


@dataclass
class Observed:
    """What the read-only pass found on one image."""

    roots: list[str] = field(default_factory=list)
    inspect: dict[str, object] = field(default_factory=dict)
    mountpoints: dict[str, str] = field(default_factory=dict)
    parttype: str = ""
    vfs: tuple[str, str, str] = ("", "", "")  # type, label, uuid
    nodes: dict[str, Node | None] = field(default_factory=dict)  # None: missing
    contents: dict[str, bytes] = field(default_factory=dict)


def _node(h: Any, path: str, st: dict[str, int]) -> Node:
    mode = st["st_mode"]
    kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}
    kind = kinds.get(stat.S_IFMT(mode), "fifo" if stat.S_ISFIFO(mode) else "other")
    if kind != "symlink":
        resolves_to = kind
    elif h.is_file(path, followsymlinks=True):
        resolves_to = "file"
    elif h.is_dir(path, followsymlinks=True):
        resolves_to = "dir"
    elif h.is_fifo(path, followsymlinks=True):
        resolves_to = "fifo"
    else:
        resolves_to = "missing"
    return Node(
        kind=kind,
        mode=stat.S_IMODE(mode),
        uid=st["st_uid"],
        gid=st["st_gid"],
        target=h.readlink(path) if kind == "symlink" else None,
        resolves_to=resolves_to,
    )


def _nodes(h: Any, paths: Iterable[str]) -> dict[str, Node | None]:
    """lstat every path (None: missing), one lstatnslist call per directory: each
    guestfs call costs ~30 ms under TCG."""
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(posixpath.dirname(path), []).append(posixpath.basename(path))
    nodes: dict[str, Node | None] = {}
    for folder, names in by_folder.items():
        try:
            stats = h.lstatnslist(folder, names)
        except RuntimeError:  # the folder itself is missing
            stats = [{"st_ino": -1}] * len(names)
        for name, st in zip(names, stats, strict=True):
            path = posixpath.join(folder, name)
            nodes[path] = None if st["st_ino"] == -1 else _node(h, path, st)
    return nodes


def _strs(family: str, key: str) -> tuple[str, ...]:
    """A tuple-of-paths entry of golden_facts(family)."""
    value = golden_facts(family)[key]
    assert isinstance(value, tuple)
    return value


def _family_of(name: str) -> str:
    return TRAP_SPEC.family if name == TRAP else name


def _paths_of(name: str) -> tuple[str, ...]:
    family = _family_of(name)
    paths = [*BASICS, *_strs(family, "leftovers")]
    for key in ("network_markers", "network_config", "other_markers"):
        paths += _strs(family, key)
    if name == TRAP:
        paths += TRAP_PATHS
    return tuple(dict.fromkeys(paths))


def _at(obs: Observed, path: str) -> Node:
    node = obs.nodes[path]
    assert node is not None, f"{path} is missing"
    return node


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family's image plus the trap image, built in one launch."""
    pytest.importorskip("guestfs")
    if shutil.which("qemu-img") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("qemu-img or ssh-keygen is not installed")
    folder = tmp_path_factory.mktemp("golden-images")
    names = {**{family: ImageSpec(family) for family in FAMILIES}, TRAP: TRAP_SPEC}
    paths = {name: folder / f"{name}.qcow2" for name in names}
    started = time.monotonic()
    make_images({paths[name]: spec for name, spec in names.items()})
    print(f"make_images: {len(paths)} images in {time.monotonic() - started:.1f} s")
    return paths


@pytest.fixture(scope="module")
def observed(images: dict[str, Path]) -> dict[str, Observed]:
    """Everything the tests look at, read in one read-only launch over all images."""
    import guestfs

    h = guestfs.GuestFS(python_return_dict=True)
    try:
        for path in images.values():
            h.add_drive_opts(str(path), format="qcow2", readonly=True)
        clock = [time.monotonic()]
        h.launch()
        clock.append(time.monotonic())
        by_device = dict(zip(h.list_devices(), images, strict=True))
        seen = {name: Observed() for name in images}
        for device, name in by_device.items():
            obs = seen[name]
            obs.parttype = h.part_get_parttype(device)
            partition = f"{device}1"
            obs.vfs = (h.vfs_type(partition), h.vfs_label(partition), h.vfs_uuid(partition))
        roots = h.inspect_os()
        clock.append(time.monotonic())
        for root in roots:
            obs = seen[by_device[h.part_to_dev(root)]]
            obs.roots.append(root)
            obs.inspect = {
                "type": h.inspect_get_type(root),
                "distro": h.inspect_get_distro(root),
                "major": h.inspect_get_major_version(root),
                "minor": h.inspect_get_minor_version(root),
                "product_name": h.inspect_get_product_name(root),
                "hostname": h.inspect_get_hostname(root),
                "arch": h.inspect_get_arch(root),
                "package_format": h.inspect_get_package_format(root),
                "package_management": h.inspect_get_package_management(root),
            }
            obs.mountpoints = h.inspect_get_mountpoints(root)
        for device, name in by_device.items():
            obs = seen[name]
            h.mount_ro(f"{device}1", "/")
            obs.nodes = _nodes(h, _paths_of(name))
            to_read = [*READ, *_strs(_family_of(name), "network_config")]
            to_read += [f"/etc/ssh/ssh_host_{kind}_key.pub" for kind in HOST_KEY_TYPES]
            if name == TRAP:
                to_read += ["/etc/cloud/cloud.cfg.d/99-net.cfg", "/sbin/custom"]
            # pread: ~1 ms a call under TCG, read_file: ~150 ms
            obs.contents = {path: h.pread(path, 1 << 20, 0) for path in to_read}
            h.umount_all()
        h.shutdown()
        clock.append(time.monotonic())
        launch, inspect, rest = (b - a for a, b in itertools.pairwise(clock))
        print(
            f"read-only pass: launch {launch:.1f} s, inspect_os {inspect:.1f} s, rest {rest:.1f} s"
        )
    finally:
        h.close()
    return seen


# ---------------------------------------------------------------------------------------
# No appliance needed


def test_golden_facts_cover_every_family() -> None:
    for family in FAMILIES:
        facts = golden_facts(family)
        assert facts["type"] == "linux"
        assert facts["machine_id"] == GOLDEN_MACHINE_ID
        assert facts["network"] in {"ifupdown", "netplan", "networkmanager", "networkd", "ifcfg"}
        assert facts["network_config"]
    with pytest.raises(ValueError, match="unknown image family"):
        golden_facts("windows")


@pytest.mark.parametrize(
    "spec",
    [
        ImageSpec("windows"),
        ImageSpec("debian-ifupdown", files={"etc/relative": "x"}),
        ImageSpec("debian-ifupdown", symlinks={"/etc/../shadow": "/x"}),
        ImageSpec("debian-ifupdown", fifos=("/etc//motd",)),
    ],
)
def test_bad_specs_are_refused_before_anything_is_created(spec: ImageSpec, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_images({tmp_path / "x.qcow2": spec})
    assert not (tmp_path / "x.qcow2").exists()


# ---------------------------------------------------------------------------------------
# Built and inspected (two launches for all of these)

each_family = pytest.mark.parametrize("family", FAMILIES)


@pytest.mark.guestfs
@pytest.mark.slow
def test_images_are_qcow2_with_one_ext4_partition(
    images: dict[str, Path], observed: dict[str, Observed]
) -> None:
    for name, path in images.items():
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        assert info["format"] == "qcow2", name
        obs = observed[name]
        assert obs.parttype == "msdos", name
        assert obs.vfs[:2] == ("ext4", ROOT_LABEL), name


@pytest.mark.guestfs
@pytest.mark.slow
@each_family
def test_inspection_recognises_the_family(family: str, observed: dict[str, Observed]) -> None:
    obs = observed[family]
    facts = golden_facts(family)
    assert len(obs.roots) == 1, obs.roots
    expected = {key: facts[key] for key in obs.inspect}
    assert obs.inspect == expected
    assert obs.mountpoints == {"/": obs.roots[0]}


@pytest.mark.guestfs
@pytest.mark.slow
@each_family
def test_tree_is_laid_out_like_the_real_distribution(
    family: str, observed: dict[str, Observed]
) -> None:
    obs = observed[family]
    facts = golden_facts(family)
    debian = facts["package_format"] == "deb"
    for path in ("/bin", "/sbin", "/lib"):  # merged /usr
        assert _at(obs, path) == Node("symlink", 0o777, 0, 0, f"usr{path}", "dir"), path
    for path in ("/usr/bin", "/usr/sbin", "/etc", "/home", "/var/lib"):
        assert _at(obs, path).kind == "dir", path
    assert _at(obs, "/root").mode == 0o700
    assert _at(obs, "/tmp").mode == 0o1777
    init = _at(obs, "/sbin/init")
    assert (init.kind, init.target, init.resolves_to) == ("symlink", "/lib/systemd/systemd", "file")

    shadow = _at(obs, "/etc/shadow")
    assert shadow.kind == "file"
    assert (shadow.mode, shadow.gid) == ((0o640, 42) if debian else (0o000, 0))
    assert b"\ngolden:$6$" in obs.contents["/etc/shadow"]

    release = "/etc/debian_version" if debian else "/etc/redhat-release"
    assert _at(obs, release).resolves_to == "file"
    os_release = parse_os_release(obs.contents["/etc/os-release"].decode())
    assert (os_release["ID"], os_release["VERSION_ID"]) == (
        facts["os_release_id"],
        facts["version_id"],
    )
    assert f"UUID={obs.vfs[2]} / ext4 " in obs.contents["/etc/fstab"].decode()


@pytest.mark.guestfs
@pytest.mark.slow
@each_family
def test_golden_leftovers_are_there(family: str, observed: dict[str, Observed]) -> None:
    obs = observed[family]
    for path in _strs(family, "leftovers"):
        _at(obs, path)
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        assert _at(obs, path).kind == "file", path
        assert obs.contents[path] == f"{GOLDEN_MACHINE_ID}\n".encode(), path

    public = golden_host_public_keys()
    for kind in HOST_KEY_TYPES:
        key = _at(obs, f"/etc/ssh/ssh_host_{kind}_key")
        assert key.kind == "file"
        assert (key.mode, key.gid) in {(0o600, 0), (0o640, 993)}
        assert _at(obs, f"/etc/ssh/ssh_host_{kind}_key.pub").mode == 0o644
        assert obs.contents[f"/etc/ssh/ssh_host_{kind}_key.pub"].decode().strip() == public[kind]

    assert GOLDEN_MAC.encode() in obs.contents["/etc/udev/rules.d/70-persistent-net.rules"]
    instance = _at(obs, "/var/lib/cloud/instance")
    assert (instance.kind, instance.resolves_to) == ("symlink", "dir")
    assert instance.target == f"/var/lib/cloud/instances/{GOLDEN_INSTANCE_ID}"


@pytest.mark.guestfs
@pytest.mark.slow
@each_family
def test_network_stack_markers_and_dhcp_config(family: str, observed: dict[str, Observed]) -> None:
    obs = observed[family]
    facts = golden_facts(family)
    for path in (*_strs(family, "network_markers"), *_strs(family, "other_markers")):
        assert _at(obs, path).resolves_to in {"file", "dir"}, path
    for path in _strs(family, "network_config"):
        text = obs.contents[path].decode()
        assert str(facts["nic"]) in text, path
        assert "dhcp" in text.lower() or "method=auto" in text, path
        if facts["network"] in {"networkmanager", "netplan"}:
            assert _at(obs, path).mode == 0o600, path
    if facts["network"] == "networkd":
        wants = _at(obs, "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        assert (wants.kind, wants.target) == (
            "symlink",
            "/lib/systemd/system/systemd-networkd.service",
        )


@pytest.mark.guestfs
@pytest.mark.slow
def test_trap_image_has_its_symlink_fifo_and_files(observed: dict[str, Observed]) -> None:
    obs = observed[TRAP]
    hostname = _at(obs, "/etc/hostname")
    assert (hostname.kind, hostname.target) == ("symlink", "/etc/shadow")
    assert _at(obs, "/etc/motd").kind == "fifo"
    shadow = _at(obs, "/etc/shadow")
    assert (shadow.kind, shadow.mode) == ("file", 0o640)
    assert obs.contents["/etc/cloud/cloud.cfg.d/99-net.cfg"] == b"network: {config: disabled}\n"
    assert obs.contents["/sbin/custom"] == b"\x00\x01binary"
    for path in ("/bin", "/sbin", "/lib"):
        assert _at(obs, path).kind == "dir", path
    assert _at(obs, "/sbin/init").resolves_to == "file"
    assert obs.inspect["distro"] == "debian"


@pytest.mark.guestfs
@pytest.mark.slow
def test_inspection_reads_the_hostname_through_a_symlink(observed: dict[str, Observed]) -> None:
    """A measured libguestfs behaviour, not a property of the images: with
    /etc/hostname -> /etc/shadow, inspect_get_hostname returns shadow's first line
    (root's password hash). Inspection output of an untrusted image is untrusted
    too: never log it or write it anywhere unchecked."""
    obs = observed[TRAP]
    first_line = obs.contents["/etc/shadow"].decode().splitlines()[0]
    assert obs.inspect["hostname"] == first_line
    assert obs.inspect["hostname"] != GOLDEN_HOSTNAME
