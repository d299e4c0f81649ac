"""Disk edits as data: small operation objects, each saying what it does in one line,
run in order inside the appliance by one adapter.

Plugins return lists of these from ``vmbuild_disk_operations``; vmbuild orders them
by phase (clean-up, files, accounts, passwords last, as virt-customize does) and
applies them with ``GuestFiles``, which looks at every component of every path with
lstat and never follows a symbolic link (writes and reads through one are refused,
removals and globs skip it), and refuses FIFOs and device nodes where it would write
or read.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import posixpath
import secrets
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vmbuild.errors import BuildError
from vmbuild.guest.appliance import Appliance, ApplianceError
from vmbuild.host.interrupts import PLUGIN_TIMEOUT, Overran, deadline


class Phase(enum.IntEnum):
    CLEAN = 10
    FILES = 50
    ACCOUNTS = 70
    PASSWORDS = 90


class GuestPathError(BuildError):
    """A guest path is not what vmbuild may write or read: a link, a FIFO, ..."""


def guest_path(path: str) -> str:
    """Absolute, normalised, without '..': the only guest paths vmbuild accepts."""
    if not path.startswith("/"):
        raise GuestPathError(f"guest path {path!r} is not absolute")
    if ".." in path.split("/"):
        raise GuestPathError(f"guest path {path!r} contains '..'")
    if "\0" in path:
        raise GuestPathError(f"guest path {path!r} contains a NUL byte")
    return posixpath.normpath(path).replace("//", "/")


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def _kind(entry: Mapping[str, int]) -> str:
    return _KINDS.get(stat.S_IFMT(entry["st_mode"]), "unknown")


def _mode_owner(entry: Mapping[str, int]) -> tuple[int, int, int]:
    return stat.S_IMODE(entry["st_mode"]), entry["st_uid"], entry["st_gid"]


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "folder",
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


#: readdir's file type letters (guestfs_readdir); "u" and "?" mean "ask lstat".
_READDIR_KINDS = {
    "r": "file",
    "d": "folder",
    "l": "symbolic link",
    "f": "FIFO",
    "c": "character device",
    "b": "block device",
    "s": "socket",
}


class GuestFiles:
    """File access to one mounted guest, checked component by component: no link is
    ever followed, so every path names exactly the file it says.

    Under TCG every appliance call costs milliseconds, so what the guest holds is
    remembered: each folder's listing (one readdir answers every later look-up in
    it), lstat answers and file contents, kept up to date by this class's own
    changes. Every change to the guest goes through it, and one
    instance serves one mounted guest: mounting another needs a new one.
    """

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.h = app.handle
        # New files get 0644 (write's 0666 less this), which write() relies on.
        if app.umask != 0o022:
            self.app.call("setting the umask", self.h.umask, 0o022)
            app.umask = 0o022
        self._passwd: dict[str, tuple[int, int, str]] | None = None
        #: Folders already checked to be folders, component by component.
        self._folders: set[str] = set()
        #: Folder -> {name: kind} from readdir.
        self._listings: dict[str, dict[str, str]] = {}
        #: Path -> lstat answer of an existing entry.
        self._stats: dict[str, Mapping[str, int]] = {}
        #: Path -> contents of a regular file read or written.
        self._contents: dict[str, bytes] = {}
        #: What was left alone because a link or special file stood in the way,
        #: one line each, for the build to report.
        self.skipped: list[str] = []

    # ---------------------------------------------------------------- look-ups

    def kind(self, path: str) -> str | None:
        """What is at ``path``, never following a link; None if nothing is there,
        or if a folder above it is missing, a link or not a folder."""
        path = guest_path(path)
        if path == "/":
            return "folder"
        try:
            self.resolve_folder(posixpath.dirname(path))
        except GuestPathError:
            return None
        return self._kind_at(path)

    def _kind_at(self, real: str) -> str | None:
        """The kind of a path whose folders were checked to hold no links."""
        if real == "/":
            return "folder"
        parent, name = posixpath.split(real)
        listing = self._listing(parent)
        if listing is not None:
            kind = listing.get(name)
            if kind != "unknown":
                return kind
        entry = self._lstat(real)
        return None if entry is None else _kind(entry)

    def _listing(self, folder: str) -> dict[str, str] | None:
        """A checked folder's entries and their kinds; None when it cannot be listed
        in one answer (then each name is looked at with lstat)."""
        if folder not in self._listings:
            entries = self.app.attempt(f"listing {folder}", self.h.readdir, folder)
            if isinstance(entries, ApplianceError):
                return None  # too big for one answer, or not a folder
            self._listings[folder] = {
                str(entry["name"]): _READDIR_KINDS.get(str(entry["ftyp"]), "unknown")
                for entry in entries
                if entry["name"] not in (".", "..")
            }
        return self._listings[folder]

    def _lstat(self, real: str) -> Mapping[str, int] | None:
        """lstat of a real path (not "/"); None when nothing is there."""
        if real in self._stats:
            return self._stats[real]
        parent, name = posixpath.split(real)
        listing = self._listings.get(parent)
        if listing is not None and name not in listing:
            return None
        try:
            stats = self.app.call(f"looking at {real}", self.h.lstatnslist, parent, [name])
        except ApplianceError:
            if self._kind_at(parent) != "folder":
                return None  # the folder itself is missing (or not a folder)
            raise
        entry: Mapping[str, int] = stats[0]
        if entry["st_ino"] == -1:
            return None
        self._stats[real] = entry
        return entry

    def _changed(self, real: str, kind: str | None) -> None:
        """Record that ``real`` now holds ``kind`` (None: nothing), forgetting what
        was known at or below it."""
        below = real.rstrip("/") + "/"
        for cache in (self._stats, self._contents, self._listings):
            for path in [p for p in cache if p == real or p.startswith(below)]:
                del cache[path]
        self._folders = {p for p in self._folders if p != real and not p.startswith(below)}
        parent, name = posixpath.split(real)
        listing = self._listings.get(parent)
        if listing is not None:
            if kind is None:
                listing.pop(name, None)
            else:
                listing[name] = kind

    def mode_owner(self, path: str) -> tuple[int, int, int] | None:
        """(mode, uid, gid) of a regular file, or None when it does not exist."""
        _target, entry = self._target(path)
        return None if entry is None else _mode_owner(entry)

    def link_target(self, path: str) -> str:
        return str(self.app.call(f"reading the link {path}", self.h.readlink, path))

    def resolve_folder(
        self, path: str, *, create: bool = False, mode: int = 0o755, owner: tuple[int, int] = (0, 0)
    ) -> str:
        """Check that ``path`` is a folder inside the guest, component by component,
        and return it.

        Each component is looked at with lstat and must be a folder: a symbolic link
        is never followed, wherever it points (a hostile golden image may link
        /etc/ssh to /tmp, or /var/lib/cloud to /etc). Missing components are made
        when ``create`` is set.
        """
        path = guest_path(path)
        if path in self._folders or path == "/":
            return path
        current = "/"
        for part in path.strip("/").split("/"):
            candidate = posixpath.join(current, part)
            current = candidate
            if candidate in self._folders:
                continue
            kind = self._kind_at(candidate)
            if kind is None:
                if not create:
                    raise GuestPathError(f"{candidate} does not exist")
                self.app.call(f"making {candidate}", self.h.mkdir_mode, candidate, mode)
                self._changed(candidate, "folder")
                self._listings[candidate] = {}
                # A new folder is root's already (unless its parent is setgid, when
                # it takes the parent's group as the guest's own mkdir would).
                if owner != (0, 0):
                    self.app.call(
                        f"setting the owner of {candidate}", self.h.chown, *owner, candidate
                    )
            elif kind == "symbolic link":
                raise GuestPathError(
                    f"{candidate} is a symbolic link to {self.link_target(candidate)}; "
                    "vmbuild never follows links inside the guest (the golden image may "
                    "be hostile)",
                    hint=f"make {candidate} a real folder in the golden image",
                )
            elif kind != "folder":
                raise GuestPathError(f"{candidate} is a {kind}, not a folder")
            self._folders.add(candidate)
        return path

    def _target(
        self, path: str, *, create_parent: bool = False
    ) -> tuple[str, Mapping[str, int] | None]:
        """The path to write ``path`` at, checked, and what is there now (lstat)."""
        target = guest_path(path)
        self.resolve_folder(posixpath.dirname(target), create=create_parent)
        kind = self._kind_at(target)
        if kind == "symbolic link":
            raise GuestPathError(
                f"{path} is a symbolic link to {self.link_target(target)}; vmbuild does not "
                "write through links (the golden image may be hostile)",
                hint="replace the link with a regular file in the golden image",
            )
        if kind not in (None, "file"):
            raise GuestPathError(f"{path} is a {kind}, not a regular file")
        return target, (None if kind is None else self._lstat(target))

    # ------------------------------------------------------------- read/write

    def read(self, path: str) -> bytes | None:
        """A regular file's contents, or None when it does not exist."""
        target, entry = self._target(path)
        if entry is None:
            return None
        if target not in self._contents:
            size = int(entry["st_size"])
            chunks = []
            for offset in range(0, size, 1 << 20):  # pread answers are capped at ~2 MiB
                count = min(1 << 20, size - offset)
                chunks.append(
                    bytes(self.app.call(f"reading {path}", self.h.pread, target, count, offset))
                )
            self._contents[target] = b"".join(chunks)
        return self._contents[target]

    def write(
        self,
        path: str,
        data: bytes,
        *,
        mode: int = 0o644,
        owner: tuple[int, int] = (0, 0),
        create_parent: bool = True,
    ) -> None:
        target, entry = self._target(path, create_parent=create_parent)
        self._changed(target, "file")
        self.app.call(f"writing {path}", self.h.write, target, data)
        # write keeps an existing file's mode and owner, and makes a new one root's
        # with 0644 (the umask set in __init__): only what differs is changed.
        now = (0o644, 0, 0) if entry is None else _mode_owner(entry)
        if now[0] != mode:
            self.app.call(f"setting the mode of {path}", self.h.chmod, mode, target)
        if now[1:] != owner:
            self.app.call(f"setting the owner of {path}", self.h.chown, owner[0], owner[1], target)
        # What the file is now, as lstat would say (the fields this class reads).
        self._stats[target] = {
            "st_ino": entry["st_ino"] if entry is not None else 0,
            "st_mode": stat.S_IFREG | mode,
            "st_uid": owner[0],
            "st_gid": owner[1],
            "st_size": len(data),
        }
        self._contents[target] = data

    def remove(self, path: str) -> bool:
        """Remove a file, link (not its target) or folder tree; False if absent."""
        return self.remove_all([path]) > 0

    def remove_all(self, paths: Sequence[str]) -> int:
        """Remove files, links (not their targets) and folder trees; returns how many
        were there. A path with a link (or anything but a folder) among its folders
        is left alone: removal never crosses a link."""
        paths = [guest_path(path) for path in paths]
        if "/" in paths:
            raise GuestPathError("vmbuild never removes the guest's root folder")
        trees: list[tuple[str, str]] = []
        found = 0
        for path in paths:
            target = path
            try:
                self.resolve_folder(posixpath.dirname(path))
            except GuestPathError as err:
                if "does not exist" not in err.message:
                    self.skipped.append(f"not removing {path}: {err.message}")
                continue
            kind = self._kind_at(target)
            if kind is None or any(target == tree for _path, tree in trees):
                continue
            found += 1
            if kind == "folder":
                trees.append((path, target))
                continue
            self.app.call(f"removing {path}", self.h.rm_f, target)
            self._changed(target, None)
        self._remove_trees(trees)
        return found

    def _remove_trees(self, trees: list[tuple[str, str]]) -> None:
        """rm -rf is a process in the appliance, the slowest call there is under TCG:
        two or more trees are first moved into one folder and removed together."""
        trees = [
            (path, target)
            for path, target in trees
            if not any(target.startswith(other + "/") for _path, other in trees)
        ]
        trash = None
        if len(trees) > 1:
            parent = posixpath.commonpath([posixpath.dirname(t) for _path, t in trees])
            trash = posixpath.join(parent, f".vmbuild-removed-{secrets.token_hex(6)}")
            made = self.app.attempt(f"making {trash}", self.h.mkdir_mode, trash, 0o700)
            if isinstance(made, ApplianceError):
                trash = None
        for number, (path, target) in enumerate(trees):
            self._changed(target, None)
            if trash is not None:
                moved = posixpath.join(trash, str(number))
                renamed = self.app.attempt(f"removing {path}", self.h.rename, target, moved)
                if not isinstance(renamed, ApplianceError):  # else another filesystem
                    continue
            self.app.call(f"removing {path}", self.h.rm_rf, target)
        if trash is not None:
            self.app.call(f"removing {', '.join(path for path, _t in trees)}", self.h.rm_rf, trash)
            self._changed(trash, None)

    def glob(self, pattern: str) -> list[str]:
        """Paths matching a shell pattern, as glob(3) gives them (``*`` and ``?`` skip
        names that start with a dot unless the pattern's do too), except that no
        link is followed: only real folders are searched."""
        guest_path(pattern)
        parts = pattern.strip("/").split("/")
        folders = ["/"]
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            found = []
            for folder in folders:
                for name in self._matches(folder, part):
                    path = posixpath.join(folder, name)
                    if last:
                        found.append(path)
                        continue
                    kind = self._kind_at(path)
                    if kind == "folder":
                        found.append(path)
                    elif kind == "symbolic link" or (kind is not None and not _has_magic(part)):
                        self.skipped.append(
                            f"not looking for {pattern} in {path}: it is a {kind}, "
                            "not a folder, and vmbuild never follows links inside the guest"
                        )
            folders = found
        return sorted(folders) if parts != [""] else []

    def _matches(self, folder: str, part: str) -> list[str]:
        """Names in a checked folder that match one pattern component."""
        if not _has_magic(part):
            return [part] if self._kind_at(posixpath.join(folder, part)) is not None else []
        listing = self._listing(folder)
        names = self._names(folder) if listing is None else list(listing)
        return [
            name
            for name in names
            if fnmatch.fnmatchcase(name, part) and (part[:1] == "." or name[:1] != ".")
        ]

    def _names(self, folder: str) -> list[str]:
        """Every name in a folder too big for readdir's one answer."""
        with tempfile.NamedTemporaryFile(prefix="vmbuild-ls-") as out:
            self.app.call(f"listing {folder}", self.h.ls0, folder, out.name)
            return [n for n in Path(out.name).read_bytes().decode().split("\0") if n]

    def users(self) -> dict[str, tuple[int, int, str]]:
        """name -> (uid, gid, home) from the guest's /etc/passwd."""
        if self._passwd is None:
            text = (self.read("/etc/passwd") or b"").decode(errors="replace")
            users = {}
            for line in text.splitlines():
                fields = line.split(":")
                if len(fields) >= 7 and fields[2].isdigit() and fields[3].isdigit():
                    users[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
            self._passwd = users
        return self._passwd

    def forget_users(self) -> None:
        self._passwd = None


# ------------------------------------------------------------------ operations


@dataclass(frozen=True)
class Context:
    """What operations need that is not data in the plan: secrets made at build."""

    #: SSH host keys for this VM: key type -> (private key, public key line).
    host_keys: Mapping[str, tuple[bytes, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One edit. ``summary`` is the progress line, e.g. 'Setting the hostname: web'."""

    summary: str
    phase: ClassVar[Phase] = Phase.FILES
    kind: ClassVar[str] = "operation"

    def apply(self, guest: GuestFiles, context: Context) -> None:
        raise NotImplementedError

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"op": self.kind}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            data[item.name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass(frozen=True)
class WriteFile(Operation):
    path: str = ""
    content: str = ""
    mode: int = 0o644
    #: A guest user name; its uid and gid are looked up in the guest.
    owner: str = "root"
    #: Leave a symbolic link at ``path`` alone (/etc/resolv.conf under resolved).
    skip_if_link: bool = False
    kind: ClassVar[str] = "write"

    def apply(self, guest: GuestFiles, context: Context) -> None:
        if self.skip_if_link and guest.kind(self.path) == "symbolic link":
            return
        uid, gid, _home = guest.users().get(self.owner, (0, 0, "/root"))
        guest.write(self.path, self.content.encode(), mode=self.mode, owner=(uid, gid))


@dataclass(frozen=True)
class RemovePaths(Operation):
    """Remove files, links or folders; patterns may use shell globs."""

    patterns: tuple[str, ...] = ()
    kind: ClassVar[str] = "remove"
    phase: ClassVar[Phase] = Phase.CLEAN

    def apply(self, guest: GuestFiles, context: Context) -> None:
        paths: list[str] = []
        for pattern in self.patterns:
            paths += guest.glob(pattern) if any(c in pattern for c in "*?[") else [pattern]
        guest.remove_all(paths)


@dataclass(frozen=True)
class MachineId(Operation):
    """A machine-id of this VM's own, in /etc and (when the guest has one) dbus's copy."""

    value: str = ""
    kind: ClassVar[str] = "machine-id"

    def apply(self, guest: GuestFiles, context: Context) -> None:
        data = (self.value + "\n").encode()
        guest.write("/etc/machine-id", data, mode=0o444)
        dbus = "/var/lib/dbus/machine-id"
        kind = guest.kind(dbus)
        if kind == "symbolic link":
            return  # a link to /etc/machine-id, which now holds the new id
        if kind is not None or guest.kind("/var/lib/dbus") == "folder":
            guest.write(dbus, data, mode=0o444, create_parent=False)


@dataclass(frozen=True)
class HostKeys(Operation):
    """Install this VM's SSH host keys (made on the host) and remove any others."""

    types: tuple[str, ...] = ()
    kind: ClassVar[str] = "ssh-host-keys"

    def apply(self, guest: GuestFiles, context: Context) -> None:
        missing = [key for key in self.types if key not in context.host_keys]
        if missing:
            raise BuildError(f"no host keys of type {', '.join(missing)} were generated")
        ours = {
            f"/etc/ssh/ssh_host_{key_type}_key{suffix}"
            for key_type in self.types
            for suffix in ("", ".pub")
        }
        # The golden image's own keys of these types are overwritten in place (no
        # removal, and their modes are already right); anything else goes.
        guest.remove_all(
            [
                path
                for path in guest.glob("/etc/ssh/ssh_host_*")
                if path not in ours or guest.kind(path) != "file"
            ]
        )
        for key_type in self.types:
            private, public = context.host_keys[key_type]
            base = f"/etc/ssh/ssh_host_{key_type}_key"
            guest.write(base, private, mode=0o600, create_parent=True)
            guest.write(base + ".pub", (public + "\n").encode(), mode=0o644)


@dataclass(frozen=True)
class AuthorizedKeys(Operation):
    user: str = "root"
    keys: tuple[str, ...] = ()
    kind: ClassVar[str] = "authorized-keys"
    phase: ClassVar[Phase] = Phase.ACCOUNTS

    def apply(self, guest: GuestFiles, context: Context) -> None:
        users = guest.users()
        if self.user not in users:
            raise BuildError(f"user {self.user} does not exist in the guest")
        uid, gid, home = users[self.user]
        folder = guest.resolve_folder(home, create=True, mode=0o700, owner=(uid, gid))
        guest.resolve_folder(
            posixpath.join(folder, ".ssh"), create=True, mode=0o700, owner=(uid, gid)
        )
        text = "".join(f"{key}\n" for key in self.keys)
        guest.write(
            posixpath.join(folder, ".ssh/authorized_keys"),
            text.encode(),
            mode=0o600,
            owner=(uid, gid),
        )


@dataclass(frozen=True)
class EnsureUser(Operation):
    """Create a user (passwd, shadow, group, home) unless the guest has it."""

    user: str = ""
    sudo: bool = False
    shell: str = "/bin/bash"
    kind: ClassVar[str] = "user"
    phase: ClassVar[Phase] = Phase.ACCOUNTS

    def apply(self, guest: GuestFiles, context: Context) -> None:
        users = guest.users()
        if self.user not in users:
            taken = {uid for uid, _gid, _home in users.values()}
            groups_text = (guest.read("/etc/group") or b"").decode()
            taken_gids = {
                int(line.split(":")[2])
                for line in groups_text.splitlines()
                if line.count(":") >= 3 and line.split(":")[2].isdigit()
            }
            uid = next(n for n in range(1000, 60000) if n not in taken and n not in taken_gids)
            home = f"/home/{self.user}"
            self._append(
                guest,
                "/etc/passwd",
                f"{self.user}:x:{uid}:{uid}:{self.user}:{home}:{self.shell}",
                0o644,
            )
            self._append(guest, "/etc/group", f"{self.user}:x:{uid}:", 0o644)
            self._append(
                guest, "/etc/shadow", f"{self.user}:!:19000:0:99999:7:::", 0o640, keep_mode=True
            )
            if guest.kind("/etc/gshadow") == "file":
                self._append(guest, "/etc/gshadow", f"{self.user}:!::", 0o640, keep_mode=True)
            guest.forget_users()
            guest.resolve_folder(home, create=True, mode=0o700, owner=(uid, uid))
        if self.sudo:
            guest.write(
                f"/etc/sudoers.d/90-vmbuild-{self.user}",
                f"{self.user} ALL=(ALL) NOPASSWD:ALL\n".encode(),
                mode=0o440,
            )

    @staticmethod
    def _append(
        guest: GuestFiles, path: str, line: str, mode: int, keep_mode: bool = False
    ) -> None:
        old = guest.read(path) or b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        owner = (0, 0)
        now = guest.mode_owner(path) if keep_mode else None
        if now is not None:
            mode, owner = now[0], now[1:]
        guest.write(path, old + line.encode() + b"\n", mode=mode, owner=owner)


@dataclass(frozen=True)
class PasswordHash(Operation):
    """Put a crypt(3) hash into /etc/shadow for one user. Never a plain password."""

    user: str = ""
    password_hash: str = field(default="", repr=False)
    kind: ClassVar[str] = "password"
    phase: ClassVar[Phase] = Phase.PASSWORDS

    def to_data(self) -> dict[str, Any]:
        return {"op": self.kind, "summary": self.summary, "user": self.user}

    def apply(self, guest: GuestFiles, context: Context) -> None:
        path = "/etc/shadow"
        text = (guest.read(path) or b"").decode()
        lines = text.splitlines()
        for index, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == self.user and len(fields) >= 2:
                fields[1] = self.password_hash
                lines[index] = ":".join(fields)
                break
        else:
            raise BuildError(f"user {self.user} is not in the guest's /etc/shadow")
        mode, uid, gid = guest.mode_owner(path) or (0o640, 0, 0)
        guest.write(path, ("\n".join(lines) + "\n").encode(), mode=mode, owner=(uid, gid))


def ordered(operations: Sequence[Operation]) -> list[Operation]:
    """Clean-up first, passwords last; otherwise in the order plugins gave them."""
    return sorted(operations, key=lambda op: op.phase)


def run_operations(
    guest: GuestFiles, operations: Sequence[Operation], context: Context, where: str, progress: Any
) -> None:
    for operation in operations:
        progress(operation.summary)
        try:
            with deadline(PLUGIN_TIMEOUT):
                operation.apply(guest, context)
        except Overran as err:
            raise BuildError(
                f"{where}: {operation.summary}: {err}",
                hint=f"VMBUILD_PLUGIN_TIMEOUT (now {PLUGIN_TIMEOUT:g}s) sets how long one "
                "disk operation may take",
            ) from None
        except (ApplianceError, GuestPathError) as err:
            raise BuildError(
                f"{where}: {operation.summary}: {err.message}", hint=err.hint
            ) from None
        except BuildError as err:
            raise BuildError(
                f"{where}: {operation.summary}: {err.message}", hint=err.hint
            ) from None
