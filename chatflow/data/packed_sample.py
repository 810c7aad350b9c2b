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

import numpy as np
import torch


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
    j = np.arange(seq_length)
    allowed = (j[None, :] <= j[:, None]) & (j[None, :] >= doc_start[:, None])
    return {
        "tokens": torch.from_numpy(tokens.copy()),
        "labels": torch.from_numpy(labels.copy()),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(position_ids),
        "attention_mask": torch.from_numpy(~allowed).unsqueeze(0),
        "num_pad": torch.tensor(seq_length - min(used, seq_length), dtype=torch.int64),
    }
