"""Loading good profiles: sizes, groups, defaults, --set overrides, search and FQDN."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest
from vmbuild.build.base import image_path
from vmbuild.errors import Problem, ProfileError
from vmbuild.model.plan import make_plan
from vmbuild.model.profile import (
    Bus,
    DiskFormat,
    DiskMode,
    DomainType,
    Machine,
    Profile,
    SeedBus,
    apply_overrides,
    control_character,
    escape_controls,
    format_size,
    is_hostname_label,
    load_profile,
    parse_profile,
    parse_size,
)

HEAD = """\
[lab]
name = "lab"
domain = "lab.example"

[base]
image = "golden.qcow2"

[network]
type = "bridge"
source = "br0"
subnet = "198.51.100.0/24"
gateway = "198.51.100.1"
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C t@lab"
HASH = "$6$salt$0123456789abcdefghijklmnopqrstuvwxyz"
WEB_DB = """
[[vm]]
name = "web"
ip = "198.51.100.10"

[[vm]]
name = "db"
ip = "198.51.100.20"
"""


def pinned(sha256: str) -> str:
    """HEAD with a sha256 pin on the golden image."""
    return HEAD.replace('image = "golden.qcow2"', f'image = "golden.qcow2"\nsha256 = "{sha256}"')


def load(tmp_path: Path, text: str, overrides: tuple[str, ...] = (), **kw: Path) -> Profile:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return load_profile(path, overrides, **kw)


# -------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20G", 20 << 30),
        ("20GiB", 20 << 30),
        ("20g", 20 << 30),
        (" 4 G ", 4 << 30),
        ("512M", 512 << 20),
        ("512MiB", 512 << 20),
        ("1.5T", 3 << 39),
        ("1.5K", 1536),
        ("64K", 64 << 10),
        ("7", 7),
        ("7B", 7),
        ("0", 0),
        (1024, 1024),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12 gigs", "is not a size like 20G, 512M or 20GiB"),
        ("", "is not a size like"),
        ("-1G", "is not a size like"),
        ("20GB", "is ambiguous: write G or GiB (binary units)"),
        ("512MB", "is ambiguous: write M or MiB (binary units)"),
        ("512mb", "is not a size like"),
        ("20Gi", "is not a size like"),
        ("20iB", "is not a size like"),
        ("1.3K", "is not a whole number of bytes"),
        ("0.5", "is not a whole number of bytes"),
        ("1e9", "is not a size like"),
        ("20G\n", "is not a size like"),
        ("\t20G", "is not a size like"),
        ("\u0663G", "is not a size like"),  # ARABIC-INDIC DIGIT THREE
        ("9" * 400, "is too large"),
        (-1, "is negative"),
        (True, "is not a size"),
    ],
)
def test_parse_size_refuses(text: str | int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (20 << 30, "20G"),
        (512 << 20, "512M"),
        (1 << 40, "1T"),
        (1536 << 30, "1536G"),
        (64 << 10, "64K"),
        (1536, "1536"),
        (1025, "1025"),
        (0, "0"),
    ],
)
def test_format_size(value: int, text: str) -> None:
    assert format_size(value) == text
    assert parse_size(text) == value


# ------------------------------------------------------------------- groups


def test_group_expands_names_ips_hostnames_and_vnc_ports(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD
        + """
[[vm]]
name = "slave{n}"
count = 3
ip = "198.51.100.101"
vnc_port = 5901

[[vm]]
name = "master"
ip = "198.51.100.100"
""",
    )
    assert [vm.name for vm in profile.vms] == ["slave1", "slave2", "slave3", "master"]
    assert [vm.hostname for vm in profile.vms] == ["slave1", "slave2", "slave3", "master"]
    assert [str(vm.ip) for vm in profile.vms] == [
        "198.51.100.101",
        "198.51.100.102",
        "198.51.100.103",
        "198.51.100.100",
    ]
    assert [vm.vnc_port for vm in profile.vms] == [5901, 5902, 5903, None]
    assert profile.vms[1].place == 'vm "slave2"'


def test_group_first_and_zero_padding(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD
        + """
[[vm]]
name = "node{n:02}"
hostname = "n{n:03}-lab"
count = 3
first = 9
ip = "198.51.100.50"
""",
    )
    assert [vm.name for vm in profile.vms] == ["node09", "node10", "node11"]
    assert [vm.hostname for vm in profile.vms] == ["n009-lab", "n010-lab", "n011-lab"]


def test_group_first_zero_and_count_one_with_placeholder(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD
        + """
[[vm]]
name = "w{n}"
count = 2
first = 0
ip = "198.51.100.30"

[[vm]]
name = "solo{n}"
ip = "198.51.100.40"
mac = "52:54:00:00:00:40"
""",
    )
    assert [vm.name for vm in profile.vms] == ["w0", "w1", "solo1"]
    assert profile.vms[2].mac == "52:54:00:00:00:40"


def test_group_members_get_distinct_derived_identities(tmp_path: Path) -> None:
    profile = load(tmp_path, HEAD + '\n[[vm]]\nname = "s{n}"\ncount = 4\nip = "198.51.100.11"\n')
    plan = make_plan(profile)
    assert len({vm.mac for vm in plan.vms}) == 4
    assert len({vm.uuid for vm in plan.vms}) == 4
    assert len({vm.instance_id for vm in plan.vms}) == 4
    assert all(vm.mac.startswith("52:54:00:") for vm in plan.vms)
    assert [vm.vnc.port for vm in plan.vms] == [5901, 5902, 5903, 5904]
    assert [vm.index for vm in plan.vms] == [1, 2, 3, 4]


# ---------------------------------------------------------------- defaults


def test_built_in_defaults(tmp_path: Path) -> None:
    profile = load(tmp_path, HEAD + WEB_DB)
    assert profile.domain_type is DomainType.KVM
    assert profile.vnc_base == 5900
    assert profile.seed == "lab"
    assert profile.base.format is DiskFormat.QCOW2
    assert profile.base.sha256 is None
    assert profile.plugins == ()
    vm = profile.vms[0]
    assert (vm.vcpus, vm.memory, vm.disk_size) == (2, 2 << 30, None)
    assert (vm.disk_mode, vm.disk_format, vm.disk_bus) == (
        DiskMode.OVERLAY,
        DiskFormat.QCOW2,
        Bus.VIRTIO,
    )
    assert (vm.seed_bus, vm.machine, vm.nic_model) == (SeedBus.AUTO, Machine.PC, "virtio")
    assert (vm.vnc_listen, vm.vnc_keymap, vm.autostart) == ("127.0.0.1", None, False)
    assert (vm.mac, vm.uuid, vm.vnc_port) == (None, None, None)
    assert (vm.root, vm.user) == (None, None)


def test_defaults_apply_to_every_vm_and_each_vm_may_override(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD
        + """
[defaults]
vcpus = 4
memory = "1G"
disk_size = "8G"
machine = "q35"
autostart = true

[[vm]]
name = "web"
ip = "198.51.100.10"

[[vm]]
name = "db"
ip = "198.51.100.20"
memory = "4096M"
disk_mode = "copy"
disk_format = "raw"
autostart = false
""",
    )
    web, db = profile.vms
    assert (web.vcpus, web.memory, web.disk_size, web.machine) == (4, 1 << 30, 8 << 30, Machine.Q35)
    assert web.autostart is True and web.disk_mode is DiskMode.OVERLAY
    assert (db.vcpus, db.memory, db.disk_size, db.machine) == (4, 4 << 30, 8 << 30, Machine.Q35)
    assert db.autostart is False
    assert (db.disk_mode, db.disk_format) == (DiskMode.COPY, DiskFormat.RAW)
    # An overlay is always qcow2; a copy keeps the format it asked for.
    plan = make_plan(profile)
    assert plan.vm("web").disk.file == "vms/web/disk.qcow2"
    assert plan.vm("db").disk.file == "vms/db/disk.raw"


def test_accounts_apply_to_every_vm_and_each_vm_may_override(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD
        + f"""
[root]
password_hash = "{HASH}"

[user]
name = "lab"
ssh_authorized_keys = ["{KEY}"]

[[vm]]
name = "web"
ip = "198.51.100.10"

[[vm]]
name = "db"
ip = "198.51.100.20"

[vm.user]
name = "dba"
sudo = false
""",
    )
    web, db = profile.vms
    assert web.root is not None and web.root.name == "root"
    assert web.root.password_hash == HASH and web.root.sudo is False
    assert db.root == web.root
    assert web.user is not None
    assert (web.user.name, web.user.ssh_authorized_keys, web.user.sudo) == ("lab", (KEY,), True)
    assert db.user is not None
    assert (db.user.name, db.user.ssh_authorized_keys, db.user.sudo) == ("dba", (), False)


def test_given_identity_is_normalised(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        pinned("sha256:" + "AB" * 32)
        + """
[[vm]]
name = "web"
hostname = "WWW"
ip = "198.51.100.10"
mac = "52:54:00:AB:CD:EF"
uuid = "6F1C1A3E-2B4D-4C5E-8F90-123456789ABC"
""",
    )
    vm = profile.vms[0]
    assert (vm.hostname, vm.mac) == ("www", "52:54:00:ab:cd:ef")
    assert str(vm.uuid) == "6f1c1a3e-2b4d-4c5e-8f90-123456789abc"
    assert profile.base.sha256 == "ab" * 32
    plan = make_plan(profile)
    assert (plan.vms[0].mac, plan.vms[0].uuid) == (vm.mac, str(vm.uuid))


# --------------------------------------------------------------- overrides


def test_set_by_dotted_path(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD + WEB_DB,
        ("lab.domain_type=qemu", "lab.domain=other.example", "network.source=br1"),
    )
    assert profile.domain_type is DomainType.QEMU
    assert profile.domain == "other.example"
    assert profile.network.source == "br1"


def test_set_values_are_typed_as_toml(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD + WEB_DB,
        (
            "defaults.vcpus=8",
            "defaults.autostart=true",
            'network.dns=["198.51.100.53", "198.51.100.54"]',
            "defaults.memory=3G",  # not TOML: taken as the string "3G"
        ),
    )
    assert {vm.vcpus for vm in profile.vms} == {8}
    assert {vm.autostart for vm in profile.vms} == {True}
    assert {vm.memory for vm in profile.vms} == {3 << 30}
    assert profile.network.dns == (
        ipaddress.IPv4Address("198.51.100.53"),
        ipaddress.IPv4Address("198.51.100.54"),
    )
    # A quoted number is a TOML string, and vcpus wants an integer.
    with pytest.raises(ProfileError) as info:
        load(tmp_path, HEAD + WEB_DB, ('defaults.vcpus="8"',))
    assert [str(problem) for problem in info.value.problems] == [
        'defaults: vcpus "8" is not a whole number'
    ]


def test_set_vm_by_name_and_by_position(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        HEAD + WEB_DB,
        ("vm.db.memory=4G", "vm.1.vcpus=6", "vm.2.hostname=database"),
    )
    web, db = profile.vms
    assert (web.vcpus, web.memory) == (6, 2 << 30)
    assert (db.vcpus, db.memory, db.hostname) == (2, 4 << 30, "database")


def test_set_reaches_a_group_by_its_pattern(tmp_path: Path) -> None:
    text = HEAD + '\n[[vm]]\nname = "s{n}"\ncount = 2\nip = "198.51.100.11"\n'
    profile = load(tmp_path, text, ("vm.s{n}.vcpus=3",))
    assert [vm.vcpus for vm in profile.vms] == [3, 3]


def test_later_set_wins_and_changes_the_digest(tmp_path: Path) -> None:
    plain = load(tmp_path, HEAD + WEB_DB)
    again = load(tmp_path, HEAD + WEB_DB)
    changed = load(tmp_path, HEAD + WEB_DB, ("defaults.vcpus=2", "defaults.vcpus=6"))
    assert {vm.vcpus for vm in changed.vms} == {6}
    assert plain.digest == again.digest
    assert len(plain.digest) == 64
    assert changed.digest != plain.digest


def test_base_image_option_replaces_the_image_and_drops_the_pin(tmp_path: Path) -> None:
    profile = load(tmp_path, pinned("0" * 64) + WEB_DB)
    assert image_path(profile.base, profile.folder) == tmp_path / "golden.qcow2"
    assert profile.base.sha256 == "0" * 64
    other = Path("elsewhere/other.qcow2")
    replaced = load(tmp_path, pinned("0" * 64) + WEB_DB, base_image=other)
    assert replaced.base.image == str(other.absolute())
    assert image_path(replaced.base, replaced.folder) == other.absolute()
    assert replaced.base.sha256 is None


# ------------------------------------------------------------ search, FQDN


def test_search_defaults_to_the_lab_domain(tmp_path: Path) -> None:
    profile = load(tmp_path, HEAD + WEB_DB)
    assert profile.network.search == ("lab.example",)
    assert make_plan(profile).network.search == ("lab.example",)


def test_explicit_search_wins_over_the_domain(tmp_path: Path) -> None:
    text = HEAD + 'search = ["a.example", "B.Example."]\n' + WEB_DB
    assert load(tmp_path, text).network.search == ("a.example", "b.example")
    empty = HEAD + "search = []\n" + WEB_DB
    assert load(tmp_path, empty).network.search == ()


def test_without_a_domain_there_is_no_search_and_the_fqdn_is_the_hostname(
    tmp_path: Path,
) -> None:
    profile = load(tmp_path, HEAD.replace('domain = "lab.example"\n', "") + WEB_DB)
    assert profile.domain is None
    assert profile.network.search == ()
    assert [vm.fqdn for vm in make_plan(profile).vms] == ["web", "db"]


def test_fqdn_joins_hostname_and_domain(tmp_path: Path) -> None:
    text = HEAD.replace('"lab.example"', '"Lab.Example."') + WEB_DB.replace(
        'name = "db"', 'name = "db"\nhostname = "PG"'
    )
    plan = make_plan(load(tmp_path, text))
    assert plan.domain == "lab.example"
    assert [(vm.name, vm.hostname, vm.fqdn) for vm in plan.vms] == [
        ("web", "web", "web.lab.example"),
        ("db", "pg", "pg.lab.example"),
    ]


def test_set_value_must_not_carry_a_newline(tmp_path: Path) -> None:
    raw = {"lab": {"name": "lab", "seed": "s"}}
    problems = apply_overrides(raw, ["lab.seed=x\ny", "lab.domain=a\n[lab]\nname = 'evil'"])
    assert problems == [
        Problem(
            r"--set lab.seed=x\ny", r'value "x\ny" contains a control character (U+000A LINE FEED)'
        ),
        Problem(
            r"--set lab.domain=a\n[lab]\nname = 'evil'",
            r"""value "a\n[lab]\nname = 'evil'" contains a control character (U+000A LINE FEED)""",
        ),
    ]
    assert raw == {"lab": {"name": "lab", "seed": "s"}}, "a refused value is not applied"
    # A value that would be TOML up to the newline (8) is refused too, not cut short.
    path = tmp_path / "lab.toml"
    path.write_text(HEAD + WEB_DB)
    with pytest.raises(ProfileError) as info:
        load_profile(path, ["defaults.vcpus=8\nmemory = 1", "lab.s\teed=x"])
    assert [str(problem) for problem in info.value.problems] == [
        r'--set defaults.vcpus=8\nmemory = 1: value "8\nmemory = 1" contains a control '
        "character (U+000A LINE FEED)",
        r'--set lab.s\teed=x: key "lab.s\teed" contains a control character '
        "(U+0009 CHARACTER TABULATION)",
    ]


def test_set_value_made_by_a_toml_escape_is_refused_where_it_lands(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(HEAD + WEB_DB)
    raw = tomllib.loads(path.read_text())
    with pytest.raises(ProfileError) as info:
        parse_profile(raw, path, ['vm.web.hostname="web\\n"', 'network.dns=["198.51.100.53\\r"]'])
    assert [str(problem) for problem in info.value.problems] == [
        r'network: dns item 1 "198.51.100.53\r" contains a control character '
        "(U+000D CARRIAGE RETURN)",
        r'vm "web": hostname "web\n" contains a control character (U+000A LINE FEED)',
    ]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("web", ""),
        ("naïve ☃ 東京", ""),
        ("web\n", "U+000A LINE FEED"),
        ("a\tb", "U+0009 CHARACTER TABULATION"),
        ("\r", "U+000D CARRIAGE RETURN"),
        ("\0", "U+0000 NULL"),
        ("\x1b[31m", "U+001B ESCAPE"),
        ("\x7f", "U+007F DELETE"),
        ("\x85", "U+0085 NEXT LINE"),
        ("\x9b", "U+009B CONTROL SEQUENCE INTRODUCER"),
        ("a\u2028b", "U+2028 LINE SEPARATOR"),
        ("a\u2029b", "U+2029 PARAGRAPH SEPARATOR"),
        ("first \n then \t", "U+000A LINE FEED"),
    ],
)
def test_control_character(text: str, found: str) -> None:
    assert control_character(text) == found
    escaped = escape_controls(text)
    assert control_character(escaped) == ""
    assert (escaped == text) == (found == "")


def test_validators_match_whole_values() -> None:
    assert is_hostname_label("web")
    for text in ("web\n", "web\r", "web ", "-web", "web\n\n", "w\neb"):
        assert not is_hostname_label(text), repr(text)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("name", "web\n", 'vm "web\\n": name "web\\n" contains a control character'),
        ("hostname", "web\n", 'vm "web": hostname "web\\n" contains a control character'),
        ("mac", "52:54:00:12:34:56\n", 'vm "web": mac "52:54:00:12:34:56\\n" contains'),
        ("ip", "198.51.100.10\n", 'vm "web": ip "198.51.100.10\\n" contains'),
        ("nic_model", "virtio\n", 'vm "web": nic_model "virtio\\n" contains'),
        ("vnc_keymap", "en-us\n", 'vm "web": vnc_keymap "en-us\\n" contains'),
        ("memory", "2G\n", 'vm "web": memory "2G\\n" contains'),
        ("disk_mode", "copy\x7f", 'vm "web": disk_mode "copy\\u007f" contains'),
    ],
)
def test_a_control_character_is_the_one_problem_reported(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    raw = tomllib.loads(HEAD + '\n[[vm]]\nname = "web"\nip = "198.51.100.10"\n')
    raw["vm"][0][key] = value
    with pytest.raises(ProfileError) as info:
        parse_profile(raw, tmp_path / "lab.toml")
    [problem] = info.value.problems
    assert str(problem).startswith(message)
    assert "\n" not in str(problem)


def test_ssh_keys_are_one_line_each(tmp_path: Path) -> None:
    good = [
        KEY,
        KEY.replace("t@lab", "Jürgen's laptop, 2024"),
        'from="198.51.100.0/24",no-pty ' + KEY,
        KEY.rsplit(" ", 1)[0],
    ]
    text = HEAD + f'[user]\nname = "lab"\nssh_authorized_keys = {json.dumps(good)}\n' + WEB_DB
    user = load(tmp_path, text).vms[0].user
    assert user is not None and user.ssh_authorized_keys == tuple(good)
    for bad in (KEY + "\u2028" + KEY, KEY + "\r", KEY + "\x85command=x"):
        raw = tomllib.loads(HEAD + WEB_DB)
        raw["user"] = {"name": "lab", "ssh_authorized_keys": [KEY, bad]}
        with pytest.raises(ProfileError) as info:
            parse_profile(raw, tmp_path / "lab.toml")
        [problem] = info.value.problems
        assert problem.place == "user"
        assert problem.message.startswith("ssh_authorized_keys item 2 ")
        assert "contains a control character" in problem.message


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            "memory = 12288",
            "memory 12288 is smaller than 16M (a bare number counts bytes: "
            'write "12288M" for 12288 MiB)',
        ),
        (
            "memory = 4",
            'memory 4 is smaller than 16M (a bare number counts bytes: write "4G" for 4 GiB)',
        ),
        (
            "disk_size = 20",
            'disk_size 20 is smaller than 1M (a bare number counts bytes: write "20G" for 20 GiB)',
        ),
        ("memory = 0", "memory 0 is smaller than 16M"),
        ('memory = "12288"', 'memory "12288" is smaller than 16M'),
    ],
)
def test_a_bare_number_size_hints_at_units(tmp_path: Path, setting: str, expected: str) -> None:
    text = HEAD + f"\n[defaults]\n{setting}\n" + WEB_DB
    with pytest.raises(ProfileError) as info:
        load(tmp_path, text)
    assert [str(problem) for problem in info.value.problems] == [f"defaults: {expected}"]


def test_a_bare_number_size_from_set_hints_too(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load(tmp_path, HEAD + WEB_DB, ("vm.db.memory=12288",))
    [problem] = info.value.problems
    assert problem.place == 'vm "db"'
    assert problem.hint == 'a bare number counts bytes: write "12288M" for 12288 MiB'
    # Large enough to be bytes: no hint, and accepted when it is whole MiB.
    assert load(tmp_path, HEAD + WEB_DB, ("vm.db.memory=1073741824",)).vms[1].memory == 1 << 30
