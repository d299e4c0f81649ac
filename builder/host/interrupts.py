"""Signals and time limits: what stops a build, and the few steps that finish first.

SIGTERM is turned into an interrupt like Ctrl-C, so cleanup runs the same way for
both. The steps that must not be cut in half (the renames that publish a bundle)
run with the signals deferred: a signal that arrives there takes effect right
after, and says whether the bundle was published. Code vmbuild does not control
(a plugin's hook) runs under a deadline, so that a hang ends in an error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import NoReturn

#: The signals that stop vmbuild (SIGKILL cannot be caught, and is not here).
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How long one plugin hook (or a plugin's disk operation) may run.
PLUGIN_TIMEOUT = float(os.environ.get("VMBUILD_PLUGIN_TIMEOUT", "600"))


class Interrupted(BaseException):
    """A stopping signal arrived. ``published`` is the bundle, when the signal
    arrived while or after it was published (the build is then complete)."""

    def __init__(self, signum: int = signal.SIGTERM, published: Path | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.published = published


class Overran(BaseException):
    """A deadline passed. A BaseException, so that a plugin's ``except Exception``
    cannot swallow it."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(signum)


def install() -> None:
    """SIGTERM and SIGHUP interrupt vmbuild as Ctrl-C does (cleanup runs)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred(published: Path | None = None) -> Iterator[None]:
    """Run the block to its end before a stopping signal takes effect; one that
    arrived meanwhile is raised afterwards as Interrupted(published=...)."""
    if not _main_thread():  # signals reach only the main thread anyway
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    saved = {signum: signal.signal(signum, hold) for signum in STOPPING}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    if pending:
        raise Interrupted(pending[0], published)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise Overran in the block once ``seconds`` have passed (main thread only;
    a deadline inside another is left to the outer one)."""
    if seconds <= 0 or not _main_thread() or signal.getitimer(signal.ITIMER_REAL)[0]:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> NoReturn:
        raise Overran(f"no answer within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
