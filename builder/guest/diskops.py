"""Disk edits as data: the operation types of the plugin API.

Plugins return lists of these from ``vmbuild_disk_operations``; vmbuild orders them
by phase (clean-up, files, accounts, passwords last, as virt-customize does) and
applies them in order with ``run_operations``, each through ``GuestFiles``
(``vmbuild.guest.files``), which never follows a link inside the guest.

An operation is its fields: its one-line ``summary`` (what ``-v`` prints, and
``plan.json`` records) is derived from them, so it cannot name another path than
the one the operation writes.
"""

from __future__ import annotations

import dataclasses
import enum
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vmbuild.errors import BuildError
from vmbuild.guest.appliance import ApplianceError
from vmbuild.guest.files import GuestFiles, GuestPathError
from vmbuild.host.interrupts import PLUGIN_TIMEOUT, Overran, deadline


class Phase(enum.IntEnum):
    CLEAN = 10
    FILES = 50
    ACCOUNTS = 70
    PASSWORDS = 90


@dataclass(frozen=True)
class Context:
    """What operations need that is not data in the plan: secrets made at build."""

    #: SSH host keys for this VM: key type -> (private key, public key line).
    host_keys: Mapping[str, tuple[bytes, str]] = field(default_factory=dict)


def listed(items: Iterable[object], limit: int = 3) -> str:
    """Items for a one-line summary: "a, b, c and 2 more"."""
    shown = [str(item) for item in items]
    if len(shown) > limit:
        return f"{', '.join(shown[:limit])} and {len(shown) - limit} more"
    return ", ".join(shown)


def _shown(name: str, value: Any) -> str:
    """One field's value in a generic summary: short, on one line, never content."""
    if isinstance(value, int) and not isinstance(value, bool) and name.endswith("mode"):
        return f"{value:04o}"
    if isinstance(value, bytes) or (isinstance(value, str) and ("\n" in value or len(value) > 60)):
        return f"{len(value if isinstance(value, bytes) else value.encode())} bytes"
    if isinstance(value, (tuple, list, set, frozenset)):
        return listed(value)
    return str(value)


def _default(item: dataclasses.Field[Any]) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


@dataclass(frozen=True)
class Operation:
    """One edit of a VM's disk, as data.

    ``summary`` is its progress line, derived from its fields by ``describe()``:
    the built-in operations say it in words ("Setting the machine-id: 0f3c…"), any
    other gets a generic one from its kind and fields ("fill /blob (size 32)"). A
    plugin's subclass may override ``describe()`` (or ``summary``). A field declared
    with ``repr=False`` is a secret: it is in no summary, repr or ``plan.json``.
    """

    #: The operation depends on nothing but the lab's hosts table
    #: (``vmbuild.model.hosts``): when a rebuild changes only that table, the disks
    #: it keeps get only these operations again.
    hosts_only: bool = field(default=False, kw_only=True)
    phase: ClassVar[Phase] = Phase.FILES
    kind: ClassVar[str] = "operation"

    @property
    def summary(self) -> str:
        """One line for ``-v``, error messages and ``plan.json``."""
        return self.describe()

    def describe(self) -> str:
        """The generic summary: the kind (else the class's name), the first field's
        value, then every other field that differs from its default."""
        name = self.kind if self.kind != Operation.kind else type(self).__name__
        words = [name]
        details = []
        for number, item in enumerate(_fields(self)):
            value = getattr(self, item.name)
            title = item.name.replace("_", " ")
            if number == 0 and isinstance(value, (str, tuple)) and not isinstance(value, bool):
                if value:
                    words.append(_shown(item.name, value))
            elif value != _default(item):
                details.append(title if value is True else f"{title} {_shown(item.name, value)}")
        return " ".join(words) + (f" ({', '.join(details)})" if details else "")

    def apply(self, guest: GuestFiles, context: Context) -> None:
        raise NotImplementedError

    def to_data(self) -> dict[str, Any]:
        """What ``plan.json`` records: the kind, the summary and the fields (but
        secrets), then ``hosts_only``."""
        data: dict[str, Any] = {"op": self.kind, "summary": self.summary}
        for item in _fields(self):
            value = getattr(self, item.name)
            data[item.name] = list(value) if isinstance(value, tuple) else value
        data["hosts_only"] = self.hosts_only
        return data


def _fields(operation: Operation) -> list[dataclasses.Field[Any]]:
    """An operation's own fields, but secrets."""
    return [
        item for item in dataclasses.fields(operation) if item.repr and item.name != "hosts_only"
    ]


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

    def describe(self) -> str:
        details = [f"mode {self.mode:04o}"]
        if self.owner != "root":
            details.append(f"owner {self.owner}")
        line = f"Writing {self.path} ({', '.join(details)})"
        return line + (" unless it is a symbolic link" if self.skip_if_link else "")

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

    def describe(self) -> str:
        return f"Removing {listed(self.patterns)}"

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

    def describe(self) -> str:
        return f"Setting the machine-id: {self.value}"

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

    def describe(self) -> str:
        return f"Installing new SSH host keys: {', '.join(self.types)}"

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
    """Replace a user's ~/.ssh/authorized_keys with ``keys``, owned by the user."""

    user: str = "root"
    keys: tuple[str, ...] = ()
    kind: ClassVar[str] = "authorized-keys"
    phase: ClassVar[Phase] = Phase.ACCOUNTS

    def describe(self) -> str:
        return f"Setting {len(self.keys)} authorized SSH keys for {self.user}"

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

    def describe(self) -> str:
        return f"Adding the user {self.user}" + (" with sudo" if self.sudo else "")

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

    def describe(self) -> str:
        return f"Setting the password of {self.user}"

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
    """Apply ``operations`` in order, each in bounded time, printing its summary with
    ``progress``; a failure names ``where`` (the VM and its disk) and the operation."""
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
