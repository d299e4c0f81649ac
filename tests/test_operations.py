"""Disk operations as data: summaries derived from their fields, secrets kept out of
them, and the hosts-only property that a hosts-only refresh selects by. Pure: no
appliance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from labs import BRIDGE, debian_facts, write_lab
from vmbuild.guest.diskops import (
    AuthorizedKeys,
    EnsureUser,
    HostKeys,
    MachineId,
    Operation,
    PasswordHash,
    RemovePaths,
    WriteFile,
    ordered,
)
from vmbuild.model.facts import NetStack
from vmbuild.model.hosts import hosts_file
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import load_profile
from vmbuild.plugins.manager import Plugins, load_plugins
from vmbuild_plugins import identity, network

SECRET = "$6$salt$0123456789abcdefghijklmnopqrstuvwxyz"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C a@b"


facts = debian_facts


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, Plugins]:
    path = write_lab(
        tmp_path_factory.mktemp("ops"),
        name="ops",
        network={**BRIDGE, "dns": ["192.0.2.1"]},
        vms=({"name": "web", "ip": "192.0.2.10"}, {"name": "db", "ip": "192.0.2.11"}),
        tables={
            "root": {"ssh_authorized_keys": [KEY], "password_hash": SECRET},
            "user": {"name": "lab", "sudo": True},
        },
    )
    profile = load_profile(path)
    plugins = load_plugins(profile)
    return make_plan(profile, plugins), plugins


# ------------------------------------------------------------ generic summaries


@dataclass(frozen=True)
class Fill(Operation):
    path: str = ""
    size: int = 32
    sparse: bool = False
    kind: ClassVar[str] = "fill"


@dataclass(frozen=True)
class Touch(Operation):
    """No kind of its own: the class's name stands in for it."""


@dataclass(frozen=True)
class Token(Operation):
    user: str = ""
    token: str = field(default="", repr=False)
    payload: str = ""
    file_mode: int = 0o600
    kind: ClassVar[str] = "token"


def test_the_generic_summary_is_the_kind_the_subject_and_what_differs() -> None:
    assert Fill(path="/blob").summary == "fill /blob"
    assert Fill(path="/blob", size=64, sparse=True).summary == "fill /blob (size 64, sparse)"
    assert Touch().summary == "Touch"


def test_the_generic_summary_keeps_secrets_and_content_out() -> None:
    op = Token(user="ops", token="s3cret", payload="line\n" * 30, file_mode=0o640)
    assert op.summary == "token ops (payload 150 bytes, file mode 0640)"
    assert "s3cret" not in repr(op)
    data = op.to_data()
    assert "token" not in data and "s3cret" not in str(data)
    assert data == {
        "op": "token",
        "summary": op.summary,
        "user": "ops",
        "payload": "line\n" * 30,
        "file_mode": 0o640,
        "hosts_only": False,
    }


def test_a_subclass_may_word_its_own_summary() -> None:
    @dataclass(frozen=True)
    class Motd(WriteFile):
        path: str = "/etc/motd"

        def describe(self) -> str:
            return f"Greeting with {self.content.strip()!r}"

    class Loud(WriteFile):
        @property
        def summary(self) -> str:
            return f"WRITING {self.path.upper()}"

    assert Motd(content="hello\n").summary == "Greeting with 'hello'"
    assert Motd(content="hello\n").to_data()["summary"] == "Greeting with 'hello'"
    assert Loud(path="/etc/motd").summary == "WRITING /ETC/MOTD"


def test_a_summary_cannot_disagree_with_its_path() -> None:
    """There is no summary argument: the line is the fields' own."""
    op = WriteFile(path="/etc/lab-note", content="web\n")
    assert op.summary == "Writing /etc/lab-note (mode 0644)"
    assert op.to_data()["summary"] == op.summary
    with pytest.raises(TypeError):
        WriteFile("Writing /etc/motd", path="/etc/lab-note")  # type: ignore[misc]


# ------------------------------------------------------- built-in summaries


@pytest.mark.parametrize(
    ("operation", "summary"),
    [
        (WriteFile(path="/etc/hostname", content="web\n"), "Writing /etc/hostname (mode 0644)"),
        (
            WriteFile(path="/home/lab/.note", content="x", mode=0o600, owner="lab"),
            "Writing /home/lab/.note (mode 0600, owner lab)",
        ),
        (
            WriteFile(path="/etc/resolv.conf", content="", skip_if_link=True),
            "Writing /etc/resolv.conf (mode 0644) unless it is a symbolic link",
        ),
        (RemovePaths(patterns=("/etc/netplan/*.yaml",)), "Removing /etc/netplan/*.yaml"),
        (
            RemovePaths(patterns=("/a", "/b", "/c", "/d", "/e")),
            "Removing /a, /b, /c and 2 more",
        ),
        (MachineId(value="0123456789abcdef"), "Setting the machine-id: 0123456789abcdef"),
        (HostKeys(types=("ed25519", "rsa")), "Installing new SSH host keys: ed25519, rsa"),
        (AuthorizedKeys(user="lab", keys=("k1", "k2")), "Setting 2 authorized SSH keys for lab"),
        (EnsureUser(user="lab", sudo=True), "Adding the user lab with sudo"),
        (EnsureUser(user="audit"), "Adding the user audit"),
        (PasswordHash(user="root", password_hash=SECRET), "Setting the password of root"),
    ],
)
def test_built_in_summaries_follow_their_fields(operation: Operation, summary: str) -> None:
    assert operation.summary == summary
    assert operation.to_data()["summary"] == summary


def test_a_password_hash_is_in_no_summary_repr_or_plan() -> None:
    op = PasswordHash(user="root", password_hash=SECRET)
    assert SECRET not in op.summary and SECRET not in repr(op)
    assert op.to_data() == {
        "op": "password",
        "summary": "Setting the password of root",
        "user": "root",
        "hosts_only": False,
    }


@pytest.mark.parametrize("stack", [s for s in NetStack if s is not NetStack.UNKNOWN])
def test_no_built_in_operation_carries_its_own_wording(
    lab: tuple[Plan, Plugins], stack: NetStack
) -> None:
    plan, _plugins = lab
    for vm in plan.vms:
        ops = [
            *identity.vmbuild_disk_operations(plan, vm, facts(stack)),
            *network.vmbuild_disk_operations(plan, vm, facts(stack)),
        ]
        assert ops
        for op in ops:
            assert "\n" not in op.summary
            if isinstance(op, identity.Hostname):
                assert op.path == "/etc/hostname"
                assert op.summary == f"Setting the hostname: {vm.hostname}"
            elif isinstance(op, WriteFile):
                assert op.summary.startswith(f"Writing {op.path} ("), op.summary
            elif isinstance(op, RemovePaths):
                assert op.patterns[0] in op.summary, op.summary


def test_the_identity_summaries_read_as_before(lab: tuple[Plan, Plugins]) -> None:
    """The lines that tests of whole builds look for (test_identity, test_guest_safety)."""
    plan, plugins = lab
    vm = plan.vms[0]
    ops = ordered(plugins.disk_operations(plan, vm, facts(NetStack.NETPLAN)))
    summaries = [op.summary for op in ops]
    assert summaries[0].startswith("Removing the golden image's leftovers: ")
    assert "Setting the hostname: web" in summaries
    assert any(s.startswith("Installing new SSH host keys: ") for s in summaries)
    assert summaries[-1] == "Setting the password of root"
    leftovers = next(op for op in ops if isinstance(op, identity.Leftovers))
    assert leftovers.patterns == identity.LEFTOVERS
    assert leftovers.kind == "remove"


# ------------------------------------------------------------------ hosts only


def test_only_the_hosts_table_is_marked_hosts_only(lab: tuple[Plan, Plugins]) -> None:
    plan, plugins = lab
    for stack in (NetStack.IFUPDOWN, NetStack.NETWORKMANAGER):
        for vm in plan.vms:
            ops = plugins.disk_operations(plan, vm, facts(stack))
            marked = [op for op in ops if op.hosts_only]
            assert len(marked) == 1
            (hosts,) = marked
            assert isinstance(hosts, WriteFile)
            assert hosts.path == "/etc/hosts"
            assert hosts.content == hosts_file(plan)
            assert hosts.to_data()["hosts_only"] is True
            assert all(op.to_data()["hosts_only"] is False for op in ops if op is not hosts)


def test_hosts_only_is_declared_not_guessed_from_a_path() -> None:
    """What a refresh re-runs follows the declaration: another write of /etc/hosts is
    not one, and any operation of a plugin may be."""
    assert not WriteFile(path="/etc/hosts", content="127.0.0.1 localhost\n").hosts_only
    assert Fill(path="/etc/hosts.allow", hosts_only=True).hosts_only
    assert Operation.__dataclass_fields__["hosts_only"].kw_only
    # hosts_only is keyword-only: positional arguments are the operation's own fields.
    assert WriteFile("/etc/x").path == "/etc/x"


def test_the_plugin_examples_are_derived_too(lab: tuple[Plan, Plugins]) -> None:
    from vmbuild_plugins.examples import extra_user, motd

    plan, _plugins = lab
    vm = plan.vms[0]
    ops = [
        *motd.vmbuild_disk_operations(plan, vm, facts()),
        *extra_user.vmbuild_disk_operations(plan, vm, facts()),
    ]
    assert [op.summary for op in ops] == [
        "Writing /etc/motd (mode 0644)",
        "Adding the user audit",
        f"Setting {len(extra_user.KEYS)} authorized SSH keys for audit",
    ]
    assert not any(op.hosts_only for op in ops)
