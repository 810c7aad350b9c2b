"""Per-source index builders: document order, sample index and sample order (``chatflow._C``).

A source's samples are fixed-length windows over its documents, as in megatron-core's GPTDataset:

1. **Document order**: the source's documents, each epoch a fresh Fisher-Yates shuffle, tiled over
   as many epochs as the samples need.
2. **Sample index**: documents packed back to back into windows of ``seq_length + 1`` tokens
   across document boundaries (consecutive windows share one token: the last label of one is the
   first input of the next); the ``[num_samples + 1, 2]`` layout of megatron-core's
   ``build_sample_idx``: (position in the document order, token offset).
3. **Sample order**: the samples shuffled within fixed blocks of ``shuffle_block`` samples.

Unlike megatron-core, every index is **prefix-stable**: building more samples only appends to each
array (epoch ``e`` and block ``b`` are shuffled from their own generator state, whatever the total),
so sample ``j`` of a source is the same sample whether the run asks for 10 or 10 million. Resuming
with a changed schedule, which changes how many samples each source must provide, relies on it.

The RNG is SplitMix64 seeded per (seed, stream, index); see ``csrc/sample_index.h``; it is
mirrored in ``tests/reference_sample_index.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from chatflow import _C

logger = logging.getLogger(__name__)

_INT32_MAX = np.iinfo(np.int32).max
_UINT64_MASK = (1 << 64) - 1


def _index_dtype(*largest: int) -> type:
    """int32 when every value fits, else int64 (halves the memory of big indices)."""
    return np.int32 if max(largest, default=0) <= _INT32_MAX else np.int64


def _suffix(dtype: type) -> str:
    return "int32" if np.dtype(dtype) == np.int32 else "int64"


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0 or seed > _UINT64_MASK:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def build_document_index(doc_ids: np.ndarray, num_epochs: int, seed: int) -> np.ndarray:
    """The document order: ``doc_ids`` shuffled anew in each of ``num_epochs`` epochs.

    Args:
        doc_ids: 1-D ids of the documents (sequences) to use, e.g. a training split.
        num_epochs: how many shuffled copies to concatenate.
        seed: shuffle seed; epoch ``e`` uses generator (seed, stream 1, e).

    Returns:
        int32 (or int64 when an id needs it) array of ``num_epochs * len(doc_ids)`` ids.
    """
    doc_ids = np.asarray(doc_ids)
    if doc_ids.ndim != 1 or (doc_ids.size and not np.issubdtype(doc_ids.dtype, np.integer)):
        raise ValueError(f"doc_ids must be a 1-D integer array, got {doc_ids.dtype}{doc_ids.shape}")
    if num_epochs < 0:
        raise ValueError(f"num_epochs must be >= 0, got {num_epochs}")
    if doc_ids.size and doc_ids.min() < 0:
        raise ValueError("doc_ids must be non-negative")
    dtype = _index_dtype(int(doc_ids.max()) if doc_ids.size else 0)
    fn = getattr(_C, f"build_document_index_{_suffix(dtype)}")
    return fn(doc_ids.astype(dtype, copy=False), int(num_epochs), _check_seed(seed))


def build_sample_index(
    sizes: np.ndarray,
    doc_index: np.ndarray,
    seq_length: int,
    num_samples: int,
    add_extra_token: bool = True,
) -> np.ndarray:
    """Pack the documents of ``doc_index`` into ``num_samples`` windows (Megatron's layout).

    Args:
        sizes: int32 token count of every document (sequence) of the shard; ids index into it.
        doc_index: the document order (see :func:`build_document_index`).
        seq_length: tokens per sample (inputs); each window holds one more when
            ``add_extra_token`` (the last label).
        num_samples: windows to build; the order must hold at least
            ``num_samples * seq_length + add_extra_token`` tokens.
        add_extra_token: windows of ``seq_length + 1`` tokens overlapping by one (GPT training).

    Returns:
        ``[num_samples + 1, 2]`` array of (position in ``doc_index``, token offset): sample ``s``
        runs from row ``s`` to row ``s + 1`` inclusive of the token at row ``s + 1`` when
        ``add_extra_token``. int32 unless a position or document size needs int64.
    """
    sizes = np.asarray(sizes)
    doc_index = np.asarray(doc_index)
    if sizes.ndim != 1 or doc_index.ndim != 1:
        raise ValueError("sizes and doc_index must be 1-D")
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if sizes.size and (sizes.min() < 0 or sizes.max() > _INT32_MAX):
        raise ValueError("document sizes must lie in [0, 2**31)")
    if doc_index.size and (doc_index.min() < 0 or doc_index.max() >= sizes.size):
        raise ValueError(f"doc_index holds ids outside [0, {sizes.size}) (the number of documents)")
    extra = 1 if add_extra_token else 0
    dtype = _index_dtype(doc_index.size, int(sizes.max()) if sizes.size else 0)
    fn = getattr(_C, f"build_sample_index_{_suffix(dtype)}")
    try:
        return fn(
            sizes.astype(np.int32, copy=False),
            doc_index.astype(dtype, copy=False),
            int(seq_length),
            int(num_samples),
            extra,
        )
    except ValueError:
        # The C++ builder ran out of documents; say by how much (summing only on this path keeps
        # a gather over the whole document order out of every successful build).
        have = int(sizes[doc_index].sum(dtype=np.int64)) if doc_index.size else 0
        need = num_samples * seq_length + extra
        raise ValueError(
            f"the document order holds {have} tokens; {num_samples} samples of {seq_length} "
            f"tokens need {need}"
        ) from None


def build_shuffle_index(num_samples: int, block: int, seed: int) -> np.ndarray:
    """The sample order: ``0..M-1`` shuffled within consecutive blocks of ``block`` samples.

    ``M = ceil(num_samples / block) * block``: the last block is always complete, so that the
    first ``num_samples`` entries never change when ``num_samples`` grows (the caller must build
    ``M`` samples, not ``num_samples``).

    Args:
        num_samples: samples the caller will read (at least).
        block: shuffle block size, >= 1; block ``b`` uses generator (seed, stream 2, b).
        seed: shuffle seed.
    """
    if block < 1:
        raise ValueError(f"shuffle block must be >= 1, got {block}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    num_blocks = -(-num_samples // block)
    dtype = _index_dtype(num_blocks * block)
    fn = getattr(_C, f"build_shuffle_index_{_suffix(dtype)}")
    return fn(num_blocks, block, _check_seed(seed))


def split_documents(
    num_documents: int, valid_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random train/validation split of a shard's documents.

    ``round(valid_fraction * num_documents)`` documents (at least one when the fraction is > 0
    and there are two or more documents) are held out: the first ones of a shuffle of all ids
    with generator (seed, stream 3, 0). Both id lists are returned sorted.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must lie in [0, 1), got {valid_fraction}")
    ids = np.arange(num_documents, dtype=_index_dtype(num_documents))
    n_valid = round(valid_fraction * num_documents)
    if valid_fraction > 0 and n_valid == 0 and num_documents >= 2:
        n_valid = 1
    if n_valid == 0:
        return ids, ids[:0]
    # Its own stream (3) so that the held-out documents are unrelated to the training order.
    order = getattr(_C, f"shuffled_{_suffix(ids.dtype)}")(ids, _check_seed(seed), 3, 0)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def count_tokens(sizes: np.ndarray, doc_ids: np.ndarray) -> int:
    """Tokens in the documents ``doc_ids`` (sorted, unique ids) of a shard with ``sizes``."""
    if len(doc_ids) == len(sizes):  # every document: skip the gather
        return int(np.asarray(sizes).sum(dtype=np.int64))
    return int(np.asarray(sizes)[doc_ids].sum(dtype=np.int64)) if len(doc_ids) else 0


@dataclass(frozen=True)
class SourceIndices:
    """The three index arrays of one source; see the module docstring.

    Attributes:
        document_index: document ids in read order over all epochs used.
        sample_index: ``[num_built + 1, 2]`` (position in ``document_index``, offset) rows.
        shuffle_index: sample order, ``num_built`` entries (``num_built`` is ``num_samples``
            rounded up to whole shuffle blocks).
    """

    document_index: np.ndarray
    sample_index: np.ndarray
    shuffle_index: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays by name (the index cache stores them this way)."""
        return {
            "document_index": self.document_index,
            "sample_index": self.sample_index,
            "shuffle_index": self.shuffle_index,
        }


def build_source_indices(
    sizes: np.ndarray,
    doc_ids: np.ndarray,
    seq_length: int,
    num_samples: int,
    seed: int,
    shuffle_block: int,
    tokens_per_epoch: int | None = None,
) -> SourceIndices:
    """All indices of one source for ``num_samples`` samples of ``seq_length`` (+1) tokens.

    Args:
        sizes: int32 size of every document (sequence) of the shard.
        doc_ids: the documents this dataset draws from (e.g. the training split).
        seq_length: tokens per sample.
        num_samples: samples needed; the indices cover it rounded up to whole shuffle blocks.
        seed: seed of both shuffles.
        shuffle_block: sample-order shuffle block.
        tokens_per_epoch: ``count_tokens(sizes, doc_ids)`` if the caller has it already.

    Raises:
        ValueError: the documents hold no tokens at all, or other invalid arguments.
    """
    doc_ids = np.asarray(doc_ids)
    sizes = np.asarray(sizes)
    if tokens_per_epoch is None:
        tokens_per_epoch = count_tokens(sizes, doc_ids)
    num_built = -(-num_samples // shuffle_block) * shuffle_block
    need = num_built * seq_length + 1 if num_built else 0
    if need and tokens_per_epoch == 0:
        raise ValueError(f"no tokens to draw {num_samples} samples from ({doc_ids.size} documents)")
    num_epochs = -(-need // tokens_per_epoch) if need else 0
    shuffle_index = build_shuffle_index(num_samples, shuffle_block, seed)
    document_index = build_document_index(doc_ids, num_epochs, seed)
    sample_index = build_sample_index(sizes, document_index, seq_length, num_built)
    logger.debug(
        "source indices: %d samples (%d built), %d epochs of %d documents / %d tokens",
        num_samples,
        num_built,
        num_epochs,
        doc_ids.size,
        tokens_per_epoch,
    )
    return SourceIndices(document_index, sample_index, shuffle_index)
