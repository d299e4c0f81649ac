"""One family of errors, each with a message, the place it concerns and a hint.

Library errors (TOML, jinja2, qemu-img, pycdlib, libguestfs) are translated where
vmbuild calls the library; only the CLI turns these into text and an exit code.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class ExitCode(enum.IntEnum):
    OK = 0
    #: Anything unexpected: Python's own code for an uncaught exception.
    INTERNAL = 1
    #: The user's input is wrong: profile, options, paths they named.
    USER = 2
    #: The input was fine but building failed (qemu-img, disk space, ...).
    BUILD = 3
    #: Another build of the same lab holds the lock.
    BUSY = 4
    #: `vmbuild check`: a running VM differs from its bundle.
    MISMATCH = 5


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    place: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.place}: {self.message}" if self.place else self.message
        return f"{text} ({self.hint})" if self.hint else text


class VmbuildError(Exception):
    """Base of every error vmbuild reports to its user without a traceback."""

    exit_code = ExitCode.BUILD

    def __init__(self, message: str, *, place: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.place = place
        self.hint = hint

    def lines(self) -> list[str]:
        return [str(Problem(self.place, self.message, self.hint))]


class UserError(VmbuildError):
    """Bad input: a profile, an option or a path the user gave."""

    exit_code = ExitCode.USER


class ProfileError(UserError):
    """Every problem found in a profile, reported together."""

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        self.source = source
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{source}: {count} {noun}")

    def lines(self) -> list[str]:
        return [f"{self.source}: {problem}" for problem in self.problems]


class BuildError(VmbuildError):
    """The input was valid, but a build step failed."""

    exit_code = ExitCode.BUILD


class ImageLockedError(BuildError):
    """A disk image is locked: a running VM (or another program) has it open."""

    def __init__(
        self, message: str, *, path: Path | None = None, place: str = "", hint: str = ""
    ) -> None:
        super().__init__(message, place=place, hint=hint)
        self.path = path


class LabBusyError(VmbuildError):
    """Another vmbuild process is building the same lab."""

    exit_code = ExitCode.BUSY
