"""Patch: let the distributed optimizer load checkpoints when it runs on torch's Adam.

What it changes
    1. Wraps ``DistributedOptimizer._set_main_param_and_optimizer_states``: in the plain-optimizer
       branch it copies only the keys present in the loaded tensors, never ``step``, and does so
       under ``torch.no_grad()``; the precision-aware branch is delegated to the original method.
    2. Wraps ``DistributedOptimizer.state_dict``: parameters without Adam state yet (a freshly
       built optimizer about to load a checkpoint) get zero moments and ``step = 0`` first.
    3. Wraps ``DistributedOptimizer.load_state_dict``: afterwards every parameter gets its own
       ``step`` tensor.
Why
    Without TransformerEngine or apex, megatron-core 0.16.1 falls back to ``torch.optim.AdamW``,
    whose per-parameter state also holds ``"step"``. (1) The upstream method copies every state
    key, so loading fails with ``KeyError: 'step'`` (``fully_reshardable``) or with an in-place
    copy into a leaf view that requires grad (``dp_reshardable``). ``step`` is restored separately
    from the param groups by ``DistributedOptimizer.load_state_dict`` (upstream's other load paths
    skip it too); ``dp_reshardable`` checkpoints also carry a per-parameter ``step`` that is a
    placeholder (0) and would reset Adam's bias correction if copied.
    (2) ``state_dict`` reads ``step`` from the per-parameter state and asserts there is exactly
    one value; an optimizer that has not stepped has none, so building the sharded state dict for
    loading (``sharded_state_dict(is_loading=True)``) fails with a bare ``AssertionError``.
    Initialising the state without an optimizer step leaves the weights untouched (upstream's own
    dummy initialisation runs a step, which applies weight decay).
    (3) Upstream ``load_state_dict`` puts one shared ``step`` tensor into every parameter's state;
    torch's foreach AdamW increments it once per parameter, so after a resume the bias correction
    used step 2 + N instead of 3 and training silently diverged from an uninterrupted run
    (found by tests/test_patches.py; the HybridDeviceOptimizer branch upstream already clones).
Version
    megatron-core 0.16.1.
Removable when
    upstream skips ``step`` there (it already does in the neighbouring save paths). Applied only
    when megatron-core uses the torch Adam fallback (no TE/apex), which is always the case on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_original: Callable[..., Any] | None = None
_original_state_dict: Callable[..., Any] | None = None
_original_load_state_dict: Callable[..., Any] | None = None


def uses_torch_adam() -> bool:
    """True when megatron-core fell back to ``torch.optim`` (neither TE nor apex is installed)."""
    from megatron.core import optimizer as moptim

    return moptim.Adam in (torch.optim.Adam, torch.optim.AdamW)


def _set_states(self, model_param, tensors):
    if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
        return _original(self, model_param, tensors)
    group_index, group_order = self.model_param_group_index_map[model_param]
    main_param = self.optimizer.param_groups[group_index]["params"][group_order]
    dst_tensors = {"param": main_param, **self.optimizer.state[main_param]}
    with torch.no_grad():
        for key, dst in dst_tensors.items():
            # "step" comes from the param groups (DistributedOptimizer.load_state_dict); the
            # per-parameter copy in dp_reshardable checkpoints is a stale placeholder.
            if key != "step" and key in tensors and torch.is_tensor(dst):
                dst.copy_(tensors[key])


def _state_dict(self):
    inner = self.optimizer
    if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if "step" not in state:
                    state.setdefault("exp_avg", torch.zeros_like(param.data))
                    state.setdefault("exp_avg_sq", torch.zeros_like(param.data))
                    # torch keeps a float32 scalar tensor step for its non-capturable path
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    return _original_state_dict(self)


def _load_state_dict(self, state_dict):
    _original_load_state_dict(self, state_dict)
    for state in self.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def apply() -> None:
    """Installs the wrappers (idempotent)."""
    global _original, _original_state_dict, _original_load_state_dict
    if _original is not None:
        return
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    _original = DistributedOptimizer._set_main_param_and_optimizer_states
    _original_state_dict = DistributedOptimizer.state_dict
    _original_load_state_dict = DistributedOptimizer.load_state_dict
    DistributedOptimizer._set_main_param_and_optimizer_states = _set_states
    DistributedOptimizer.state_dict = _state_dict
    DistributedOptimizer.load_state_dict = _load_state_dict


def revert() -> None:
    """Restores the upstream methods."""
    global _original, _original_state_dict, _original_load_state_dict
    if _original is None:
        return
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    DistributedOptimizer._set_main_param_and_optimizer_states = _original
    DistributedOptimizer.state_dict = _original_state_dict
    DistributedOptimizer.load_state_dict = _original_load_state_dict
    _original = _original_state_dict = _original_load_state_dict = None


def is_applied() -> bool:
    """Whether the wrapper is installed."""
    return _original is not None
