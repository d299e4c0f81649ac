"""Whose signatures a lab must carry (``--allowed-signers``, ``--allow-unsigned``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_ALLOWED_SIGNERS = "VMBUILD_ALLOWED_SIGNERS"


def default_allowed_signers() -> Path:
    """``$VMBUILD_ALLOWED_SIGNERS``, else ~/.config/vmbuild/allowed_signers."""
    if explicit := os.environ.get(ENV_ALLOWED_SIGNERS):
        return Path(explicit)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vmbuild" / "allowed_signers"


@dataclass(frozen=True)
class Trust:
    """Whose signature a lab must carry: a key that ``allowed_signers`` (by default
    ``default_allowed_signers()``) allows; or none at all, with ``allow_unsigned``."""

    allowed_signers: Path | None = None
    allow_unsigned: bool = False

    def signers_file(self) -> Path:
        return self.allowed_signers or default_allowed_signers()
