"""Progress on stderr: one line per step with its duration, details under -v."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass
class Timing:
    """How long a step took: known once the step is done."""

    seconds: float = 0.0


@contextlib.contextmanager
def step(title: str) -> Iterator[Timing]:
    """Log a step's start and, when it succeeds, how long it took; ``with step(...)
    as took`` keeps that time in ``took.seconds``."""
    info(f"‣ {title}")
    timing = Timing()
    start = time.monotonic()
    yield timing
    timing.seconds = time.monotonic() - start
    info(f"  done in {timing.seconds:.2f}s")
