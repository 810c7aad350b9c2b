"""Conversation packing: whole documents packed into samples of ``seq_length + 1`` tokens.

With ``packing: conversations`` a source's samples are *bins*: each holds one or more whole
documents (or turn-aligned pieces of a long one), never a document cut at an arbitrary token, and
the room left at the end is padding (see :mod:`chatflow.data.source_dataset`). The bins come from
``chatflow._C.build_packing_*`` (``csrc/packing.h`` has the exact contract), epoch by epoch:

1. a seeded shuffle of the source's documents (SplitMix64 stream 4, index = epoch; the same
   generator as the window document order of :mod:`chatflow.data.sample_index`);
2. each document cut into pieces of at most ``seq_length + 1`` tokens at its **turn boundaries**
   (positions where the loss mask goes from 1 to 0: a new prompt starts), so every response piece
   travels with its own prompt; a single turn longer than a sample is **truncated** (the rest of
   that turn is dropped). A source without a loss mask has no prompts to protect: a long document
   is cut into sample-sized chunks instead;
3. **first-fit** placement of the pieces, in that order, into the epoch's bins (the first bin
   with room; a new one when none has).

Whole epochs are built until there are enough bins, so more samples only append: sample ``j`` of
a source is the same for every sample count (prefix stability, which resume relies on).

The system prompt of a conversation is not repeated in its later pieces: the shards do not record
where the system turn ends (BOS, system and first prompt all carry mask 0). Left for later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatflow import _C
from chatflow.data.indexed_dataset import IndexedDataset
from chatflow.data.schedule_parts import PACKING_MODES

__all__ = ["PACKING_MODES", "PackingIndex", "build_packing", "no_split_points", "turn_boundaries"]

#: Column names of :attr:`PackingIndex.epoch_stats`.
STAT_NAMES = ("splits", "truncations", "dropped_tokens", "tokens")

_INT32_MAX = np.iinfo(np.int32).max
_SCAN_CHUNK = 1 << 24  # mask bytes per step of turn_boundaries()


def turn_boundaries(mask: IndexedDataset) -> tuple[np.ndarray, np.ndarray]:
    """The allowed split points of every sequence of a loss-mask shard, in CSR form.

    A split point of a sequence is a position ``p > 0`` with ``mask[p - 1] == 1`` and
    ``mask[p] == 0``: a trained response (with its EOS) ends and a new prompt starts.

    Returns:
        ``(offsets int64[len(mask) + 1], points int32[...])``: sequence ``i``'s points are
        ``points[offsets[i]:offsets[i + 1]]``, increasing.
    """
    flat = mask.get_flat()
    starts = np.asarray(mask.sequence_pointers) // mask.dtype.itemsize
    # Scan the shard in bounded pieces (each overlapping the next by one byte), so a big mask
    # shard is never copied whole into temporaries.
    found = []
    for lo in range(0, max(len(flat) - 1, 0), _SCAN_CHUNK):
        part = np.asarray(flat[lo : lo + _SCAN_CHUNK + 1])
        found.append(np.flatnonzero((part[:-1] != 0) & (part[1:] == 0)) + (lo + 1))
    hit = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    # A 1 -> 0 step across two sequences is a sequence start, not a split point inside one.
    seq = np.searchsorted(starts, hit, side="right") - 1
    local = hit - starts[seq]
    keep = local > 0
    seq, local = seq[keep], local[keep]
    offsets = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(np.bincount(seq, minlength=len(mask)), out=offsets[1:])
    return offsets, local.astype(np.int32)


def no_split_points(num_sequences: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR split points of a shard without a loss mask: none anywhere."""
    return np.zeros(num_sequences + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)


@dataclass(frozen=True)
class PackingIndex:
    """The bins of one source; see the module docstring.

    Attributes:
        bin_offsets: int64 ``[num_bins + 1]``; bin ``b`` holds pieces
            ``bin_offsets[b] .. bin_offsets[b + 1]``.
        piece_doc: sequence id of each piece.
        piece_start: int32 first token of each piece in its sequence.
        piece_len: int32 token count of each piece.
        epoch_bins: int64 ``[num_epochs + 1]``: epoch ``e`` holds bins
            ``epoch_bins[e] .. epoch_bins[e + 1]``.
        epoch_stats: int64 ``[num_epochs, 4]`` per epoch: splits (extra pieces from cutting
            long documents), truncations (turns longer than a sample), dropped tokens (of the
            truncated turns) and tokens placed (see :data:`STAT_NAMES`).
    """

    bin_offsets: np.ndarray
    piece_doc: np.ndarray
    piece_start: np.ndarray
    piece_len: np.ndarray
    epoch_bins: np.ndarray
    epoch_stats: np.ndarray

    @property
    def num_bins(self) -> int:
        return len(self.bin_offsets) - 1

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "bin_offsets": self.bin_offsets,
            "piece_doc": self.piece_doc,
            "piece_start": self.piece_start,
            "piece_len": self.piece_len,
            "epoch_bins": self.epoch_bins,
            "epoch_stats": self.epoch_stats,
        }

    @classmethod
    def from_dict(cls, arrays: dict[str, np.ndarray]) -> PackingIndex:
        return cls(**{k: arrays[k] for k in cls.__dataclass_fields__})


def build_packing(
    sizes: np.ndarray,
    doc_ids: np.ndarray,
    split_offsets: np.ndarray,
    split_points: np.ndarray,
    capacity: int,
    min_bins: int,
    seed: int,
    chunk_long_turns: bool = False,
) -> PackingIndex:
    """Pack whole epochs of ``doc_ids`` into bins of ``capacity`` tokens until ``min_bins`` exist.

    Args:
        sizes: int32 token count of every sequence of the shard.
        doc_ids: the documents to pack (e.g. a training split).
        split_offsets, split_points: allowed split points per sequence (:func:`turn_boundaries`).
        capacity: tokens per bin (``seq_length + 1``).
        min_bins: bins needed; whole epochs are built, so there may be more.
        seed: shuffle seed (epoch ``e`` uses SplitMix64 (seed, stream 4, e)).
        chunk_long_turns: cut a turn longer than a bin into bin-sized chunks instead of
            truncating it (for documents without prompts).

    Raises:
        ValueError: invalid arguments, or the documents hold no tokens while bins are needed.
    """
    sizes = np.asarray(sizes)
    doc_ids = np.asarray(doc_ids)
    if sizes.ndim != 1 or doc_ids.ndim != 1:
        raise ValueError("sizes and doc_ids must be 1-D")
    if sizes.size and (sizes.min() < 0 or sizes.max() > _INT32_MAX):
        raise ValueError("document sizes must lie in [0, 2**31)")
    if not 1 <= capacity <= _INT32_MAX:
        raise ValueError(f"capacity must lie in [1, 2**31), got {capacity}")
    if min_bins < 0:
        raise ValueError(f"min_bins must be >= 0, got {min_bins}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    suffix = "int32" if doc_ids.size == 0 or doc_ids.max() <= _INT32_MAX else "int64"
    fn = getattr(_C, f"build_packing_{suffix}")
    try:
        out = fn(
            sizes.astype(np.int32, copy=False),
            doc_ids.astype(suffix, copy=False),
            np.asarray(split_offsets, dtype=np.int64),
            np.asarray(split_points, dtype=np.int32),
            int(capacity),
            int(min_bins),
            int(seed),
            bool(chunk_long_turns),
        )
    except ValueError as e:
        raise ValueError(f"{e} ({doc_ids.size} documents)") from None
    return PackingIndex(**out)


def bin_tokens(index: PackingIndex, upto: int) -> np.ndarray:
    """Tokens placed in each of the first ``upto`` bins (int64)."""
    ends = np.cumsum(np.asarray(index.piece_len, dtype=np.int64))
    ends = np.concatenate([[0], ends])
    offsets = np.asarray(index.bin_offsets[: upto + 1])
    return ends[offsets[1:]] - ends[offsets[:-1]]
