"""Progress on stderr: one line per step with its duration, details under -v."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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


#: ``progress(name, done_bytes, total_bytes)``: how far the transfer of one item is.
Progress = Callable[[str, int, int], None]


def size_text(count: float) -> str:
    """A byte count as people read it: 512 B, 3.4 MiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


@contextlib.contextmanager
def transfer(title: str) -> Iterator[Progress]:
    """Progress of moving bytes (packing, pushing, pulling, unpacking): a bar per
    item with bytes, rate and time left on a terminal; otherwise one line per item
    as it finishes otherwise, and nothing under -q."""
    if _state["verbosity"] < 1:
        yield lambda name, done, total: None
        return
    if not sys.stderr.isatty():
        finished: set[str] = set()

        def line(name: str, done: int, total: int) -> None:
            if done >= total and name not in finished:
                finished.add(name)
                info(f"    {name}: {size_text(total)}")

        yield line
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as Bars,
    )

    columns = (
        TextColumn(f"  {title} {{task.description}}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Bars(*columns, console=Console(stderr=True), transient=True) as bars:
        tasks: dict[str, Any] = {}

        def bar(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=total)
            bars.update(tasks[name], completed=done)

        yield bar
