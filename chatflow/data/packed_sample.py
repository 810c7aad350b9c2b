"""A packed sample: the pieces of one bin (whole conversations) -> the training sample.

The bin's pieces are laid back to back and the rest of the ``seq_length + 1`` tokens is padding
(``SampleOptions.pad_id``). Then, as for windows, ``tokens = buf[:-1]`` and ``labels = buf[1:]``,
but every position belongs to one *segment* (a piece, or the padding) and:

- ``loss_mask[t]`` is the loss-mask byte of label ``t`` (all ones without a mask shard) only when
  label ``t`` lies in the same piece as input ``t``: the last token of a piece predicts nothing,
  so labels never cross documents; padding is never trained on. ``eod_mask_loss`` still zeroes
  positions whose input is EOD.
- ``position_ids`` restart at 0 at the start of every segment.
- ``attention_mask`` bool ``[1, seq, seq]`` (True = masked): causal and block-diagonal by segment,
  so attention never crosses documents. Padding attends causally among itself (no fully masked
  rows, which would give NaN softmaxes).
- ``num_pad`` int64 scalar: padding positions among the inputs, for the metrics.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch


@functools.lru_cache(maxsize=4)
def future_mask(n: int) -> np.ndarray:
    """bool [n, n], True strictly above the diagonal: what causal attention masks out (cached,
    read-only)."""
    out = np.triu(np.ones((n, n), dtype=bool), k=1)
    out.setflags(write=False)
    return out


def make_packed_sample(
    pieces: list[np.ndarray],
    masks: list[np.ndarray] | None,
    seq_length: int,
    pad_id: int,
    eod_id: int | None = None,
    eod_mask_loss: bool = False,
) -> dict[str, torch.Tensor]:
    """Build the sample of one bin from its pieces' tokens (and loss-mask bytes)."""
    capacity = seq_length + 1
    lengths = [len(p) for p in pieces]
    used = sum(lengths)
    if used > capacity:
        raise ValueError(f"bin pieces hold {used} tokens, more than seq_length + 1 = {capacity}")
    buf = np.full(capacity, pad_id, dtype=np.int64)
    label_mask = np.zeros(capacity, dtype=np.float32)
    segment = np.empty(capacity, dtype=np.int64)
    start_of = np.empty(capacity, dtype=np.int64)
    at = 0
    for k, piece in enumerate(pieces):
        n = lengths[k]
        buf[at : at + n] = piece
        label_mask[at : at + n] = masks[k] if masks is not None else 1.0
        segment[at : at + n] = k
        start_of[at : at + n] = at
        at += n
    segment[at:] = len(pieces)
    start_of[at:] = at
    label_mask[at:] = 0.0
    tokens, labels = buf[:-1], buf[1:]
    same = segment[1:] == segment[:-1]
    loss_mask = np.where(same, label_mask[1:], 0.0).astype(np.float32)
    if eod_mask_loss and eod_id is not None:
        loss_mask[tokens == eod_id] = 0.0
    doc_start = start_of[:-1]
    position_ids = np.arange(seq_length, dtype=np.int64) - doc_start
    # Everything masked, then each segment's diagonal block gets the causal pattern: one fill
    # and one copy per block, several times faster than comparing index grids.
    masked = np.ones((seq_length, seq_length), dtype=bool)
    future = future_mask(seq_length)
    bounds = [0, *np.cumsum(lengths).tolist(), capacity]
    for a, b in itertools.pairwise(bounds):
        a, b = min(a, seq_length), min(b, seq_length)
        if b > a:
            masked[a:b, a:b] = future[: b - a, : b - a]
    return {
        "tokens": torch.from_numpy(tokens.copy()),
        "labels": torch.from_numpy(labels.copy()),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(position_ids),
        "attention_mask": torch.from_numpy(masked).unsqueeze(0),
        "num_pad": torch.tensor(seq_length - min(used, seq_length), dtype=torch.int64),
    }
