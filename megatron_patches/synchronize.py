"""Patch: make ``torch.cuda.synchronize()`` a no-op on CPU-only machines.

What it changes
    Replaces ``torch.cuda.synchronize`` with a function that does nothing.
Why
    megatron-core 0.16.1 calls it unconditionally in the dist-checkpoint writer
    (``dist_checkpointing/strategies``) and in pipeline p2p communication when
    ``batch_p2p_sync=True``; on a CPU build it raises "Torch not compiled with CUDA enabled".
    CPU collectives (gloo) are synchronous, so there is nothing to wait for.
Version
    megatron-core 0.16.1.
Removable when
    those call sites check ``torch.cuda.is_available()``. Never applied when CUDA is available.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_original: Callable[..., Any] | None = None


def _noop_synchronize(device: Any = None) -> None:
    """Nothing to wait for: CPU work and gloo collectives complete before they return."""


def apply() -> None:
    """Installs the no-op (idempotent)."""
    global _original
    if _original is None:
        _original = torch.cuda.synchronize
        torch.cuda.synchronize = _noop_synchronize


def revert() -> None:
    """Restores the original ``torch.cuda.synchronize``."""
    global _original
    if _original is not None:
        torch.cuda.synchronize = _original
        _original = None


def is_applied() -> bool:
    """Whether the no-op is installed."""
    return _original is not None
