"""The artifact's parts on their own: pieces, the layout, SHA256SUMS read back and
path relocation. Real files and real zstd; no appliance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vmbuild.artifact import layout as oci
from vmbuild.artifact.layout import ArtifactError, Layout, split_reference
from vmbuild.artifact.pieces import pack_file, restore
from vmbuild.artifact.unpack import _replace_paths
from vmbuild.host.files import file_digest
from vmbuild.output.bundle import read_sums, sums_text

MIB = 1 << 20


def _image(path: Path) -> Path:
    """5.5 MiB: random data, a 2 MiB hole, more data."""
    with path.open("wb") as out:
        out.write(os.urandom(2 * MIB))
        out.seek(2 * MIB, os.SEEK_CUR)
        out.write(os.urandom(MIB + MIB // 2))
    return path


def test_a_file_round_trips_through_pieces_and_stays_sparse(tmp_path: Path) -> None:
    image = _image(tmp_path / "disk.img")
    layout = Layout(tmp_path / "layout")
    layout.create()
    pieces = pack_file(layout, image, {oci.TITLE: "disk.img"}, piece_size=2 * MIB)
    assert [p.annotations[oci.OFFSET] for p in pieces] == [str(n * 2 * MIB) for n in range(3)]
    assert [int(p.annotations[oci.SIZE]) for p in pieces] == [2 * MIB, 2 * MIB, MIB + MIB // 2]
    assert pieces[1].size < 1024  # the hole compresses to next to nothing
    dest = tmp_path / "restored.img"
    with dest.open("wb") as out:
        size = restore(layout, pieces, "disk.img", file_digest(image), out)
    assert size == image.stat().st_size
    assert file_digest(dest) == file_digest(image)
    assert dest.stat().st_blocks * 512 <= image.stat().st_size - 2 * MIB + 64 * 1024


def test_packing_the_same_file_twice_gives_the_same_blobs(tmp_path: Path) -> None:
    image = _image(tmp_path / "disk.img")
    first, second = Layout(tmp_path / "a"), Layout(tmp_path / "b")
    for layout in (first, second):
        layout.create()
    a = pack_file(first, image, {}, piece_size=2 * MIB)
    b = pack_file(second, image, {}, piece_size=2 * MIB)
    assert a == b
    for piece in a:
        assert (
            first.blob_path(piece.digest).read_bytes()
            == second.blob_path(piece.digest).read_bytes()
        )


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_a_damaged_piece_is_named(tmp_path: Path, damage: str) -> None:
    image = _image(tmp_path / "disk.img")
    layout = Layout(tmp_path / "layout")
    layout.create()
    pieces = pack_file(layout, image, {}, piece_size=2 * MIB)
    blob = layout.blob_path(pieces[2].digest)
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
    elif damage == "truncate":
        blob.write_bytes(bytes(data[: len(data) // 2]))
    else:
        pieces[1], pieces[2] = pieces[2], pieces[1]
    with pytest.raises(ArtifactError) as caught:
        restore(layout, pieces, 'vm "web", vms/web/disk.qcow2', file_digest(image))
    message = caught.value.message
    assert 'vm "web", vms/web/disk.qcow2, piece' in message
    if damage != "swap":
        assert "piece 3 of 3" in message and pieces[2].digest in message


def test_the_whole_file_is_checked_too(tmp_path: Path) -> None:
    image = _image(tmp_path / "disk.img")
    layout = Layout(tmp_path / "layout")
    layout.create()
    pieces = pack_file(layout, image, {}, piece_size=2 * MIB)
    with pytest.raises(ArtifactError, match="reassembled, it has sha256"):
        restore(layout, pieces, "golden image g.qcow2", "0" * 64)


def test_layout_tags_and_references(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.create()
    one = layout.add_bytes(b"one", oci.FILE)
    two = layout.add_bytes(b"two", oci.FILE)
    layout.tag("lab", one)
    layout.tag("lab", two)
    layout.tag("other", one)
    assert {name: d.digest for name, d in layout.tags().items()} == {
        "lab": two.digest,
        "other": one.digest,
    }
    with pytest.raises(ArtifactError, match="holds 2 tagged artifacts"):
        layout.resolve(None)
    with pytest.raises(ArtifactError, match="no artifact tagged 'x'"):
        layout.resolve("x")
    assert split_reference(str(tmp_path / "layout")) == (tmp_path / "layout", None)
    assert split_reference(f"{tmp_path / 'layout'}:lab") == (tmp_path / "layout", "lab")
    with pytest.raises(ArtifactError, match="not an OCI image layout"):
        Layout(tmp_path / "nothing").index()


def test_sha256sums_read_back() -> None:
    digests = {"a b": "1" * 64, "back\\slash": "2" * 64, "new\nline": "3" * 64, "plain": "4" * 64}
    assert read_sums(sums_text(Path(), digests)) == digests
    with pytest.raises(ValueError):
        read_sums("not a line\n")


def test_paths_are_moved_only_where_they_stand_as_paths() -> None:
    text = "root=/out/lab file=/out/lab/vms/a x=/out/lab2 y=/out/lab.old z=/out/lab\n"
    moved = _replace_paths(text, [("/out/lab", "/srv/new\\lab")])
    assert moved == (
        "root=/srv/new\\lab file=/srv/new\\lab/vms/a x=/out/lab2 y=/out/lab.old z=/srv/new\\lab\n"
    )
