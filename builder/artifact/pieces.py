"""A disk image as fixed pieces, each compressed with zstd on its own.

A piece holds at most ``MAX_PIECE`` bytes of the file (256 MiB: every blob stays
under common registry limits, and an interrupted transfer resumes at a piece), and
its descriptor records where it goes (offset), how much it holds and the sha256 of
what it holds. zstd runs in its multi-threaded mode with any number of workers,
whose output does not depend on their number: the same file always packs to the
same bytes, on any machine.

Restoring checks every piece and the whole file's sha256 on the way, and writes
runs of zeros as holes, so a sparse image stays sparse.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, cast

import zstandard
from vmbuild.artifact.layout import OFFSET, PIECE, SHA256, SIZE, ArtifactError, Descriptor, Layout
from vmbuild.log import Progress as ItemProgress

MAX_PIECE = 256 << 20
LEVEL = 6
_CHUNK = 4 << 20
_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(_BLOCK)

#: Called with the bytes done so far and the total.
Progress = Callable[[int, int], None]


def for_file(progress: ItemProgress | None, name: str) -> Progress | None:
    """A file's own progress, from a transfer's progress over many items."""
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def _compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(
        level=LEVEL, threads=max(1, os.cpu_count() or 1), write_checksum=True
    )


def pack_file(
    layout: Layout,
    path: Path,
    annotations: Mapping[str, str],
    *,
    piece_size: int = MAX_PIECE,
    progress: Progress | None = None,
    whole: hashlib._Hash | None = None,
) -> list[Descriptor]:
    """Store ``path`` in ``layout`` as pieces; their descriptors, in order.
    ``whole``, when given, is fed every byte of the file on the way."""
    if not 0 < piece_size <= MAX_PIECE:
        raise ValueError(f"piece size {piece_size} is not in 1..{MAX_PIECE}")
    total = path.stat().st_size
    pieces: list[Descriptor] = []
    with path.open("rb") as source:
        offset = 0
        while offset < total or not pieces:
            length = min(piece_size, total - offset)
            piece_hash = hashlib.sha256()
            with (
                layout.writing() as blob,
                _compressor().stream_writer(
                    cast(IO[bytes], blob), size=length, closefd=False
                ) as out,
            ):
                left = length
                while left:
                    data = source.read(min(_CHUNK, left))
                    if not data:
                        raise ArtifactError(f"{path} shrank while it was being packed")
                    piece_hash.update(data)
                    if whole is not None:
                        whole.update(data)
                    out.write(data)
                    left -= len(data)
                    if progress is not None:
                        progress(offset + length - left, total)
            pieces.append(
                Descriptor(
                    PIECE,
                    blob.digest,
                    blob.size,
                    {
                        **annotations,
                        OFFSET: str(offset),
                        SIZE: str(length),
                        SHA256: piece_hash.hexdigest(),
                    },
                )
            )
            offset += length
    return pieces


def unpacked_size(pieces: list[Descriptor]) -> int:
    return sum(int(piece.annotations.get(SIZE, "0")) for piece in pieces)


def restore(
    layout: Layout,
    pieces: list[Descriptor],
    what: str,
    sha256: str,
    dest: IO[bytes] | None = None,
    progress: Progress | None = None,
) -> int:
    """Decompress ``pieces`` in order, checking each blob, each piece and the whole
    file against ``sha256``; written to ``dest`` (holes for zeros) when given.
    Returns the file's size."""
    whole = hashlib.sha256()
    total = unpacked_size(pieces)
    done = 0
    for number, piece in enumerate(pieces, start=1):
        name = f"{what}, piece {number} of {len(pieces)}"
        try:
            offset, size = int(piece.annotations[OFFSET]), int(piece.annotations[SIZE])
            expected = piece.annotations[SHA256]
        except (KeyError, ValueError):
            raise ArtifactError(
                f"{name}: blob {piece.digest} has no offset, size or sha256"
            ) from None
        if offset != done:
            raise ArtifactError(f"{name}: starts at {offset}, not at {done} where the last ended")
        piece_hash = hashlib.sha256()
        blob_hash = hashlib.sha256()
        got = 0
        path = layout.blob_path(piece.digest)
        try:
            with path.open("rb") as compressed:
                reader = _HashingReader(compressed, blob_hash)
                decompressor = zstandard.ZstdDecompressor()
                with decompressor.stream_reader(cast(IO[bytes], reader), closefd=False) as stream:
                    while data := stream.read(_CHUNK):
                        piece_hash.update(data)
                        whole.update(data)
                        got += len(data)
                        if got > size:
                            break
                        if dest is not None:
                            _write_sparse(dest, data)
                        if progress is not None:
                            progress(done + got, total)
                # the blob's digest covers every byte of it, read to its end
                while reader.read(_CHUNK):
                    pass
        except FileNotFoundError:
            raise ArtifactError(f"{name}: blob {piece.digest} is missing") from None
        except zstandard.ZstdError as err:
            raise ArtifactError(f"{name}: blob {piece.digest} is damaged ({err})") from None
        if reader.size != piece.size or "sha256:" + blob_hash.hexdigest() != piece.digest:
            raise ArtifactError(
                f"{name}: blob {piece.digest} is damaged "
                f"({reader.size} bytes of {piece.size}, sha256 {blob_hash.hexdigest()[:12]}…)"
            )
        if got != size or piece_hash.hexdigest() != expected:
            raise ArtifactError(
                f"{name}: blob {piece.digest} holds {got} bytes with sha256 "
                f"{piece_hash.hexdigest()[:12]}…, not the {size} bytes with sha256 "
                f"{expected[:12]}… its descriptor records"
            )
        done += got
    if whole.hexdigest() != sha256:
        raise ArtifactError(f"{what}: reassembled, it has sha256 {whole.hexdigest()}, not {sha256}")
    if dest is not None:
        dest.truncate(done)
    return done


class _HashingReader:
    """A file read through a hash, counting its bytes (for the blob's digest)."""

    def __init__(self, file: IO[bytes], digest: hashlib._Hash) -> None:
        self.file = file
        self.digest = digest
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


def _write_sparse(dest: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), _BLOCK):
        block = view[start : start + _BLOCK]
        if len(block) == _BLOCK and block == _ZERO_BLOCK:
            dest.seek(_BLOCK, os.SEEK_CUR)
        else:
            dest.write(block)
