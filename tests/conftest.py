"""Shared fixtures: a small real golden image, and the CLI run in-process."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from vmbuild import cli, log


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """An empty 1 GiB qcow2 golden image (a few hundred KiB on disk)."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    path = tmp_path / "golden.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"],
        check=True,
        capture_output=True,
    )
    return path


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


RunCli = Callable[..., Result]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run `vmbuild ARGS...` through vmbuild.cli.main and capture what it printed."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()  # drop anything printed before
        log.set_verbosity(1)  # a previous `build -q` must not silence this run
        sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
        try:
            code = cli.main([str(arg) for arg in args])
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
