"""One libvirt host, reached through its URI with libvirt's Python binding.

Every libvirt error is turned into a `HostError` that names the host, so a lab
spread over several hosts says which one failed. Connections keep libvirt's
keepalive running (on a background event loop), so a host that dies in the middle
of a call is noticed within seconds instead of never.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmbuild.errors import BuildError, UserError

#: The local host's connection when neither the profile nor --connect names one.
DEFAULT_URI = "qemu:///system"
#: Keepalive: a probe every INTERVAL seconds, the host given up after COUNT unanswered.
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3

_loop_lock = threading.Lock()
_loop_started = False


class HostError(BuildError):
    """A libvirt host could not be reached, or refused or failed an operation."""


def default_uri() -> str:
    """$LIBVIRT_DEFAULT_URI, else the system instance."""
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def binding() -> Any:
    """The ``libvirt`` module, quiet on stderr; a UserError when it is missing."""
    try:
        import libvirt
    except ImportError:
        raise UserError(
            "the libvirt Python binding is not installed",
            hint="apt-get install python3-libvirt (and make the venv with --system-site-packages)",
        ) from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _start_event_loop(libvirt: Any) -> None:
    """libvirt's default event loop on a daemon thread: what keepalive runs on."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def reason(err: BaseException) -> str:
    """A libvirt error's own message on one line."""
    text = err.get_error_message() if hasattr(err, "get_error_message") else None
    return " ".join(str(text or err).split())


@dataclass
class Host:
    """An open connection to one host of a lab. ``name`` is the profile's name for
    it (``local`` for the default host)."""

    name: str
    uri: str
    conn: Any

    @property
    def place(self) -> str:
        return f'host "{self.name}" ({self.uri})'

    @contextlib.contextmanager
    def calls(self, what: str) -> Iterator[None]:
        """libvirt errors inside become HostErrors saying ``what`` failed where."""
        libvirt = binding()
        try:
            yield
        except libvirt.libvirtError as err:
            raise HostError(f"{what}: {reason(err)}", place=self.place) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def reconnect(self) -> None:
        """A new connection in place of one the host closed; a HostError if it does
        not answer."""
        self.close()
        self.conn = connect(self.name, self.uri).conn


def connect(name: str, uri: str) -> Host:
    """Open ``uri`` read-write, with keepalive; a HostError naming the host when it
    does not answer."""
    libvirt = binding()
    _start_event_loop(libvirt)
    place = f'host "{name}" ({uri})'
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise HostError(
            f"cannot connect: {reason(err)}",
            place=place,
            hint=f"check that libvirtd runs there and answers: virsh -c {uri} version",
        ) from None
    with contextlib.suppress(libvirt.libvirtError):  # local connections have none
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
    return Host(name, uri, conn)
