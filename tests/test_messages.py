"""What `vmbuild` says about a golden image it cannot use: one short message that
names the problem, through the real CLI, with the tool's full output only under -v."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from labs import USER, make_image, write_lab
from vmbuild.golden import builder as golden_module

#: The run_cli fixture (conftest.py): run(*args) -> Result(code, out, err).
RunCli = Callable[..., Any]

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def write_profile(
    folder: Path, base: Mapping[str, Any], vm: Mapping[str, Any] | None = None
) -> Path:
    """Lab "lab": VM web on QEMU user networking; ``base`` is the [base] table."""
    return write_lab(
        folder,
        None,
        name="lab",
        domain=None,
        base=base,
        network=USER,
        vms=[{"name": "web", "ip": "192.0.2.10", **(vm or {})}],
    )


def image_profile(folder: Path, image: Path | str, fmt: str = "qcow2") -> Path:
    return write_profile(folder, {"image": str(image), "format": fmt})


def assert_short(text: str) -> None:
    assert len(text.splitlines()) < 5, text[:2000]
    assert len(text) < 1000, text[:2000]


def assert_refused(result: Any, line: str) -> None:
    """Exit 2 and exactly this one error line, nothing on stdout."""
    assert result.code == 2, result
    assert result.err.splitlines() == [f"vmbuild: error: {line}"]
    assert result.out == ""


# --------------------------------------------------------- qemu-img's output


@pytest.fixture
def data_golden(tmp_path: Path) -> Path:
    """A qcow2 holding 4 MiB of data: cut in half, it loses dozens of clusters."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    return make_image(tmp_path / "golden.qcow2", data_mib=4)


def _truncate_to_half(image: Path) -> None:
    with image.open("r+b") as handle:
        handle.truncate(image.stat().st_size // 2)


def _qemu_img_check(image: Path) -> tuple[int, list[str]]:
    """What qemu-img check itself reports: the corruption count and its ERROR lines."""
    result = subprocess.run(
        ["qemu-img", "check", "--output=json", "-f", "qcow2", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    return json.loads(result.stdout)["corruptions"], errors


def test_truncated_golden_image_is_one_short_message(
    run_cli: RunCli, data_golden: Path, tmp_path: Path
) -> None:
    golden = data_golden
    _truncate_to_half(golden)
    corruptions, errors = _qemu_img_check(golden)
    assert len(errors) > 10  # what vmbuild used to print, one line each
    path = image_profile(tmp_path, golden)
    result = run_cli("validate", path)
    assert result.code == 2
    first = errors[0].removeprefix("ERROR:").removeprefix("ERROR").strip()
    assert result.err == (
        f"vmbuild: error: {path}: base: image {golden} is damaged: qemu-img check found "
        f"{corruptions} errors (first: {first}) (copy or build the golden image again)\n"
    )
    assert_short(result.err)
    assert result.out == ""


def test_truncated_golden_image_in_full_under_verbose(
    run_cli: RunCli, data_golden: Path, tmp_path: Path
) -> None:
    golden = data_golden
    _truncate_to_half(golden)
    _, errors = _qemu_img_check(golden)
    result = run_cli("validate", image_profile(tmp_path, golden), "-v")
    assert result.code == 2
    shown = [line.strip() for line in result.err.splitlines()]
    assert all(line in shown for line in errors)
    assert result.err.splitlines()[-1].startswith("vmbuild: error: ")


def _fake_qemu_img(folder: Path, monkeypatch: pytest.MonkeyPatch, stderr: str) -> None:
    """A qemu-img first on PATH that fails `info` with ``stderr`` (and exit status 1)."""
    folder.mkdir()
    (folder / "said").write_text(stderr)
    script = folder / "qemu-img"
    script.write_text(f'#!/bin/sh\ncat "{folder}/said" >&2\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


def test_other_qemu_img_failures_show_their_first_line(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "golden.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(4092))
    lines = [f"qemu-img: line {number} of what went wrong" for number in range(1, 41)]
    _fake_qemu_img(tmp_path / "bin", monkeypatch, "\n" + "\n".join(lines) + "\n\n")
    path = image_profile(tmp_path, image)
    result = run_cli("validate", path)
    assert_refused(
        result,
        f"{path}: base: image {image} cannot be read as qcow2: line 1 of what went wrong "
        "(39 more lines; run with -v to see them) (set base.format to the image's real format)",
    )
    verbose = run_cli("validate", path, "-v")
    assert verbose.code == 2
    assert all(line.removeprefix("qemu-img: ") in verbose.err for line in lines)


def test_a_locked_image_is_still_told_apart(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "golden.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(4092))
    _fake_qemu_img(
        tmp_path / "bin",
        monkeypatch,
        f"qemu-img: Could not open '{image}': Failed to get shared \"write\" lock\n"
        f"Is another process using the image [{image}]?\n",
    )
    path = image_profile(tmp_path, image)
    assert_refused(
        run_cli("validate", path),
        f"{path}: base: image {image} is locked: a running VM is using it "
        "(shut that VM down; a golden image must not change under its clones)",
    )


# ----------------------------------------------------------- symbolic links

LINK_HINT = "(make the link point at the golden image, or point base.image at it)"


def test_symbolic_link_loop(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "a.qcow2").symlink_to("b.qcow2")
    (tmp_path / "b.qcow2").symlink_to("a.qcow2")
    path = image_profile(tmp_path, "a.qcow2")
    assert_refused(
        run_cli("validate", path),
        f"{path}: base: image a.qcow2 is a symbolic link loop {LINK_HINT}",
    )


def test_dangling_symbolic_link(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "golden.qcow2").symlink_to("images/gone.qcow2")
    path = image_profile(tmp_path, "golden.qcow2")
    assert_refused(
        run_cli("validate", path),
        f"{path}: base: image golden.qcow2 is a symbolic link to images/gone.qcow2, "
        f"which does not exist {LINK_HINT}",
    )


def test_chain_of_links_names_the_missing_end(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "golden.qcow2").symlink_to("current.qcow2")
    (tmp_path / "current.qcow2").symlink_to("gone.qcow2")
    path = image_profile(tmp_path, "golden.qcow2")
    assert_refused(
        run_cli("validate", path),
        f"{path}: base: image golden.qcow2 is a symbolic link to {tmp_path / 'gone.qcow2'}, "
        f"which does not exist {LINK_HINT}",
    )


# ------------------------------------------------------------ empty images

AGAIN = "(copy or build the golden image again)"
NO_SIGNATURE = (
    "has no partition table or filesystem (no MBR, GPT or filesystem signature) "
    "(a golden image holds a partitioned disk or a filesystem; is base.format right?)"
)


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (b"", f"is empty (0 bytes) {AGAIN}"),
        (bytes(65536), f"is empty: its 65536 bytes are all zeros {AGAIN}"),
        (
            bytes(2 << 20),
            f"has no partition table or filesystem: its first MiB is all zeros {AGAIN}",
        ),
        (b"not a disk\n" * 100_000, NO_SIGNATURE),
    ],
    ids=["0-bytes", "all-zeros", "zero-first-mib", "no-signature"],
)
def test_empty_raw_image_is_refused(
    run_cli: RunCli, tmp_path: Path, contents: bytes, message: str
) -> None:
    image = tmp_path / "golden.raw"
    image.write_bytes(contents)
    path = image_profile(tmp_path, image, "raw")
    assert_refused(run_cli("validate", path), f"{path}: base: image {image} {message}")


def test_empty_raw_image_fails_a_build_before_any_appliance(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmbuild.guest import appliance

    def no_appliance(*args: object, **kwargs: object) -> None:
        raise AssertionError("an appliance was started")

    monkeypatch.setattr(appliance.Appliance, "__init__", no_appliance)
    image = tmp_path / "golden.raw"
    image.write_bytes(b"")
    path = image_profile(tmp_path, image, "raw")
    result = run_cli("build", path, "-o", tmp_path / "out", "-q")
    assert result.code == 2, result
    assert f"base: image {image} is empty (0 bytes)" in result.err
    assert not (tmp_path / "out" / "lab").exists()


def _signed(offset: int, magic: bytes, size: int = 2 << 20) -> bytes:
    data = bytearray(size)
    data[offset : offset + len(magic)] = magic
    return bytes(data)


@needs_qemu_img
@pytest.mark.parametrize(
    "contents",
    [_signed(510, b"\x55\xaa"), _signed(512, b"EFI PART"), _signed(1080, b"\x53\xef")],
    ids=["mbr", "gpt", "ext4"],
)
def test_raw_image_with_a_partition_table_or_filesystem_passes(
    run_cli: RunCli, tmp_path: Path, contents: bytes
) -> None:
    image = tmp_path / "golden.raw"
    image.write_bytes(contents)
    result = run_cli("validate", image_profile(tmp_path, image, "raw"))
    assert result.code == 0, result


@needs_qemu_img
def test_qcow2_of_virtual_size_zero_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    image = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "0"], check=True)
    path = image_profile(tmp_path, image)
    assert_refused(
        run_cli("validate", path),
        f"{path}: base: image {image} is empty: its virtual size is 0 {AGAIN}",
    )


# ------------------------------------------------- Debian release names


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("VMBUILD_CACHE", str(folder))
    return folder


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """debootstrap's scripts as a small known set: sid and two releases that use it,
    and an Ubuntu one; debootstrap itself counts as installed."""
    root = tmp_path / "debootstrap"
    folder = root / "scripts"
    folder.mkdir(parents=True)
    for name in ("sid", "gutsy", "debian-common"):
        (folder / name).write_text("mirror_style release\n")
    for name in ("bookworm", "trixie"):
        (folder / name).symlink_to("sid")
    (folder / "jammy").symlink_to("gutsy")
    monkeypatch.setenv("DEBOOTSTRAP_DIR", str(root))
    monkeypatch.setattr(golden_module, "debootstrap_path", lambda: "/usr/sbin/debootstrap")
    return folder


def debian_profile(folder: Path, release: str) -> Path:
    return write_profile(folder, {"debian": release})


def test_unknown_release_is_named_with_a_suggestion(
    run_cli: RunCli, tmp_path: Path, cache: Path, scripts: Path
) -> None:
    path = debian_profile(tmp_path, "bokworm")
    result = run_cli("validate", path)
    assert_refused(
        result,
        f'{path}: base: Debian release "bokworm" is not one debootstrap knows '
        '(did you mean "bookworm"? debootstrap\'s Debian-family releases: bookworm, sid, '
        f"trixie; its scripts are in {scripts})",
    )
    assert "does not exist" not in result.err


def test_unknown_release_fails_a_build_before_debootstrap(
    run_cli: RunCli, tmp_path: Path, cache: Path, scripts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_debootstrap(*args: object) -> None:
        raise AssertionError("debootstrap was run")

    monkeypatch.setattr(golden_module, "_debootstrap", no_debootstrap)
    path = debian_profile(tmp_path, "bokworm")
    result = run_cli("build", path, "-o", tmp_path / "out", "-q")
    assert result.code == 2, result
    assert result.err.splitlines()[-1] == (
        'vmbuild: error: Debian release "bokworm" is not one debootstrap knows '
        '(did you mean "bookworm"? debootstrap\'s Debian-family releases: bookworm, sid, '
        f"trixie; its scripts are in {scripts})"
    )
    assert_short(result.err)
    assert not (tmp_path / "out" / "lab").exists()
    golden = run_cli("golden", "--debian", "bokworm")
    assert golden.code == 2
    assert golden.err.splitlines()[-1] == result.err.splitlines()[-1]


def test_known_release_not_built_yet_passes_validate(
    run_cli: RunCli, tmp_path: Path, cache: Path, scripts: Path
) -> None:
    path = debian_profile(tmp_path, "trixie")
    result = run_cli("validate", path)
    assert result.code == 0, result
    lines = result.err.splitlines()
    assert len(lines) == 2, result.err
    assert lines[0].startswith(
        "base: the Debian trixie golden image is not built yet; `vmbuild build` will build it "
        f"({cache / 'golden' / 'debian-trixie-'}"
    )
    assert lines[1] == f"{path}: OK, lab 'lab' with 1 VMs"


def test_not_built_yet_still_checks_disk_sizes(
    run_cli: RunCli, tmp_path: Path, cache: Path, scripts: Path
) -> None:
    path = write_profile(tmp_path, {"debian": "trixie", "size": "8G"}, {"disk_size": "4G"})
    assert_refused(
        run_cli("validate", path),
        f'{path}: vm "web": disk_size 4G is smaller than the golden image\'s virtual size 8G',
    )


def test_without_debootstrap_says_so(
    run_cli: RunCli, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(golden_module, "_which", lambda tool: None)
    for release in ("bookworm", "bokworm"):
        path = debian_profile(tmp_path, release)
        assert_refused(
            run_cli("validate", path),
            f"{path}: base: the Debian {release} golden image is not built yet, and "
            "debootstrap, which builds it, is not installed (apt-get install debootstrap)",
        )


@pytest.mark.skipif(
    golden_module.debootstrap_releases() is None, reason="debootstrap is not installed"
)
def test_unknown_release_with_this_hosts_debootstrap(
    run_cli: RunCli, tmp_path: Path, cache: Path
) -> None:
    result = run_cli("validate", debian_profile(tmp_path, "bokworm"))
    assert result.code == 2
    assert 'is not one debootstrap knows (did you mean "bookworm"?' in result.err
    assert "bullseye" in result.err and "/scripts" in result.err
    assert_short(result.err)
    assert run_cli("validate", debian_profile(tmp_path, "bookworm")).code == 0
