"""Callbacks at fixed points of the training loop; there are none unless something registers one.

The trainer calls :func:`on_iteration_end` after every optimizer step and the checkpoint writer
:func:`on_checkpoint_written` once every rank's shards of a save are on disk (before the save is
published by the rename). Each call runs the callbacks registered for that point, in order.

Callbacks come from the modules named in ``$CHATFLOW_HOOKS`` (comma-separated): the trainer calls
:func:`install_from_env` once at start-up, which imports each module and calls its ``install()``,
which registers callbacks with :func:`register`. The crash tests install their faults this way
(tests/_fault_hooks.py); production runs leave the variable unset.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

HOOKS_ENV = "CHATFLOW_HOOKS"

ITERATION_END = "iteration_end"
CHECKPOINT_WRITTEN = "checkpoint_written"

Callback = Callable[[int], None]
_callbacks: dict[str, list[Callback]] = {ITERATION_END: [], CHECKPOINT_WRITTEN: []}
_installed = False


def register(point: str, callback: Callback) -> None:
    """Run ``callback(iteration)`` at ``point`` (``ITERATION_END`` or ``CHECKPOINT_WRITTEN``)."""
    if point not in _callbacks:
        raise ValueError(f"unknown hook point {point!r}; known: {sorted(_callbacks)}")
    _callbacks[point].append(callback)


def clear() -> None:
    """Remove every registered callback (and allow :func:`install_from_env` again)."""
    global _installed
    for callbacks in _callbacks.values():
        callbacks.clear()
    _installed = False


def install_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Import the modules named in ``$CHATFLOW_HOOKS`` and call their ``install()``, once.

    Returns:
        The names of the modules installed by this call (empty if already done or unset).
    """
    global _installed
    if _installed:
        return []
    _installed = True
    spec = (os.environ if environ is None else environ).get(HOOKS_ENV, "")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    for name in names:
        importlib.import_module(name).install()
        logger.warning("installed training hooks from %s", name)  # never expected in production
    return names


def _run(point: str, iteration: int) -> None:
    for callback in _callbacks[point]:
        callback(iteration)


def on_iteration_end(iteration: int) -> None:
    """Called by the trainer after optimizer step ``iteration`` (1-based) on every rank."""
    _run(ITERATION_END, iteration)


def on_checkpoint_written(iteration: int) -> None:
    """Called on every rank once all shards of ``iteration``'s save are written, unpublished."""
    _run(CHECKPOINT_WRITTEN, iteration)
