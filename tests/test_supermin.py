"""vmbuild's layer over libguestfs's appliance: the rule it carries and the path it
keeps (made once, left alone while nothing changed, made again when the system's
layers do). The appliance booted with it is checked in test_guestfiles.py."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
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


def test_the_layer_is_the_same_bytes_for_the_same_inputs() -> None:
    one = supermin.layer_bytes("rule one\n", "/usr/bin/udevadm")
    assert one == supermin.layer_bytes("rule one\n", "/usr/bin/udevadm")
    assert one != supermin.layer_bytes("rule two\n", "/usr/bin/udevadm")
    assert one != supermin.layer_bytes("rule one\n", "/bin/udevadm")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(one))) as tar:
        member = tar.getmember(f"etc/udev/rules.d/{supermin.RULE_NAME}")
        assert (member.uid, member.gid, member.mode, member.mtime) == (0, 0, 0o644, 0)
        read = tar.extractfile(member)
        assert read is not None and read.read() == b"rule one\n"
        member = tar.getmember("usr/sbin/udevadm")
        assert (member.uid, member.gid, member.mode, member.mtime) == (0, 0, 0o755, 0)
        read = tar.extractfile(member)
        assert read is not None and read.read() == supermin.shim("/usr/bin/udevadm").encode()
        assert tar.getnames() == [
            "etc",
            "etc/udev",
            "etc/udev/rules.d",
            "usr",
            "usr/sbin",
            f"etc/udev/rules.d/{supermin.RULE_NAME}",
            "usr/sbin/udevadm",
        ]


def test_the_layer_holds_only_what_the_host_gave() -> None:
    for rule, udevadm, names in [
        ("rule\n", None, {f"etc/udev/rules.d/{supermin.RULE_NAME}"}),
        (None, "/usr/bin/udevadm", {"usr/sbin/udevadm"}),
    ]:
        layer = supermin.layer_bytes(rule, udevadm)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
            files = {member.name for member in tar.getmembers() if member.isfile()}
        assert files == names


@pytest.fixture
def real_udevadm(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for the real udevadm that notes each command it is given."""
    calls = tmp_path / "calls"
    real = tmp_path / "bin" / "udevadm"
    real.parent.mkdir()
    real.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 3\n')
    real.chmod(0o755)
    return real, calls


@pytest.mark.parametrize(
    ("args", "answered"),
    [
        (["settle", "-E", "{there}"], True),
        (["--debug", "settle", "-E", "{there}"], True),
        (["settle", "-E", "{absent}"], False),
        (["--debug", "settle", "-E", "{absent}"], False),
        (["settle", "--timeout=600"], False),
        (["settle"], False),
        (["trigger"], False),
        (["info", "--query=property", "{there}"], False),
        (["settle", "-E", "{there}", "--timeout=5"], False),
        (["--debug", "trigger", "-E", "{there}"], False),
        (["settle", "-t", "{there}"], False),
    ],
)
def test_the_shim_answers_a_settle_on_a_file_that_is_there_and_hands_on_the_rest(
    tmp_path: Path, real_udevadm: tuple[Path, Path], args: list[str], answered: bool
) -> None:
    real, calls = real_udevadm
    there = tmp_path / "sdb 1"  # a space too: the file is quoted through
    there.write_text("")
    absent = tmp_path / "sdc1"
    shim = tmp_path / "udevadm"
    shim.write_text(supermin.shim(str(real)))
    shim.chmod(0o755)
    argv = [arg.format(there=there, absent=absent) for arg in args]
    done = subprocess.run(["/bin/sh", str(shim), *argv], capture_output=True, check=False)
    if answered:
        assert done.returncode == 0
        assert not calls.exists()
    else:
        # The real udevadm ran, with the same arguments, and its status came back.
        assert done.returncode == 3
        assert calls.read_text() == " ".join(argv) + "\n"


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
    udevadm = tmp_path / "usr-bin" / "udevadm"
    udevadm.parent.mkdir()
    udevadm.write_text("#!/bin/sh\n")
    monkeypatch.setattr(supermin, "UDEVADM_DIRS", (tmp_path / "absent", udevadm.parent))
    monkeypatch.setattr(supermin, "SHADOWED", tmp_path / "usr-sbin" / "udevadm")
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
    udevadm = str(tmp_path / "usr-bin" / "udevadm")
    assert layer == supermin.layer_bytes(supermin.quiet_rule(STOCK_RULE), udevadm)
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
        supermin.quiet_rule(STOCK_RULE + "# changed\n"), str(tmp_path / "usr-bin" / "udevadm")
    )
    assert sorted(entry.name for entry in home.iterdir()) == ["cache", "path"]


def test_nothing_to_layer_means_libguestfss_own_appliance(
    system: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    assert supermin.layered_path(tmp_path / "fixed-appliance", home) is None
    monkeypatch.setattr(supermin, "RULE_DIRS", (tmp_path / "absent",))
    # The shim alone is still a layer.
    assert supermin.layered_path(system, home) == (home / "path", home / "cache")
    layer = (home / "path" / "supermin.d" / supermin.LAYER).read_bytes()
    assert layer == supermin.layer_bytes(None, str(tmp_path / "usr-bin" / "udevadm"))
    monkeypatch.setattr(supermin, "UDEVADM_DIRS", (tmp_path / "absent",))
    assert supermin.layered_path(system, tmp_path / "home2") is None
    assert not (tmp_path / "home2").exists()


def test_no_shim_over_a_udevadm_of_the_hosts_own(
    system: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadowed = tmp_path / "usr-sbin" / "udevadm"
    shadowed.parent.mkdir()
    shadowed.write_text("#!/bin/sh\n")
    home = tmp_path / "home"
    supermin.layered_path(system, home)
    layer = (home / "path" / "supermin.d" / supermin.LAYER).read_bytes()
    assert layer == supermin.layer_bytes(supermin.quiet_rule(STOCK_RULE), None)
