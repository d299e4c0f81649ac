"""A hostile golden image, generated: random trees of symbolic links, FIFOs, device
nodes, folders and files at the places vmbuild's disk operations touch, in a real
filesystem inside a real appliance. Whatever the tree, vmbuild's operations change
nothing outside the paths they name: no write, removal or glob crosses a link, no
call hangs on a FIFO, and only vmbuild's own errors come out.

One appliance for the whole test; each example gets a freshly made filesystem.
"""

from __future__ import annotations

import fnmatch
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from labs import BRIDGE, debian_facts, write_lab
from vmbuild.build.customize import plan_operations
from vmbuild.errors import BuildError
from vmbuild.guest.appliance import Appliance, ApplianceTimeout
from vmbuild.guest.diskops import Context, Operation
from vmbuild.guest.files import GuestFiles
from vmbuild.model.plan import Plan, make_plan
from vmbuild.model.profile import load_profile
from vmbuild.plugins.manager import Plugins, load_plugins

pytestmark = [pytest.mark.guestfs, pytest.mark.slow]

#: The lab: one VM, web, with root's key and password and a sudo user.
ACCOUNTS = {
    "root": {
        "ssh_authorized_keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6AY2oSZm2fXRGQJ4ZcU5ZBjoGWnP1vFvmKDf0Hk1C a@b",
        ],
        "password_hash": "$6$salt$0123456789abcdefghijklmnopqrstuvwxyz",
    },
    "user": {"name": "lab", "sudo": True},
}


FACTS = debian_facts()

#: The ordinary tree every example starts from: folders, then files.
FOLDERS = (
    "/etc/ssh",
    "/etc/network/interfaces.d",
    "/etc/udev/rules.d",
    "/etc/systemd/network",
    "/etc/cloud/cloud.cfg.d",
    "/etc/sudoers.d",
    "/var/lib/cloud/instances/golden",
    "/var/lib/dbus",
    "/var/lib/dhcp",
    "/var/lib/systemd",
    "/var/log",
    "/root/.ssh",
    "/home",
    "/tmp",
)
FILES = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
    "/etc/group": "root:x:0:\n",
    "/etc/shadow": "root:*:19000:0:99999:7:::\n",
    "/etc/gshadow": "root:*::\n",
    "/etc/hostname": "golden\n",
    "/etc/hosts": "127.0.0.1 localhost golden\n",
    "/etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/etc/network/interfaces": "auto eth0\niface eth0 inet dhcp\n",
    "/etc/ssh/sshd_config": "PermitRootLogin no\n",
    "/etc/ssh/ssh_host_ed25519_key": "golden private key\n",
    "/etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA golden\n",
    "/var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/var/lib/dhcp/dhclient.eth0.leases": "lease {}\n",
    "/var/lib/cloud/instances/golden/obj.pkl": "state\n",
    "/etc/udev/rules.d/70-persistent-net.rules": "# eth0\n",
    "/root/.ssh/authorized_keys": "ssh-ed25519 AAAA golden\n",
    "/root/.bashrc": "# root\n",
    "/tmp/keep": "keep me\n",
}

#: Where a hostile image puts its traps: what the operations touch, and the folders
#: above it.
TRAP_PATHS = (
    "/etc/hostname",
    "/etc/hosts",
    "/etc/machine-id",
    "/etc/shadow",
    "/etc/ssh",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_rsa_key.pub",
    "/etc/network",
    "/etc/network/interfaces",
    "/etc/network/interfaces.d",
    "/etc/udev/rules.d",
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/systemd/network",
    "/etc/cloud/cloud.cfg.d",
    "/etc/resolv.conf",
    "/etc/sudoers.d",
    "/var/lib",
    "/var/lib/cloud",
    "/var/lib/cloud/instances",
    "/var/lib/dbus",
    "/var/lib/dbus/machine-id",
    "/var/lib/dhcp",
    "/var/lib/systemd/random-seed",
    "/var/log/cloud-init.log",
    "/root",
    "/root/.ssh",
    "/root/.ssh/authorized_keys",
    "/home",
)
#: Where a link may point: the guest's precious files, its root, itself, nowhere.
TARGETS = (
    "/",
    "/etc",
    "/etc/shadow",
    "/etc/passwd",
    "/tmp",
    "/tmp/keep",
    "/root",
    "..",
    "../..",
    "../../etc",
    ".",
    "/nonexistent",
    "loop",
)


@dataclass(frozen=True)
class Trap:
    path: str
    kind: str  # link, fifo, chardev, blockdev, folder, file
    target: str = ""


traps = st.lists(
    st.builds(
        Trap,
        path=st.sampled_from(TRAP_PATHS),
        kind=st.sampled_from(("link", "link", "link", "fifo", "chardev", "blockdev", "folder")),
        target=st.sampled_from(TARGETS),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda trap: trap.path,
)


@dataclass
class Guest:
    app: Appliance
    device: str
    plan: Plan
    plugins: Plugins
    operations: tuple[Operation, ...]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    folder = tmp_path_factory.mktemp("fuzz-guest")
    path = write_lab(
        folder,
        name="fuzz",
        network={**BRIDGE, "dns": ["192.0.2.1"]},
        tables=ACCOUNTS,
        vms=[{"name": "web", "ip": "192.0.2.10"}],
    )
    profile = load_profile(path)
    plugins = load_plugins(profile)
    plan = make_plan(profile, plugins)
    operations = plan_operations(plan, FACTS, plugins).operations[plan.vms[0].name]
    with Appliance(call_timeout=20) as app:
        app.call("adding a scratch disk", app.handle.add_drive_scratch, 64 << 20)
        app.launch()
        device = "/dev/sda"  # the scratch disk, the only drive
        app.call("partitioning", app.handle.part_disk, device, "mbr")
        yield Guest(app, device + "1", plan, plugins, operations)


def _fresh(guest: Guest, chosen: list[Trap], scratch: Path) -> None:
    """A new filesystem holding the ordinary tree and the traps, written in one call
    (a tar stream): under TCG every appliance call costs milliseconds."""
    h = guest.app.handle
    h.umount_all()
    h.mkfs("ext4", guest.device)
    h.mount(guest.device, "/")
    # A trap below another lands wherever that one leads: left out, the others
    # cover it (a link above a written file, a FIFO at one).
    paths = {trap.path for trap in chosen}
    chosen = [t for t in chosen if not any(t.path.startswith(other + "/") for other in paths)]
    trapped = {trap.path for trap in chosen}

    def hidden(path: str) -> bool:
        return any(path == t or path.startswith(t + "/") for t in trapped)

    archive = scratch / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        for folder in FOLDERS:
            parts = folder.strip("/").split("/")
            for depth in range(1, len(parts) + 1):
                path = "/" + "/".join(parts[:depth])
                if not hidden(path):
                    _add(tar, path, tarfile.DIRTYPE, mode=0o755)
        for path, text in FILES.items():
            if not hidden(path):
                mode = 0o640 if path == "/etc/shadow" else 0o600 if path.endswith("_key") else 0o644
                _add(tar, path, tarfile.REGTYPE, mode=mode, data=text.encode())
        for trap in chosen:
            _plant(tar, trap)
    h.tar_in(str(archive), "/")


def _add(
    tar: tarfile.TarFile,
    path: str,
    kind: bytes,
    *,
    mode: int = 0o644,
    data: bytes = b"",
    link: str = "",
    device: tuple[int, int] = (0, 0),
) -> None:
    info = tarfile.TarInfo("." + path)
    info.type = kind
    info.mode = mode
    info.size = len(data)
    info.linkname = link
    info.devmajor, info.devminor = device
    tar.addfile(info, io.BytesIO(data) if data else None)


def _plant(tar: tarfile.TarFile, trap: Trap) -> None:
    parts = trap.path.strip("/").split("/")
    for depth in range(1, len(parts)):  # its folders, if the ordinary tree lacks them
        _add(tar, "/" + "/".join(parts[:depth]), tarfile.DIRTYPE, mode=0o755)
    if trap.kind == "link":
        target = trap.path if trap.target == "loop" else trap.target
        _add(tar, trap.path, tarfile.SYMTYPE, link=target)
    elif trap.kind == "fifo":
        _add(tar, trap.path, tarfile.FIFOTYPE)
    elif trap.kind == "chardev":
        _add(tar, trap.path, tarfile.CHRTYPE, device=(1, 3))  # /dev/null's numbers
    elif trap.kind == "blockdev":
        _add(tar, trap.path, tarfile.BLKTYPE, device=(8, 0))
    else:
        _add(tar, trap.path, tarfile.DIRTYPE, mode=0o755)
        _add(tar, trap.path + "/inside", tarfile.REGTYPE, data=b"inside\n")


Entry = tuple[Any, ...]


def _snapshot(guest: Guest, scratch: Path) -> dict[str, Entry]:
    """Every path of the filesystem as the appliance's tar sees it (never following a
    link): kind, mode, owner, and the content, link target or device numbers."""
    archive = scratch / "snapshot.tar"
    guest.app.handle.tar_out("/", str(archive))
    out: dict[str, Entry] = {}
    with tarfile.open(archive) as tar:
        for info in tar:
            path = "/" + info.name.removeprefix("./").strip("/")
            if path in ("/", "/lost+found"):
                continue
            extracted = tar.extractfile(info) if info.isreg() else None
            detail: Any = extracted.read() if extracted else info.linkname
            out[path] = (
                info.type,
                info.mode,
                info.uid,
                info.gid,
                detail,
                info.devmajor,
                info.devminor,
            )
    return out


def _allowed(guest: Guest) -> list[str]:
    """The patterns of every path the planned operations name."""
    patterns: list[str] = []
    for op in guest.operations:
        data = op.to_data()
        kind = data["op"]
        if kind == "write":
            patterns.append(data["path"])
        elif kind == "remove":
            patterns += [*data["patterns"], *(f"{p}/*" for p in data["patterns"])]
        elif kind == "machine-id":
            patterns += ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        elif kind == "ssh-host-keys":
            patterns.append("/etc/ssh/ssh_host_*")
        elif kind == "authorized-keys":
            home = "/root" if data["user"] == "root" else f"/home/{data['user']}"
            patterns += [home, f"{home}/.ssh", f"{home}/.ssh/authorized_keys"]
        elif kind == "user":
            user = data["user"]
            patterns += ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
            patterns += [f"/home/{user}", f"/etc/sudoers.d/90-vmbuild-{user}"]
        elif kind == "password":
            patterns.append("/etc/shadow")
        else:
            raise AssertionError(f"the test does not know operation {kind}")
    return patterns


def _keys() -> Context:
    return Context(
        {
            kind: (f"private {kind}\n".encode(), f"ssh-{kind} AAAA{kind} root@web")
            for kind in ("ed25519", "ecdsa", "rsa")
        }
    )


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(chosen=traps)
def test_nothing_outside_the_named_paths_changes(
    guest: Guest, chosen: list[Trap], tmp_path: Path
) -> None:
    _fresh(guest, chosen, tmp_path)
    before = _snapshot(guest, tmp_path)
    files = GuestFiles(guest.app)
    for op in guest.operations:
        try:
            op.apply(files, _keys())
        except ApplianceTimeout as err:  # a hang: the appliance is gone
            pytest.fail(f"{op.summary}: {err}")
        except BuildError:
            pass  # refused, as vmbuild refuses a path it must not use
    after = _snapshot(guest, tmp_path)
    allowed = _allowed(guest)

    def ok(path: str) -> bool:
        if "/.vmbuild-removed-" in path:
            return False  # the removal's own scratch folder must be gone again
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed):
            return True
        # A folder made on the way to a named path.
        added_folder = path not in before and after.get(path, (b"",))[0] == tarfile.DIRTYPE
        return added_folder and any(pattern.startswith(path + "/") for pattern in allowed)

    changed = sorted(
        path for path in set(before) | set(after) if before.get(path) != after.get(path)
    )
    wrong = [path for path in changed if not ok(path)]
    assert not wrong, {path: (before.get(path), after.get(path)) for path in wrong}
    # The trap's victims are as they were.
    assert after["/tmp/keep"] == before["/tmp/keep"]
    for path in ("/etc/passwd", "/etc/group"):
        if before.get(path, (b"",))[0] == tarfile.REGTYPE:
            assert after[path][4].startswith(before[path][4]), path  # only appended to
