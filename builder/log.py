"""Progress on stderr: one line per step with its duration, details under -v."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

_state = {"verbosity": 1}


def set_verbosity(level: int) -> None:
    """0: errors only, 1: steps (default), 2: every operation."""
    _state["verbosity"] = level


def verbosity() -> int:
    return _state["verbosity"]


def info(message: str) -> None:
    if _state["verbosity"] >= 1:
        print(message, file=sys.stderr, flush=True)


def detail(message: str) -> None:
    if _state["verbosity"] >= 2:
        print(f"    {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"vmbuild: warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Log a step's start and, when it succeeds, how long it took."""
    info(f"‣ {title}")
    start = time.monotonic()
    yield
    info(f"  done in {time.monotonic() - start:.2f}s")
