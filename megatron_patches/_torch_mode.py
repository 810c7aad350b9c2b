"""A process-wide ``TorchFunctionMode`` that the CPU patches hook into.

Not a patch by itself: ``device_redirect`` and ``param_type`` register handlers here. One shared
mode keeps the per-call overhead to a single Python dispatch (two stacked modes would double it).

The mode is pushed onto the torch-function mode stack of the thread that calls :func:`install`
(the main thread of each training process). CPU autograd runs backward on the calling thread, so
the backward pass sees the mode too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

#: Rewrites applied to every call: ``(func, args, kwargs) -> (args, kwargs)``.
ArgRewriter = Callable[[Callable, tuple, dict], "tuple[tuple, dict]"]
#: Replacement for one specific function: ``(func, args, kwargs) -> result``.
Handler = Callable[[Callable, tuple, dict], Any]

_REWRITERS: list[ArgRewriter] = []
_HANDLERS: dict[Callable, Handler] = {}
_MODE: _PatchMode | None = None


class _PatchMode(TorchFunctionMode):
    """Runs the registered argument rewriters, then a per-function handler if one exists."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs if kwargs is not None else {}
        for rewrite in _REWRITERS:
            args, kwargs = rewrite(func, args, kwargs)
        handler = _HANDLERS.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        return func(*args, **kwargs)


def register(rewriter: ArgRewriter | None = None, handlers: dict | None = None) -> None:
    """Adds an argument rewriter and/or per-function handlers (idempotent) and installs the mode."""
    if rewriter is not None and rewriter not in _REWRITERS:
        _REWRITERS.append(rewriter)
    for func, handler in (handlers or {}).items():
        _HANDLERS[func] = handler
    _install()


def unregister(rewriter: ArgRewriter | None = None, handlers: dict | None = None) -> None:
    """Removes what :func:`register` added; pops the mode when nothing is left."""
    if rewriter is not None and rewriter in _REWRITERS:
        _REWRITERS.remove(rewriter)
    for func in handlers or {}:
        _HANDLERS.pop(func, None)
    if not _REWRITERS and not _HANDLERS:
        _uninstall()


def is_installed() -> bool:
    """Whether the shared mode is currently on the mode stack."""
    return _MODE is not None


def _install() -> None:
    global _MODE
    if _MODE is None:
        _MODE = _PatchMode()
        # Entered for the rest of the process (or until ``_uninstall``), not as a `with` block.
        _MODE.__enter__()
        logger.debug("installed CPU patch TorchFunctionMode")


def _uninstall() -> None:
    global _MODE
    if _MODE is not None:
        _MODE.__exit__(None, None, None)
        _MODE = None


def is_cuda_device(device: Any) -> bool:
    """True for anything torch would read as a CUDA device: 'cuda', 'cuda:1', 0, device('cuda')."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int (not bool) is a CUDA ordinal for torch factory functions.
    return isinstance(device, int) and not isinstance(device, bool)
