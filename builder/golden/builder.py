"""A bootable Debian golden image made from Debian's packages, offline but for the mirror.

``debootstrap --variant=minbase`` fills a folder on the host; the disk itself is made
inside one libguestfs appliance (partition, mkfs, tar-in, configuration, then
``grub-install`` and ``update-grub`` run in the guest), so no guest filesystem is
ever mounted on the host. The image is cached under a name derived from its recipe
(``vmbuild.golden.recipe``) and published atomically with a ``.sha256`` and a
``.json`` beside it.

What the image is made to be (see DESIGN.md, "Identity rules" and "Facts"):

* a template, not a machine: ``/etc/machine-id`` empty and ``/var/lib/dbus/machine-id``
  a link to it (a regular file there is copied into every clone), no SSH host keys (vmbuild
  injects each VM's own; cloud-init makes them if a VM gets none), no host leftovers
  (``/etc/hostname``, ``/etc/resolv.conf`` and ``/etc/hosts`` are the build host's
  after debootstrap), no apt archives or lists;
* reachable without a network: GRUB and the kernel on the serial port ttyS0, a
  serial getty, qemu-guest-agent started by udev when its virtio port appears;
* configured only by a NoCloud seed: ``datasource_list: [NoCloud, None]``, and
  nothing under ``network:`` (that would override the seed's network-config).
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vmbuild.errors import BuildError, UserError
from vmbuild.golden.recipe import GoldenRecipe, cached_golden, golden_path, sidecar
from vmbuild.guest.appliance import Appliance, ApplianceError, ApplianceTimeout, guestfs_module
from vmbuild.guest.files import GuestFiles
from vmbuild.host import qemuimg
from vmbuild.host.files import file_digest, write_atomic
from vmbuild.log import step

#: The root filesystem's label; /etc/fstab and GRUB use its UUID.
ROOT_LABEL = "debian-root"
FSTYPE = "ext4"
HOSTNAME = "debian-golden"
#: Room needed in the cache folder: the tree, its tarball and the image.
SPACE_NEEDED = 3 << 30

DEBOOTSTRAP_TIMEOUT = 1800.0
#: Copying the tree into the guest runs at TCG speed: allow for a slow host.
TAR_IN_TIMEOUT = 1800.0
GUEST_COMMAND_TIMEOUT = 900.0

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(image: Path) -> Iterator[None]:
    """One build of an image at a time; a second one waits and then finds it cached."""
    lock = sidecar(image, ".lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# The build


def debootstrap_path() -> str | None:
    """The debootstrap program, or None where it is not installed."""
    return _which("debootstrap")


def debootstrap_scripts() -> Path:
    """Where debootstrap keeps its scripts, one per release it can install."""
    return Path(os.environ.get("DEBOOTSTRAP_DIR") or "/usr/share/debootstrap") / "scripts"


def debootstrap_releases() -> dict[str, str] | None:
    """Each release debootstrap knows, with the script it shares (``sid`` for Debian's
    releases); None where debootstrap or its scripts are not installed."""
    if debootstrap_path() is None:
        return None
    folder = debootstrap_scripts()
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return None
    releases = {
        entry.name: Path(os.path.realpath(entry)).name
        for entry in entries
        if "." not in entry.name and entry.name != "debian-common" and entry.is_file()
    }
    return releases or None


def release_problem(release: str) -> tuple[str, str] | None:
    """(message, hint) when debootstrap does not know ``release``; None when it does,
    or when it is not installed and cannot tell."""
    known = debootstrap_releases()
    if known is None or release in known:
        return None
    debian = [name for name, script in known.items() if script == "sid"]
    close = difflib.get_close_matches(release, debian, n=1) or difflib.get_close_matches(
        release, list(known), n=1
    )
    hint = f'did you mean "{close[0]}"? ' if close else ""
    hint += f"debootstrap's Debian-family releases: {', '.join(debian or known)}"
    hint += f"; its scripts are in {debootstrap_scripts()}"
    return f'Debian release "{release}" is not one debootstrap knows', hint


def _preflight(recipe: GoldenRecipe, folder: Path) -> None:
    problem = release_problem(recipe.release)
    if problem is not None:
        raise UserError(problem[0], hint=problem[1])
    if os.geteuid() != 0:
        raise UserError(
            "building a golden image needs root: debootstrap installs packages as root",
            hint="run it as root, e.g. sudo vmbuild golden",
        )
    if debootstrap_path() is None:
        raise UserError("debootstrap is not installed", hint="apt-get install debootstrap")
    if _which("qemu-img") is None:
        raise UserError("qemu-img is not installed", hint="apt-get install qemu-utils")
    guestfs_module()
    free = shutil.disk_usage(folder).free
    if free < SPACE_NEEDED + recipe.size // 4:
        raise BuildError(
            f"only {free >> 20} MiB free in {folder}; a golden image build needs about "
            f"{(SPACE_NEEDED + recipe.size // 4) >> 20} MiB",
            hint="free some space or pass another cache folder",
        )


def _which(tool: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    return shutil.which(tool, path=path)


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder`` (debootstrap mounts /proc and /sys there)."""
    prefix = str(folder.resolve())
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(folder: Path, progress: Progress) -> None:
    """Delete a build folder, but never through a mount left inside it."""
    for point in _mounts_under(folder):
        subprocess.run(["umount", point], check=False, capture_output=True)
    left = _mounts_under(folder)
    if left:
        progress(f"vmbuild: warning: not removing {folder}: {', '.join(left)} still mounted")
        return
    shutil.rmtree(folder, ignore_errors=True)


#: debootstrap's phase lines worth showing; the rest goes to its log file.
_PHASES = re.compile(
    r"I: (Retrieving (Release|Packages)|Resolving|Found|Installing|Unpacking the|"
    r"Configuring the|Base system)"
)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to a process group, then SIGKILL if it is still there after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _debootstrap(recipe: GoldenRecipe, tree: Path, log: Path, progress: Progress) -> None:
    command = [
        str(_which("debootstrap")),
        "--variant=minbase",
        "--include=" + ",".join(recipe.all_packages()),
        recipe.release,
        str(tree),
        recipe.resolved_mirror(),
    ]
    progress("  $ " + " ".join(command))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    # Its own session, so that stopping it also stops the dpkg it runs in the chroot.
    with (
        log.open("w") as out,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        ) as proc,
    ):
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _stop_group(proc)

        watchdog = threading.Timer(DEBOOTSTRAP_TIMEOUT, expire)
        watchdog.daemon = True
        watchdog.start()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                if _PHASES.match(line):
                    progress("  " + line.rstrip()[3:])
            code = proc.wait()
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            watchdog.cancel()
    if expired.is_set():
        raise BuildError(f"debootstrap did not finish within {DEBOOTSTRAP_TIMEOUT:.0f}s")
    if code != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        tail = [line for line in lines if line.startswith("E: ")] or lines[-8:]
        debootstrap_log = tree / "debootstrap/debootstrap.log"
        if not any(line.startswith("E: ") for line in tail) and debootstrap_log.is_file():
            tail += debootstrap_log.read_text(errors="replace").strip().splitlines()[-8:]
        raise BuildError(
            f"debootstrap {recipe.release} from {recipe.resolved_mirror()} failed "
            f"(exit {code}):\n  " + "\n  ".join(tail),
            hint="a package name may be wrong, or the mirror unreachable",
        )


#: What every kernel needs to find its root disk, and the root fsck: a module that
#: is not built into the kernel must be in the initramfs. Debian 12's cloud kernel
#: has them as modules (``.ko``); Debian 13's builds some in and compresses the rest.
_BOOT_MODULES = ("virtio_blk", "virtio_pci", "virtio_scsi")
_INITRAMFS_FILES = ("/fsck.ext4",)
_MODULE = re.compile(r"/([^/]+)\.ko(?:\.(?:xz|zst|gz))?\Z")


def _builtin_modules(tree: Path, version: str) -> set[str]:
    """The modules built into kernel ``version``, from its ``modules.builtin``."""
    listing = tree / "lib/modules" / version / "modules.builtin"
    with contextlib.suppress(OSError):
        return {m.group(1) for line in listing.read_text().split() if (m := _MODULE.search(line))}
    return set()


def initramfs_missing(listing: str, builtin: set[str]) -> list[str]:
    """What an initramfs (its ``lsinitramfs`` listing) lacks of what booting needs."""
    lines = listing.splitlines()
    modules = {m.group(1) for line in lines if (m := _MODULE.search(line))}
    missing = [f"{name}.ko" for name in _BOOT_MODULES if name not in modules | builtin]
    for need in _INITRAMFS_FILES:
        if not any(line.endswith(need) for line in lines):
            missing.append(need[1:])
    return missing


def _chroot(tree: Path, *command: str, timeout: float = 600) -> str:
    """Run one of the tree's own programs in it, on the host, without mounting anything.

    The tree is debootstrap's, made a moment ago from Debian's signed packages (whose
    maintainer scripts debootstrap already ran the same way): this is no guest image.
    Under TCG the same ``update-initramfs`` takes ~210 s in the appliance, ~6 s here.
    """
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    try:
        result = subprocess.run(
            ["chroot", str(tree), *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"{command[0]} did not finish in {timeout:.0f}s") from None
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)} failed: {result.stderr.strip()[-600:]}")
    return result.stdout


def _initramfs(tree: Path) -> None:
    """Rebuild the initramfs so that it checks the root filesystem before mounting it.

    debootstrap made it while /etc/fstab said nothing, and initramfs-tools' fsck hook
    probes the root device itself, which a chroot does not have: it left fsck out
    ("fsck not present, so skipping root file system" at every boot). FSTYPE names
    the type instead; it stays in the image for later kernels.
    """
    conf = tree / "etc/initramfs-tools/conf.d"
    if conf.is_symlink() or not conf.is_dir():
        raise BuildError(f"{conf} is not a folder")
    fd = os.open(conf / "vmbuild", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write("# vmbuild golden image: the root filesystem's type, for the fsck hook\n")
        handle.write(f"FSTYPE={FSTYPE}\n")
    _chroot(tree, "update-initramfs", "-u", "-k", "all")
    for initrd in sorted((tree / "boot").glob("initrd.img-*")):
        listing = _chroot(tree, "lsinitramfs", f"/boot/{initrd.name}")
        version = initrd.name.removeprefix("initrd.img-")
        missing = initramfs_missing(listing, _builtin_modules(tree, version))
        if missing:
            raise BuildError(f"{initrd.name} lacks {', '.join(missing)}")


#: Not copied into the image: apt's downloads and lists, debootstrap's log and the
#: host keys made for the build (each clone gets its own).
_TAR_EXCLUDES = (
    "./var/cache/apt/archives/*.deb",
    "./var/cache/apt/*.bin",
    "./var/lib/apt/lists/*_*",
    "./var/log/bootstrap.log",
    "./etc/ssh/ssh_host_*",
)


def _tarball(tree: Path, dest: Path) -> None:
    command = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(tree)]
    command += [f"--exclude={pattern}" for pattern in _TAR_EXCLUDES]
    command += ["-cf", str(dest), "."]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"packing the debootstrap tree failed: {result.stderr.strip()}")


def _grub_settings() -> str:
    # ttyS0 comes last, so it is /dev/console: systemd's and cloud-init's output
    # reach the serial port (virsh console, the console log) and not only tty0.
    return (
        "# vmbuild golden image: boot messages and a login on the serial port\n"
        "GRUB_TIMEOUT=1\n"
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"\n'
        'GRUB_TERMINAL="serial console"\n'
        'GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"\n'
    )


def _sources_list(recipe: GoldenRecipe) -> str:
    mirror = recipe.resolved_mirror()
    return (
        f"deb {mirror} {recipe.release} main\n"
        f"deb {mirror} {recipe.release}-updates main\n"
        f"deb http://security.debian.org/debian-security {recipe.release}-security main\n"
    )


_CLOUD_CFG = """\
# vmbuild: every VM gets its configuration from a NoCloud seed (label cidata).
# No network: settings here, or they would override the seed's network-config.
datasource_list: [ NoCloud, None ]
# The image's own locale (built into glibc). Debian's default, en_US.UTF-8, is not
# generated in a minbase system, and cloud-init's locale module fails on it.
locale: C.UTF-8
# Host keys cloud-init makes when a VM has none: not DSA, which sshd ignores anyway.
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
"""


def _sh(app: Appliance, what: str, script: str, timeout: float = GUEST_COMMAND_TIMEOUT) -> str:
    """Run ``script`` in the new system; a failure carries everything it printed.

    guestfs reports only a failed command's stderr, and tools such as grub-install
    say why they failed on stdout as well: both streams are joined, and on failure
    the joined text and the exit status go to stderr.
    """
    full = (
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8\n"
        f"out=$( {{ {script}\n}} 2>&1 )\n"
        'status=$?\nprintf "%s" "$out"\n'
        'if [ "$status" -ne 0 ]; then\n'
        '  printf "%s\\n(exit status %d)" "$out" "$status" >&2\n  exit "$status"\nfi\n'
    )
    out: str = app.call(what, app.handle.sh, full, timeout=timeout)
    return out


def _replace(files: GuestFiles, path: str, text: str, mode: int = 0o644) -> None:
    """A new regular file at ``path``, root's, in place of whatever debootstrap left
    there (a link is removed, not written through)."""
    files.remove(path)
    files.write(path, text.encode(), mode=mode)


#: Appliance launches that may try grub-install before the build gives up.
GRUB_ATTEMPTS = 3


def _install_boot(image: Path, uuid: str, progress: Progress) -> None:
    """GRUB into the MBR and grub.cfg, in an appliance of its own.

    Run in the appliance that had just partitioned the disk and filled it, grub-install
    now and then took the disk for a partitionless one holding ext2 ("embedding is
    not possible, but this is required for cross-disk install"), and kept doing so
    for the rest of that appliance's life; in a fresh appliance, where the kernel
    read the partition table at boot, it has not. So GRUB gets an appliance of its
    own, and a failure is retried in a new one, showing each failure's output.
    """
    failures: list[str] = []
    for attempt in range(1, GRUB_ATTEMPTS + 1):
        with Appliance() as app:
            app.add(image, "qcow2", readonly=False)
            app.launch()
            h = app.handle
            disk = app.device(0)
            app.call("mounting the filesystem", h.mount, f"{disk}1", "/")
            try:
                _sh(app, "installing GRUB", f"grub-install --target=i386-pc {disk}")
            except ApplianceTimeout:
                raise
            except ApplianceError as err:
                failures.append(f"attempt {attempt}: {err}")
                progress(f"  grub-install failed (attempt {attempt} of {GRUB_ATTEMPTS}): {err}")
                app.call("unmounting", h.umount_all)
                continue
            _sh(app, "writing grub.cfg", "update-grub")
            # Looked at only now: the guest's own commands above changed it.
            grub_cfg = (GuestFiles(app).read("/boot/grub/grub.cfg") or b"").decode()
            if f"root=UUID={uuid}" not in grub_cfg or "console=ttyS0" not in grub_cfg:
                raise BuildError(
                    "update-grub wrote a grub.cfg without root=UUID and the serial console"
                )
            app.call("syncing", h.sync)
            app.call("unmounting", h.umount_all)
            app.call("shutting the appliance down", h.shutdown)
            return
    raise BuildError("grub-install failed in every attempt:\n" + "\n".join(failures))


def _make_disk(recipe: GoldenRecipe, image: Path, tarball: Path, progress: Progress) -> None:
    qemuimg.run(
        ["create", "-q", "-f", "qcow2", "-o", "compat=1.1", str(image), str(recipe.size)],
        f"creating {image}",
    )
    with Appliance() as app:
        app.add(image, "qcow2", readonly=False)
        progress(f"  starting the appliance ({app.accel})")
        app.launch()
        h = app.handle
        disk = app.device(0)
        part = f"{disk}1"
        progress(f"  partitioning {disk} (MBR, one bootable partition) and making ext4")
        app.call("partitioning", h.part_disk, disk, "mbr")
        app.call("marking the partition bootable", h.part_set_bootable, disk, 1, True)
        app.call("making the filesystem", lambda: h.mkfs(FSTYPE, part, label=ROOT_LABEL))
        uuid: str = app.call("reading the filesystem UUID", h.vfs_uuid, part)
        app.call("mounting the filesystem", h.mount, part, "/")
        size = tarball.stat().st_size
        progress(f"  copying the tree in ({size >> 20} MiB)")
        app.call(
            "copying the debootstrap tree in",
            lambda: h.tar_in(str(tarball), "/", xattrs=True),
            timeout=TAR_IN_TIMEOUT,
        )

        progress("  configuring: fstab, hostname, serial console, cloud-init, identity")
        # Every change up to the guest's own commands below goes through it.
        files = GuestFiles(app)
        _replace(files, "/etc/fstab", f"UUID={uuid} / {FSTYPE} errors=remount-ro 0 1\n")
        _replace(files, "/etc/hostname", HOSTNAME + "\n")
        _replace(
            files,
            "/etc/hosts",
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n\n"
            "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
            "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
        )
        _replace(files, "/etc/resolv.conf", "")  # the build host's; vmbuild writes each VM's
        _replace(files, "/etc/apt/sources.list", _sources_list(recipe))
        _replace(files, "/etc/default/grub.d/90-vmbuild.cfg", _grub_settings())
        _replace(files, "/etc/cloud/cloud.cfg.d/90-vmbuild.cfg", _CLOUD_CFG)
        _replace(files, "/etc/default/locale", "LANG=C.UTF-8\n")
        # Empty, not absent: systemd then makes one at first boot and treats the boot
        # as the first. dbus's copy must not be a regular file, or systemd copies it
        # into every clone: a link to /etc/machine-id, as Debian's dbus package makes.
        # Made even though minbase has no dbus: a later `apt install dbus` keeps it,
        # and vmbuild's machine-id step expects /var/lib/dbus to be there.
        _replace(files, "/etc/machine-id", "", mode=0o444)
        files.resolve_folder("/var/lib/dbus", create=True)
        files.remove("/var/lib/dbus/machine-id")
        files.symlink("/var/lib/dbus/machine-id", "/etc/machine-id")
        files.remove_all(files.glob("/etc/ssh/ssh_host_*"))
        if files.kind("/usr/lib/udev/rules.d/60-qemu-guest-agent.rules") != "file":
            raise BuildError(
                "qemu-guest-agent's udev rule is missing: nothing would start the agent"
            )

        _sh(app, "enabling the serial getty", "systemctl enable serial-getty@ttyS0.service")
        # Where grub-pc's postinst reinstalls GRUB when a VM upgrades it: vmbuild's
        # default disk bus is virtio, so /dev/vda (a clone on another bus asks).
        _sh(
            app,
            "telling debconf where GRUB lives",
            "echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | debconf-set-selections",
        )

        app.call("syncing", h.sync)
        app.call("unmounting", h.umount_all)
        app.call("shutting the appliance down", h.shutdown)
    progress("  installing GRUB and writing grub.cfg")
    _install_boot(image, uuid, progress)


def build_golden(
    recipe: GoldenRecipe,
    cache: Path | None = None,
    *,
    progress: Progress = _stderr,
) -> tuple[Path, str]:
    """Build ``recipe``'s image into the cache and return (path, sha256).

    A cached image whose recorded sha256 matches is returned without a rebuild.
    The image is made under a temporary name beside its final place and renamed
    when complete: a failed or interrupted build leaves no half-written image.
    """
    image = golden_path(recipe, cache)
    cached = cached_golden(recipe, cache)
    if cached is not None:
        progress(f"golden image {cached[0]} is cached (sha256 {cached[1][:16]}…)")
        return cached
    folder = image.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for made in (folder.parent, folder):  # searchable whatever the umask
            if made.stat().st_uid == os.geteuid():
                made.chmod(made.stat().st_mode | 0o755)
    except OSError as err:
        raise UserError(f"cannot make the cache folder {folder}: {err.strerror}") from err
    _preflight(recipe, folder)

    with _locked(image):
        cached = cached_golden(recipe, cache)  # another build finished while we waited
        if cached is not None:
            progress(f"golden image {cached[0]} was built meanwhile")
            return cached
        if image.exists():
            progress(f"{image} does not match its recorded sha256: building it again")
        return _build(recipe, image, progress)


def _build(recipe: GoldenRecipe, image: Path, progress: Progress) -> tuple[Path, str]:
    timings: dict[str, float] = {}
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".build-{image.stem}-", dir=image.parent))
    try:
        tree = work / "root"
        packages = len(recipe.all_packages())
        with step(f"debootstrap {recipe.release} (minbase and {packages} packages)") as took:
            _debootstrap(recipe, tree, work / "debootstrap.log", progress)
        timings["debootstrap"] = took.seconds
        with step("rebuilding the initramfs") as took:
            _initramfs(tree)
        timings["initramfs"] = took.seconds
        with step("packing the tree") as took:
            tarball = work / "root.tar"
            _tarball(tree, tarball)
            _remove_tree(tree, progress)
        timings["tar"] = took.seconds
        partial = work / "disk.qcow2"
        with step(f"making the disk ({recipe.size >> 20} MiB)") as took:
            _make_disk(recipe, partial, tarball, progress)
            qemuimg.check(partial, "qcow2")
        timings["disk"] = took.seconds
        with step("publishing"):
            sha = file_digest(partial)
            info = qemuimg.info(partial, "qcow2")
            record = {
                "recipe": recipe.to_json(),
                "digest": recipe.digest(),
                "image": image.name,
                "sha256": sha,
                "virtual_size": info.virtual_size,
                "actual_size": info.actual_size,
                "packages": list(recipe.all_packages()),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "timings": {key: round(value, 1) for key, value in timings.items()},
            }
            write_atomic(sidecar(image, ".json"), (json.dumps(record, indent=2) + "\n").encode())
            write_atomic(sidecar(image, ".sha256"), f"{sha}  {image.name}\n".encode())
            os.chmod(partial, 0o644)
            os.replace(partial, image)
    finally:
        _remove_tree(work, progress)
    progress(
        f"golden image {image} ({info.actual_size >> 20} MiB on disk) "
        f"built in {time.monotonic() - start:.0f}s"
    )
    return image, sha


__all__ = [
    "build_golden",
    "debootstrap_path",
    "debootstrap_releases",
    "debootstrap_scripts",
    "release_problem",
]
