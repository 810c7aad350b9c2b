"""Patch: run megatron-core's hard-coded CUDA tensor placement on the CPU.

What it changes
    Installs (through :mod:`megatron_patches._torch_mode`) a ``TorchFunctionMode`` that rewrites
    every CUDA ``device=`` argument (``"cuda"``, ``"cuda:N"``, an int ordinal, ``torch.device``)
    to ``"cpu"``, rewrites ``Tensor.to("cuda")`` the same way and makes ``Tensor.cuda()`` return
    the tensor itself. Replaces ``torch.cuda.current_device`` with a function returning ``0``
    (which the mode then maps to the CPU).
Why
    megatron-core 0.16.1 uses ``torch.cuda.current_device()`` as the ``device=`` of new tensors
    in ~37 places (RoPE frequencies, TP gather buffers, pipeline receive buffers,
    GlobalMemoryBuffer) and literal ``device="cuda"`` / ``.cuda()`` inside the pipeline schedules,
    the optimizers, grad clipping and the DDP grad buffers. One mode covers them all without
    touching any megatron-core file; it costs ~3-5% CPU speed (measured; see
    megatron_patches/README.md).
Version
    megatron-core 0.16.1, torch 2.x CPU builds.
Removable when
    megatron-core takes its device from the config/process group instead of assuming CUDA
    (then the CPU path needs no redirect). Never applied when CUDA is available.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from megatron_patches import _torch_mode

_ORIGINAL_CURRENT_DEVICE: Callable[[], Any] | None = None


def _rewrite_device(func, args, kwargs):
    if "device" in kwargs and _torch_mode.is_cuda_device(kwargs["device"]):
        kwargs = dict(kwargs, device="cpu")
    # Tensor.to("cuda") / Tensor.to(0, dtype) pass the device positionally. An int there is only
    # a device (dtypes are torch.dtype objects), so the check is unambiguous.
    if func is torch.Tensor.to and len(args) > 1 and _torch_mode.is_cuda_device(args[1]):
        args = (args[0], "cpu", *args[2:])
    return args, kwargs


def _tensor_cuda(func, args, kwargs):
    """``Tensor.cuda()``: the tensor already lives where it will be used."""
    return args[0]


def _current_device() -> int:
    """Ordinal 0, which the mode maps to the CPU wherever it is used as a device."""
    return 0


_HANDLERS = {torch.Tensor.cuda: _tensor_cuda}


def apply() -> None:
    """Installs the redirect (idempotent)."""
    global _ORIGINAL_CURRENT_DEVICE
    _torch_mode.register(_rewrite_device, _HANDLERS)
    if _ORIGINAL_CURRENT_DEVICE is None:
        _ORIGINAL_CURRENT_DEVICE = torch.cuda.current_device
        torch.cuda.current_device = _current_device


def revert() -> None:
    """Undoes :func:`apply`."""
    global _ORIGINAL_CURRENT_DEVICE
    _torch_mode.unregister(_rewrite_device, _HANDLERS)
    if _ORIGINAL_CURRENT_DEVICE is not None:
        torch.cuda.current_device = _ORIGINAL_CURRENT_DEVICE
        _ORIGINAL_CURRENT_DEVICE = None


def is_applied() -> bool:
    """Whether the redirect is active."""
    return _ORIGINAL_CURRENT_DEVICE is not None
