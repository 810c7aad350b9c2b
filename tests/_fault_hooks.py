"""Faults for the crash tests, installed in a trainer through ``$CHATFLOW_HOOKS``.

``tests/_trainer_helpers.fault_env(spec)`` sets ``CHATFLOW_HOOKS=_fault_hooks`` (tests/ is on the
trainer's PYTHONPATH) and ``$CHATFLOW_FAULT_INJECT`` to one of:

* ``kill_in_save:<i>``: SIGKILL rank 0 after the shards of iteration i are written but before the
  rename, i.e. in the middle of a save;
* ``kill_at_iter:<i>``: SIGKILL rank 0 after step i;
* ``sigterm_at_iter:<i>``: send rank 0 SIGTERM after step i (a preemption notice).
"""

from __future__ import annotations

import logging
import os
import signal

import torch

from chatflow import hooks

FAULT_ENV = "CHATFLOW_FAULT_INJECT"

# fault name -> (hook point, signal)
FAULTS = {
    "kill_in_save": (hooks.CHECKPOINT_WRITTEN, signal.SIGKILL),
    "kill_at_iter": (hooks.ITERATION_END, signal.SIGKILL),
    "sigterm_at_iter": (hooks.ITERATION_END, signal.SIGTERM),
}

logger = logging.getLogger(__name__)


def install() -> None:
    """Register the fault named by ``$CHATFLOW_FAULT_INJECT`` (``<fault>:<iteration>``)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, at = spec.partition(":")
    if name not in FAULTS or not at.isdigit():
        raise ValueError(f"${FAULT_ENV}={spec!r}: expected <{'|'.join(FAULTS)}>:<iteration>")
    point, sig = FAULTS[name]

    def fire(iteration: int) -> None:
        if iteration == int(at) and torch.distributed.get_rank() == 0:
            logger.warning("fault injection: %s at %s, iteration %d", sig.name, name, iteration)
            os.kill(os.getpid(), sig)

    hooks.register(point, fire)
