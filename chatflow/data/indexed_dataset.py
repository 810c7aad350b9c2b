"""Megatron's memory-mapped token-shard format (``.bin``/``.idx``, MMIDIDX version 1).

The layout is byte-compatible with ``megatron.core.datasets.indexed_dataset``: an ``.idx`` header
(magic, version, dtype code, sequence count, document-index length) followed by int32 sequence
lengths, int64 byte pointers into ``.bin`` and int64 document indices; ``.bin`` is the raw
concatenation of every sequence's tokens. All integers are little-endian.

The writer is atomic: it writes ``<prefix>.bin``/``.idx`` under temporary names and renames them
only in :meth:`IndexedDatasetWriter.finalize`, ``.idx`` last, so a killed run never leaves an
``.idx`` that looks complete.
"""

from __future__ import annotations

import array
import os
import struct
from collections.abc import Iterable, Sequence

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, doc-index length

DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(t): c for c, t in DTYPE_CODES.items()}


class IndexedDatasetError(ValueError):
    """A shard that cannot be read; the message names the file and what is wrong."""


def token_dtype(vocab_size: int) -> type:
    """The token dtype Megatron's writer picks for a vocabulary: uint16 below 65500, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def idx_path(prefix: str) -> str:
    """Path of the index file of a shard prefix."""
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    """Path of the data file of a shard prefix."""
    return prefix + ".bin"


def missing_shard_files(prefix: str) -> list[str]:
    """The files of the shard ``prefix`` that do not exist: its ``.idx``, then its ``.bin``.

    The one missing-shard check: the reader, the schedule and the config all report from it.
    """
    return [path for path in (idx_path(prefix), bin_path(prefix)) if not os.path.isfile(path)]


def shard_exists(prefix: str) -> bool:
    """True when both files of a shard are present."""
    return not missing_shard_files(prefix)


def check_shard_exists(prefix: str) -> None:
    """Raise :class:`IndexedDatasetError` naming the first missing file of the shard ``prefix``."""
    missing = missing_shard_files(prefix)
    if missing:
        what = "index" if missing[0] == idx_path(prefix) else "data"
        raise IndexedDatasetError(f"{missing[0]}: {what} file not found")


class IndexedDataset:
    """Read-only, memory-mapped view of one ``.bin``/``.idx`` shard.

    ``ds[i]`` is sequence ``i`` as a numpy view into the memory map (no copy). Documents are runs
    of sequences given by :attr:`document_indices`; ChatFlow writes one sequence per document.

    Args:
        prefix: path without the ``.bin``/``.idx`` suffix.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        check_shard_exists(prefix)
        path = idx_path(prefix)
        size = os.path.getsize(path)
        if size < _HEADER.size:
            raise IndexedDatasetError(
                f"{path}: truncated index ({size} bytes, the header alone is {_HEADER.size})"
            )
        with open(path, "rb") as f:
            magic, version, code, count, doc_count = _HEADER.unpack(f.read(_HEADER.size))
        if magic != MAGIC:
            raise IndexedDatasetError(f"{path}: bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise IndexedDatasetError(f"{path}: unsupported version {version}, expected {VERSION}")
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(
                f"{path}: unknown dtype code {code} (known: {sorted(DTYPE_CODES)})"
            )
        expected = _HEADER.size + 12 * count + 8 * doc_count
        # Multimodal shards append one int8 mode per sequence; accept that layout too.
        if size not in (expected, expected + count):
            raise IndexedDatasetError(
                f"{path}: truncated or corrupt index: {size} bytes, header promises {expected} "
                f"({count} sequences, {doc_count} document indices)"
            )
        self.dtype = np.dtype(DTYPE_CODES[code])
        self._index = np.memmap(path, mode="r", dtype=np.uint8)
        off = _HEADER.size
        self.sequence_lengths = np.frombuffer(self._index, np.int32, count, off)
        off += 4 * count
        self.sequence_pointers = np.frombuffer(self._index, np.int64, count, off)
        off += 8 * count
        self.document_indices = np.frombuffer(self._index, np.int64, doc_count, off)
        if doc_count == 0 or self.document_indices[0] != 0 or self.document_indices[-1] != count:
            raise IndexedDatasetError(
                f"{path}: document indices must run from 0 to the sequence count {count}"
            )

        data = bin_path(prefix)
        nbytes = os.path.getsize(data)
        need = (
            int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize
            if count
            else 0
        )
        if nbytes != need:
            raise IndexedDatasetError(
                f"{data}: size {nbytes} bytes does not match its index, which needs {need}"
                + (" (truncated)" if nbytes < need else "")
            )
        # np.memmap refuses empty files; an empty shard has no tokens to map.
        self._bin = (
            np.memmap(data, mode="r", dtype=self.dtype) if nbytes else np.empty(0, self.dtype)
        )

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        """Number of documents (runs of sequences)."""
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        """Total number of tokens in the shard."""
        return len(self._bin)

    def get_flat(self) -> np.ndarray:
        """Every token of the shard, all sequences back to back, as a read-only view."""
        return self._bin

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` as a view (no copy)."""
        n = int(self.sequence_lengths[i])
        if length is None:
            length = n - offset
        if offset < 0 or length < 0 or offset + length > n:
            raise IndexError(
                f"{self.prefix}: slice [{offset}, {offset + length}) of sequence {i} "
                f"with {n} tokens"
            )
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start : start + length]

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.prefix}: sequence {i} out of range [0, {len(self)})")
        return self.get(i % len(self))


class IndexedDatasetWriter:
    """Streams sequences into a new shard and publishes it atomically.

    Use as a context manager: leaving the block normally finalizes, an exception discards the
    temporary files and leaves any earlier shard with the same prefix as it was.

    Args:
        prefix: output path without suffix.
        dtype: token dtype (see :func:`token_dtype`).
    """

    def __init__(self, prefix: str, dtype: type | np.dtype) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise ValueError(f"{prefix}: dtype {self.dtype} has no MMIDIDX code")
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        suffix = f".tmp{os.getpid()}"
        self._tmp_bin = bin_path(prefix) + suffix
        self._tmp_idx = idx_path(prefix) + suffix
        self._bin = open(self._tmp_bin, "wb")
        self._lengths = array.array("i")
        self._doc_indices = array.array("q", [0])
        self._closed = False

    def add_sequence(self, tokens: np.ndarray | Sequence[int]) -> None:
        """Append one sequence to the current (open) document."""
        arr = np.asarray(tokens, dtype=self.dtype)
        if arr.ndim != 1:
            raise ValueError(f"{self.prefix}: a sequence must be 1-D, got shape {arr.shape}")
        self._bin.write(arr.tobytes(order="C"))
        self._lengths.append(len(arr))

    def end_document(self) -> None:
        """Close the current document after the sequences added since the last call."""
        self._doc_indices.append(len(self._lengths))

    def add_document(self, tokens: np.ndarray | Sequence[int]) -> None:
        """Append a document made of one sequence."""
        self.add_sequence(tokens)
        self.end_document()

    def add_documents(self, docs: Iterable[np.ndarray | Sequence[int]]) -> None:
        """Append several one-sequence documents."""
        for doc in docs:
            self.add_document(doc)

    def add_shard(self, other: str | IndexedDataset) -> None:
        """Append every document of another shard (same dtype), copying its data in bulk."""
        src = other if isinstance(other, IndexedDataset) else IndexedDataset(other)
        if src.dtype != self.dtype:
            raise ValueError(f"{src.prefix}: dtype {src.dtype} differs from {self.dtype}")
        base = len(self._lengths)
        self._lengths.frombytes(np.ascontiguousarray(src.sequence_lengths).tobytes())
        self._doc_indices.frombytes((src.document_indices[1:] + base).astype(np.int64).tobytes())
        chunk = 1 << 24  # copy in 16M-element pieces to keep memory bounded
        for start in range(0, src.num_tokens, chunk):
            self._bin.write(np.asarray(src._bin[start : start + chunk]).tobytes())

    @property
    def num_sequences(self) -> int:
        """Sequences written so far."""
        return len(self._lengths)

    def finalize(self) -> None:
        """Write the index and publish both files (``.bin`` first, then ``.idx``)."""
        if self._doc_indices[-1] != len(self._lengths):
            self.end_document()
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(self._tmp_idx, "wb") as f:
            f.write(
                _HEADER.pack(
                    MAGIC, VERSION, _CODE_OF[self.dtype], len(lengths), len(self._doc_indices)
                )
            )
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(np.frombuffer(self._doc_indices, dtype=np.int64).tobytes())
            f.flush()
            os.fsync(f.fileno())
        # Remove a stale index first: between the two renames no old .idx can pair with a new .bin.
        if os.path.exists(idx_path(self.prefix)):
            os.unlink(idx_path(self.prefix))
        os.replace(self._tmp_bin, bin_path(self.prefix))
        os.replace(self._tmp_idx, idx_path(self.prefix))
        self._closed = True

    def abort(self) -> None:
        """Discard everything written; earlier files with this prefix are untouched."""
        if not self._bin.closed:
            self._bin.close()
        for p in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(p):
                os.unlink(p)
        self._closed = True

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
