"""vmbuild's layer over libguestfs's appliance: the rule it carries and the path it
keeps (made once, left alone while nothing changed, made again when the system's
layers do). The appliance booted with it is checked in test_guestfiles.py."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from vmbuild.guest import supermin

STOCK_RULE = """\
ACTION=="remove", GOTO="persistent_storage_end"
KERNEL=="sd*[!0-9]|sr*", ENV{ID_SERIAL}!="?*", SUBSYSTEMS=="scsi", ATTRS{vendor}=="ATA", \
IMPORT{program}="ata_id --export $devnode"
KERNEL=="sd*[!0-9]|sr*", ENV{ID_SERIAL}!="?*", IMPORT{program}="scsi_id --export \
--whitelisted -d $devnode", ENV{ID_BUS}="scsi"
ENV{DEVTYPE}=="disk", DEVPATH!="*/virtual/*", IMPORT{builtin}="path_id"
ENV{ID_PATH}=="?*", KERNEL=="*[!0-9]", SYMLINK+="disk/by-path/$env{ID_PATH}"
KERNEL!="sr*|mmcblk[0-9]boot[0-9]", IMPORT{builtin}="blkid"
LABEL="persistent_storage_end"
"""


def test_the_rule_loses_its_serial_probes_and_keeps_the_rest() -> None:
    quiet = supermin.quiet_rule(STOCK_RULE)
    assert "scsi_id" not in quiet and "ata_id" not in quiet
    kept = [line for line in STOCK_RULE.splitlines() if "_id --export" not in line]
    assert quiet.splitlines() == kept


def test_the_host_rule_quietened_still_makes_by_path_links_and_reads_blkid() -> None:
    rule = supermin._host_rule()
    if rule is None:
        pytest.skip("this host keeps no 60-persistent-storage.rules")
    quiet = supermin.quiet_rule(rule)
    assert "scsi_id" in rule and "scsi_id" not in quiet
    assert 'IMPORT{builtin}="path_id"' in quiet
    assert "disk/by-path/" in quiet
    assert 'IMPORT{builtin}="blkid"' in quiet


def test_the_layer_is_the_same_bytes_for_the_same_rule() -> None:
    one = supermin.layer_bytes("rule one\n")
    assert one == supermin.layer_bytes("rule one\n")
    assert one != supermin.layer_bytes("rule two\n")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(one))) as tar:
        member = tar.getmember(f"etc/udev/rules.d/{supermin.RULE_NAME}")
        assert (member.uid, member.gid, member.mode, member.mtime) == (0, 0, 0o644, 0)
        read = tar.extractfile(member)
        assert read is not None and read.read() == b"rule one\n"
        assert tar.getnames() == [
            "etc",
            "etc/udev",
            "etc/udev/rules.d",
            f"etc/udev/rules.d/{supermin.RULE_NAME}",
        ]


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "system"
    (root / "supermin.d").mkdir(parents=True)
    for name in ("base.tar.gz", "packages", "hostfiles"):
        (root / "supermin.d" / name).write_text(name)
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / supermin.RULE_NAME).write_text(STOCK_RULE)
    monkeypatch.setattr(supermin, "RULE_DIRS", (tmp_path / "absent", rules))
    return root


def test_the_path_links_the_systems_layers_and_adds_vmbuilds(system: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = supermin.layered_path(system, home)
    assert made == (home / "path", home / "cache")
    folder = home / "path" / "supermin.d"
    assert sorted(entry.name for entry in folder.iterdir()) == [
        "base.tar.gz",
        "hostfiles",
        "packages",
        supermin.LAYER,
    ]
    assert os.readlink(folder / "packages") == str(system / "supermin.d" / "packages")
    layer = (folder / supermin.LAYER).read_bytes()
    assert layer == supermin.layer_bytes(supermin.quiet_rule(STOCK_RULE))
    assert (home / "cache").is_dir()
    assert sorted(entry.name for entry in home.iterdir()) == ["cache", "path"]


def test_an_unchanged_path_is_left_as_it_is(system: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    supermin.layered_path(system, home)
    layer = home / "path" / "supermin.d" / supermin.LAYER
    os.utime(layer, (1_000_000, 1_000_000))
    before = layer.stat()
    supermin.layered_path(system, home)
    after = layer.stat()
    # Same inode and time: supermin has no newer input and keeps its appliance.
    assert (after.st_ino, after.st_mtime) == (before.st_ino, before.st_mtime)


def test_the_path_follows_the_systems_layers_and_the_hosts_rule(
    system: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    supermin.layered_path(system, home)
    (system / "supermin.d" / "zz-packages-xfs").write_text("xfsprogs\n")
    (system / "supermin.d" / "hostfiles").unlink()
    supermin.layered_path(system, home)
    folder = home / "path" / "supermin.d"
    names = sorted(entry.name for entry in folder.iterdir())
    assert names == ["base.tar.gz", "packages", "zz-packages-xfs", supermin.LAYER]
    rules = supermin.RULE_DIRS[1]
    (rules / supermin.RULE_NAME).write_text(STOCK_RULE + "# changed\n")
    supermin.layered_path(system, home)
    assert (folder / supermin.LAYER).read_bytes() == supermin.layer_bytes(
        supermin.quiet_rule(STOCK_RULE + "# changed\n")
    )
    assert sorted(entry.name for entry in home.iterdir()) == ["cache", "path"]


def test_nothing_to_layer_means_libguestfss_own_appliance(
    system: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    assert supermin.layered_path(tmp_path / "fixed-appliance", home) is None
    monkeypatch.setattr(supermin, "RULE_DIRS", (tmp_path / "absent",))
    assert supermin.layered_path(system, home) is None
    assert not home.exists()
