"""Disk edits as data: small operation objects, each saying what it does in one line,
run in order inside the appliance by one adapter.

Plugins return lists of these from ``vmbuild_disk_operations``; vmbuild orders them
by phase (clean-up, files, accounts, passwords last, as virt-customize does) and
applies them with ``GuestFiles``, which never follows a symbolic link out of the
intended file and refuses FIFOs and device nodes where it would write or read.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import posixpath
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .appliance import Appliance, ApplianceError
from .errors import BuildError


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


class GuestFiles:
    """File access to one mounted guest, checked component by component."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.h = app.handle
        # New files get 0644 (write's 0666 less this), which write() relies on.
        self.app.call("setting the umask", self.h.umask, 0o022)
        self._passwd: dict[str, tuple[int, int, str]] | None = None
        #: Folders already resolved (guest path -> real path); forgotten on removal.
        self._folders: dict[str, str] = {}

    # ---------------------------------------------------------------- look-ups

    def kind(self, path: str) -> str | None:
        """What is at ``path`` without following a final link; None if nothing."""
        path = guest_path(path)
        if path == "/":
            return "folder"
        entry = self._lstat(path)
        return None if entry is None else _kind(entry)

    def _lstat(self, path: str) -> Mapping[str, int] | None:
        """lstat of ``path`` (not "/"); None when nothing is there."""
        parent, name = posixpath.split(path)
        try:
            stats = self.app.call(f"looking at {path}", self.h.lstatnslist, parent, [name])
        except ApplianceError:
            if self.kind(parent) != "folder":
                return None  # the folder itself is missing (or not a folder)
            raise
        entry: Mapping[str, int] = stats[0]
        return None if entry["st_ino"] == -1 else entry

    def link_target(self, path: str) -> str:
        return str(self.app.call(f"reading the link {path}", self.h.readlink, path))

    def resolve_folder(
        self, path: str, *, create: bool = False, mode: int = 0o755, owner: tuple[int, int] = (0, 0)
    ) -> str:
        """The real folder ``path`` names inside the guest, links resolved there.

        Each component must be a folder or a link to one; missing ones are made
        when ``create`` is set. Never leaves the guest's root.
        """
        path = guest_path(path)
        if path in self._folders:
            return self._folders[path]
        current = "/"
        for part in path.strip("/").split("/"):
            if not part:
                continue
            candidate = posixpath.join(current, part)
            if candidate in self._folders:
                current = self._folders[candidate]
                continue
            kind = self.kind(candidate)
            if kind is None:
                if not create:
                    raise GuestPathError(f"{candidate} does not exist")
                self.app.call(f"making {candidate}", self.h.mkdir_mode, candidate, mode)
                self.app.call(f"setting the owner of {candidate}", self.h.chown, *owner, candidate)
                current = candidate
            elif kind == "folder":
                current = candidate
            elif kind == "symbolic link":
                real = self.app.call(f"resolving {candidate}", self.h.realpath, candidate)
                if self.kind(real) != "folder":
                    raise GuestPathError(f"{candidate} links to {real}, which is not a folder")
                current = real
            else:
                raise GuestPathError(f"{candidate} is a {kind}, not a folder")
        self._folders[path] = current
        return current

    def _target(
        self, path: str, *, create_parent: bool = False
    ) -> tuple[str, Mapping[str, int] | None]:
        """The real path to write ``path`` at, and what is there now (lstat)."""
        path = guest_path(path)
        parent, name = posixpath.split(path)
        real_parent = self.resolve_folder(parent, create=create_parent)
        target = posixpath.join(real_parent, name)
        entry = None if target == "/" else self._lstat(target)
        kind = "folder" if target == "/" else (None if entry is None else _kind(entry))
        if kind == "symbolic link":
            raise GuestPathError(
                f"{path} is a symbolic link to {self.link_target(target)}; vmbuild does not "
                "write through links (the golden image may be hostile)",
                hint="replace the link with a regular file in the golden image",
            )
        if kind not in (None, "file"):
            raise GuestPathError(f"{path} is a {kind}, not a regular file")
        return target, entry

    # ------------------------------------------------------------- read/write

    def read(self, path: str) -> bytes | None:
        """A regular file's contents, or None when it does not exist."""
        target, entry = self._target(path)
        if entry is None:
            return None
        size = int(entry["st_size"])
        chunks = []
        for offset in range(0, size, 1 << 20):  # pread answers are capped at ~2 MiB
            count = min(1 << 20, size - offset)
            chunks.append(
                bytes(self.app.call(f"reading {path}", self.h.pread, target, count, offset))
            )
        return b"".join(chunks)

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
        self.app.call(f"writing {path}", self.h.write, target, data)
        # write keeps an existing file's mode and owner, and makes a new one root's
        # with 0644 (the umask set below): only what differs is changed.
        now = (0o644, 0, 0) if entry is None else _mode_owner(entry)
        if now[0] != mode:
            self.app.call(f"setting the mode of {path}", self.h.chmod, mode, target)
        if now[1:] != owner:
            self.app.call(f"setting the owner of {path}", self.h.chown, owner[0], owner[1], target)

    def remove(self, path: str) -> bool:
        """Remove a file, link (not its target) or folder tree; False if absent."""
        path = guest_path(path)
        parent, name = posixpath.split(path)
        try:
            real_parent = self.resolve_folder(parent)
        except GuestPathError:
            return False
        target = posixpath.join(real_parent, name)
        kind = self.kind(target)
        if kind is None:
            return False
        if kind == "folder":
            self._folders.clear()
            self.app.call(f"removing {path}", self.h.rm_rf, target)
        else:
            if kind == "symbolic link":  # it may have led to a folder resolved earlier
                self._folders.clear()
            self.app.call(f"removing {path}", self.h.rm_f, target)
        return True

    def glob(self, pattern: str) -> list[str]:
        guest_path(pattern)
        found = self.app.call(
            f"looking for {pattern}",
            functools.partial(self.h.glob_expand, pattern, directoryslash=False),
        )
        return sorted(str(path) for path in found)

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
        for pattern in self.patterns:
            paths = guest.glob(pattern) if any(c in pattern for c in "*?[") else [pattern]
            for path in paths:
                guest.remove(path)


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
        for path in guest.glob("/etc/ssh/ssh_host_*"):
            guest.remove(path)
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
        if keep_mode:
            info = guest.app.call(f"looking at {path}", guest.h.lstatns, path)
            mode = stat.S_IMODE(info["st_mode"])
            owner = (info["st_uid"], info["st_gid"])
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
        info = guest.app.call("looking at /etc/shadow", guest.h.lstatns, path)
        guest.write(
            path,
            ("\n".join(lines) + "\n").encode(),
            mode=stat.S_IMODE(info["st_mode"]),
            owner=(info["st_uid"], info["st_gid"]),
        )


def ordered(operations: Sequence[Operation]) -> list[Operation]:
    """Clean-up first, passwords last; otherwise in the order plugins gave them."""
    return sorted(operations, key=lambda op: op.phase)


def run_operations(
    guest: GuestFiles, operations: Sequence[Operation], context: Context, where: str, progress: Any
) -> None:
    for operation in operations:
        progress(operation.summary)
        try:
            operation.apply(guest, context)
        except (ApplianceError, GuestPathError) as err:
            raise BuildError(
                f"{where}: {operation.summary}: {err.message}", hint=err.hint
            ) from None
        except BuildError as err:
            raise BuildError(
                f"{where}: {operation.summary}: {err.message}", hint=err.hint
            ) from None
