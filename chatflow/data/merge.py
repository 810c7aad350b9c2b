"""Merging Megatron ``.bin``/``.idx`` token shards into one, loss-mask shards included.

Documents keep their input order. A token shard whose loss-mask shard (``<prefix>_loss_mask``,
see :func:`chatflow.data.templates.loss_mask_prefix`) exists carries it along: the merged output
then gets a merged mask shard with the same document order. Mixing inputs with and without masks
is an error unless ``fill_missing_masks``, which writes an all-ones mask (train on every token) for
maskless inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from chatflow.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    idx_path,
    shard_exists,
)
from chatflow.data.output_guard import check_outputs_not_inputs, shard_files
from chatflow.data.shard_meta import merged_meta, meta_path, write_meta_tmp
from chatflow.data.templates import loss_mask_prefix

MASK_SUFFIX = loss_mask_prefix("")


@dataclass
class MergeSummary:
    """What a merge wrote."""

    inputs: int
    """Input token shards."""
    documents: int
    sequences: int
    tokens: int
    mask: str | None
    """The merged loss-mask shard's prefix, if any input had a mask."""


def find_shards(inputs: list[str], exclude: tuple[str, ...] = ()) -> list[str]:
    """Token shard prefixes named by ``inputs`` (prefixes or directories), mask shards left out."""
    out: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(f[: -len(".idx")] for f in os.listdir(item) if f.endswith(".idx"))
            found = [os.path.join(item, n) for n in names]
            # A mask shard travels with its token shard; never merge it as tokens.
            found = [
                p
                for p in found
                if not (p.endswith(MASK_SUFFIX) and shard_exists(p[: -len(MASK_SUFFIX)]))
            ]
            found = [p for p in found if os.path.abspath(p) not in exclude and shard_exists(p)]
            if not found:
                raise FileNotFoundError(f"--input {item}: no .bin/.idx shard in this directory")
            out += found
        else:
            if not shard_exists(item):
                raise FileNotFoundError(f"--input {item}: no {item}.bin and {item}.idx")
            out.append(item)
    return out


def merge(
    prefixes: list[str], output_prefix: str, fill_missing_masks: bool = False, force: bool = False
) -> MergeSummary:
    """Merge token shards (and their masks) into ``output_prefix``; returns counts.

    The inputs' ``.meta.json`` sidecars (:mod:`chatflow.data.shard_meta`) must name one tokenizer
    (``force``: merge anyway, with a warning); the output gets a merged sidecar.

    Raises:
        IndexedDatasetError: an input is unreadable, dtypes differ, or a mask does not match.
        ValueError: some inputs have masks and others not (without ``fill_missing_masks``).
        OutputOverlapError: an output file is one of the inputs' files (nothing is written).
        ShardMetaError: the inputs were made with different tokenizers (without ``force``).
    """
    if not prefixes:
        raise ValueError("nothing to merge")
    check_outputs_not_inputs(
        shard_files(output_prefix) + shard_files(loss_mask_prefix(output_prefix)),
        [f for p in prefixes for q in (p, loss_mask_prefix(p)) for f in shard_files(q)],
        "--output-prefix",
    )
    meta = merged_meta(prefixes, force)
    shards = [IndexedDataset(p) for p in prefixes]
    dtype = shards[0].dtype
    for s in shards[1:]:
        if s.dtype != dtype:
            raise IndexedDatasetError(
                f"{s.prefix}: dtype {s.dtype} differs from {shards[0].prefix}: {dtype}"
            )
    masks: list[IndexedDataset | None] = []
    for s in shards:
        mp = loss_mask_prefix(s.prefix)
        m = IndexedDataset(mp) if shard_exists(mp) else None
        if m is not None and (
            m.dtype != np.uint8
            or not np.array_equal(m.sequence_lengths, s.sequence_lengths)
            or not np.array_equal(m.document_indices, s.document_indices)
        ):
            raise IndexedDatasetError(
                f"{mp}: loss mask does not match its token shard "
                f"{s.prefix} (dtype or sequence lengths differ)"
            )
        masks.append(m)
    with_mask = [m is not None for m in masks]
    if any(with_mask) and not all(with_mask) and not fill_missing_masks:
        missing = [s.prefix for s, m in zip(shards, masks, strict=True) if m is None]
        raise ValueError(
            f"some inputs have loss masks and these do not: {missing}; "
            "pass --fill-missing-masks to give them all-ones masks"
        )
    out_mask = loss_mask_prefix(output_prefix) if any(with_mask) else None

    tokens = IndexedDatasetWriter(output_prefix, dtype)
    mask_writer = IndexedDatasetWriter(out_mask, np.uint8) if out_mask else None
    metas: dict[str, str] = {}  # prefix -> temporary sidecar
    try:
        if meta is not None:
            metas[output_prefix] = write_meta_tmp(output_prefix, meta)
            if out_mask:
                metas[out_mask] = write_meta_tmp(out_mask, {**meta, "kind": "loss_mask"})
        for s, m in zip(shards, masks, strict=True):
            tokens.add_shard(s)
            if mask_writer is None:
                continue
            if m is not None:
                mask_writer.add_shard(m)
            else:
                for d in range(s.num_documents):
                    lo, hi = s.document_indices[d], s.document_indices[d + 1]
                    for i in range(lo, hi):
                        mask_writer.add_sequence(np.ones(s.sequence_lengths[i], np.uint8))
                    mask_writer.end_document()
        # Same publication order as chatflow.data.preprocess_run: old token index gone, mask,
        # then tokens.
        if os.path.exists(idx_path(output_prefix)):
            os.unlink(idx_path(output_prefix))
        for w in ([mask_writer] if mask_writer is not None else []) + [tokens]:
            if w.prefix in metas:
                os.replace(metas.pop(w.prefix), meta_path(w.prefix))
            elif os.path.exists(meta_path(w.prefix)):
                os.unlink(meta_path(w.prefix))  # a stale sidecar of an earlier shard
            w.finalize()
    except BaseException:
        tokens.abort()
        if mask_writer is not None:
            mask_writer.abort()
        for tmp in metas.values():
            os.unlink(tmp)
        raise
    return MergeSummary(
        inputs=len(shards),
        documents=sum(s.num_documents for s in shards),
        sequences=sum(len(s) for s in shards),
        tokens=sum(s.num_tokens for s in shards),
        mask=out_mask,
    )
