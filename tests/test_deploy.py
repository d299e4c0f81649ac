"""`vmbuild deploy` and the lab's lifecycle on two real libvirt hosts: this machine's
libvirtd (qemu:///system) and a second, independent one that the tests start in
namespaces of its own and reach only over qemu+tcp (tests/secondhost.py). Its pool
is a folder this machine's filesystem does not have: what reaches it went through
libvirt's storage API.

The lab is built once on the session's small golden image (one appliance launch):
web on the local host, db on the second. Its guests do not boot (the image is not
bootable), which is all these tests need: QEMU runs them, libvirt reports them.
Every domain, volume and network made here is removed again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli
from labs import write_lab
from libvirthelp import URI, virsh
from registry import LocalRegistry, registry_fixture  # noqa: F401 (the fixture registry)
from secondhost import SecondHost, second_host_fixture  # noqa: F401 (the fixture)
from vmbuild.deploy import names, volumes

pytestmark = [pytest.mark.libvirt, pytest.mark.guestfs]


@dataclass(frozen=True)
class DeployLab:
    profile: Path
    bundle: Path
    name: str
    web: str
    db: str
    network: str
    hv2: SecondHost
    golden_sha256: str
    args: tuple[str, ...]

    def deploy(self, run_cli: RunCli, *extra: str) -> Any:
        return run_cli("deploy", self.bundle, *self.args, *extra)


@pytest.fixture(scope="module")
def deploy_lab(os_image: Path, libvirtd: None, second_host: SecondHost) -> Iterator[DeployLab]:
    from vmbuild.cli import main

    tag = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="vmbuild-deploy-", dir="/var/tmp"))
    work.chmod(0o755)
    golden = work / "golden.qcow2"
    shutil.copyfile(os_image, golden)
    lab, web, db, network = f"dl{tag}", f"dl{tag}-web", f"dl{tag}-db", f"vmbuild-dl{tag}"
    profile = write_lab(
        work,
        golden,
        name=lab,
        lab={"domain_type": "qemu"},
        network={"type": "network", "source": network, "create": True,
                 "subnet": "192.0.2.0/24", "gateway": "192.0.2.1"},
        vms=({"name": web, "hostname": "web", "ip": "192.0.2.10"},
             {"name": db, "hostname": "db", "ip": "192.0.2.20", "host": "hv2"}),
        tables={"hosts": {"hv2": {"uri": second_host.uri}}},
    )  # fmt: skip
    assert main(["build", str(profile), "-q", "--output", str(work / "out")]) == 0
    bundle = work / "out" / lab
    manifest = json.loads((bundle / "manifest.json").read_text())
    args = ("--connect", URI, "--allow-unsigned", "-q")
    found = DeployLab(
        profile, bundle, lab, web, db, network, second_host, manifest["base"]["sha256"], args
    )
    try:
        yield found
    finally:
        main(["destroy", str(bundle), *args])
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def fresh(deploy_lab: DeployLab, run_cli: RunCli) -> Iterator[DeployLab]:
    """The lab not deployed anywhere, before and after the test."""
    assert run_cli("destroy", deploy_lab.bundle, *deploy_lab.args).code == 0
    yield deploy_lab
    run_cli("destroy", deploy_lab.bundle, *deploy_lab.args)


def _domains(lab: DeployLab) -> tuple[set[str], set[str]]:
    local = set(virsh("list", "--all", "--name").stdout.split())
    remote = set(lab.hv2.virsh("list", "--all", "--name").stdout.split())
    return local, remote


def _volumes(lab: DeployLab) -> tuple[set[str], set[str]]:
    def listed(out: str) -> set[str]:
        return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}

    local = listed(virsh("vol-list", "default").stdout)
    remote = listed(lab.hv2.virsh("vol-list", lab.hv2.pool).stdout)
    return local, remote


def _remote_path(lab: DeployLab, volume: str) -> str:
    return lab.hv2.virsh("vol-path", "--pool", lab.hv2.pool, volume).stdout.strip()


def _owner(xml: str) -> names.Owner:
    owner = names.read_owner(xml)
    assert owner is not None
    return owner


def test_deploy_places_each_vm_on_its_host_and_a_second_deploy_sends_nothing(
    fresh: DeployLab, run_cli: RunCli
) -> None:
    lab = fresh
    started = time.monotonic()
    result = lab.deploy(run_cli, "--json")
    print(f"first deploy: {time.monotonic() - started:.1f}s")
    assert result.code == 0, result.err
    report = {host["host"]: host for host in json.loads(result.out)["hosts"]}
    assert report["local"]["vms"] == {lab.web: "create"}
    assert report["hv2"]["vms"] == {lab.db: "create"}
    local, remote = _domains(lab)
    assert lab.web in local and lab.db not in local
    assert lab.db in remote and lab.web not in remote

    # The golden image reached the second host's pool once, named by its digest,
    # through the storage API: the path it has there is not this machine's file of
    # that name (this host got its own copy, in its own pool, for web).
    golden = names.golden_volume(lab.golden_sha256, "qcow2")
    _, remote_volumes = _volumes(lab)
    assert {golden, names.marker_volume(golden)} <= remote_volumes
    golden_path = _remote_path(lab, golden)
    theirs = lab.hv2.inside(golden_path).stat()
    if Path(golden_path).exists():
        ours = Path(golden_path).stat()
        assert (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino)
    summed = lab.hv2.run_inside("sha256sum", golden_path).stdout.split()[0]
    assert summed == lab.golden_sha256

    # db's domain on hv2 names its volumes there, its overlay's backing file is the
    # golden volume, and its metadata says whose it is.
    xml = lab.hv2.virsh("dumpxml", "--inactive", lab.db).stdout
    owner = _owner(xml)
    assert (owner.lab, owner.vm, owner.golden) == (lab.name, lab.db, golden)
    sources = [s.get("file") for s in ET.fromstring(xml).iter("source") if s.get("file")]
    assert _remote_path(lab, owner.disk) in sources and golden_path in sources
    assert not any(str(lab.bundle) in source for source in sources)
    info = json.loads(
        lab.hv2.run_inside(
            "qemu-img", "info", "-U", "--output=json", _remote_path(lab, owner.disk)
        ).stdout
    )
    assert info["backing-filename"] == golden_path
    assert info["backing-filename-format"] == "qcow2"
    assert report["hv2"]["sent_bytes"] > 0

    # Again: nothing sent, nothing redefined, on either host.
    started = time.monotonic()
    again = lab.deploy(run_cli, "--json")
    print(f"second deploy: {time.monotonic() - started:.2f}s")
    assert again.code == 0, again.err
    for host in json.loads(again.out)["hosts"]:
        assert host["sent_bytes"] == 0 and host["sent_volumes"] == []
        assert set(host["vms"].values()) == {"keep"}

    status = run_cli("status", lab.bundle, *lab.args, "--json")
    assert status.code == 0, status.err
    rows = {row["vm"]: row for row in json.loads(status.out)["vms"]}
    assert rows[lab.web]["host"] == "local" and rows[lab.db]["host"] == "hv2"
    assert {row["state"] for row in rows.values()} == {"shut off"}
    assert rows[lab.db]["ip"] == "192.0.2.20/24"
    assert rows[lab.db]["vnc"].endswith(":5902")


def test_a_changed_vm_is_redefined_alone(fresh: DeployLab, run_cli: RunCli) -> None:
    from vmbuild.cli import main

    lab = fresh
    assert lab.deploy(run_cli).code == 0
    out = lab.bundle.parent
    assert main(["build", str(lab.profile), "-q", "--output", str(out),
                 "--set", f"vm.{lab.db}.memory=768M"]) == 0  # fmt: skip
    try:
        result = lab.deploy(run_cli, "--json")
        assert result.code == 0, result.err
        report = {host["host"]: host for host in json.loads(result.out)["hosts"]}
        assert report["local"]["vms"] == {lab.web: "keep"}
        assert report["hv2"]["vms"] == {lab.db: "update"}
        # Its disk and seed did not change: only the domain was redefined.
        assert report["hv2"]["sent_bytes"] == 0
        xml = ET.fromstring(lab.hv2.virsh("dumpxml", "--inactive", lab.db).stdout)
        assert xml.findtext("memory") == str(768 * 1024)
    finally:
        assert main(["build", str(lab.profile), "-q", "--output", str(out)]) == 0


def _hand_made(lab: DeployLab, name: str, domain_uuid: str | None = None) -> str:
    """A domain defined by hand on the second host: not the lab's."""
    xml = f"""<domain type='qemu'><name>{name}</name>
      {f"<uuid>{domain_uuid}</uuid>" if domain_uuid else ""}
      <memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>
      <devices><graphics type='vnc' listen='127.0.0.1'/></devices></domain>"""
    path = Path(tempfile.mkstemp(suffix=".xml")[1])
    path.write_text(xml)
    try:
        lab.hv2.virsh("define", str(path))
    finally:
        path.unlink()
    return name


def test_domains_this_lab_did_not_deploy_are_never_touched(
    fresh: DeployLab, run_cli: RunCli
) -> None:
    lab = fresh
    _hand_made(lab, lab.db)
    try:
        refused = lab.deploy(run_cli)
        assert refused.code == 2
        assert f'host "hv2" ({lab.hv2.uri}), vm "{lab.db}"' in refused.err
        assert "was not deployed by this lab" in refused.err and "--replace" in refused.err
        assert "nothing was changed on any host" in refused.err
        local, _ = _domains(lab)
        assert lab.web not in local  # refused before anything was done anywhere
        assert names.read_owner(lab.hv2.virsh("dumpxml", lab.db).stdout) is None

        # Running, it is not replaced even with --replace.
        lab.hv2.virsh("start", lab.db)
        refused = lab.deploy(run_cli, "--replace")
        assert refused.code == 2 and "never touched, --replace or not" in refused.err
        assert lab.hv2.virsh("domstate", lab.db).stdout.strip() == "running"
        lab.hv2.virsh("destroy", lab.db)

        replaced = lab.deploy(run_cli, "--replace", "--json")
        assert replaced.code == 0, replaced.err
        hosts = {host["host"]: host for host in json.loads(replaced.out)["hosts"]}
        assert hosts["hv2"]["vms"] == {lab.db: "replace"}
        assert _owner(lab.hv2.virsh("dumpxml", lab.db).stdout).lab == lab.name
    finally:
        lab.hv2.virsh("destroy", lab.db, check=False)

    # A running domain of the lab that would change is refused too.
    lab.hv2.virsh("start", lab.db)
    from vmbuild.cli import main

    out = lab.bundle.parent
    assert main(["build", str(lab.profile), "-q", "--output", str(out),
                 "--set", f"vm.{lab.db}.vcpus=1"]) == 0  # fmt: skip
    try:
        refused = lab.deploy(run_cli)
        assert refused.code == 2 and "is running, and deploying would change it" in refused.err
        assert "vmbuild down" in refused.err
    finally:
        assert main(["build", str(lab.profile), "-q", "--output", str(out)]) == 0


def _state(lab: DeployLab, vm: str) -> str:
    if vm == lab.db:
        return lab.hv2.virsh("domstate", vm).stdout.strip()
    return virsh("domstate", vm).stdout.strip()


def test_the_whole_lab_life_on_two_hosts(fresh: DeployLab, run_cli: RunCli) -> None:
    lab = fresh
    bystander = _hand_made(lab, f"{lab.name}-bystander")
    try:
        up = run_cli("up", lab.bundle, *lab.args)
        assert up.code == 0, up.err
        assert _state(lab, lab.web) == _state(lab, lab.db) == "running"
        assert run_cli("suspend", lab.bundle, lab.db, *lab.args).code == 0
        assert _state(lab, lab.db) == "paused" and _state(lab, lab.web) == "running"
        assert run_cli("resume", lab.bundle, *lab.args).code == 0
        assert _state(lab, lab.db) == "running"

        # reset: db's disk volume is written anew from the bundle.
        disk = _owner(lab.hv2.virsh("dumpxml", lab.db).stdout).disk
        path = _remote_path(lab, disk)
        built = lab.hv2.run_inside("sha256sum", path).stdout.split()[0]
        lab.hv2.virsh("destroy", lab.db)
        lab.hv2.run_inside("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 1M 64k", path)
        assert lab.hv2.run_inside("sha256sum", path).stdout.split()[0] != built
        reset = run_cli("reset", lab.bundle, lab.db, *lab.args)
        assert reset.code == 0, reset.err
        assert "disk restored" in reset.out
        assert lab.hv2.run_inside("sha256sum", path).stdout.split()[0] == built

        # These guests have no OS to answer ACPI: down waits, then --force.
        down = run_cli("down", lab.bundle, *lab.args, "--timeout", "2")
        assert down.code == 3 and "still running after 2s (--force powers it off)" in down.out
        down = run_cli("down", lab.bundle, *lab.args, "--timeout", "1", "--force")
        assert down.code == 0, down.out + down.err
        assert _state(lab, lab.web) == _state(lab, lab.db) == "shut off"

        destroyed = run_cli("destroy", lab.bundle, *lab.args)
        assert destroyed.code == 0, destroyed.err
        assert f"hv2: removed domain {lab.db}, volume {names.lab_prefix(lab.name)}" in destroyed.out
        local, remote = _domains(lab)
        assert lab.web not in local and lab.db not in remote
        assert bystander in remote  # what the lab did not make stays
        local_vols, remote_vols = _volumes(lab)
        assert not any(v.startswith(names.lab_prefix(lab.name)) for v in local_vols | remote_vols)
        golden = names.golden_volume(lab.golden_sha256, "qcow2")
        assert golden not in remote_vols
        for listing in (virsh("net-list", "--all", "--name"),
                        lab.hv2.virsh("net-list", "--all", "--name")):  # fmt: skip
            assert lab.network not in listing.stdout.split()
    finally:
        lab.hv2.virsh("undefine", bystander, check=False)


def test_a_host_that_dies_mid_deploy_is_named_and_a_rerun_finishes(
    fresh: DeployLab, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = fresh
    original = volumes.upload
    hits: list[str] = []

    def dying(host: Any, storage: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if host.name == "hv2" and name.startswith(names.lab_prefix(lab.name)) and not hits:
            hits.append(name)
            lab.hv2.stop_daemon()  # after the golden image went, before db's disk
        return original(host, storage, name, *args, **kwargs)

    monkeypatch.setattr(volumes, "upload", dying)
    try:
        failed = lab.deploy(run_cli, "--json")
    finally:
        lab.hv2.start_daemon()
    monkeypatch.setattr(volumes, "upload", original)
    assert hits and failed.code == 3
    assert 'host "hv2"' in failed.err and "run the deploy again" in failed.err
    local, remote = _domains(lab)
    assert lab.web in local  # the first host has the whole lab
    assert lab.db not in remote

    rerun = lab.deploy(run_cli, "--json")
    assert rerun.code == 0, rerun.err
    hosts = {host["host"]: host for host in json.loads(rerun.out)["hosts"]}
    assert hosts["local"]["vms"] == {lab.web: "keep"}
    assert hosts["hv2"]["vms"] == {lab.db: "create"}
    golden = names.golden_volume(lab.golden_sha256, "qcow2")
    assert golden not in hosts["hv2"]["sent_volumes"]  # it had arrived whole


def test_deploy_from_an_artifact_and_a_registry_names_its_digest(
    fresh: DeployLab,
    run_cli: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registry: LocalRegistry,
) -> None:
    lab = fresh
    monkeypatch.setenv("VMBUILD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(registry.write_auth(tmp_path / "docker").parent))
    layout = tmp_path / "layout"
    packed = run_cli("pack", lab.bundle, "-o", layout, "-q", "--json")
    assert packed.code == 0, packed.err
    result = run_cli("deploy", layout, *lab.args, "--json")
    assert result.code == 0, result.err
    digest = json.loads(result.out)["source"]
    index = json.loads((layout / "index.json").read_text())
    assert digest in {m["digest"] for m in index["manifests"]}
    assert _owner(lab.hv2.virsh("dumpxml", lab.db).stdout).source == digest
    again = run_cli("deploy", layout, *lab.args, "--json")
    assert again.code == 0
    assert all(h["sent_bytes"] == 0 for h in json.loads(again.out)["hosts"])

    # The same artifact through a registry: pulled into the cache, the same digest,
    # so the hosts already have it all.
    ref = registry.ref("deploy", lab.name)
    assert run_cli("push", layout, ref, "-q").code == 0
    pulled = run_cli("deploy", ref, *lab.args, "--json")
    assert pulled.code == 0, pulled.err
    assert json.loads(pulled.out)["source"] == digest
    assert all(h["sent_bytes"] == 0 for h in json.loads(pulled.out)["hosts"])
    status = run_cli("status", ref, *lab.args, "--json")
    assert {row["state"] for row in json.loads(status.out)["vms"]} == {"shut off"}


def test_a_pool_without_room_is_refused_before_anything_is_sent(
    fresh: DeployLab, run_cli: RunCli
) -> None:
    lab = fresh
    folder = "/srv/vmbuild-small-pool"
    lab.hv2.run_inside("sh", "-c", f"mkdir -p {folder} && mount -t tmpfs -o size=4m tmpfs {folder}")
    lab.hv2.virsh("pool-define-as", "small", "dir", "--target", folder)
    lab.hv2.virsh("pool-start", "small")
    try:
        refused = lab.deploy(run_cli, "--pool", "hv2=small")
        assert refused.code == 2, refused.err
        assert 'host "hv2"' in refused.err and 'storage pool "small" has' in refused.err
        assert "nothing was changed on any host" in refused.err
        listed = lab.hv2.virsh("vol-list", "small").stdout.splitlines()[2:]
        assert not [line for line in listed if line.strip()]
        local, remote = _domains(lab)
        assert lab.web not in local and lab.db not in remote
    finally:
        lab.hv2.virsh("pool-destroy", "small", check=False)
        lab.hv2.virsh("pool-undefine", "small", check=False)
        lab.hv2.run_inside("umount", folder)


def test_a_step_that_fails_on_a_host_is_undone_there(
    fresh: DeployLab, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """db's domain cannot be defined on hv2 (as when libvirt refuses its XML): the
    volumes and the network this run made there are removed again; the other host
    keeps its part, and the next deploy does the rest."""
    from vmbuild.deploy import deploy as deploy_module
    from vmbuild.errors import BuildError

    lab = fresh
    original = deploy_module._define

    def refusing(run: Any, want: Any) -> None:
        if run.job.name == "hv2":
            raise BuildError("defining the domain failed (injected)")
        original(run, want)

    monkeypatch.setattr(deploy_module, "_define", refusing)
    failed = lab.deploy(run_cli)
    monkeypatch.setattr(deploy_module, "_define", original)
    assert failed.code == 3, failed.err
    assert "(this run's work there undone)" in failed.err
    _, remote_volumes = _volumes(lab)
    assert not any(v.startswith(names.lab_prefix(lab.name)) for v in remote_volumes)
    assert names.golden_volume(lab.golden_sha256, "qcow2") not in remote_volumes
    assert lab.network not in lab.hv2.virsh("net-list", "--all", "--name").stdout.split()
    local, remote = _domains(lab)
    assert lab.web in local and lab.db not in remote
    again = lab.deploy(run_cli, "--json")
    assert again.code == 0, again.err


def test_a_bundle_file_changed_since_the_build_is_refused(
    fresh: DeployLab, run_cli: RunCli
) -> None:
    lab = fresh
    seed = lab.bundle / "vms" / lab.web / "seed.iso"
    built = seed.read_bytes()
    seed.write_bytes(built + b"\0")
    try:
        refused = lab.deploy(run_cli)
        assert refused.code == 2, refused.err
        assert f"vms/{lab.web}/seed.iso is not as built" in refused.err
        local, remote = _domains(lab)
        assert lab.web not in local and lab.db not in remote
    finally:
        seed.write_bytes(built)
