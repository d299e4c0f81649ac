"""Run vmbuild with a signal sent to itself at one named point of the build.

    python tests/faultrun.py POINT SIGNAL -- ARGS...

POINT names a place in the build (see POINTS); SIGNAL is INT, TERM or KILL. The
signal is sent by the build's own process, at that point and nowhere else, so every
cell of the fault matrix (docs/reliability.md) is reached the same way every time.
Nothing here is part of vmbuild: the functions are wrapped from outside.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def _hit(signum: int) -> None:
    stamp = os.environ.get("FAULTRUN_STAMP")
    if stamp:  # when the signal went, for tests of how soon it takes effect
        with open(stamp, "w") as out:
            out.write(repr(time.time()))
    os.kill(os.getpid(), signum)


def _before(
    owner: Any, name: str, signum: int, *, when: Callable[[dict[str, Any]], bool] | None = None
) -> None:
    """Send the signal when ``owner.name`` is first called (with ``when(kwargs)``)."""
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if calls[0] == 0 and (when is None or when(kwargs)):
            calls[0] += 1
            _hit(signum)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _after(owner: Any, name: str, signum: int, *, nth: int = 1) -> None:
    """Send the signal right after the nth call of ``owner.name`` returned."""
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            _hit(signum)
        return result

    setattr(owner, name, wrapper)


def _during_launch(signum: int) -> None:
    """Send the signal two seconds into the appliance's launch (a blocking C call)."""
    from vmbuild.guest import appliance

    original = appliance.Appliance.launch

    def launch(self: Any) -> None:
        threading.Timer(2.0, _hit, (signum,)).start()
        original(self)

    appliance.Appliance.launch = launch  # type: ignore[method-assign]


def _fallback_between_renames(signum: int) -> None:
    """No RENAME_EXCHANGE (as on NFS), and the signal between the two renames."""
    from vmbuild.output import bundle

    bundle._renameat2_exchange = lambda a, b: False  # type: ignore[assignment]
    _after(bundle, "_rename", signum)


def _install(point: str, signum: int) -> None:
    from vmbuild.build import customize, stages
    from vmbuild.output import bundle
    from vmbuild.plugins import manager as plugins

    # Each function is wrapped where its caller looks it up.

    points: dict[str, Callable[[], None]] = {
        "base": lambda: _after(stages, "inspect_base", signum),
        "disks": lambda: _after(stages, "_make_disk", signum),
        "launch": lambda: _during_launch(signum),
        "operations": lambda: _before(customize, "run_operations", signum),
        "seeds": lambda: _before(stages, "_place", signum),
        "lab-files": lambda: _before(
            stages, "lab_files", signum, when=lambda kwargs: kwargs.get("stage") is not None
        ),
        "publish": lambda: _before(stages, "publish", signum),
        "exchange": lambda: _after(bundle, "_renameat2_exchange", signum),
        "fallback": lambda: _fallback_between_renames(signum),
        "finished": lambda: _before(plugins.Plugins, "build_finished", signum),
    }
    points[point]()


POINTS = (
    "base",
    "disks",
    "launch",
    "operations",
    "seeds",
    "lab-files",
    "publish",
    "exchange",
    "fallback",
    "finished",
)


def main() -> int:
    point, name, separator, *args = sys.argv[1:]
    assert separator == "--" and point in POINTS, sys.argv
    signum = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}[name]
    _install(point, signum)
    from vmbuild import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
