"""The Xen targets (xen-hvm, xen-pv, xen-pvh): each VM's libvirt domain XML and xl
config, and the lab's define.sh and create.sh.

Most tests export a bundle made without the appliance (blank overlays on a blank
golden image, with the seeds as files): the writer reads only the plan, the disks'
qemu-img info and the files' presence. One module fixture builds a real small bundle
(``guestfs``) and exports it as it is.

The XML is checked by libvirt's own schema (virt-xml-validate). The xl configs are
read by a small parser here, and by Xen's own config parser, libxlutil (Debian's
libxenmisc4.17, through ctypes), which needs no hypervisor; ``xl`` itself does not
run without one.

Regenerate the golden files after an intended change with:

    VMBUILD_REGEN=1 .venv/bin/pytest tests/test_target_xen.py
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import dataclasses
import difflib
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labs import make_image, write_lab
from vmbuild.cli import main
from vmbuild.errors import BuildError, ProfileError, UserError
from vmbuild.host import qemuimg
from vmbuild.model.plan import Plan, VmPlan, make_plan
from vmbuild.model.profile import Target, load_profile
from vmbuild.output.domain import render_domain
from vmbuild.targets import xen
from vmbuild.targets.job import ExportJob

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "targets"
REGEN = os.environ.get("VMBUILD_REGEN") == "1"
#: Where the golden files pretend the bundle is on the Xen host.
ROOT = "/srv/labs/t"
KINDS = [Target.XEN_HVM, Target.XEN_PV, Target.XEN_PVH]
IDS = [kind.value for kind in KINDS]
#: Two VMs that differ in everything the identity has: memory, vCPUs, keymap, autostart.
VMS: tuple[dict[str, Any], ...] = (
    {"name": "web", "ip": "192.0.2.10", "vnc_keymap": "de"},
    {"name": "db", "ip": "192.0.2.20", "memory": "1536M", "vcpus": 1, "autostart": True},
)
LAB = {"network": {"source": "br-lab", "subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}}


# ------------------------------------------------------------------ bundles


def fake_bundle(folder: Path, **lab: Any) -> tuple[Plan, Path]:
    """A bundle as far as an export reads it: each VM's qcow2 overlay on a blank
    golden image (by a relative path, as the build makes it) and its seed, plan.json
    and the KVM domain XML. Made without the appliance."""
    folder.mkdir(parents=True, exist_ok=True)
    golden = make_image(folder / "golden.qcow2")
    profile = write_lab(folder, golden.name, **{"vms": VMS, "defaults": {"disk_size": "2G"}, **lab})
    plan = make_plan(load_profile(profile))
    bundle = folder / "out" / plan.lab
    for vm in plan.vms:
        (bundle / vm.folder).mkdir(parents=True)
        backing = os.path.relpath(golden, bundle / vm.folder)
        qemuimg.create_overlay(bundle / vm.disk.file, backing, plan.base.format, vm.disk.size)
        (bundle / vm.seed.file).write_bytes(b"CD001 stands in for the seed")
        kvm = render_domain(plan, vm, str(bundle))
        (bundle / vm.xml).write_text(ET.tostring(kvm, encoding="unicode"))
    (bundle / "plan.json").write_text(plan.to_json())
    return plan, bundle


def export(
    plan: Plan, bundle: Path, out: Path, target: Target, root: str | None = ROOT
) -> dict[str, str]:
    """Export into ``out`` (made here, empty) and return its files' texts."""
    out.mkdir()
    xen.export(ExportJob(plan, bundle, out, target, root=root))
    return {path.name: path.read_text() for path in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, Path]:
    return fake_bundle(tmp_path_factory.mktemp("xen-lab"), **LAB)


@pytest.fixture(params=KINDS, ids=IDS)
def kind(request: pytest.FixtureRequest) -> Target:
    target: Target = request.param
    return target


@pytest.fixture
def exported(lab: tuple[Plan, Path], kind: Target, tmp_path: Path) -> dict[str, str]:
    plan, bundle = lab
    return export(plan, bundle, tmp_path / kind.value, kind)


# ------------------------------------------------------------------ readers


def parse_xl(text: str) -> dict[str, Any]:
    """xl's config syntax as vmbuild writes it: ``key = value``, where a value is a
    number, a double-quoted string or a list of those that may span lines; ``#``
    starts a comment line. Each value is read with ast.literal_eval."""
    settings: dict[str, Any] = {}
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if pending.count("[") > pending.count("]"):
            continue
        key, sep, value = pending.partition("=")
        assert sep, f"not a setting: {pending!r}"
        assert re.fullmatch(r"[a-z_]+", key.strip()), f"bad key {key!r}"
        assert key.strip() not in settings, f"{key.strip()} given twice"
        settings[key.strip()] = ast.literal_eval(value.strip())
        pending = ""
    assert not pending, f"unfinished setting {pending!r}"
    return settings


def spec(text: str) -> dict[str, str]:
    """An xl device spec (vif, vfb, disk): comma-separated ``key=value`` items; a
    disk's ``target=`` is last and takes the rest, commas and all."""
    out: dict[str, str] = {}
    rest = text
    while rest:
        item, _, rest = rest.partition(",")
        key, _, value = item.strip().partition("=")
        if key == "target":
            value = f"{value},{rest}" if rest else value
            rest = ""
        out[key] = value
    return out


class Libxlutil:
    """Xen's own xl config parser (libxlutil) and disk-spec parser, through ctypes."""

    def __init__(self) -> None:
        names = {lib: ctypes.util.find_library(lib) for lib in ("xlutil", "xenlight", "yajl")}
        if not all(names.values()):
            pytest.skip("libxlutil is not installed (Debian: libxenmisc4.17)")
        self.xlu = ctypes.CDLL(names["xlutil"])
        self.xl = ctypes.CDLL(names["xenlight"])
        self.yajl = ctypes.CDLL(names["yajl"])
        self.libc = ctypes.CDLL(None)
        ptr, text, num = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self.libc.fopen.restype = ptr
        self.libc.fopen.argtypes = [text, text]
        self.libc.fclose.argtypes = [ptr]
        self.xlu.xlu_cfg_init.restype = ptr
        self.xlu.xlu_cfg_init.argtypes = [ptr, text]
        self.xlu.xlu_cfg_readfile.argtypes = [ptr, text]
        self.xlu.xlu_cfg_destroy.argtypes = [ptr]
        self.xlu.xlu_cfg_get_string.argtypes = [ptr, text, ctypes.POINTER(text), num]
        self.xlu.xlu_cfg_get_long.argtypes = [ptr, text, ctypes.POINTER(ctypes.c_long), num]
        self.xlu.xlu_cfg_get_list.argtypes = [
            ptr,
            text,
            ctypes.POINTER(ptr),
            ctypes.POINTER(num),
            num,
        ]
        self.xlu.xlu_cfg_get_listitem.restype = text
        self.xlu.xlu_cfg_get_listitem.argtypes = [ptr, num]
        self.xlu.xlu_disk_parse.argtypes = [ptr, num, ctypes.POINTER(text), ptr]
        self.xl.libxl_device_disk_init.argtypes = [ptr]
        self.xl.libxl_device_disk_dispose.argtypes = [ptr]
        self.xl.libxl_device_disk_gen_json.argtypes = [ptr, ptr]
        self.yajl.yajl_gen_alloc.restype = ptr
        self.yajl.yajl_gen_alloc.argtypes = [ptr]
        self.yajl.yajl_gen_get_buf.argtypes = [
            ptr,
            ctypes.POINTER(text),
            ctypes.POINTER(ctypes.c_size_t),
        ]
        self.yajl.yajl_gen_free.argtypes = [ptr]

    def read(
        self, path: Path, strings: tuple[str, ...], numbers: tuple[str, ...]
    ) -> dict[str, Any]:
        """The settings named (None where the file lacks one), ``disk`` as libxl's
        parsed disks (their JSON) and ``vif``/``vfb`` as lists of strings."""
        report = path.with_suffix(".xlu-report")
        stream = self.libc.fopen(str(report).encode(), b"w")
        cfg = self.xlu.xlu_cfg_init(stream, str(path).encode())
        try:
            code = self.xlu.xlu_cfg_readfile(cfg, str(path).encode())
            self.libc.fflush(ctypes.c_void_p(stream))
            assert code == 0, f"libxlutil cannot read {path}: {report.read_text()}"
            out: dict[str, Any] = {}
            for key in strings:
                value = ctypes.c_char_p()
                found = self.xlu.xlu_cfg_get_string(cfg, key.encode(), ctypes.byref(value), 1)
                out[key] = value.value.decode() if found == 0 and value.value else None
            for key in numbers:
                number = ctypes.c_long()
                found = self.xlu.xlu_cfg_get_long(cfg, key.encode(), ctypes.byref(number), 1)
                out[key] = number.value if found == 0 else None
            for key in ("disk", "vif", "vfb"):
                out[key] = self._list(cfg, key)
            out["disk"] = [self._disk(cfg, item) for item in out["disk"]]
            return out
        finally:
            self.xlu.xlu_cfg_destroy(cfg)
            self.libc.fclose(stream)
            report.unlink()

    def _list(self, cfg: int, key: str) -> list[str]:
        handle, count = ctypes.c_void_p(), ctypes.c_int()
        found = self.xlu.xlu_cfg_get_list(
            cfg, key.encode(), ctypes.byref(handle), ctypes.byref(count), 1
        )
        if found != 0:
            return []
        return [self.xlu.xlu_cfg_get_listitem(handle, i).decode() for i in range(count.value)]

    def _disk(self, cfg: int, item: str) -> dict[str, Any]:
        disk = ctypes.create_string_buffer(4096)  # larger than libxl_device_disk
        self.xl.libxl_device_disk_init(disk)
        specs = (ctypes.c_char_p * 1)(item.encode())
        try:
            assert self.xlu.xlu_disk_parse(cfg, 1, specs, disk) == 0, f"bad disk spec {item}"
            gen = self.yajl.yajl_gen_alloc(None)
            try:
                self.xl.libxl_device_disk_gen_json(gen, disk)
                buf, size = ctypes.c_char_p(), ctypes.c_size_t()
                self.yajl.yajl_gen_get_buf(gen, ctypes.byref(buf), ctypes.byref(size))
                parsed: dict[str, Any] = json.loads(ctypes.string_at(buf, size.value))
                return parsed
            finally:
                self.yajl.yajl_gen_free(gen)
        finally:
            self.xl.libxl_device_disk_dispose(disk)


def validate(path: Path) -> None:
    if shutil.which("virt-xml-validate") is None:
        pytest.skip("virt-xml-validate is not installed (libvirt-clients)")
    result = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ the plan's identity


def check_xl(cfg: dict[str, Any], vm: VmPlan, kind: Target, root: str, bridge: str) -> None:
    """Everything of the VM's identity and files that its xl config must say."""
    assert cfg["name"] == vm.name
    assert cfg["uuid"] == vm.uuid
    assert cfg["type"] == {"xen-hvm": "hvm", "xen-pv": "pv", "xen-pvh": "pvh"}[kind.value]
    assert cfg["memory"] * (1 << 20) == vm.memory
    assert cfg["vcpus"] == vm.vcpus
    (vif,) = cfg["vif"]
    assert spec(vif) == {"mac": vm.mac, "bridge": bridge}
    disk, seed = (spec(item) for item in cfg["disk"])
    assert disk == {
        "format": vm.disk.format.value,
        "vdev": "xvda",
        "access": "rw",
        "target": f"{root}/{vm.disk.file}",
    }
    seed_want = {"format": "raw", "access": "ro", "target": f"{root}/{vm.seed.file}"}
    if kind is Target.XEN_HVM:
        assert seed == {**seed_want, "vdev": "hdc", "devtype": "cdrom"}
        assert (cfg["vnc"], cfg["vncunused"]) == (1, 0)
        assert cfg["vnclisten"] == vm.vnc.listen
        assert cfg["vncdisplay"] + 5900 == vm.vnc.port
        assert cfg.get("keymap") == vm.vnc.keymap
        assert cfg["serial"] == "pty"
        assert cfg["boot"] == "c"
        assert "vfb" not in cfg
    else:
        assert seed == {**seed_want, "vdev": "xvdb"}
        (vfb,) = cfg["vfb"]
        want = {
            "vnc": "1",
            "vnclisten": vm.vnc.listen,
            "vncdisplay": str(vm.vnc.port - 5900),
            "vncunused": "0",
        }
        assert spec(vfb) == {**want, **({"keymap": vm.vnc.keymap} if vm.vnc.keymap else {})}
        assert "vnc" not in cfg
    if kind is Target.XEN_PV:
        assert (cfg["bootloader"], cfg["extra"]) == ("pygrub", "console=hvc0")
        assert "kernel" not in cfg
    elif kind is Target.XEN_PVH:
        assert cfg["kernel"] == "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"
        assert "bootloader" not in cfg
    else:
        assert "kernel" not in cfg and "bootloader" not in cfg


def identity(domain: ET.Element) -> dict[str, Any]:
    """What a domain XML keeps of the lab's identity, whatever its hypervisor."""
    graphics = domain.find("devices/graphics")
    assert graphics is not None
    iface = domain.find("devices/interface")
    assert iface is not None
    source = iface.find("source")
    assert source is not None
    return {
        "name": domain.findtext("name"),
        "uuid": domain.findtext("uuid"),
        "memory": (domain.findtext("memory"), domain.find("memory").get("unit")),
        "current": domain.findtext("currentMemory"),
        "vcpu": domain.findtext("vcpu"),
        "mac": [mac.get("address") for mac in domain.iter("mac")],
        "interface": (iface.get("type"), dict(source.attrib)),
        "vnc": {k: graphics.get(k) for k in ("type", "port", "autoport", "listen", "keymap")},
        "files": sorted(source.get("file", "") for source in domain.findall("devices/disk/source")),
        "description": domain.findtext("description", "").split(" (built by")[0],
    }


def check_xml(domain: ET.Element, kvm: ET.Element, kind: Target) -> None:
    assert domain.get("type") == "xen"
    assert identity(domain) == identity(kvm)
    os_type = domain.find("os/type")
    assert os_type is not None
    want = {
        "xen-hvm": ("hvm", "xenfv"),
        "xen-pv": ("xen", "xenpv"),
        "xen-pvh": ("xenpvh", "xenpvh"),
    }
    assert (os_type.text, os_type.get("machine")) == want[kind.value]
    disks = {disk.find("target").get("dev"): disk for disk in domain.findall("devices/disk")}
    seed_dev = "hdc" if kind is Target.XEN_HVM else "xvdb"
    assert sorted(disks) == sorted(["xvda", seed_dev])
    assert disks["xvda"].find("target").get("bus") == "xen"
    assert disks["xvda"].find("readonly") is None
    seed = disks[seed_dev]
    assert seed.find("readonly") is not None
    assert seed.find("driver").get("type") == "raw"
    assert seed.get("device") == ("cdrom" if kind is Target.XEN_HVM else "disk")
    consoles = [c.find("target").get("type") for c in domain.findall("devices/console")]
    if kind is Target.XEN_HVM:
        assert consoles == ["serial"]
        assert domain.find("devices/serial") is not None
    else:
        assert consoles == ["xen"]
        assert domain.find("devices/serial") is None
    assert domain.findtext("bootloader") == ("pygrub" if kind is Target.XEN_PV else None)
    assert domain.findtext("os/cmdline") == ("console=hvc0" if kind is Target.XEN_PV else None)
    pvh_grub = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"
    assert domain.findtext("os/kernel") == (pvh_grub if kind is Target.XEN_PVH else None)


# ------------------------------------------------------------------ golden files


def test_golden(lab: tuple[Plan, Path], kind: Target, tmp_path: Path) -> None:
    """The whole export of the two-VM bridge lab, file by file."""
    plan, bundle = lab
    actual = export(plan, bundle, tmp_path / "out", kind)
    expected = GOLDEN / kind.value
    if REGEN:
        shutil.rmtree(expected, ignore_errors=True)
        expected.mkdir(parents=True)
        for name, text in actual.items():
            (expected / name).write_text(text)
    assert expected.is_dir(), f"{expected} is missing; VMBUILD_REGEN=1 writes it"
    have = sorted(path.name for path in expected.iterdir())
    assert (
        have
        == sorted(actual)
        == ["create.sh", "db.cfg", "db.xml", "define.sh", "web.cfg", "web.xml"]
    )
    diffs = []
    for name, text in actual.items():
        want = (expected / name).read_text()
        diffs += difflib.unified_diff(
            want.splitlines(keepends=True),
            text.splitlines(keepends=True),
            f"expected/{name}",
            f"actual/{name}",
        )
    assert not diffs, "".join(diffs)
    for script in ("define.sh", "create.sh"):
        assert os.access(tmp_path / "out" / script, os.X_OK)
        subprocess.run(["sh", "-n", str(tmp_path / "out" / script)], check=True)


def test_every_golden_folder_is_a_xen_kind() -> None:
    """No golden folder is left over from a renamed kind, and none is missing."""
    folders = sorted(path.name for path in GOLDEN.iterdir() if path.name.startswith("xen-"))
    assert folders == IDS


# ------------------------------------------------------------------ each file


def test_domain_xml_is_valid_and_keeps_the_identity(
    lab: tuple[Plan, Path], kind: Target, exported: dict[str, str], tmp_path: Path
) -> None:
    plan, _ = lab
    for vm in plan.vms:
        path = tmp_path / kind.value / f"{vm.name}.xml"
        validate(path)
        check_xml(ET.fromstring(exported[f"{vm.name}.xml"]), render_domain(plan, vm, ROOT), kind)


def test_xl_config_keeps_the_plan(
    lab: tuple[Plan, Path], kind: Target, exported: dict[str, str]
) -> None:
    plan, _ = lab
    for vm in plan.vms:
        check_xl(parse_xl(exported[f"{vm.name}.cfg"]), vm, kind, ROOT, "br-lab")


def test_xl_config_as_xens_own_parser_reads_it(
    lab: tuple[Plan, Path], kind: Target, exported: dict[str, str], tmp_path: Path
) -> None:
    xlu = Libxlutil()
    plan, _ = lab
    strings = ("name", "uuid", "type", "bootloader", "extra", "kernel", "vnclisten", "keymap")
    numbers = ("memory", "vcpus", "vnc", "vncdisplay", "vncunused")
    for vm in plan.vms:
        cfg = xlu.read(tmp_path / kind.value / f"{vm.name}.cfg", strings, numbers)
        assert (cfg["name"], cfg["uuid"], cfg["type"]) == (vm.name, vm.uuid, kind.value[4:])
        assert (cfg["memory"], cfg["vcpus"]) == (vm.memory >> 20, vm.vcpus)
        assert cfg["vif"] == [f"mac={vm.mac},bridge=br-lab"]
        disk, seed = cfg["disk"]
        assert disk == {
            "pdev_path": f"{ROOT}/{vm.disk.file}",
            "vdev": "xvda",
            "format": "qcow2",
            "readwrite": 1,
        }
        assert seed["pdev_path"] == f"{ROOT}/{vm.seed.file}"
        assert seed["format"] == "raw"
        assert not seed.get("readwrite")
        if kind is Target.XEN_HVM:
            assert (seed["vdev"], seed.get("is_cdrom")) == ("hdc", 1)
            assert (cfg["vnc"], cfg["vncunused"], cfg["vncdisplay"]) == (1, 0, vm.vnc.port - 5900)
            assert cfg["vnclisten"] == vm.vnc.listen
        else:
            assert (seed["vdev"], seed.get("is_cdrom")) == ("xvdb", None)
            assert len(cfg["vfb"]) == 1 and f"vncdisplay={vm.vnc.port - 5900}," in cfg["vfb"][0]
        assert cfg["bootloader"] == ("pygrub" if kind is Target.XEN_PV else None)
        assert cfg["kernel"] == (
            "/usr/lib/grub-xen/grub-i386-xen_pvh.bin" if kind is Target.XEN_PVH else None
        )


# ------------------------------------------------------------------ the scripts


def fake_tools(folder: Path) -> Path:
    """virsh, xl and ip that record their arguments in ``calls``; ``xl domid`` knows
    the VMs named in $RUNNING, ``virsh net-info`` knows no network, ``ip link show``
    knows every bridge but ``br-missing``."""
    folder.mkdir()
    log = folder / "calls"
    scripts = {
        "virsh": 'case "$*" in *net-info*) exit 1;; esac',
        "xl": (
            'if [ "$1" = domid ]; then case " $RUNNING " in *" $2 "*) echo 7; exit 0;; '
            "esac; exit 1; fi"
        ),
        "ip": 'case "$*" in "link show br-missing") exit 1;; esac',
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >>"{log}"\n{body}\nexit 0\n')
        path.chmod(0o755)
    return log


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = fake_tools(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{log.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("RUNNING", "web")
    monkeypatch.setenv("XENDOMAINS_AUTO", str(tmp_path / "auto"))
    (tmp_path / "auto").mkdir()
    yield log


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True)


def test_define_sh_defines_every_vm_on_xen(
    lab: tuple[Plan, Path], tools: Path, tmp_path: Path
) -> None:
    plan, bundle = lab
    out = tmp_path / "out"
    export(plan, bundle, out, Target.XEN_PV, root=None)  # the bundle's own files exist
    result = run_script(out / "define.sh")
    assert result.returncode == 0, result.stderr
    assert tools.read_text().splitlines() == [
        f"virsh -c xen:///system define {out}/web.xml",
        f"virsh -c xen:///system define {out}/db.xml",
        "virsh -c xen:///system autostart db",
    ]
    tools.unlink()
    result = run_script(out / "define.sh", "-c", "xen+ssh://root@xen.example/system")
    assert result.returncode == 0, result.stderr
    assert tools.read_text().splitlines()[0] == (
        f"virsh -c xen+ssh://root@xen.example/system define {out}/web.xml"
    )


def test_create_sh_starts_what_is_not_running_and_autostarts(
    lab: tuple[Plan, Path], tools: Path, tmp_path: Path
) -> None:
    plan, bundle = lab
    out = tmp_path / "out"
    export(plan, bundle, out, Target.XEN_HVM, root=None)
    result = run_script(out / "create.sh")
    assert result.returncode == 0, result.stderr
    assert tools.read_text().splitlines() == [
        "ip link show br-lab",
        "xl domid web",
        "xl domid db",
        f"xl create {out}/db.cfg",
    ]
    assert "web is running already" in result.stderr
    auto = tmp_path / "auto"
    assert sorted(p.name for p in auto.iterdir()) == ["db.cfg"]  # db has autostart
    assert (auto / "db.cfg").resolve() == (out / "db.cfg").resolve()


def test_scripts_refuse_a_bundle_that_is_not_at_the_root(
    lab: tuple[Plan, Path], tools: Path, tmp_path: Path
) -> None:
    plan, bundle = lab
    out = tmp_path / "out"
    export(plan, bundle, out, Target.XEN_PVH, root=str(tmp_path / "not-there"))
    for script in ("define.sh", "create.sh"):
        result = run_script(out / script)
        assert result.returncode == 1
        assert f"{tmp_path}/not-there/vms/web/disk.qcow2 is missing" in result.stderr
        assert f"copy the bundle to {tmp_path}/not-there" in result.stderr
    assert not tools.exists(), "no virsh, xl or ip was run"


def test_scripts_check_the_golden_image_behind_the_overlays(
    lab: tuple[Plan, Path], tools: Path, tmp_path: Path
) -> None:
    """The overlays name the golden image by a relative path: on the Xen host it must
    be where that path leads, and the scripts say so before anything runs."""
    plan, bundle = lab
    copy = tmp_path / "copy" / "t"
    shutil.copytree(bundle, copy)  # the golden image stays behind
    out = tmp_path / "out"
    export(plan, copy, out, Target.XEN_HVM, root=None)
    relative = qemuimg.info(copy / "vms/web/disk.qcow2", "qcow2").backing_file
    assert relative is not None and not relative.startswith("/")
    backing = os.path.normpath(copy / "vms/web" / relative)
    result = run_script(out / "create.sh")
    assert result.returncode == 1
    assert f"{backing} is missing" in result.stderr
    assert f"{copy}/vms/web/disk.qcow2 is missing" not in result.stderr


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("create", [True, False], ids=["created", "existing"])
def test_a_libvirt_network_lab(
    create: bool, tmp_path: Path, tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirt's XML joins the network; xl's vif a bridge of the network's name,
    which create.sh makes (isolated) when the profile creates the network."""
    network = {"type": "network", "source": "br-missing", "subnet": "192.0.2.0/24"}
    plan, bundle = fake_bundle(tmp_path / "lab", network={**network, "create": create})
    (bundle / "network.xml").write_text("<network><name>br-missing</name></network>\n")
    files = export(plan, bundle, tmp_path / "out", Target.XEN_PV, root=None)
    for vm in plan.vms:
        domain = ET.fromstring(files[f"{vm.name}.xml"])
        iface = domain.find("devices/interface")
        assert iface is not None and iface.get("type") == "network"
        assert iface.find("source").attrib == {"network": "br-missing"}
        check_xl(parse_xl(files[f"{vm.name}.cfg"]), vm, Target.XEN_PV, str(bundle), "br-missing")
        validate(tmp_path / "out" / f"{vm.name}.xml")
    result = run_script(tmp_path / "out" / "create.sh")
    calls = tools.read_text().splitlines()
    if create:
        assert result.returncode == 0, result.stderr
        assert calls[:3] == [
            "ip link show br-missing",
            "ip link add name br-missing type bridge",
            "ip link set br-missing up",
        ]
        assert f"net-define {bundle}/network.xml" in files["define.sh"]
    else:
        assert result.returncode == 1
        assert "the bridge br-missing is missing" in result.stderr
        assert calls == ["ip link show br-missing"]
        assert "net-define" not in files["define.sh"]
    tools.unlink()
    result = run_script(tmp_path / "out" / "define.sh")
    assert result.returncode == 0, result.stderr
    calls = tools.read_text().splitlines()
    if create:
        assert calls[:3] == [
            "virsh -c xen:///system net-info br-missing",
            f"virsh -c xen:///system net-define {bundle}/network.xml",
            "virsh -c xen:///system net-autostart br-missing",
        ]
    else:
        assert calls[0] == f"virsh -c xen:///system define {tmp_path}/out/web.xml"


def test_user_networking_is_refused(tmp_path: Path) -> None:
    network = {"type": "user", "subnet": "192.0.2.0/24"}
    plan, bundle = fake_bundle(tmp_path / "lab", network=network)
    with pytest.raises(ProfileError) as caught:
        export(plan, bundle, tmp_path / "out", Target.XEN_HVM)
    (problem,) = caught.value.problems
    assert problem.place == "network"
    assert "Xen does not have" in problem.message
    assert list((tmp_path / "out").iterdir()) == []


def test_a_network_name_that_cannot_be_a_bridge_is_refused(tmp_path: Path) -> None:
    network = {"type": "network", "source": "lab-network-of-t", "subnet": "192.0.2.0/24"}
    plan, bundle = fake_bundle(tmp_path / "lab", network=network)
    with pytest.raises(ProfileError) as caught:
        export(plan, bundle, tmp_path / "out", Target.XEN_PVH)
    (problem,) = caught.value.problems
    assert '"lab-network-of-t"' in problem.message
    assert "at most 15" in problem.message


def test_what_xl_cannot_take_is_named_at_its_vm(lab: tuple[Plan, Path]) -> None:
    plan, _ = lab
    web, db = plan.vms
    odd = dataclasses.replace(
        plan,
        vms=(
            dataclasses.replace(web, memory=web.memory + 4096),
            dataclasses.replace(db, vnc=dataclasses.replace(db.vnc, port=5800)),
        ),
    )
    assert [(p.place, p.message) for p in xen.check(odd)] == [
        ('vm "web"', "memory 1048580K is not a whole number of MiB, which xl needs"),
        ('vm "db"', "vnc_port 5800 is below 5900"),
    ]
    assert xen.check(plan) == []


# ------------------------------------------------------------------ root and bundle


def test_the_root_defaults_to_the_bundles_own_path(lab: tuple[Plan, Path], tmp_path: Path) -> None:
    plan, bundle = lab
    files = export(plan, bundle, tmp_path / "out", Target.XEN_HVM, root=None)
    disk = spec(parse_xl(files["web.cfg"])["disk"][0])["target"]
    assert disk == f"{bundle.resolve()}/vms/web/disk.qcow2"
    assert Path(disk).is_file()


def test_a_root_is_normalised(lab: tuple[Plan, Path], tmp_path: Path) -> None:
    plan, bundle = lab
    plain = export(plan, bundle, tmp_path / "plain", Target.XEN_PV, root="/srv/labs/t")
    assert export(plan, bundle, tmp_path / "slash", Target.XEN_PV, root="/srv//labs/t/") == plain


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ("srv/labs/t", "absolute path"),
        ("/srv/../etc", "without '..'"),
        ('/srv/labs/"t"', "a quote, a backslash or a control character"),
        ("/srv/labs/t\nx", "a quote, a backslash or a control character"),
    ],
)
def test_a_root_xl_cannot_name_is_refused(
    lab: tuple[Plan, Path], tmp_path: Path, root: str, says: str
) -> None:
    plan, bundle = lab
    with pytest.raises(UserError) as caught:
        export(plan, bundle, tmp_path / "out", Target.XEN_HVM, root=root)
    assert says in caught.value.message
    assert caught.value.place == "root"


def test_a_bundle_without_its_seed_is_refused(tmp_path: Path) -> None:
    plan, bundle = fake_bundle(tmp_path / "lab", **LAB)
    (bundle / "vms/db/seed.iso").unlink()
    with pytest.raises(BuildError) as caught:
        export(plan, bundle, tmp_path / "out", Target.XEN_PV)
    assert caught.value.place == 'vm "db"'
    assert "has no seed" in caught.value.message


def test_a_disk_of_another_size_than_the_plans_is_refused(tmp_path: Path) -> None:
    plan, bundle = fake_bundle(tmp_path / "lab", **LAB)
    disk = bundle / "vms/web/disk.qcow2"
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(disk), "3G"], check=True)
    with pytest.raises(BuildError) as caught:
        export(plan, bundle, tmp_path / "out", Target.XEN_HVM)
    assert caught.value.place == 'vm "web"'
    assert "is 3G, the plan says 2G" in caught.value.message


def test_a_target_that_is_not_xen_is_a_programming_error(
    lab: tuple[Plan, Path], tmp_path: Path
) -> None:
    plan, bundle = lab
    with pytest.raises(ValueError, match="not a Xen target"):
        export(plan, bundle, tmp_path / "out", Target.HYPERV)


def test_a_xen_target_in_the_profile_keeps_the_kvm_identity(tmp_path: Path) -> None:
    """``target = "xen-pv"`` in the profile plans the same identity as the KVM lab,
    and the export says it."""
    kvm_plan, _ = fake_bundle(tmp_path / "kvm", **LAB)
    plan, bundle = fake_bundle(tmp_path / "xen", lab={"target": "xen-pv"}, **LAB)
    assert plan.target is Target.XEN_PV
    files = export(plan, bundle, tmp_path / "out", plan.target)
    for vm, kvm_vm in zip(plan.vms, kvm_plan.vms, strict=True):
        assert (vm.name, vm.uuid, vm.mac, vm.vnc) == (
            kvm_vm.name,
            kvm_vm.uuid,
            kvm_vm.mac,
            kvm_vm.vnc,
        )
        check_xl(parse_xl(files[f"{vm.name}.cfg"]), kvm_vm, Target.XEN_PV, ROOT, "br-lab")


# ------------------------------------------------------------------ the guest kernel


def kconfig(*options: str, absent: tuple[str, ...] = ()) -> str:
    lines = ["# Automatically generated file; DO NOT EDIT.", "CONFIG_XEN=y"]
    lines += [f"CONFIG_{name}" for name in options]
    lines += [f"# CONFIG_{name} is not set" for name in absent]
    return "\n".join(lines) + "\n"


#: Every option any kind needs, as Debian's cloud kernel has them (y or m).
EVERYTHING = (
    "XEN_PV=y",
    "XEN_PVH=y",
    "XEN_PVHVM=y",
    "XEN_BLKDEV_FRONTEND=m",
    "XEN_NETDEV_FRONTEND=m",
    "HVC_XEN=y",
    "ATA_PIIX=m",
    "BLK_DEV_SR=m",
    "ISO9660_FS=m",
)


def test_kernel_warning_names_what_a_kind_lacks() -> None:
    full = kconfig(*EVERYTHING)
    assert [xen.kernel_warning(kind, full) for kind in KINDS] == [None, None, None]
    no_pvh = kconfig(*(o for o in EVERYTHING if o != "XEN_PVH=y"), absent=("XEN_PVH",))
    assert xen.kernel_warning(Target.XEN_HVM, no_pvh) is None
    assert xen.kernel_warning(Target.XEN_PV, no_pvh) is None
    warning = xen.kernel_warning(Target.XEN_PVH, no_pvh, "linux 6.1.0-99-amd64")
    assert warning == (
        "linux 6.1.0-99-amd64 lacks CONFIG_XEN_PVH (booting as a PVH guest): the xen-pvh "
        "files are written, but its VMs will not boot or work as PVH guests until the "
        "guest has a kernel with them"
    )
    bare = kconfig("XEN_PV=y")
    assert [o.name for o in xen.missing_kernel_options(Target.XEN_PV, bare)] == [
        "CONFIG_XEN_BLKDEV_FRONTEND",
        "CONFIG_XEN_NETDEV_FRONTEND",
        "CONFIG_HVC_XEN",
        "CONFIG_ISO9660_FS",
    ]
    assert "CONFIG_XEN_PVHVM (PV drivers in an HVM guest)" in (
        xen.kernel_warning(Target.XEN_HVM, bare) or ""
    )


def test_debian_cloud_kernel_runs_every_kind() -> None:
    """Debian's linux-image-cloud-amd64 (the golden image's kernel, installed here
    for the appliance) has everything every kind needs."""
    configs = sorted(Path("/boot").glob("config-*-cloud-amd64"))
    if not configs:
        pytest.skip("no Debian cloud kernel in /boot (linux-image-cloud-amd64)")
    for config in configs:
        text = config.read_text()
        assert [xen.kernel_warning(kind, text) for kind in KINDS] == [None, None, None], config


# ------------------------------------------------------------------ a real bundle


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, os_image: Path) -> tuple[Plan, Path, Path]:
    """A real two-VM bundle and its golden image, built once for this module (one
    appliance launch)."""
    folder = tmp_path_factory.mktemp("xen-built")
    golden = folder / "golden.qcow2"
    shutil.copyfile(os_image, golden)
    profile = write_lab(folder, golden, vms=VMS, **LAB)
    assert main([str(profile), "--output", str(folder / "out"), "-q"]) == 0
    bundle = folder / "out" / "t"
    return Plan.from_json((bundle / "plan.json").read_text()), bundle, golden


@pytest.mark.guestfs
def test_a_built_bundle_exports_to_every_kind(
    built: tuple[Plan, Path, Path], tmp_path: Path, tools: Path
) -> None:
    """The files name the bundle's own disks and seeds, each disk's backing chain
    leads from there to the golden image, and every VM keeps its KVM domain's
    identity."""
    plan, bundle, golden = built
    for kind in KINDS:
        out = tmp_path / kind.value
        files = export(plan, bundle, out, kind, root=None)
        for vm in plan.vms:
            kvm = ET.parse(bundle / vm.xml).getroot()
            domain = ET.fromstring(files[f"{vm.name}.xml"])
            validate(out / f"{vm.name}.xml")
            check_xml(domain, kvm, kind)
            cfg = parse_xl(files[f"{vm.name}.cfg"])
            check_xl(cfg, vm, kind, str(bundle.resolve()), "br-lab")
            disk = spec(cfg["disk"][0])["target"]
            chain = subprocess.run(
                ["qemu-img", "info", "-U", "--backing-chain", "--output=json", "-f", "qcow2", disk],
                capture_output=True,
                text=True,
                check=True,
            )
            images = [Path(image["filename"]) for image in json.loads(chain.stdout)]
            assert images == [Path(disk), Path(images[1])], "the overlay and one image below"
            assert images[1].resolve() == golden.resolve()
            assert Path(spec(cfg["disk"][1])["target"]).is_file()
        result = run_script(out / "define.sh")
        assert result.returncode == 0, result.stderr
