"""Patch: report CPU parameters with CUDA type names to megatron-core's optimizers.

What it changes
    Registers a ``Tensor.type()`` handler in the shared ``TorchFunctionMode``: called without
    arguments on a CPU tensor it returns the CUDA name (``'torch.FloatTensor'`` ->
    ``'torch.cuda.FloatTensor'``); called with a CUDA type name it converts to the CPU type.
Why
    megatron-core 0.16.1 classifies parameters by these strings in
    ``Float16OptimizerWithFloat16Params`` (optimizer.py), ``DistributedOptimizer``
    (distrib_optimizer.py) and asserts them in ``clip_grads.py``; CPU names are rejected
    ("Wrapped parameters must be one of torch.cuda.FloatTensor, ...").
Version
    megatron-core 0.16.1.
Removable when
    megatron-core checks ``param.dtype`` instead of ``param.type()`` strings. Never applied when
    CUDA is available.
"""

from __future__ import annotations

import torch

from megatron_patches import _torch_mode

_applied = False


def _tensor_type(func, args, kwargs):
    tensor = args[0]
    if len(args) == 1 and not kwargs:
        name = func(tensor)
        if tensor.device.type == "cpu" and name.startswith("torch.") and ".cuda." not in name:
            return "torch.cuda." + name[len("torch.") :]
        return name
    dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
    if isinstance(dtype, str) and dtype.startswith("torch.cuda."):
        dtype = "torch." + dtype[len("torch.cuda.") :]
        return func(tensor, dtype, *args[2:], **{k: v for k, v in kwargs.items() if k != "dtype"})
    return func(*args, **kwargs)


_HANDLERS = {torch.Tensor.type: _tensor_type}


def apply() -> None:
    """Registers the ``Tensor.type`` handler (idempotent)."""
    global _applied
    _torch_mode.register(None, _HANDLERS)
    _applied = True


def revert() -> None:
    """Undoes :func:`apply`."""
    global _applied
    _torch_mode.unregister(None, _HANDLERS)
    _applied = False


def is_applied() -> bool:
    """Whether the handler is active."""
    return _applied
