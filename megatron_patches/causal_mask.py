"""Patch: build megatron-core's default causal mask on the CPU, once per sequence length.

What it changes
    Replaces ``get_default_causal_mask`` in ``megatron.core.transformer.utils`` and in
    ``megatron.core.fusions.fused_softmax`` (which imports it by name) with a cached CPU version.
Why
    megatron-core 0.16.1 hard-codes ``device="cuda"`` there. ``device_redirect`` would already
    move it to the CPU, but the upstream function rebuilds an ``[s, s]`` mask in every attention
    layer of every micro-batch; caching it by length removes that work (the mask is read-only).
Version
    megatron-core 0.16.1.
Removable when
    upstream takes the device from its inputs. Never applied when CUDA is available.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

_saved: dict[str, Any] | None = None


@functools.lru_cache(maxsize=8)
def cpu_causal_mask(sq: int) -> torch.Tensor:
    """Upper-triangular ``[sq, sq]`` bool mask, True above the diagonal (= masked)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool, device="cpu"), diagonal=1)


def apply() -> None:
    """Installs the CPU mask (idempotent)."""
    global _saved
    if _saved is not None:
        return
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    _saved = {
        "utils": utils.get_default_causal_mask,
        "fused": fused_softmax.get_default_causal_mask,
    }
    utils.get_default_causal_mask = cpu_causal_mask
    fused_softmax.get_default_causal_mask = cpu_causal_mask


def revert() -> None:
    """Restores the upstream functions."""
    global _saved
    if _saved is None:
        return
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    utils.get_default_causal_mask = _saved["utils"]
    fused_softmax.get_default_causal_mask = _saved["fused"]
    _saved = None


def is_applied() -> bool:
    """Whether the CPU mask is installed."""
    return _saved is not None
