"""The boot tier: the demo lab, built on a real Debian golden image, defined and
started on a real libvirtd, boots into machines with the identity vmbuild gave them.

The lab runs under plain QEMU (domain type ``qemu``: TCG, as KVM may not work) on the
isolated libvirt network its own define.sh creates (the demo's ``create = true``,
under a name unique to the run): no uplink and no host address, the VMs use
documentation addresses (192.0.2.0/24) and no packet leaves the machine. Everything
is asked from inside the running guests through the QEMU guest agent, once through
``vmbuild check`` and once by the test itself with raw agent commands, so the check
is not its own only witness. Every domain, network and file made here is removed
again, also when a test fails.
"""

from __future__ import annotations

import base64
import json
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from debiangolden import Built
from guestimages import read_guest_files
from libvirthelp import BOOT_TIER, URI, define, virsh
from registry import LocalRegistry, registry_fixture  # noqa: F401 (the fixture registry)
from vmbuild.cli import main

pytestmark = BOOT_TIER

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "profiles" / "demo.toml"
#: What the demo profile says, written out here so the test does not trust vmbuild.
HOSTS = {"web": "192.0.2.10/24", "db": "192.0.2.20/24"}
#: A boot to cloud-init done takes a minute or two under TCG, two VMs at once.
BOOT_WAIT = 900


@dataclass(frozen=True)
class Lab:
    bundle: Path
    domains: dict[str, str]  # hostname -> domain name
    manifest: dict[str, Any]
    started: float
    golden: Built
    #: The arguments that built the bundle, for rebuilding it.
    build_args: tuple[str, ...]
    #: The golden image's owner and mode before any VM started.
    golden_stat: tuple[int, int, int]


def _ship(built: Path, out: Path, work: Path, golden: Built, registry: LocalRegistry) -> Path:
    """The built bundle packed, signed, pushed, pulled and unpacked into ``out``: the
    lab that boots is the one that travelled. The golden image is found in the
    cache it was built into, not copied."""
    key = work / "signer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    allowed = work / "allowed_signers"
    allowed.write_text(
        f'boot@example.org namespaces="vmbuild-lab" {key.with_suffix(".pub").read_text()}'
    )
    ref = registry.ref("boot", "demo")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKER_CONFIG", str(registry.write_auth(work / "docker").parent))
        env.setenv("VMBUILD_CACHE", str(golden.cache))
        assert main(["pack", str(built), "-o", str(work / "layout"), "--sign", str(key), "-q"]) == 0
        assert main(["push", str(work / "layout"), ref, "-q"]) == 0
        assert main(["pull", ref, "-o", str(out), "--allowed-signers", str(allowed), "-q"]) == 0
    bundle = out / "demo"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["base"]["path"] == str(golden.path)
    return bundle


@pytest.fixture(scope="module")
def lab(debian_golden: Built, libvirtd: None, registry: LocalRegistry) -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    network = f"vmbuild-boot-{tag}"
    assert virsh("net-info", network, check=False).returncode != 0, f"{network} exists"
    # Domain names unique to this run, so no domain already on the host is touched;
    # the hostnames stay the profile's.
    domains = {host: f"vmbuild-boot-{tag}-{host}" for host in HOSTS}
    work = Path(tempfile.mkdtemp(prefix="vmbuild-boot-", dir="/var/tmp"))
    work.chmod(0o755)  # libvirt's QEMU runs unprivileged and must reach the disks
    defined: list[str] = []
    try:
        overrides = ["lab.domain_type=qemu", f"network.source={network}"]
        for position, host in enumerate(HOSTS, start=1):
            overrides += [f"vm.{position}.name={domains[host]}", f"vm.{position}.hostname={host}"]
        start = time.monotonic()
        build_args = (
            "build",
            str(DEMO),
            "--base",
            str(debian_golden.path),
            "-q",
            *(arg for item in overrides for arg in ("--set", item)),
        )
        assert main([*build_args, "--output", str(work / "built")]) == 0
        print(f"lab build: {time.monotonic() - start:.1f}s")
        start = time.monotonic()
        bundle = _ship(work / "built" / "demo", work / "out", work, debian_golden, registry)
        print(f"pack, push, pull and unpack: {time.monotonic() - start:.1f}s")
        # A build of the profile into the unpacked bundle's folder finds its own
        # bundle: nothing is made again.
        build_args = (*build_args, "--output", str(work / "out"))
        before = {p: p.stat().st_ino for p in bundle.rglob("*") if p.is_file()}
        assert main(list(build_args)) == 0
        assert {p: p.stat().st_ino for p in bundle.rglob("*") if p.is_file()} == before
        existing = set(virsh("list", "--all", "--name").stdout.split())
        assert not existing & set(domains.values()), "refusing to touch existing domains"
        defined = list(domains.values())
        define(bundle)
        _assert_isolated(network)
        info = debian_golden.path.stat()
        golden_stat = (info.st_uid, info.st_gid, info.st_mode)
        started = time.monotonic()
        for name in domains.values():  # both boot at once
            virsh("start", name)
        manifest = json.loads((bundle / "manifest.json").read_text())
        yield Lab(bundle, domains, manifest, started, debian_golden, build_args, golden_stat)
    finally:
        for name in defined:
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
        virsh("net-destroy", network, check=False)
        virsh("net-undefine", network, check=False)
        shutil.rmtree(work, ignore_errors=True)


def _assert_isolated(network: str) -> None:
    """define.sh made the network: active, no <forward>, no <ip>, no host address."""
    info = virsh("net-info", network).stdout
    assert re.search(r"^Active:\s+yes$", info, re.M), info
    xml = ET.fromstring(virsh("net-dumpxml", network).stdout)
    assert xml.find("forward") is None and xml.find("ip") is None
    bridge = re.search(r"^Bridge:\s+(\S+)$", info, re.M)
    assert bridge is not None, info
    addresses = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", bridge[1]], capture_output=True, text=True
    )
    assert addresses.returncode == 0 and addresses.stdout == "", addresses


def _check(lab: Lab, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv/bin/vmbuild"), "check", str(bundle), "-c", URI, *extra],
        capture_output=True,
        text=True,
        timeout=BOOT_WAIT + 120,
        check=False,
    )


def test_vmbuild_check_finds_every_vm_as_built(lab: Lab) -> None:
    """Wait for both VMs through `vmbuild check`, which must find them all matching."""
    checked = time.monotonic()
    result = _check(lab, lab.bundle, "--wait", str(BOOT_WAIT), "--json")
    print(result.stderr)
    report = json.loads(result.stdout)
    since_start = time.monotonic() - lab.started
    offset = checked - lab.started
    for vm in report["vms"]:
        ready = vm["ready_after"]
        after = "never" if ready is None else f"{ready + offset:.0f}s after virsh start"
        print(f"{vm['name']}: agent up and cloud-init done {after}")
    print(f"from virsh start to both checked: {since_start:.0f}s")
    assert result.returncode == 0, result.stdout
    assert report["ok"] is True
    assert sorted(vm["name"] for vm in report["vms"]) == sorted(lab.domains.values())
    for vm in report["vms"]:
        items = {check["item"]: check for check in vm["checks"]}
        assert set(items) == {
            "domain",
            "hostname",
            "ip",
            "machine-id",
            "host keys",
            "cloud-init",
        }
        assert all(check["ok"] for check in vm["checks"])

    table = _check(lab, lab.bundle)
    print(table.stdout)
    assert table.returncode == 0
    assert "2 VMs match the bundle" in table.stdout
    assert "✗" not in table.stdout


# ------------------------------------------------------- the test's own witness


def _agent(domain: str, execute: str, **arguments: Any) -> Any:
    message: dict[str, Any] = {"execute": execute}
    if arguments:
        message["arguments"] = arguments
    answer = virsh("qemu-agent-command", domain, json.dumps(message), "--timeout", "30")
    return json.loads(answer.stdout)["return"]


def _read(domain: str, path: str) -> str:
    """A file's text through guest-file-open/read (not guest-exec, which check uses)."""
    handle = _agent(domain, "guest-file-open", path=path, mode="r")
    try:
        data = _agent(domain, "guest-file-read", handle=handle, count=65536)
        return base64.b64decode(data["buf-b64"]).decode()
    finally:
        _agent(domain, "guest-file-close", handle=handle)


def _fingerprint(public_key: str) -> str:
    """ssh-keygen's own fingerprint (``SHA256:... (ED25519)``) of one public key."""
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=public_key, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    _bits, fingerprint, *_, kind = done.stdout.split()
    return f"{fingerprint} {kind}"


def _known_hosts_fingerprints(bundle: Path, host: str) -> set[str]:
    lines = (bundle / "inventory" / "known_hosts").read_text().splitlines()
    ours = [line for line in lines if host in line.split()[0].split(",")]
    assert len(ours) >= 2, f"known_hosts lists {len(ours)} keys for {host}"
    return {_fingerprint(" ".join(line.split()[1:3])) for line in ours}


def _golden_machine_id(image: Path) -> str:
    machine_id = read_guest_files({"golden": image}, ["/etc/machine-id"])["golden"]
    return (machine_id["/etc/machine-id"] or b"").decode().strip()


def test_each_guest_answers_with_its_own_identity(lab: Lab) -> None:
    """Hostname, static IP on the NIC with the planned MAC, machine-id, host keys and
    cloud-init, read with raw agent commands and compared across the VMs."""
    # Readiness comes from the test above; on its own, wait here for the agents.
    for domain in lab.domains.values():
        deadline = time.monotonic() + BOOT_WAIT
        while virsh(
            "qemu-agent-command", domain, '{"execute":"guest-ping"}', check=False
        ).returncode:
            assert time.monotonic() < deadline, f"{domain}: the guest agent never answered"
            time.sleep(3)

    machine_ids = {}
    all_keys = {}
    for host, domain in lab.domains.items():
        planned = lab.manifest["vms"][domain]
        assert _agent(domain, "guest-get-host-name")["host-name"] == host

        nics = _agent(domain, "guest-network-get-interfaces")
        ours = [n for n in nics if n.get("hardware-address") == planned["mac"]]
        assert len(ours) == 1, f"{domain}: no NIC with MAC {planned['mac']}: {nics}"
        ipv4 = [
            f"{a['ip-address']}/{a['prefix']}"
            for a in ours[0].get("ip-addresses", [])
            if a["ip-address-type"] == "ipv4"
        ]
        assert ipv4 == [HOSTS[host]], f"{domain}: {ours[0]['name']} has {ipv4}"

        machine_ids[host] = _read(domain, "/etc/machine-id").strip()
        assert re.fullmatch(r"[0-9a-f]{32}", machine_ids[host])
        assert machine_ids[host] == planned["machine_id"]

        keys = {
            _fingerprint(_read(domain, f"/etc/ssh/ssh_host_{kind}_key.pub"))
            for kind in ("ed25519", "ecdsa", "rsa")
        }
        assert keys == _known_hosts_fingerprints(lab.bundle, host)
        all_keys[host] = keys

        status = _agent(
            domain,
            "guest-exec",
            path="cloud-init",
            arg=["status", "--long"],
            **{"capture-output": True},
        )
        while not (done := _agent(domain, "guest-exec-status", pid=status["pid"]))["exited"]:
            time.sleep(0.5)
        text = base64.b64decode(done.get("out-data", "")).decode()
        assert done["exitcode"] == 0 and "status: done" in text, text

    assert len(set(machine_ids.values())) == len(machine_ids)
    assert _golden_machine_id(lab.golden.path) not in machine_ids.values()
    web, db = all_keys.values()
    assert not web & db


def test_running_vms_leave_the_golden_images_owner_and_mode_alone(lab: Lab) -> None:
    """libvirt's dynamic ownership would hand the shared golden image to the QEMU user
    (it walks the backing chain); the domain XML names it with relabel="no"."""
    info = lab.golden.path.stat()
    assert (info.st_uid, info.st_gid, info.st_mode) == lab.golden_stat
    # Dynamic ownership is at work here: each VM's own overlay went to the QEMU user.
    qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
    for domain in lab.domains.values():
        disk = lab.bundle / lab.manifest["vms"][domain]["artifacts"]["disk"]["file"]
        assert disk.stat().st_uid == qemu_uid, disk


def test_rebuilding_under_running_vms_is_refused(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new address for db would replace db's disk and copy web's for /etc/hosts,
    both in use by running VMs: refused, naming both, with nothing changed."""
    web, db = lab.domains["web"], lab.domains["db"]
    disks = {name: lab.bundle / "vms" / name / "disk.qcow2" for name in (web, db)}
    inodes = {name: path.stat().st_ino for name, path in disks.items()}
    manifest = (lab.bundle / "manifest.json").read_bytes()
    capsys.readouterr()
    for extra in (["--set", "vm.2.ip=192.0.2.21"], ["--force"]):
        assert main([*lab.build_args, *extra]) == 4
        err = capsys.readouterr().err
        print(err)
        assert f'vm "{db}": libvirt domain "{db}" on {URI} is running, and this build would ' in (
            err
        )
        assert "--force does not override this" in err
        if extra != ["--force"]:
            assert f'vm "{web}": libvirt domain "{web}" on {URI} is running, and this build ' in (
                f"{err}"
            )
            assert "would copy and edit its disk" in err
        assert {name: path.stat().st_ino for name, path in disks.items()} == inodes
        assert (lab.bundle / "manifest.json").read_bytes() == manifest
    # The lab unchanged: nothing to do, nothing touched.
    assert main(list(lab.build_args)) == 0
    assert {name: path.stat().st_ino for name, path in disks.items()} == inodes


def test_check_reports_a_mismatch_and_a_stopped_vm(lab: Lab, tmp_path: Path) -> None:
    """A bundle that says something else than the running guests fails the check."""
    other = tmp_path / "other"
    shutil.copytree(lab.bundle / "inventory", other / "inventory")
    manifest = json.loads(json.dumps(lab.manifest))
    web, db = lab.domains["web"], lab.domains["db"]
    manifest["vms"][web]["hostname"] = "not-web"
    manifest["vms"][db]["machine_id"] = "0" * 32
    (other / "manifest.json").write_text(json.dumps(manifest))

    result = _check(lab, other)
    print(result.stdout)
    assert result.returncode == 5
    assert f"{web}: hostname: found web, expected not-web" in result.stdout
    assert f"{db}: machine-id: found {lab.manifest['vms'][db]['machine_id']}" in result.stdout
    assert "2 of 2 VMs differ from the bundle" in result.stdout

    virsh("destroy", db)
    result = _check(lab, lab.bundle)
    print(result.stdout)
    assert result.returncode == 5
    assert f"{db}: domain: found shut off, expected running" in result.stdout
    assert "1 of 2 VMs differ from the bundle" in result.stdout
