"""GuestFiles remembers what the guest holds (folder listings, lstat answers, file
contents) to spare appliance calls: what it answers must always be what a fresh look
at the disk finds. One appliance, one drive per test, real images."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from vmbuild.guest import inspect, supermin
from vmbuild.guest.appliance import Appliance, device_name
from vmbuild.guest.diskops import Context, HostKeys, RemovePaths
from vmbuild.guest.files import GuestFiles, GuestPathError, Pristine

QEMU_IMG_OVERLAY = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]
DRIVES = ("coherence", "glob", "trees", "links", "keys", "root", "inspect", "clone1", "clone2")


def test_device_names_follow_the_order_drives_were_added() -> None:
    assert [device_name(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "/dev/sda",
        "/dev/sdb",
        "/dev/sdz",
        "/dev/sdaa",
        "/dev/sdab",
        "/dev/sdaz",
        "/dev/sdba",
        "/dev/sdzz",
        "/dev/sdaaa",
    ]


@dataclass
class Lab:
    app: Appliance
    golden: int
    drives: dict[str, int]

    @contextlib.contextmanager
    def mounted(self, name: str, pristine: Pristine | None = None) -> Iterator[GuestFiles]:
        """The drive's filesystem mounted at /, with a new GuestFiles on it."""
        self.app.handle.mount(self.app.device(self.drives[name]) + "1", "/")
        try:
            yield GuestFiles(self.app, pristine)
        finally:
            self.app.handle.umount_all()

    def fresh(self) -> GuestFiles:
        """Another GuestFiles on what is mounted now: it knows nothing yet."""
        return GuestFiles(self.app)


@pytest.fixture(scope="module")
def lab(os_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tmp_path_factory.mktemp("guestfiles")
    with Appliance() as app:
        golden = app.add(os_image, "qcow2", readonly=True)
        drives = {}
        for name in DRIVES:
            overlay = folder / f"{name}.qcow2"
            subprocess.run(
                [*QEMU_IMG_OVERLAY, str(os_image), str(overlay)],
                check=True,
            )
            drives[name] = app.add(overlay, "qcow2", readonly=False)
        app.launch()
        # The appliance's own list agrees with the names vmbuild gives the drives.
        assert app.handle.list_devices() == [app.device(i) for i in range(len(DRIVES) + 1)]
        yield Lab(app, golden, drives)


@pytest.mark.guestfs
def test_cached_answers_match_a_fresh_look(lab: Lab) -> None:
    with lab.mounted("coherence") as guest:
        passwd = guest.read("/etc/passwd")
        assert passwd is not None and passwd.startswith(b"root:")
        guest.write("/etc/passwd", passwd + b"extra:x:1500:1500::/home/extra:/bin/sh\n")
        guest.write("/etc/new/deep/file", b"one\n", mode=0o600, owner=(1500, 1500))
        guest.write("/etc/new/deep/file", b"two, longer\n", mode=0o640, owner=(0, 0))
        guest.remove("/etc/hostname")
        guest.remove_all(["/var/lib/cloud/data", "/var/lib/cloud/sem", "/etc/new/deep"])
        guest.write("/etc/new/again", b"three\n")
        paths = [
            "/etc/passwd",
            "/etc/hostname",
            "/etc/new",
            "/etc/new/deep",
            "/etc/new/deep/file",
            "/etc/new/again",
            "/var/lib/cloud/data",
            "/var/lib/cloud/sem",
            "/var/lib/cloud/instance",
            "/var/lib/cloud/instances",
        ]
        fresh = lab.fresh()
        assert [guest.kind(p) for p in paths] == [fresh.kind(p) for p in paths]
        assert [guest.kind(p) for p in paths] == [
            "file",
            None,
            "folder",
            None,
            None,
            "file",
            None,
            None,
            "symbolic link",
            "folder",
        ]
        for path in ("/etc/passwd", "/etc/new/again", "/etc/hosts"):
            assert guest.read(path) == fresh.read(path) == bytes(lab.app.handle.read_file(path))
        assert guest.mode_owner("/etc/new/again") == fresh.mode_owner("/etc/new/again")
        assert fresh.mode_owner("/etc/new/again") == (0o644, 0, 0)
        # The trees went in one rm -rf, through a folder that is gone too.
        for folder in ("/", "/var/lib/cloud", "/etc/new"):
            assert not [n for n in lab.app.handle.ls(folder) if n.startswith(".vmbuild")]


@pytest.mark.guestfs
def test_glob_gives_what_glob3_gives(lab: Lab) -> None:
    with lab.mounted("glob") as guest:
        guest.write("/var/lib/cloud/.hidden", b"")
        guest.write("/var/lib/dhcp/dhclient.eth1.leases", b"")
        patterns = [
            "/var/lib/cloud/*",
            "/var/lib/cloud/.*",
            "/var/lib/dhcp/*.leases",
            "/var/lib/dhcp/dhclient.eth?.leases",
            "/var/lib/dhcp/[d]*",
            "/var/lib/nothing/*",
            "/etc/ssh/ssh_host_*",
            "/var/lib/*/instance",
        ]
        for pattern in patterns:
            # glob(3) follows links in the folders it searches; GuestFiles never
            # does, and these folders hold none.
            expected = sorted(
                str(p)
                for p in lab.app.handle.glob_expand(pattern, directoryslash=False)
                if not p.endswith(("/.", "/.."))
            )
            assert guest.glob(pattern) == expected, pattern
        assert "/var/lib/cloud/.hidden" not in guest.glob("/var/lib/cloud/*")


@pytest.mark.guestfs
def test_several_trees_are_removed_together(lab: Lab) -> None:
    with lab.mounted("trees") as guest:
        before = sorted(lab.app.handle.ls("/var/lib/cloud"))
        assert {"data", "instance", "instances", "sem"} <= set(before)
        RemovePaths(patterns=("/var/lib/cloud/*",)).apply(guest, Context())
        assert lab.app.handle.ls("/var/lib/cloud") == []
        # Nested and repeated paths, and trees on either side of a link.
        guest.write("/srv/a/b/c", b"x")
        guest.write("/srv/d/e", b"y")
        before = set(lab.app.handle.ls("/srv"))
        assert guest.remove_all(["/srv/a", "/srv/a/b", "/srv/a", "/srv/d", "/srv/none"]) == 3
        assert set(lab.app.handle.ls("/srv")) == before - {"a", "d"}
        assert not [n for n in lab.app.handle.ls("/srv") if n.startswith(".vmbuild")]


@pytest.mark.guestfs
def test_links_are_never_followed_and_removing_one_removes_only_the_link(lab: Lab) -> None:
    h = lab.app.handle
    with lab.mounted("links") as guest:
        h.mkdir_p("/opt/real/sub")
        h.write("/opt/real/sub/file", b"the target's\n")
        h.ln_s("/opt/real", "/opt/link")
        with pytest.raises(GuestPathError, match="/opt/link is a symbolic link to /opt/real"):
            guest.write("/opt/link/sub/file", b"through the link\n")
        with pytest.raises(GuestPathError, match="symbolic link"):
            guest.read("/opt/link/sub/file")
        assert guest.kind("/opt/link/sub/file") is None
        assert guest.glob("/opt/link/*") == [] and guest.glob("/opt/*/sub") == ["/opt/real/sub"]
        assert guest.remove_all(["/opt/link/sub", "/opt/link/sub/file"]) == 0
        assert any("/opt/link is a symbolic link" in note for note in guest.skipped)
        assert bytes(h.read_file("/opt/real/sub/file")) == b"the target's\n"
        assert guest.remove("/opt/link")
        assert h.exists("/opt/real/sub/file")  # the link went, not its target
        guest.write("/opt/link/sub/file", b"a folder of its own\n")
        assert h.is_dir("/opt/link", followsymlinks=False)
        assert bytes(h.read_file("/opt/real/sub/file")) == b"the target's\n"
        assert bytes(h.read_file("/opt/link/sub/file")) == b"a folder of its own\n"


@pytest.mark.guestfs
def test_golden_host_keys_are_overwritten_and_links_replaced(lab: Lab) -> None:
    h = lab.app.handle
    with lab.mounted("keys") as guest:
        h.write("/etc/ssh/ssh_host_dsa_key", b"old dsa\n")
        h.rm_f("/etc/ssh/ssh_host_rsa_key")
        h.ln_s("/etc/shadow", "/etc/ssh/ssh_host_rsa_key")
        shadow = bytes(h.read_file("/etc/shadow"))
        keys = {
            t: (f"private {t}\n".encode(), f"ssh-{t} AAAA root@keys") for t in ("ed25519", "rsa")
        }
        HostKeys(types=("ed25519", "rsa")).apply(guest, Context(keys))
        names = sorted(n for n in h.ls("/etc/ssh") if n.startswith("ssh_host_"))
        assert names == [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
        ]
        assert bytes(h.read_file("/etc/shadow")) == shadow
        for key_type in ("ed25519", "rsa"):
            path = f"/etc/ssh/ssh_host_{key_type}_key"
            assert bytes(h.read_file(path)) == keys[key_type][0]
            info = h.lstatns(path)
            assert (info["st_mode"] & 0o170777, info["st_uid"], info["st_gid"]) == (
                0o100600,
                0,
                0,
            )
            assert (h.lstatns(path + ".pub")["st_mode"] & 0o777) == 0o644


@pytest.mark.guestfs
def test_the_guest_root_is_never_removed(lab: Lab) -> None:
    with lab.mounted("root") as guest:
        with pytest.raises(GuestPathError, match="root folder"):
            guest.remove_all(["/etc/hostname", "/"])
        assert lab.app.handle.is_file("/etc/hostname")  # nothing was removed
        assert lab.app.handle.is_dir("/etc")


@pytest.mark.guestfs
def test_inspection_finds_partitions_the_quick_probe_misses(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    usual = inspect.inspect_golden(lab.app, lab.golden)
    assert usual.mounts == (("/", "/dev/sda1"),)
    assert usual.filesystems == (("/dev/sda1", "ext4"),)
    # As if the root were past the partition numbers probed one by one.
    monkeypatch.setattr(inspect, "PROBED_PARTITIONS", 0)
    assert inspect.inspect_golden(lab.app, lab.golden) == usual


@pytest.mark.guestfs
def test_inspection_maps_fstab_uuids_and_labels(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    h = lab.app.handle
    index = lab.drives["inspect"]
    device = lab.app.device(index) + "1"
    h.set_label(device, "vmbuild-test")
    uuid = h.vfs_uuid(device)
    h.mount(device, "/")
    try:
        fstab = bytes(h.read_file("/etc/fstab")).decode()
        extra = f"UUID={uuid.upper()} /srv ext4 defaults 0 2\nLABEL=vmbuild-test /mnt auto 0 2\n"
        h.write("/etc/fstab", (fstab + extra).encode())
    finally:
        h.umount_all()
    # Found among the partitions probed by number, and through the full list.
    for probed in (inspect.PROBED_PARTITIONS, 0):
        monkeypatch.setattr(inspect, "PROBED_PARTITIONS", probed)
        facts = inspect.inspect_golden(lab.app, index)
        assert dict(facts.mounts) == {"/": device, "/srv": device, "/mnt": device}
        assert facts.filesystems == ((device, "ext4"),)


@pytest.mark.guestfs
def test_fresh_clones_share_the_golden_images_answers_and_nothing_written(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    pristine = Pristine()
    with lab.mounted("clone1", pristine) as first:
        passwd = first.read("/etc/passwd")
        golden_hostname = first.read("/etc/hostname")
        keys = first.glob("/etc/ssh/ssh_host_*")
        assert first.kind("/etc/ssh") == "folder"
        first.write("/etc/hostname", b"one\n")
        first.write("/etc/vmbuild-clone", b"only in clone1\n")
        first.remove_all(["/etc/ssh"])
        assert first.read("/etc/hostname") == b"one\n"

    calls: list[str] = []
    call = lab.app.call

    def counted(what: str, function: object, *args: object, **kwargs: object) -> object:
        calls.append(getattr(function, "__name__", "?"))
        return call(what, function, *args, **kwargs)  # type: ignore[arg-type]

    with lab.mounted("clone2", pristine) as second:
        monkeypatch.setattr(lab.app, "call", counted)
        # What clone1 looked at before it changed it comes from the record...
        assert second.read("/etc/passwd") == passwd
        assert second.read("/etc/hostname") == golden_hostname
        assert second.glob("/etc/ssh/ssh_host_*") == keys
        assert second.kind("/etc/ssh") == "folder"
        assert not {"readdir", "lstatnslist", "pread"} & set(calls), calls
        # ... and nothing clone1 wrote is in it.
        assert second.kind("/etc/vmbuild-clone") is None
        second.write("/etc/hostname", b"two\n")
        assert second.read("/etc/hostname") == b"two\n"
        assert "write" in calls
        monkeypatch.undo()
        look = lab.fresh()  # what the disk holds, asked anew
        assert look.read("/etc/hostname") == b"two\n"
        assert look.kind("/etc/vmbuild-clone") is None
        assert look.glob("/etc/ssh/ssh_host_*") == keys
    with lab.mounted("clone1") as first_again:
        assert first_again.read("/etc/hostname") == b"one\n"
        assert first_again.kind("/etc/ssh") is None
    # The record itself still says what the golden image holds.
    assert pristine.contents["/etc/hostname"] == golden_hostname
    assert "vmbuild-clone" not in pristine.listings["/etc"]


@pytest.mark.guestfs
def test_the_appliance_boots_with_vmbuilds_layer(lab: Lab) -> None:
    """The appliance is vmbuild's (its own path and cache), its storage rule probes
    no serial numbers, and what guestfsd and the other udev rules read is all there."""
    handle = lab.app.handle
    assert Path(handle.get_path()) == supermin.appliance_home() / "path"
    assert Path(handle.get_cachedir()) == supermin.appliance_home() / "cache"
    rule = handle.debug("sh", ["cat /etc/udev/rules.d/60-persistent-storage.rules"])
    assert "path_id" in rule and "blkid" in rule
    assert 'IMPORT{program}="scsi_id' not in rule and 'IMPORT{program}="ata_id' not in rule
    by_path = handle.debug("sh", ["ls /dev/disk/by-path"]).split()
    # The golden image, the drives and the appliance's own root disk.
    assert len([name for name in by_path if "-part" not in name]) == len(DRIVES) + 2
    # blkid's properties, which the LVM, MD and btrfs rules act on, are still set.
    info = handle.debug("sh", [f"udevadm info --query=property {lab.app.device(lab.golden)}1"])
    assert "ID_FS_TYPE=ext4" in info.splitlines()
