"""The vmbuild command, run in-process through vmbuild.cli.main: help, exit codes,
what goes to stdout and stderr, and the golden-image checks.

Everything before the appliance runs on a blank image (``blank_golden``); the whole
builds use the small real golden image and start the appliance (``guestfs``)."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from labs import USER, WEB_DB, write_lab
from vmbuild import __version__
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import load_profile

#: The run_cli fixture (conftest.py): run(*args) -> Result(code, out, err).
RunCli = Callable[..., Any]

#: The lab of these tests: "lab", web and db (192.0.2.10, .20), on QEMU user networking.
write_profile = functools.partial(
    write_lab,
    name="lab",
    lab={"domain_type": "kvm"},
    network=USER,
    defaults={"vcpus": 1, "memory": "512M"},
    vms=WEB_DB,
)


@pytest.fixture
def profile(tmp_path: Path, blank_golden: Path) -> Path:
    """The lab on a blank image: for everything before the appliance."""
    return write_profile(tmp_path, blank_golden)


@pytest.fixture
def golden_profile(tmp_path: Path, golden: Path) -> Path:
    """The lab on the small real golden image: for whole builds."""
    return write_profile(tmp_path, golden)


def assert_user_error(result: Any, *lines: str) -> None:
    """Exit 2, exactly these error lines on stderr, nothing on stdout."""
    assert result.code == 2, result
    assert result.err.splitlines() == [f"vmbuild: error: {line}" for line in lines]
    assert "Traceback" not in result.err
    assert result.out == ""


# ----------------------------------------------------------------------- help


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_app_help(run_cli: RunCli, flag: str) -> None:
    result = run_cli(flag)
    assert result.code == 0
    assert result.out.startswith("Usage: vmbuild [OPTIONS] COMMAND")
    for command in ("build", "validate", "plan"):
        assert f"  {command} " in result.out
    assert "`vmbuild PROFILE` is short for `vmbuild build PROFILE`" in result.out
    assert result.err == ""


@pytest.mark.parametrize(
    ("command", "summary", "options"),
    [
        (
            "build",
            "Build the lab: disks, seed ISOs, domain XML",
            ["--output", "DIR", "--base", "--set", "KEY=VALUE", "--json", "--verbose", "--quiet"],
        ),
        (
            "validate",
            "Check a profile and its golden image",
            ["--base", "--set", "--no-base", "Skip the checks that read the golden image"],
        ),
        ("plan", "Show what a build would make", ["--base", "--set", "--json"]),
    ],
)
def test_command_help(run_cli: RunCli, command: str, summary: str, options: list[str]) -> None:
    result = run_cli(command, "--help")
    assert result.code == 0
    assert result.out.startswith(f"Usage: vmbuild {command} [OPTIONS]")
    assert summary in result.out
    assert "PROFILE" in result.out
    for option in options:
        assert option in result.out
    assert "--set lab.domain_type=qemu" in " ".join(result.out.split())


def test_a_command_line_is_parsed_without_pydantic(tmp_path: Path) -> None:
    """pyproject.toml keeps typer below 0.29, which sets up pydantic on every run
    (about 0.1 s of each command): a version that does fails here."""
    profile = write_lab(tmp_path)
    script = (
        "import sys\n"
        "from vmbuild.cli import main\n"
        "sys.argv = ['vmbuild', 'plan', '--json', '--set', 'lab.domain_type=qemu', "
        f"{str(profile)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'pydantic'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert '"lab": "t"' in done.stdout  # the plan was made and printed
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["build", "validate", "plan", "plugins"])
def test_shared_log_options(run_cli: RunCli, command: str) -> None:
    """-v is declared once for the commands that log; only build has -q."""
    out = run_cli(command, "--help").out
    assert "-v, --verbose" in out
    assert ("-q, --quiet" in out) == (command == "build")
    assert "--as-json" not in out and "--no-quiet" not in out


def test_shared_log_options_are_accepted_after_the_profile(run_cli: RunCli, profile: Path) -> None:
    """-q and -v go anywhere on the line, and neither silences an error."""
    for flags in (["-q"], ["-v", "-v"]):
        result = run_cli("build", profile, "--set", "lab.name=bad name", *flags)
        assert result.code == 2
        assert 'name "bad name" is not a valid name' in result.err


def test_version(run_cli: RunCli) -> None:
    result = run_cli("--version")
    assert (result.code, result.out) == (0, f"vmbuild {__version__}\n")


def test_unknown_option_is_a_usage_error(run_cli: RunCli, profile: Path) -> None:
    result = run_cli("plan", profile, "--frobnicate")
    assert result.code == 2
    assert "No such option: --frobnicate" in result.err
    assert result.out == ""


# ---------------------------------------------------------------------- build


@pytest.mark.guestfs
def test_build_prints_the_bundle_path_and_writes_the_bundle(
    run_cli: RunCli, golden_profile: Path, tmp_path: Path
) -> None:
    result = run_cli("build", golden_profile, "--output", tmp_path / "out")
    assert result.code == 0, result.err
    bundle = (tmp_path / "out" / "lab").resolve()
    assert result.out == f"{bundle}\n"
    assert f"Built 2 VMs (2 disks made, 0 kept); define them with: sh {bundle}/define.sh" in (
        result.err
    )
    for name in ("web", "db"):
        for file in ("disk.qcow2", "seed.iso", "domain.xml"):
            assert (bundle / "vms" / name / file).is_file()
    for file in ("manifest.json", "SHA256SUMS", "define.sh", "plan.json", "inventory/hosts"):
        assert (bundle / file).is_file()
    assert not list((tmp_path / "out").glob(".lab.staging-*"))


@pytest.mark.guestfs
def test_domain_xml_names_the_golden_image_and_keeps_its_owner(
    run_cli: RunCli, golden_profile: Path, golden: Path, tmp_path: Path
) -> None:
    """The backing chain is in the XML with relabel="no" (libvirt then leaves the
    shared golden image's owner alone), so QEMU must be able to read it as it is."""
    golden.chmod(0o600)
    result = run_cli("build", golden_profile, "--output", tmp_path / "out")
    assert result.code == 0, result.err
    assert f"the golden image {golden.resolve()} (mode 0600) is not readable by" in result.err
    domain = ET.parse(tmp_path / "out" / "lab" / "vms" / "web" / "domain.xml").getroot()
    store = domain.find("devices/disk/backingStore")
    assert store is not None
    assert store.find("format").get("type") == "qcow2"  # type: ignore[union-attr]
    source = store.find("source")
    assert source is not None and source.get("file") == str(golden.resolve())
    label = source.find("seclabel")
    assert label is not None and (label.get("model"), label.get("relabel")) == ("dac", "no")
    assert store.find("backingStore") is not None  # and nothing behind the golden image


@pytest.mark.guestfs
def test_build_json_and_quiet(run_cli: RunCli, golden_profile: Path, tmp_path: Path) -> None:
    result = run_cli("build", golden_profile, "-o", tmp_path / "out", "--json", "-q")
    assert result.code == 0
    assert result.err == ""
    manifest = json.loads(result.out)
    assert manifest["lab"] == "lab"
    assert sorted(manifest["vms"]) == ["db", "web"]
    assert manifest["vms"]["web"]["fqdn"] == "web.lab.example"


@pytest.mark.guestfs
def test_profile_alone_means_build(run_cli: RunCli, golden_profile: Path, tmp_path: Path) -> None:
    short = run_cli(golden_profile, "-o", tmp_path / "a")
    full = run_cli("build", golden_profile, "-o", tmp_path / "b")
    assert (short.code, full.code) == (0, 0)
    a, b = (tmp_path / "a" / "lab").resolve(), (tmp_path / "b" / "lab").resolve()
    assert (short.out, full.out) == (f"{a}\n", f"{b}\n")
    files = sorted(str(path.relative_to(a)) for path in a.rglob("*"))
    assert files == sorted(str(path.relative_to(b)) for path in b.rglob("*"))
    assert (a / "plan.json").read_bytes() == (b / "plan.json").read_bytes()
    ids_a = json.loads((a / "manifest.json").read_text())["vms"]
    ids_b = json.loads((b / "manifest.json").read_text())["vms"]
    for name in ("web", "db"):
        for key in ("mac", "uuid", "instance_id", "ip", "vnc_port"):
            assert ids_a[name][key] == ids_b[name][key]


def test_build_failure_exits_3_and_publishes_nothing(
    run_cli: RunCli, blank_golden: Path, tmp_path: Path
) -> None:
    # A valid profile, but qemu-img refuses a qcow2 this large when making the disk.
    vms = [{"name": "huge", "ip": "192.0.2.10", "disk_size": "100000T"}]
    path = write_profile(tmp_path, blank_golden, vms=vms)
    assert run_cli("validate", path).code == 0
    out = tmp_path / "out"
    result = run_cli("build", path, "-o", out)
    assert result.code == 3
    assert result.out == ""
    assert "vmbuild: error: creating " in result.err
    assert "too large" in result.err
    assert "Traceback" not in result.err
    assert not (out / "lab").exists()
    assert not list(out.glob(".lab.staging-*"))


def test_build_while_another_build_holds_the_lab_exits_4(
    run_cli: RunCli, profile: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lab.lock").open("w") as lock:
        lock.write("12345")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_cli("build", profile, "-o", out)
    assert result.code == 4
    assert result.out == ""
    assert 'vmbuild: error: lab "lab" is being built by another vmbuild (pid 12345)' in result.err
    assert not (out / "lab").exists()


def test_output_path_with_a_control_character_is_refused(
    run_cli: RunCli, profile: Path, tmp_path: Path
) -> None:
    result = run_cli("build", profile, "-o", tmp_path / "out\nx")
    assert result.code == 2
    assert "contains a control character (U+000A LINE FEED)" in result.err
    assert not (tmp_path / "out\nx").exists()


def test_build_refuses_to_replace_a_folder_that_is_not_a_bundle(
    run_cli: RunCli, profile: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "lab"
    target.mkdir(parents=True)
    (target / "precious.txt").write_text("keep me")
    result = run_cli("build", profile, "-o", tmp_path / "out")
    assert_user_error(
        result,
        f"{target.resolve()} exists and is not a vmbuild bundle; refusing to replace it "
        "(choose another --output or remove that folder)",
    )
    assert (target / "precious.txt").read_text() == "keep me"


def test_interrupted_build_exits_130(
    run_cli: RunCli, profile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmbuild.build.pipeline

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(vmbuild.build.pipeline, "build", interrupted)
    result = run_cli("build", profile, "-o", tmp_path / "out")
    assert result.code == 130
    assert result.err.splitlines()[-1] == "vmbuild: interrupted; nothing was published"


# ----------------------------------------------------------------------- plan


def test_plan_json_is_stable_and_round_trips(run_cli: RunCli, profile: Path) -> None:
    first = run_cli("plan", profile, "--json")
    second = run_cli("plan", profile, "--json")
    assert first.code == 0 and second.code == 0
    assert first.out == second.out
    data = json.loads(first.out)
    assert [vm["name"] for vm in data["vms"]] == ["web", "db"]
    plan = Plan.from_json(first.out)
    assert plan == make_plan(load_profile(profile))
    assert plan.to_json() == first.out


def test_plan_table(run_cli: RunCli, profile: Path, blank_golden: Path) -> None:
    result = run_cli("plan", profile)
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].startswith(f"lab lab (kvm), base {blank_golden}, user ")
    assert lines[0].endswith(" 192.0.2.0/24")
    assert lines[1].split() == ["NAME", "HOSTNAME", "IP", "MAC", "VNC", "CPU", "MEMORY", "DISK"]
    web = lines[2].split()
    assert web[:3] == ["web", "web.lab.example", "192.0.2.10/24"]
    assert web[4:] == ["5901", "1", "512M", "overlay", "as", "base"]
    assert lines[3].split()[4:7] == ["5902", "1", "1G"]


def test_set_changes_the_plan(run_cli: RunCli, profile: Path) -> None:
    plain = run_cli("plan", profile, "--json")
    changed = run_cli("plan", profile, "--json", "--set", "lab.domain_type=qemu")
    assert json.loads(plain.out)["domain_type"] == "kvm"
    assert json.loads(changed.out)["domain_type"] == "qemu"
    assert json.loads(plain.out)["profile_digest"] != json.loads(changed.out)["profile_digest"]
    text = run_cli("plan", profile, "--set", "lab.domain_type=qemu", "--set", "vm.db.vcpus=3")
    assert text.out.startswith("lab lab (qemu),")
    assert text.out.splitlines()[3].split()[4:6] == ["5902", "3"]


def test_set_errors_exit_2(run_cli: RunCli, profile: Path) -> None:
    result = run_cli("plan", profile, "--set", "vm.nope.memory=4G", "--set", "lab.domain_type")
    assert_user_error(
        result,
        f"{profile}: --set vm.nope.memory=4G: vm.nope matches no entry "
        "(name a [[vm]] by its name or its position, from 1)",
        f"{profile}: --set lab.domain_type: expected KEY=VALUE, e.g. lab.domain_type=qemu",
    )


def test_base_option_replaces_the_image(
    run_cli: RunCli, tmp_path: Path, blank_golden: Path
) -> None:
    golden = blank_golden
    path = write_profile(tmp_path, tmp_path / "missing.qcow2", base={"sha256": "0" * 64})
    result = run_cli("plan", path, "--json", "--base", golden)
    base = json.loads(result.out)["base"]
    assert base == {"image": str(golden), "sha256": None, "format": "qcow2", "golden": None}
    # Without --base the missing image and the wrong pin fail; with it, all is well.
    assert run_cli("validate", path).code == 2
    result = run_cli("validate", path, "--base", golden)
    assert result.code == 0, result.err


# ------------------------------------------------------------------- validate


def test_validate_good_profile(run_cli: RunCli, profile: Path) -> None:
    result = run_cli("validate", profile)
    assert result.code == 0
    assert result.out == ""
    assert result.err == f"{profile}: OK, lab 'lab' with 2 VMs\n"


@pytest.mark.parametrize("command", ["validate", "plan", "build"])
def test_bad_profile_exits_2_with_the_message(
    run_cli: RunCli, tmp_path: Path, blank_golden: Path, command: str
) -> None:
    vms = [WEB_DB[0], {**WEB_DB[1], "ip": "192.0.2.300"}]
    path = write_profile(tmp_path, blank_golden, vms=vms)
    result = run_cli(command, path, *(["-o", tmp_path / "out"] if command == "build" else []))
    assert_user_error(result, f'{path}: vm "db": ip 192.0.2.300 is not an IPv4 address')
    assert not (tmp_path / "out" / "lab").exists()


def test_every_problem_is_reported(run_cli: RunCli, tmp_path: Path, blank_golden: Path) -> None:
    vms = [
        {"name": "web", "ip": "192.0.2.1"},
        {"name": "db", "ip": "192.0.2.20", "memroy": "1G", "mac": "01:00:00:00:00:01"},
    ]
    path = write_profile(tmp_path, blank_golden, vms=vms)
    assert_user_error(
        run_cli("validate", path),
        f'{path}: vm "db": unknown key "memroy" (did you mean "memory"?)',
        f'{path}: vm "db": mac 01:00:00:00:00:01 is a multicast address; '
        "the first octet must be even",
        f'{path}: vm "web": ip 192.0.2.1 is the gateway address',
    )


def test_missing_profile_exits_2(run_cli: RunCli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for args in (["validate", missing], ["plan", missing], [missing, "-o", tmp_path]):
        assert_user_error(run_cli(*args), f"{missing}: no such profile")


def test_unparsable_profile_exits_2(run_cli: RunCli, tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[lab\nname = 1\n")
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.startswith(f"vmbuild: error: {path}: not valid TOML: ")
    assert result.out == ""


# ------------------------------------------------ golden image, via validate


def test_missing_golden_image(run_cli: RunCli, tmp_path: Path) -> None:
    path = write_profile(tmp_path, "images/none.qcow2")
    assert_user_error(
        run_cli("validate", path),
        f"{path}: base: image images/none.qcow2 does not exist "
        f"({tmp_path / 'images/none.qcow2'}) "
        "(build one, or point --base at an existing golden image)",
    )
    # --no-base skips exactly the checks that read the image.
    assert run_cli("validate", path, "--no-base").code == 0


def test_golden_image_that_is_a_folder(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "dir.qcow2").mkdir()
    path = write_profile(tmp_path, "dir.qcow2")
    assert_user_error(
        run_cli("validate", path), f"{path}: base: image dir.qcow2 is not a regular file"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_golden_image(run_cli: RunCli, tmp_path: Path, blank_golden: Path) -> None:
    golden = blank_golden
    golden.chmod(0)
    path = write_profile(tmp_path, golden)
    assert_user_error(
        run_cli("validate", path), f"{path}: base: image {golden} is not readable by this user"
    )


def test_golden_image_in_another_format(run_cli: RunCli, tmp_path: Path) -> None:
    raw = tmp_path / "golden.raw"
    raw.write_bytes(bytes(510) + b"\x55\xaa" + bytes(65024))  # an empty MBR disk
    path = write_profile(tmp_path, raw)
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.startswith(
        f"vmbuild: error: {path}: base: image {raw} cannot be read as qcow2: "
    )
    assert result.err.rstrip().endswith("(set base.format to the image's real format)")
    assert run_cli("validate", path, "--set", 'base.format="raw"').code == 0


def test_truncated_golden_image(run_cli: RunCli, blank_golden: Path, tmp_path: Path) -> None:
    golden = blank_golden
    # qemu-img info still reads a truncated qcow2; only qemu-img check notices.
    with golden.open("r+b") as image:
        image.truncate(100 << 10)
    path = write_profile(tmp_path, golden)
    result = run_cli("validate", path)
    assert result.code == 2
    assert result.err.startswith(f"vmbuild: error: {path}: base: image {golden} is damaged: ")
    assert result.out == ""


def test_sha256_pin(run_cli: RunCli, tmp_path: Path, blank_golden: Path) -> None:
    golden = blank_golden
    digest = hashlib.sha256(golden.read_bytes()).hexdigest()
    good = write_profile(tmp_path, golden, base={"sha256": digest.upper()})
    assert run_cli("validate", good).code == 0
    bad = write_profile(tmp_path, golden, base={"sha256": f"sha256:{'ab' * 32}"})
    assert_user_error(
        run_cli("validate", bad),
        f"{bad}: base: image {golden} has sha256 {digest}, not the pinned {'ab' * 32} "
        "(the image changed or the pin is wrong)",
    )


def test_disk_smaller_than_the_golden_image(
    run_cli: RunCli, tmp_path: Path, blank_golden: Path
) -> None:
    vms = [
        {"name": "web", "ip": "192.0.2.10", "disk_size": "1G"},
        {"name": "db", "ip": "192.0.2.20", "disk_size": "512M"},
    ]
    path = write_profile(tmp_path, blank_golden, vms=vms)
    assert_user_error(
        run_cli("validate", path),
        f'{path}: vm "db": disk_size 512M is smaller than the golden image\'s virtual size 1G',
    )
