"""The generic JSON codec: real plans survive the round trip byte for byte, and data
that does not fit its dataclass is refused with the path to the field at fault."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from vmbuild.model.codec import DecodeError, from_data, to_data
from vmbuild.model.facts import GuestFacts, NetStack
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import load_profile
from vmbuild.plugins.manager import load_plugins

HERE = Path(__file__).parent
REPO = HERE.parent
PROFILES = sorted((REPO / "profiles").glob("*.toml")) + sorted(
    (HERE / "golden" / "cases").glob("*/profile.toml")
)
PLAN_FILES = sorted((HERE / "golden").rglob("plan.json"))

FACTS = GuestFacts(
    os_type="linux",
    distro="debian",
    product_name="Debian GNU/Linux 12 (bookworm)",
    major=12,
    minor=5,
    hostname="golden",
    network=NetStack.NETWORKD,
    init="systemd",
    cloud_init=True,
    mounts=(("/", "/dev/sda1"), ("/boot", "/dev/sda2")),
    filesystems=(("/dev/sda1", "ext4"), ("/dev/sda2", "vfat")),
)


def _plan(path: Path) -> Plan:
    profile = load_profile(path)
    return make_plan(profile, load_plugins(profile))


def _demo() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (HERE / "golden" / "profiles" / "demo" / "plan.json").read_text()
    )
    return data


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("path", PROFILES, ids=[str(p.relative_to(REPO)) for p in PROFILES])
def test_real_plans_round_trip(path: Path) -> None:
    plan = _plan(path)
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan
    assert again.to_json() == text
    assert from_data(Plan, to_data(plan)) == plan


@pytest.mark.parametrize("path", PROFILES, ids=[str(p.relative_to(REPO)) for p in PROFILES])
def test_inspected_plans_round_trip(path: Path) -> None:
    """What inspection adds (facts, operations) and plugins' extra data come back too."""
    plan = _plan(path)
    vms = tuple(
        dataclasses.replace(
            vm,
            operations=({"op": "write", "path": "/etc/hostname", "mode": 0o644},),
            extra={"motd": {"lines": ["one", "two"], "on": True}, "n": 1.5},
        )
        for vm in plan.vms
    )
    plan = dataclasses.replace(plan, guest=FACTS, vms=vms)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.guest == FACTS
    assert again.to_json() == plan.to_json()


@pytest.mark.parametrize("path", PLAN_FILES, ids=[str(p.relative_to(HERE)) for p in PLAN_FILES])
def test_golden_plan_files_decode_and_encode_byte_for_byte(path: Path) -> None:
    text = path.read_text()
    assert Plan.from_json(text).to_json() == text


def test_guest_facts_keep_their_json_shape() -> None:
    data = FACTS.to_data()
    assert data["network"] == "networkd"
    assert data["mounts"] == [["/", "/dev/sda1"], ["/boot", "/dev/sda2"]]
    assert list(data) == [field.name for field in dataclasses.fields(GuestFacts)]
    assert GuestFacts.from_data(json.loads(json.dumps(data))) == FACTS
    # Facts written before filesystems existed still read, with the default.
    del data["filesystems"]
    assert GuestFacts.from_data(data).filesystems == ()


def test_optional_fields_may_be_absent_or_null() -> None:
    data = _demo()
    data["guest"] = None
    del data["vms"][0]["operations"], data["vms"][0]["extra"], data["network"]["create"]
    plan = Plan.from_data(data)
    assert plan.guest is None
    assert plan.vms[0].operations == () and plan.vms[0].extra == {}
    assert plan.network.create is False


# ------------------------------------------------------------------ refusals


def _refused(data: Any) -> str:
    with pytest.raises(DecodeError) as info:
        Plan.from_data(data)
    return str(info.value)


def test_unknown_field_is_named() -> None:
    data = _demo()
    data["vms"][1]["disk"]["sparse"] = True
    assert _refused(data) == 'Plan.vms[1].disk: unknown field "sparse" in DiskPlan'


def test_missing_field_is_named() -> None:
    data = _demo()
    del data["network"]["subnet"]
    assert _refused(data) == 'Plan.network: missing field "subnet" of NetworkPlan'


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("vms", 0, "index"), "1", 'Plan.vms[0].index: expected int, got "1"'),
        (("vms", 0, "memory"), True, "Plan.vms[0].memory: expected int, got true"),
        (("vms", 0, "autostart"), 1, "Plan.vms[0].autostart: expected bool, got 1"),
        (("vms", 0, "name"), None, "Plan.vms[0].name: expected str, got null"),
        (
            ("vms", 1, "disk", "mode"),
            "overlayy",
            'Plan.vms[1].disk.mode: expected one of "overlay", "copy", got "overlayy"',
        ),
        (("network", "dns"), "192.0.2.1", 'Plan.network.dns: expected a list, got "192.0.2.1"'),
        (("network", "dns"), [53], "Plan.network.dns[0]: expected str, got 53"),
        (("vms", 0, "extra"), [], "Plan.vms[0].extra: expected an object, got a list"),
        (
            ("vms", 0, "operations"),
            ["op"],
            'Plan.vms[0].operations[0]: expected an object, got "op"',
        ),
        (("vms", 0, "vnc"), 5901, "Plan.vms[0].vnc: expected an object (VncPlan), got 5901"),
        (
            ("base", "golden"),
            "bookworm",
            'Plan.base.golden: expected an object (Golden), got "bookworm"',
        ),
        (("guest",), [], "Plan.guest: expected an object (GuestFacts), got a list"),
    ],
)
def test_wrong_type_names_the_field_path(
    where: tuple[str | int, ...], value: Any, message: str
) -> None:
    data = _demo()
    node: Any = data
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    assert _refused(data) == message


def test_guest_facts_refuse_a_mount_that_is_not_a_pair() -> None:
    data = FACTS.to_data()
    data["mounts"] = [["/"]]
    with pytest.raises(DecodeError) as info:
        GuestFacts.from_data(data)
    assert str(info.value) == "GuestFacts.mounts[0]: expected 2 items, got 1"
    assert info.value.path == "GuestFacts.mounts[0]"


@pytest.mark.parametrize("data", [{"format": 2}, {}, [], "plan"])
def test_unsupported_plan_format(data: Any) -> None:
    with pytest.raises(ValueError, match="unsupported plan format"):
        Plan.from_data(data)


def test_a_decode_error_is_a_value_error() -> None:
    """The build reads a previous bundle's plan.json and treats ValueError as "none"."""
    assert issubclass(DecodeError, ValueError)
    with pytest.raises(ValueError):
        Plan.from_json(json.dumps({**_demo(), "lab": 7}))


# ------------------------------------------------------------------ the types it reads


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Inner:
    address: ipaddress.IPv4Address
    net: ipaddress.IPv4Network
    id: uuid.UUID


@dataclasses.dataclass(frozen=True)
class Sample:
    inner: Inner
    colours: tuple[Colour, ...]
    pair: tuple[int, str]
    counts: dict[str, int]
    names: list[str]
    ratio: float
    anything: Any
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    maybe: Inner | None = None
    derived: int = dataclasses.field(default=0, init=False)


SAMPLE = Sample(
    inner=Inner(
        ipaddress.IPv4Address("192.0.2.1"),
        ipaddress.IPv4Network("192.0.2.0/24"),
        uuid.UUID("6f1c1a3e-2b4d-4c5e-8f90-123456789abc"),
    ),
    colours=(Colour.RED, Colour.BLUE),
    pair=(1, "one"),
    counts={"a": 1},
    names=["x"],
    ratio=2,
    anything={"free": [1, "form"]},
    labels={"k": "v"},
)


def test_every_kind_of_field_round_trips() -> None:
    data = to_data(SAMPLE)
    assert data["inner"] == {
        "address": "192.0.2.1",
        "net": "192.0.2.0/24",
        "id": "6f1c1a3e-2b4d-4c5e-8f90-123456789abc",
    }
    assert data["colours"] == ["red", "blue"] and data["pair"] == [1, "one"]
    assert data["maybe"] is None and data["derived"] == 0
    del data["derived"]  # not an argument of Sample(): written, never read
    assert from_data(Sample, json.loads(json.dumps(data))) == SAMPLE


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "inner",
            {"address": "192.0.2.300", "net": "192.0.2.0/24", "id": str(uuid.UUID(int=1))},
            'Sample.inner.address: "192.0.2.300" is not a valid IPv4Address',
        ),
        ("colours", ["green"], 'Sample.colours[0]: expected one of "red", "blue", got "green"'),
        ("pair", [1, 2], "Sample.pair[1]: expected str, got 2"),
        ("pair", [1], "Sample.pair: expected 2 items, got 1"),
        ("counts", {"a": "1"}, 'Sample.counts["a"]: expected int, got "1"'),
        ("names", "x", 'Sample.names: expected a list, got "x"'),
        ("ratio", "2", 'Sample.ratio: expected float, got "2"'),
        ("maybe", 3, "Sample.maybe: expected an object (Inner), got 3"),
        ("derived", 1, 'Sample: unknown field "derived" in Sample'),
    ],
)
def test_sample_refusals(field: str, value: Any, message: str) -> None:
    data = to_data(SAMPLE)
    del data["derived"]
    data[field] = value
    with pytest.raises(DecodeError) as info:
        from_data(Sample, data)
    assert str(info.value) == message


def test_a_type_the_codec_does_not_know_is_a_programming_error() -> None:
    @dataclasses.dataclass
    class Odd:
        items: frozenset[int]

    with pytest.raises(TypeError, match="cannot read the type"):
        from_data(Odd, {"items": [1]})
