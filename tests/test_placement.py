"""Hosts and placement: [hosts.NAME] and each VM's host, in the profile and the plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

# The lab (bridge br0 on 198.51.100.0/24) and its VMs web and db, as for test_profile.
from conftest import RunCli
from test_profile import HEAD, WEB_DB, load
from vmbuild.errors import ProfileError
from vmbuild.model.plan import (
    LOCAL_HOST,
    HostPlan,
    Plan,
    make_plan,
    placement_warnings,
    to_data,
)
from vmbuild.model.profile import HostSpec, NetType, Profile

HV2 = """
[hosts.hv2]
uri = "qemu+ssh://root@hv2.example/system"
"""
#: What a VM names as its host when the profile does not declare it.
HINT_NONE = 'no hosts are declared; to add it: [hosts.hv3] uri = "..."'
HOST_NAME_RULE = "is not a host name (1-63 letters, digits or '-', not starting or ending with '-')"


def problems(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """(place, message, hint) of every problem loading ``text`` reports."""
    with pytest.raises(ProfileError) as info:
        load(tmp_path, text, overrides)
    return [(p.place, p.message, p.hint) for p in info.value.problems]


def hosts_of(profile: Profile) -> list[str]:
    return [vm.host for vm in profile.vms]


# ------------------------------------------------------------------- the profile


def test_no_hosts_means_every_vm_is_local(tmp_path: Path) -> None:
    profile = load(tmp_path, HEAD + WEB_DB)
    assert profile.hosts == ()
    assert hosts_of(profile) == ["local", "local"]
    plan = make_plan(profile)
    assert plan.hosts == ()
    assert [vm.host for vm in plan.vms] == [LOCAL_HOST, LOCAL_HOST]
    assert plan.placement() == {"local": plan.vms}


def test_hosts_are_read_in_profile_order_with_their_pools(tmp_path: Path) -> None:
    text = (
        HEAD
        + HV2
        + """
[hosts.local]
uri = "qemu:///system"
pool = "fast.nvme-1"

[hosts.HV4]
uri = "qemu+tcp://198.51.100.2/system"
"""
        + WEB_DB
    )
    profile = load(tmp_path, text)
    assert profile.hosts == (
        HostSpec("hv2", "qemu+ssh://root@hv2.example/system", "default"),
        HostSpec("local", "qemu:///system", "fast.nvme-1"),
        HostSpec("HV4", "qemu+tcp://198.51.100.2/system", "default"),
    )
    assert make_plan(profile).hosts == (
        HostPlan("hv2", "qemu+ssh://root@hv2.example/system", "default"),
        HostPlan("local", "qemu:///system", "fast.nvme-1"),
        HostPlan("HV4", "qemu+tcp://198.51.100.2/system", "default"),
    )


def test_a_vm_takes_its_host_from_defaults_unless_it_names_one(tmp_path: Path) -> None:
    text = HEAD + HV2 + '\n[defaults]\nhost = "hv2"\n' + WEB_DB + 'host = "local"\n'
    assert hosts_of(load(tmp_path, text)) == ["hv2", "local"]


def test_every_vm_of_a_group_goes_to_the_group_host(tmp_path: Path) -> None:
    text = (
        HEAD
        + HV2
        + """
[[vm]]
name = "w{n}"
count = 3
ip = "198.51.100.11"
host = "hv2"

[[vm]]
name = "solo"
ip = "198.51.100.30"
"""
    )
    profile = load(tmp_path, text)
    assert [(vm.name, vm.host) for vm in profile.vms] == [
        ("w1", "hv2"),
        ("w2", "hv2"),
        ("w3", "hv2"),
        ("solo", "local"),
    ]


def test_set_places_vms_and_declares_hosts(tmp_path: Path) -> None:
    overrides = (
        "hosts.hv9.uri=qemu+tcp://198.51.100.9/system",
        "hosts.hv9.pool=lab",
        "vm.db.host=hv9",
    )
    profile = load(tmp_path, HEAD + WEB_DB, overrides)
    assert profile.hosts == (HostSpec("hv9", "qemu+tcp://198.51.100.9/system", "lab"),)
    assert hosts_of(profile) == ["local", "hv9"]
    moved = load(tmp_path, HEAD + HV2 + WEB_DB, ("defaults.host=hv2", "vm.2.host=local"))
    assert hosts_of(moved) == ["hv2", "local"]


def test_set_can_point_a_declared_host_elsewhere(tmp_path: Path) -> None:
    profile = load(tmp_path, HEAD + HV2 + WEB_DB, ("hosts.hv2.uri=qemu+tcp://10.0.0.2/system",))
    assert profile.hosts == (HostSpec("hv2", "qemu+tcp://10.0.0.2/system", "default"),)


def test_hosts_are_part_of_the_profile_digest(tmp_path: Path) -> None:
    plain = load(tmp_path, HEAD + WEB_DB)
    placed = load(tmp_path, HEAD + HV2 + WEB_DB)
    assert plain.digest != placed.digest


def test_the_host_does_not_change_a_vm_identity(tmp_path: Path) -> None:
    here = make_plan(load(tmp_path, HEAD + HV2 + WEB_DB))
    there = make_plan(load(tmp_path, HEAD + HV2 + WEB_DB, ("vm.db.host=hv2",)))
    for a, b in zip(here.vms, there.vms, strict=True):
        assert (a.mac, a.uuid, a.instance_id, a.machine_id) == (
            b.mac,
            b.uuid,
            b.instance_id,
            b.machine_id,
        )


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "qemu+ssh://root@hv2.example/system",
        "qemu+ssh://root@hv2.example:2222/system?keyfile=/root/.ssh/lab",
        "qemu+tcp://198.51.100.2/system",
        "qemu+tls://[2001:db8::2]/system",
        "test:///default",
    ],
)
def test_libvirt_uris_are_accepted(tmp_path: Path, uri: str) -> None:
    profile = load(tmp_path, HEAD + f'[hosts.hv2]\nuri = "{uri}"\n' + WEB_DB)
    assert profile.hosts[0].uri == uri


# ------------------------------------------------------------------ the problems


def test_an_undeclared_host_is_reported_at_the_vm(tmp_path: Path) -> None:
    text = HEAD + WEB_DB + 'host = "hv3"\n'
    assert problems(tmp_path, text) == [('vm "db"', 'host "hv3" is not declared', HINT_NONE)]


def test_the_hint_names_the_declared_hosts(tmp_path: Path) -> None:
    text = HEAD + HV2 + '[hosts.hv4]\nuri = "qemu:///system"\n' + WEB_DB + 'host = "hv3"\n'
    assert problems(tmp_path, text) == [
        (
            'vm "db"',
            'host "hv3" is not declared',
            'declared hosts: hv2, hv4; to add it: [hosts.hv3] uri = "..."',
        )
    ]


def test_an_undeclared_host_in_a_group_is_reported_once(tmp_path: Path) -> None:
    text = HEAD + '[[vm]]\nname = "w{n}"\ncount = 3\nip = "198.51.100.11"\nhost = "hv3"\n'
    assert problems(tmp_path, text) == [('vm "w{n}"', 'host "hv3" is not declared', HINT_NONE)]


def test_an_undeclared_default_host_is_reported_at_defaults(tmp_path: Path) -> None:
    text = HEAD + '[defaults]\nhost = "hv3"\n' + WEB_DB + 'host = "local"\n'
    assert problems(tmp_path, text) == [("defaults", 'host "hv3" is not declared', HINT_NONE)]


def test_an_undeclared_host_from_set_is_reported(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + WEB_DB, ("vm.web.host=hv3",)) == [
        ('vm "web"', 'host "hv3" is not declared', HINT_NONE)
    ]


def test_a_host_with_a_problem_is_still_declared(tmp_path: Path) -> None:
    """Only the host's own problem is reported, not every VM that names it."""
    text = HEAD + '[hosts.hv2]\nuri = "hv2"\n' + WEB_DB + 'host = "hv2"\n'
    assert [place for place, _, _ in problems(tmp_path, text)] == ["hosts.hv2"]


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("hv_2", f'host "hv_2" {HOST_NAME_RULE}'),
        ("-hv2", f'host "-hv2" {HOST_NAME_RULE}'),
        ("", f'host "" {HOST_NAME_RULE}'),
        ("a" * 64, f'host "{"a" * 64}" {HOST_NAME_RULE}'),
    ],
)
def test_a_vm_host_that_is_not_a_name(tmp_path: Path, host: str, message: str) -> None:
    text = HEAD + WEB_DB + f'host = "{host}"\n'
    assert problems(tmp_path, text) == [('vm "db"', message, "")]


def test_a_vm_host_that_is_not_a_string(tmp_path: Path) -> None:
    text = HEAD + WEB_DB + "host = 2\n"
    assert problems(tmp_path, text) == [('vm "db"', "host 2 is not a string", "")]


@pytest.mark.parametrize(
    ("table", "place", "message"),
    [
        ('[hosts."hv_2"]', 'hosts."hv_2"', f'name "hv_2" {HOST_NAME_RULE}'),
        ('[hosts."hv 2"]', 'hosts."hv 2"', f'name "hv 2" {HOST_NAME_RULE}'),
        ("[hosts.-hv2]", 'hosts."-hv2"', f'name "-hv2" {HOST_NAME_RULE}'),
        (
            '[hosts."hv\\t2"]',
            'hosts."hv\\t2"',
            'name "hv\\t2" contains a control character (U+0009 CHARACTER TABULATION)',
        ),
    ],
)
def test_a_host_name_that_is_not_a_name(
    tmp_path: Path, table: str, place: str, message: str
) -> None:
    text = HEAD + f'{table}\nuri = "qemu:///system"\n' + WEB_DB
    assert problems(tmp_path, text) == [(place, message, "")]


URI_RULE = "is not a libvirt URI like qemu:///system or qemu+ssh://root@host/system"
POOL_RULE = (
    "is not a storage pool name (letters, digits, '_', '.' or '-', starting with a letter or digit)"
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('pool = "lab"', "uri is required"),
        ('uri = "hv2.example"', f'uri "hv2.example" {URI_RULE}'),
        ('uri = "qemu+ssh:/hv2/system"', f'uri "qemu+ssh:/hv2/system" {URI_RULE}'),
        ('uri = "QEMU:///system"', f'uri "QEMU:///system" {URI_RULE}'),
        ('uri = "+ssh://hv2/system"', f'uri "+ssh://hv2/system" {URI_RULE}'),
        ('uri = "qemu+ssh://hv2 /system"', f'uri "qemu+ssh://hv2 /system" {URI_RULE}'),
        ('uri = ""', f'uri "" {URI_RULE}'),
        ("uri = 1", "uri 1 is not a string"),
        (
            'uri = "qemu:///system\\n"',
            'uri "qemu:///system\\n" contains a control character (U+000A LINE FEED)',
        ),
        ('uri = "qemu:///system"\npool = "my pool"', f'pool "my pool" {POOL_RULE}'),
        ('uri = "qemu:///system"\npool = "-lab"', f'pool "-lab" {POOL_RULE}'),
        ('uri = "qemu:///system"\npool = ""', f'pool "" {POOL_RULE}'),
        ('uri = "qemu:///system"\npool = "lab/x"', f'pool "lab/x" {POOL_RULE}'),
    ],
)
def test_a_host_table_with_a_bad_value(tmp_path: Path, body: str, message: str) -> None:
    text = HEAD + f"[hosts.hv2]\n{body}\n" + WEB_DB
    assert problems(tmp_path, text) == [("hosts.hv2", message, "")]


def test_an_unknown_key_of_a_host(tmp_path: Path) -> None:
    text = HEAD + HV2 + 'pol = "lab"\nuser = "root"\n' + WEB_DB
    assert problems(tmp_path, text) == [
        ("hosts.hv2", 'unknown key "pol"', 'did you mean "pool"?'),
        ("hosts.hv2", 'unknown key "user"', ""),
    ]


def test_a_host_that_is_not_a_table(tmp_path: Path) -> None:
    text = HEAD + '[hosts]\nhv2 = "qemu:///system"\n' + WEB_DB
    assert problems(tmp_path, text) == [("hosts.hv2", "must be a table ([hosts.hv2])", "")]


def test_hosts_that_is_not_a_table(tmp_path: Path) -> None:
    text = 'hosts = "hv2"\n' + HEAD + WEB_DB
    assert problems(tmp_path, text) == [("hosts", 'hosts must be a table, not "hv2"', "")]


def test_every_host_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        HEAD
        + '[hosts.hv2]\nuri = "x"\npool = "a b"\n'
        + '[hosts."b_c"]\nuri = "qemu:///system"\n'
        + '[hosts.hv4]\npool = "lab"\n'
        + WEB_DB
        + 'host = "hv3"\n'
    )
    assert [(place, message) for place, message, _ in problems(tmp_path, text)] == [
        ("hosts.hv2", f'uri "x" {URI_RULE}'),
        ("hosts.hv2", f'pool "a b" {POOL_RULE}'),
        ('hosts."b_c"', f'name "b_c" {HOST_NAME_RULE}'),
        ("hosts.hv4", "uri is required"),
        ('vm "db"', 'host "hv3" is not declared'),
    ]


# ---------------------------------------------------------------------- the plan


def placed_plan(tmp_path: Path, network: str = "", extra: str = "") -> Plan:
    """web and db on local, w1 and w2 on hv2, cache on hv4, in this order."""
    head = HEAD if not network else HEAD.replace('type = "bridge"\nsource = "br0"\n', network)
    text = (
        head
        + HV2
        + '[hosts.hv4]\nuri = "qemu+tcp://198.51.100.4/system"\npool = "lab"\n'
        + extra
        + """
[[vm]]
name = "web"
ip = "198.51.100.10"

[[vm]]
name = "w{n}"
count = 2
ip = "198.51.100.11"
host = "hv2"

[[vm]]
name = "cache"
ip = "198.51.100.30"
host = "hv4"

[[vm]]
name = "db"
ip = "198.51.100.20"
"""
    )
    return make_plan(load(tmp_path, text))


def test_placement_groups_vms_by_host_in_order_of_first_use(tmp_path: Path) -> None:
    plan = placed_plan(tmp_path)
    placement = plan.placement()
    assert list(placement) == ["local", "hv2", "hv4"]
    assert {host: [vm.name for vm in vms] for host, vms in placement.items()} == {
        "local": ["web", "db"],
        "hv2": ["w1", "w2"],
        "hv4": ["cache"],
    }
    assert all(isinstance(vms, tuple) for vms in placement.values())


def test_placement_leaves_out_hosts_no_vm_uses(tmp_path: Path) -> None:
    plan = make_plan(load(tmp_path, HEAD + HV2 + WEB_DB))
    assert [host.name for host in plan.hosts] == ["hv2"]
    assert list(plan.placement()) == ["local"]


def test_plan_host_gives_declared_hosts_and_an_undeclared_local(tmp_path: Path) -> None:
    plan = placed_plan(tmp_path)
    assert plan.host("hv2") == HostPlan("hv2", "qemu+ssh://root@hv2.example/system", "default")
    assert plan.host("hv4") == HostPlan("hv4", "qemu+tcp://198.51.100.4/system", "lab")
    assert plan.host("local") == HostPlan("local", None, "default")
    with pytest.raises(KeyError):
        plan.host("hv3")
    with pytest.raises(KeyError):
        plan.host("HV2")


def test_plan_host_gives_a_declared_local(tmp_path: Path) -> None:
    plan = placed_plan(tmp_path, extra='[hosts.local]\nuri = "qemu:///system"\npool = "fast"\n')
    assert plan.host("local") == HostPlan("local", "qemu:///system", "fast")
    assert [host.name for host in plan.hosts] == ["hv2", "hv4", "local"]


def test_a_plan_with_hosts_round_trips_through_json(tmp_path: Path) -> None:
    plan = placed_plan(tmp_path)
    again = Plan.from_json(plan.to_json())
    assert (again, again.to_json()) == (plan, plan.to_json())
    assert [host.name for host in again.hosts] == ["hv2", "hv4"]
    assert [vm.host for vm in again.vms] == ["local", "hv2", "hv2", "hv4", "local"]


def test_a_plan_written_before_hosts_reads_as_all_local(tmp_path: Path) -> None:
    data = to_data(placed_plan(tmp_path))
    del data["hosts"]
    for vm in data["vms"]:
        del vm["host"]
    old = Plan.from_data(data)
    assert old.hosts == ()
    assert {vm.host for vm in old.vms} == {LOCAL_HOST}


def test_vm_plans_made_without_a_host_are_local(tmp_path: Path) -> None:
    vm = make_plan(load(tmp_path, HEAD + WEB_DB)).vms[0]
    fields = {f.name: getattr(vm, f.name) for f in dataclasses.fields(vm) if f.name != "host"}
    assert type(vm)(**fields).host == LOCAL_HOST


# -------------------------------------------------------------------- warnings

NETWORK = 'type = "network"\nsource = "labnet"\n'
CREATE = 'type = "network"\nsource = "labnet"\ncreate = true\n'
USER = 'type = "user"\n'
LAN = (
    'VMs on different hosts can only reach each other over a bridged LAN (network.type = "bridge")'
)


def test_no_warning_on_a_bridge(tmp_path: Path) -> None:
    plan = placed_plan(tmp_path)
    assert plan.network.type is NetType.BRIDGE
    assert placement_warnings(plan) == []


@pytest.mark.parametrize("network", [NETWORK, CREATE, USER])
def test_no_warning_on_one_host(tmp_path: Path, network: str) -> None:
    head = HEAD.replace('type = "bridge"\nsource = "br0"\n', network)
    assert placement_warnings(make_plan(load(tmp_path, head + WEB_DB))) == []
    # One host other than local is one host too.
    on_hv2 = load(tmp_path, head + HV2 + '[defaults]\nhost = "hv2"\n' + WEB_DB)
    assert placement_warnings(make_plan(on_hv2)) == []


@pytest.mark.parametrize(
    ("network", "detail"),
    [
        (
            NETWORK,
            'libvirt network "labnet" is each host\'s own '
            "(an isolated network.create network exists once per host)",
        ),
        (
            CREATE,
            'network.create makes the isolated network "labnet" once per host, '
            "and the copies are not connected",
        ),
        (USER, "user-mode networking gives each VM a network of its own"),
    ],
)
def test_a_warning_when_hosts_share_no_bridge(tmp_path: Path, network: str, detail: str) -> None:
    plan = placed_plan(tmp_path, network)
    assert placement_warnings(plan) == [
        f"the lab's VMs are on 3 hosts (local, hv2, hv4): {LAN}; {detail}"
    ]


def test_plan_shows_each_vm_host_and_validate_warns_about_the_network(
    tmp_path: Path, run_cli: RunCli
) -> None:
    from labs import write_lab

    profile = write_lab(
        tmp_path,
        network={"type": "network", "source": "lab-net", "create": True,
                 "subnet": "192.0.2.0/24"},
        vms=({"name": "web", "ip": "192.0.2.10"},
             {"name": "db", "ip": "192.0.2.20", "host": "hv2"}),
        tables={"hosts": {"hv2": {"uri": "qemu+ssh://root@hv2.example/system"}}},
    )  # fmt: skip
    shown = run_cli("plan", profile)
    assert shown.code == 0, shown.err
    header, web, db = shown.out.splitlines()[1:4]
    assert header.split()[-1] == "HOST"
    assert web.split()[-1] == "local" and db.split()[-1] == "hv2"
    assert "VMs on different hosts can only reach each other over a bridged LAN" in shown.err
    checked = run_cli("validate", profile, "--no-base")
    assert checked.code == 0 and "bridged LAN" in checked.err
    # One host: no column, no warning.
    alone = write_lab(tmp_path, vms=({"name": "web", "ip": "192.0.2.10"},), file="one.toml")
    single = run_cli("plan", alone)
    assert single.out.splitlines()[1].split()[-1] == "DISK" and "bridged LAN" not in single.err
