"""Patch: back megatron-core's "CUDA" RNG tracker with the CPU generator.

What it changes
    In ``megatron.core.tensor_parallel.random``: replaces the tracker class that
    ``initialize_rng_tracker`` instantiates with :class:`CPURNGStatesTracker` (a subclass whose
    ``add``/``fork`` save, seed and restore ``torch``'s default CPU generator), replaces the
    module helpers ``_get_cuda_rng_state``/``_set_cuda_rng_state`` (used by activation
    recomputation) with CPU versions, and resets the current tracker so the next
    ``get_cuda_rng_tracker()`` builds a CPU one.
Why
    ``model_parallel_cuda_manual_seed``, ``CudaRNGStatesTracker.add/fork`` and
    ``CheckpointFunction`` call ``torch.cuda.get_rng_state``/``set_rng_state``, which raise on a
    CPU build; attention enters ``fork()`` on every forward. With this patch the per-TP-rank
    "model-parallel-rng" stream keeps its meaning (different per TP rank, equal across DP).
Version
    megatron-core 0.16.1.
Removable when
    megatron-core grows a device-agnostic RNG tracker. Never applied when CUDA is available.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

_saved: dict[str, Any] | None = None


def _get_cpu_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    """CPU stand-in for ``random._get_cuda_rng_state`` (always returns a copy)."""
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False):
    """CPU stand-in for ``random._set_cuda_rng_state``."""
    torch.set_rng_state(new_state)


def _make_tracker_class():
    from megatron.core.tensor_parallel import random as mrandom

    base = _saved["CudaRNGStatesTracker"] if _saved else mrandom.CudaRNGStatesTracker

    class CPURNGStatesTracker(base):
        """``CudaRNGStatesTracker`` whose named states are states of the CPU generator."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise ValueError(f"rng seed {seed} already exists")
            if name in self.states_:
                raise ValueError(f"rng state {name!r} already exists")
            self.seeds_.add(seed)
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            # Same bookkeeping as upstream, minus its "CPU RNG state changed" warning: here the
            # tracked generator *is* the CPU generator, so that warning would fire on every
            # dropout.
            if name not in self.states_:
                raise KeyError(f"rng state {name!r} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    return CPURNGStatesTracker


def apply() -> None:
    """Installs the CPU tracker (idempotent)."""
    global _saved
    if _saved is not None:
        return
    from megatron.core.tensor_parallel import random as mrandom

    tracker_cls = _make_tracker_class()
    _saved = {
        "CudaRNGStatesTracker": mrandom.CudaRNGStatesTracker,
        "_get_cuda_rng_state": mrandom._get_cuda_rng_state,
        "_set_cuda_rng_state": mrandom._set_cuda_rng_state,
    }
    mrandom.CudaRNGStatesTracker = tracker_cls
    mrandom._get_cuda_rng_state = _get_cpu_rng_state
    mrandom._set_cuda_rng_state = _set_cpu_rng_state
    mrandom.initialize_rng_tracker(force_reset=True)


def revert() -> None:
    """Undoes :func:`apply` (the current tracker is reset)."""
    global _saved
    if _saved is None:
        return
    from megatron.core.tensor_parallel import random as mrandom

    for name, value in _saved.items():
        setattr(mrandom, name, value)
    _saved = None
    mrandom.initialize_rng_tracker(force_reset=True)


def is_applied() -> bool:
    """Whether the CPU tracker is installed."""
    return _saved is not None
