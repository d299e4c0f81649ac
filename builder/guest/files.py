"""File access inside one mounted guest that never follows a link.

Every component of every path is looked at with lstat: a write or read through a
symbolic link is refused, a removal or glob skips it, and a FIFO or device node is
refused where a file would be written or read (a FIFO would make the write hang).
A golden image may be hostile: its ``/etc/hostname`` may be a link to
``/etc/shadow``, its ``/etc/ssh`` a link to ``/tmp``.

Under TCG every appliance call costs milliseconds, so what the guest holds is
remembered (folder listings, lstat answers, file contents) and kept up to date by
``GuestFiles``'s own changes. The fresh clones of one golden image hold the same
files until they are written to, so one ``Pristine`` record of those answers serves
them all: a lab's second and later clones ask the appliance only for what the first
did not look at.
"""

from __future__ import annotations

import fnmatch
import posixpath
import secrets
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmbuild.errors import BuildError
from vmbuild.guest.appliance import Appliance, ApplianceError


class GuestPathError(BuildError):
    """A guest path is not what vmbuild may write or read: a link, a FIFO, ..."""


class GuestPathMissing(GuestPathError):
    """A folder on the way to a guest path does not exist (and was not to be made)."""


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


class Pristine:
    """What fresh clones of one golden image answer before anything is written to
    them: folder listings, lstat answers and file contents, by path. Only a
    GuestFiles of a clone nothing has written to yet may be given one; it records
    the answers for paths it has not changed and reads them back for paths it has
    not changed. Entries are never changed once recorded (readers take copies), so
    the appliances of one build share one record without a lock."""

    def __init__(self) -> None:
        self.listings: dict[str, dict[str, str]] = {}
        self.stats: dict[str, Mapping[str, int]] = {}
        self.contents: dict[str, bytes] = {}


class GuestFiles:
    """File access to one mounted guest, checked component by component: no link is
    ever followed, so every path names exactly the file it says.

    Under TCG every appliance call costs milliseconds, so what the guest holds is
    remembered: each folder's listing (one readdir answers every later look-up in
    it), lstat answers and file contents, kept up to date by this class's own
    changes. Every change to the guest goes through it, and one
    instance serves one mounted guest: mounting another needs a new one.

    ``pristine``, for a fresh clone of the golden image, shares what the lab's other
    fresh clones were found to hold (see Pristine).
    """

    def __init__(self, app: Appliance, pristine: Pristine | None = None) -> None:
        self.app = app
        self._pristine = pristine
        #: Paths this instance changed: the pristine record says nothing about them,
        #: what is below them or (for listings) the folders holding them.
        self._touched: set[str] = set()
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
            shared = self._shared(folder, listing=True)
            if shared is not None and folder in shared.listings:
                self._listings[folder] = dict(shared.listings[folder])
                return self._listings[folder]
            entries = self.app.attempt(f"listing {folder}", self.h.readdir, folder)
            if isinstance(entries, ApplianceError):
                return None  # too big for one answer, or not a folder
            self._listings[folder] = {
                str(entry["name"]): _READDIR_KINDS.get(str(entry["ftyp"]), "unknown")
                for entry in entries
                if entry["name"] not in (".", "..")
            }
            if shared is not None:
                shared.listings[folder] = dict(self._listings[folder])
        return self._listings[folder]

    def _shared(self, path: str, *, listing: bool = False) -> Pristine | None:
        """The pristine record, when it speaks for ``path``: nothing at or above it
        was changed here (nor, for a folder's listing, anything in it)."""
        if self._pristine is None:
            return None
        for changed in self._touched:
            if path == changed or path.startswith(changed.rstrip("/") + "/"):
                return None
            if listing and posixpath.dirname(changed) == path:
                return None
        return self._pristine

    def _lstat(self, real: str) -> Mapping[str, int] | None:
        """lstat of a real path (not "/"); None when nothing is there."""
        if real in self._stats:
            return self._stats[real]
        parent, name = posixpath.split(real)
        listing = self._listings.get(parent)
        if listing is not None and name not in listing:
            return None
        shared = self._shared(real)
        if shared is not None and real in shared.stats:
            self._stats[real] = shared.stats[real]
            return self._stats[real]
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
        if shared is not None:
            shared.stats[real] = entry
        return entry

    def _changed(self, real: str, kind: str | None) -> None:
        """Record that ``real`` now holds ``kind`` (None: nothing), forgetting what
        was known at or below it."""
        self._touched.add(real)
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
                    raise GuestPathMissing(f"{candidate} does not exist")
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
        shared = self._shared(target)
        if target not in self._contents and shared is not None and target in shared.contents:
            self._contents[target] = shared.contents[target]
        if target not in self._contents:
            size = int(entry["st_size"])
            chunks = []
            for offset in range(0, size, 1 << 20):  # pread answers are capped at ~2 MiB
                count = min(1 << 20, size - offset)
                chunks.append(
                    bytes(self.app.call(f"reading {path}", self.h.pread, target, count, offset))
                )
            self._contents[target] = b"".join(chunks)
            if shared is not None:
                shared.contents[target] = self._contents[target]
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

    def symlink(self, path: str, target: str) -> None:
        """Make ``path``, where nothing is now, a symbolic link to ``target``. The
        target is only text to the link: it is neither checked nor followed."""
        link = guest_path(path)
        self.resolve_folder(posixpath.dirname(link))
        kind = self._kind_at(link)
        if kind is not None:
            raise GuestPathError(f"{path} is already there (a {kind})")
        self.app.call(f"linking {path} to {target}", self.h.ln_s, target, link)
        self._changed(link, "symbolic link")

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
            except GuestPathMissing:
                continue
            except GuestPathError as err:
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
            else:
                self._changed(trash, "folder")
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
