"""Patch: synchronous dist-checkpoint saves collect their write results in an in-process queue.

What it changes
    Wraps ``AsyncSaveShardedStrategy.save`` (the synchronous save path of the ``torch_dist``
    strategy, i.e. ``dist_checkpointing.save(...)`` without ``async_sharded_save``): for the
    duration of the call, ``filesystem_async._results_queue`` (the cache behind
    ``_get_write_results_queue()``) holds a fresh ``queue.Queue``; the previous value is put back
    afterwards. Asynchronous saves (``async_sharded_save=True`` + ``AsyncCallsQueue``) are left
    exactly as upstream has them.
Why
    megatron-core 0.16.1 lazily creates the results queue as
    ``mp.get_context("spawn").Manager().Queue()``: a Manager server process (plus
    multiprocessing's resource tracker) that lives as long as the training process. When a rank
    is SIGKILLed (OOM killer, preemption, the crash tests) they outlive it and keep the job's
    stdout/stderr pipes open, so a launcher or test waiting on those pipes hangs; starting the
    Manager also costs seconds at the first save, because the spawn child re-imports
    ``__main__``. In a synchronous save the queue never crosses a process boundary:
    ``AsyncRequest.execute_sync`` runs ``write_preloaded_data_multiproc`` in the calling process
    (its forked per-file writers report through their own local queues and are joined), which
    then ``put``s the combined results, and the finalize step (``retrieve_write_results``)
    ``get_nowait``s them in the same process. A plain ``queue.Queue`` has that interface, and a
    fresh one per save cannot hand a failed save's stale result to the next one. Asynchronous
    saves do need a cross-process queue (a forked writer, or the persistent worker that receives
    the pickled request), so they keep upstream's Manager queue.
Applied when
    Always: CPU and GPU alike (it is not a CPU patch; nothing here touches devices).
Version
    megatron-core 0.16.1.
Removable when
    upstream creates the results queue only for asynchronous saves, or with a context that
    starts no long-lived process.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

_original_save: Callable[..., Any] | None = None


def _save_with_local_queue(self, sharded_state_dict, checkpoint_dir):
    """``AsyncSaveShardedStrategy.save`` with an in-process results queue for this one save."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    previous = filesystem_async._results_queue  # None, or upstream's Manager queue (async saves)
    filesystem_async._results_queue = queue.Queue()
    try:
        return _original_save(self, sharded_state_dict, checkpoint_dir)
    finally:
        filesystem_async._results_queue = previous


def apply() -> None:
    """Installs the wrapper (idempotent)."""
    global _original_save
    if _original_save is not None:
        return
    from megatron.core.dist_checkpointing.strategies.base import AsyncSaveShardedStrategy

    _original_save = AsyncSaveShardedStrategy.save
    AsyncSaveShardedStrategy.save = _save_with_local_queue


def revert() -> None:
    """Restores the upstream method."""
    global _original_save
    if _original_save is None:
        return
    from megatron.core.dist_checkpointing.strategies.base import AsyncSaveShardedStrategy

    AsyncSaveShardedStrategy.save = _original_save
    _original_save = None


def is_applied() -> bool:
    """Whether the wrapper is installed."""
    return _original_save is not None
