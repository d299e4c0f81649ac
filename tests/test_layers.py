"""The import contracts in pyproject.toml hold for the tree, and they bite: a copy of
the package with a cycle or a layer broken on purpose fails ``lint-imports``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def lint(source: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the contracts of pyproject.toml, on the package in ``source``."""
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=source.parent,
        env={**os.environ, "PYTHONPATH": str(source.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    package = tmp_path / "src" / "vmbuild"
    shutil.copytree(ROOT / "builder", package, ignore=shutil.ignore_patterns("__pycache__"))
    return package


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    module.write_text(head + sep + line + "\n" + rest)


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = lint(copy_of_the_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_cycle_is_refused(tmp_path: Path) -> None:
    package = copy_of_the_package(tmp_path)
    # bundle already imports host.files; this closes a loop between the two packages
    add_import(package / "host" / "space.py", "from vmbuild.output import bundle  # noqa")
    result = lint(package)
    assert result.returncode != 0
    assert "No import cycles anywhere in vmbuild BROKEN" in result.stdout
    assert "vmbuild.host" in result.stdout and "vmbuild.output" in result.stdout


def test_the_model_importing_the_guest_side_is_refused(tmp_path: Path) -> None:
    package = copy_of_the_package(tmp_path)
    add_import(package / "model" / "plan.py", "from vmbuild.guest import appliance  # noqa")
    result = lint(package)
    assert result.returncode != 0
    assert "vmbuild's layers BROKEN" in result.stdout
    assert "vmbuild.model.plan -> vmbuild.guest.appliance" in result.stdout


def test_every_subpackage_is_installed_with_its_templates() -> None:
    """pyproject's package list names every folder of builder/ that is a package, and
    its package-data every folder of templates: a wheel misses anything it leaves out."""
    import tomllib

    package = ROOT / "builder"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        "vmbuild." + ".".join(init.parent.relative_to(package).parts)
        for init in package.rglob("__init__.py")
        if init.parent != package
    }
    assert found - set(config["packages"]) == set()
    templated = {
        "vmbuild." + ".".join(folder.parent.relative_to(package).parts)
        for folder in package.rglob("templates")
        if folder.is_dir()
    }
    assert {
        name for name in templated if "templates/*.j2" in config["package-data"].get(name, [])
    } == templated
