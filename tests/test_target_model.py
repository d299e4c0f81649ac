"""lab.target in the model: its default, its older spelling domain_type, and the MACs
the vmware target derives."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from vmbuild.model.plan import derive_mac, make_plan, vmware_static_mac
from vmbuild.model.profile import DomainType, Profile, Target, parse_profile

HEAD = """\
[lab]
name = "lab"
{lab}

[base]
image = "golden.qcow2"

[network]
type = "user"
subnet = "192.0.2.0/24"

[[vm]]
name = "node{{n}}"
count = 40
ip = "192.0.2.11"
"""


def load(lab: str = "") -> Profile:
    return parse_profile(tomllib.loads(HEAD.format(lab=lab)), Path("/srv/lab.toml"))


@pytest.mark.parametrize(
    ("lab", "target", "domain_type"),
    [
        ("", Target.LIBVIRT_KVM, DomainType.KVM),
        ('domain_type = "qemu"', Target.LIBVIRT_QEMU, DomainType.QEMU),
        ('target = "libvirt-qemu"', Target.LIBVIRT_QEMU, DomainType.QEMU),
        ('target = "libvirt-kvm"\ndomain_type = "kvm"', Target.LIBVIRT_KVM, DomainType.KVM),
        ('target = "hyperv"', Target.HYPERV, DomainType.KVM),
        ('target = "xen-pv"\ndomain_type = "qemu"', Target.XEN_PV, DomainType.QEMU),
    ],
)
def test_target_and_domain_type(lab: str, target: Target, domain_type: DomainType) -> None:
    profile = load(lab)
    plan = make_plan(profile)
    assert (profile.target, profile.domain_type) == (target, domain_type)
    assert (plan.target, plan.domain_type) == (target, domain_type)


def test_the_vmware_target_derives_macs_in_vmwares_static_range() -> None:
    vmware = make_plan(load('target = "vmware"'))
    kvm = make_plan(load())
    macs = [vm.mac for vm in vmware.vms]
    assert len(set(macs)) == len(macs) == 40
    assert all(vmware_static_mac(mac) for mac in macs), macs
    assert not any(vmware_static_mac(vm.mac) for vm in kvm.vms)
    assert all(vm.mac.startswith("52:54:00:") for vm in kvm.vms)
    # The same lab and VM give the same MAC on every build.
    assert macs == [vm.mac for vm in make_plan(load('target = "vmware"')).vms]


@pytest.mark.parametrize(
    ("mac", "static"),
    [
        ("00:50:56:00:00:00", True),
        ("00:50:56:3f:ff:ff", True),
        ("00:50:56:40:00:00", False),
        ("00:50:56:ff:12:34", False),
        ("52:54:00:00:00:01", False),
        ("00:0C:29:00:00:01", False),
    ],
)
def test_vmware_static_range(mac: str, static: bool) -> None:
    assert vmware_static_mac(mac) is static


def test_derived_vmware_macs_cover_the_fourth_octet_range() -> None:
    fourth = {int(derive_mac("s", f"vm{i}", target=Target.VMWARE)[9:11], 16) for i in range(500)}
    assert max(fourth) <= 0x3F
    assert len(fourth) > 32
