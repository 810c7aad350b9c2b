"""Opening an input for streaming: standard input, compression, and damage detection.

:func:`open_input` returns a binary stream of the *decompressed* bytes of a path (``-`` is standard
input). Compression is recognised by the magic bytes at the start of the data (gzip, zstandard,
bzip2, xz), so a misnamed file still works; a file too short to carry magic bytes falls back to
its suffix (``.gz``, ``.zst``, ``.bz2``, ``.xz``).

:func:`iter_chunks` reads such a stream in small pieces and turns every decompression failure
(truncated data, bad CRC, garbage) into :class:`CompressedDataError` carrying the number of
decompressed bytes delivered before it. Small pieces matter: a decoder raises on the read that hits
the damage and returns nothing of that read, so the smaller the reads, the less good data is lost.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

#: Decompressed bytes per read (see the module docstring for why it is small).
CHUNK_BYTES = 1 << 16

_MAGIC = {
    b"\x1f\x8b": "gz",
    b"\x28\xb5\x2f\xfd": "zst",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
}
_SUFFIX = {".gz": "gz", ".zst": "zst", ".zstd": "zst", ".bz2": "bz2", ".xz": "xz"}
COMPRESSION_SUFFIXES = tuple(_SUFFIX)


class InputError(ValueError):
    """An input that cannot be read as asked (layout, columns, alignment); always fatal."""


class CompressedDataError(ValueError):
    """Decompression failed after ``offset`` decompressed bytes had been delivered."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


class DamagedInputError(ValueError):
    """An input that ends in damage: records up to ``last_good`` are intact, the rest is lost.

    Attributes:
        path: the input.
        offset: decompressed byte offset where reading failed.
        unit: what ``last_good`` counts (``line``, ``element``, ``row``).
        last_good: locator of the last intact record (0: none).
        reason: what the decoder said.
    """

    def __init__(self, path: str, offset: int, unit: str, last_good: int, reason: str) -> None:
        super().__init__(
            f"{path}: damaged input at byte offset {offset} (uncompressed), after {unit} "
            f"{last_good} (the last good record): {reason}"
        )
        self.path = path
        self.offset = offset
        self.unit = unit
        self.last_good = last_good
        self.reason = reason


def compression_of(path: str, head: bytes) -> str | None:
    """``gz``/``zst``/``bz2``/``xz`` from the magic bytes ``head`` (else the suffix), or None."""
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if len(head) < 6:
        for suffix, kind in _SUFFIX.items():
            if path.endswith(suffix):
                return kind
    return None


def strip_compression_suffix(path: str) -> str:
    """``corpus.jsonl`` for ``corpus.jsonl.zst``: the name that tells the layout."""
    for suffix in COMPRESSION_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


class _ZstdReader(io.RawIOBase):
    """Streams zstandard frames (several in a row, as ``zstd`` writes them for concatenated input)
    and, unlike ``zstandard``'s own stream reader, raises on a truncated last frame."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._pending = b""
        self._at = 0  # read position in _pending (an index: slicing off the front is quadratic)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while self._at >= len(self._pending):
            self._pending, self._at = b"", 0
            # Small compressed pieces keep one piece's output (and memory) small.
            data = self._raw.read(1 << 13)
            if not data:
                if self._in_frame:
                    raise EOFError("compressed file ended before the end of its last zstd frame")
                return 0
            while data:
                self._in_frame = True
                self._pending += self._obj.decompress(data)
                data = b""
                if self._obj.eof:
                    data = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                    self._in_frame = False
        n = min(len(b), len(self._pending) - self._at)
        b[:n] = memoryview(self._pending)[self._at : self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_input(path: str) -> tuple[BinaryIO, bool]:
    """``(stream of decompressed bytes, compressed?)`` for ``path`` (``-``: standard input)."""
    if path == "-":
        raw: BinaryIO = io.BufferedReader(sys.stdin.buffer.raw, 1 << 20)  # type: ignore[arg-type]
        head = raw.peek(6)[:6]
    else:
        raw = open(path, "rb", buffering=1 << 20)
        head = raw.peek(6)[:6]
    kind = compression_of(path, head)
    if kind is None:
        return raw, False
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), True  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.BZ2File(raw, "rb"), True  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb"), True  # type: ignore[return-value]
    return io.BufferedReader(_ZstdReader(raw), CHUNK_BYTES), True  # type: ignore[return-value]


# What the decoders raise on damage: truncation is EOFError, bad data zlib/lzma/zstd errors or
# OSError (gzip.BadGzipFile, bz2's "Invalid data stream").
_DAMAGE = (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


def iter_chunks(stream: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The decompressed bytes of ``stream`` in pieces of at most ``size``.

    Raises:
        CompressedDataError: the data is damaged; ``offset`` counts the bytes yielded before.
    """
    offset = 0
    while True:
        try:
            chunk = stream.read(size)
        except _DAMAGE as e:
            raise CompressedDataError(f"{type(e).__name__}: {e}", offset) from None
        if not chunk:
            return
        offset += len(chunk)
        yield chunk
