"""Crash-safe megatron-core distributed checkpoints: save every N steps, keep the last K, resume.

Layout of a checkpoint directory::

    <save>/
      iter_0000040/                     complete dist-checkpoint (metadata.json, common.pt, shards,
                                        data_state.json for tools/build_index.py --data-state)
      iter_0000060/
      iter_0000080.tmp/                 a save in progress, or left by a crash: never loaded
      latest_checkpointed_iteration.txt "60": the newest complete checkpoint
      metrics.jsonl                     written by the trainer

:class:`SaveCadence` decides when the trainer saves: every ``--save-interval`` steps, when it
stops early (``--exit-interval``, or SIGTERM with ``--exit-signal-handler``) and at the end.

A save writes everything into ``iter_XXXXXXX.tmp``, waits for all ranks, renames it to
``iter_XXXXXXX`` and only then rewrites the tracker (temp file + ``os.replace``). A crash at any
point therefore leaves the tracker naming a complete checkpoint; stale ``.tmp`` directories are
deleted by the next save. dist_checkpointing stores tensors by global key with their global shape,
so a checkpoint loads into any TP/PP/VPP/DP layout (with the fully-reshardable optimizer format).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from chatflow import hooks
from chatflow.config.checkpoint import CheckpointConfig
from chatflow.fileio import atomic_write, fsync_dir
from chatflow.model import load_model_state_dict, model_sharded_state_dict, unwrap

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")


def checkpoint_dir_name(iteration: int) -> str:
    """Directory name of the checkpoint of ``iteration`` (Megatron's ``iter_%07d``)."""
    return f"iter_{iteration:07d}"


def read_tracker(ckpt_dir: str) -> int | None:
    """Iteration named by ``<ckpt_dir>/latest_checkpointed_iteration.txt``, or None if absent."""
    path = os.path.join(ckpt_dir, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise ValueError(f"{path}: expected an iteration number, found {text!r}")
    iteration = int(text)
    if not os.path.isdir(os.path.join(ckpt_dir, checkpoint_dir_name(iteration))):
        raise FileNotFoundError(
            f"{path} names iteration {iteration} but {checkpoint_dir_name(iteration)}/ is missing"
        )
    return iteration


def complete_checkpoints(ckpt_dir: str) -> list[int]:
    """Iterations of the complete (renamed) checkpoints in ``ckpt_dir``, ascending."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = (_ITER_DIR.match(name) for name in os.listdir(ckpt_dir))
    return sorted(int(m.group(1)) for m in found if m)


def _layout() -> dict[str, int]:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "world": torch.distributed.get_world_size(),
    }


def _precision(model: list[torch.nn.Module]) -> str:
    return str(next(unwrap(model[0]).parameters()).dtype).replace("torch.", "")


def _rng_state() -> dict[str, Any]:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        # Per-TP-rank streams (dropout inside TP regions, initialization) of megatron-core.
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(data: Any) -> ShardedObject:
    # One entry per global rank: RNG streams are only meaningful in the same layout.
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return ShardedObject("chatflow_rng_state", data, (world,), (rank,), replica_id=0)


def _sharded_state_dict(
    model: list[torch.nn.Module],
    optimizer: Any,
    cfg: CheckpointConfig,
    include_optimizer: bool,
    include_rng: bool,
    is_loading: bool,
) -> dict[str, Any]:
    # Keys inside are global (layer numbers include the PP/VPP offset), so the nesting
    # name does not matter for resharding; Megatron uses model / model0, model1, ...
    state: dict[str, Any] = model_sharded_state_dict(model)
    if include_optimizer:
        model_state = {k: v for k, v in state.items() if k.startswith("model")}
        state["optimizer"] = optimizer.sharded_state_dict(
            model_state,
            is_loading=is_loading,
            metadata={"distrib_optim_sharding_type": cfg.ckpt_optim_sharding_type},
        )
    if include_rng:
        state["rng_state"] = _rng_sharded_object(_rng_state() if not is_loading else None)
    return state


def save_checkpoint(
    cfg: CheckpointConfig,
    iteration: int,
    model: list[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    train_state: dict[str, Any],
    vocab_size: int | None = None,
) -> str:
    """Save a complete checkpoint of ``iteration`` under ``cfg.save``; returns its directory.

    Args:
        cfg: checkpoint settings (``save`` must be set).
        iteration: completed optimizer steps.
        model: model chunks (one, or one per virtual pipeline stage).
        optimizer: megatron-core optimizer.
        scheduler: ``OptimizerParamScheduler`` (its ``state_dict()`` is stored as common state).
        train_state: picklable dict identical on all ranks (consumed samples, data resume state).
        vocab_size: the unpadded vocabulary size, recorded for the load-time check.
    """
    assert cfg.save is not None, "save_checkpoint needs --save"
    rank = torch.distributed.get_rank()
    final = os.path.join(cfg.save, checkpoint_dir_name(iteration))
    tmp = final + ".tmp"
    if rank == 0:
        os.makedirs(cfg.save, exist_ok=True)
        for name in os.listdir(cfg.save):  # leftovers of crashed saves
            if name.startswith("iter_") and name.endswith(".tmp"):
                shutil.rmtree(os.path.join(cfg.save, name), ignore_errors=True)
        os.makedirs(tmp)
    torch.distributed.barrier()

    state = _sharded_state_dict(model, optimizer, cfg, True, True, is_loading=False)
    state["iteration"] = iteration
    state["train_state"] = train_state
    state["scheduler"] = scheduler.state_dict()
    state["layout"] = _layout()
    state["precision"] = _precision(model)
    if vocab_size is not None:
        state["vocab_size"] = vocab_size
    dist_checkpointing.save(
        state,
        tmp,
        content_metadata={"distrib_optim_sharding_type": cfg.ckpt_optim_sharding_type},
    )
    if rank == 0 and train_state.get("data_state") is not None:
        # Also as plain JSON, for `tools/build_index.py --data-state` (prebuild a resume's indices).
        with open(os.path.join(tmp, "data_state.json"), "w") as fh:
            json.dump(train_state["data_state"], fh)
    torch.distributed.barrier()  # every rank's shards are on disk before the rename
    hooks.on_checkpoint_written(iteration)
    if rank == 0:
        replaced = None
        if os.path.isdir(final):
            # An older save of the same iteration (a crash after the rename but before the
            # tracker update, then a resume from an earlier one): swap, then delete it.
            replaced = final + ".replaced.tmp"
            os.replace(final, replaced)
        os.replace(tmp, final)
        if replaced:
            shutil.rmtree(replaced, ignore_errors=True)
        fsync_dir(cfg.save)
        atomic_write(os.path.join(cfg.save, TRACKER_FILE), f"{iteration}\n")
        _prune(cfg.save, cfg.keep_last_checkpoints)
        logger.info("saved checkpoint %s", final)
    torch.distributed.barrier()
    return final


def _prune(ckpt_dir: str, keep: int) -> None:
    if keep <= 0:
        return
    for iteration in complete_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(os.path.join(ckpt_dir, checkpoint_dir_name(iteration)), ignore_errors=True)
        logger.info("removed old checkpoint %s", checkpoint_dir_name(iteration))


def load_checkpoint(
    cfg: CheckpointConfig,
    model: list[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    vocab_size: int | None = None,
) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint into model/optimizer/scheduler.

    Where from: the ``--save`` directory if it already holds a checkpoint (a restarted job
    resumes itself, so a re-submitted ``--finetune`` command does not start over), else
    ``--load`` (a full resume, or weights only with ``--finetune``), else nothing.

    Args:
        vocab_size: this run's (unpadded) vocabulary size; a checkpoint that recorded another one
            is refused (megatron-core would silently drop or zero-fill embedding rows).

    Returns:
        None if there is nothing to load (a fresh run). Otherwise a dict with ``iteration`` and
        ``train_state`` (as given to ``save_checkpoint``); with ``--finetune`` only the weights
        are loaded and ``{"iteration": 0, "train_state": None}`` is returned.
    """
    finetune = cfg.finetune
    iteration = read_tracker(cfg.save) if cfg.save else None
    if iteration is not None:
        ckpt_root, finetune = cfg.save, False
    elif cfg.load is not None:
        ckpt_root, iteration = cfg.load, read_tracker(cfg.load)
        if iteration is None and os.path.abspath(cfg.load) != os.path.abspath(cfg.save or ""):
            raise FileNotFoundError(f"--load {cfg.load}: no {TRACKER_FILE}, nothing to load")
    if iteration is None:
        return None
    path = os.path.join(ckpt_root, checkpoint_dir_name(iteration))
    common = dist_checkpointing.load_common_state_dict(path)
    if common.get("weights_only") and not finetune:
        raise ValueError(
            f"{path}: a weights-only checkpoint (e.g. converted from HF) has no optimizer or "
            "training state: load it with --finetune"
        )
    saved_vocab = common.get("vocab_size")
    if vocab_size is not None and saved_vocab is not None and saved_vocab != vocab_size:
        raise ValueError(
            f"{path}: saved with a vocabulary of {saved_vocab} tokens, this run's tokenizer has "
            f"{vocab_size}: use the matching --tokenizer-model (or expand the checkpoint with "
            "tools/expand_vocab.py)"
        )
    saved_layout, layout = common.get("layout", {}), _layout()
    load_optim = not (finetune or cfg.no_load_optim)
    # RNG streams only continue meaningfully in the same layout; elsewhere keep the fresh seeds.
    load_rng = not (finetune or cfg.no_load_rng) and saved_layout == layout
    if not load_rng and not (finetune or cfg.no_load_rng):
        logger.warning(
            "layout %s differs from checkpoint's %s: RNG states not restored", layout, saved_layout
        )
    if load_optim and common.get("precision", _precision(model)) != _precision(model):
        # fp32 and bf16 runs keep different optimizer states (bf16 adds fp32 main weights).
        raise ValueError(
            f"{path}: saved by a {common['precision']} run, this run is {_precision(model)}: "
            "add --no-load-optim to continue from its weights with a fresh optimizer"
        )
    if load_optim:
        saved_type = (common.get("content_metadata") or {}).get("distrib_optim_sharding_type")
        if saved_type is not None and saved_type != cfg.ckpt_optim_sharding_type:
            raise ValueError(
                f"{path}: optimizer state was saved as {saved_type!r}; "
                f"pass --ckpt-optim-sharding-type {saved_type}"
            )
    state = _sharded_state_dict(model, optimizer, cfg, load_optim, load_rng, is_loading=True)
    loaded = dist_checkpointing.load(state, path)

    load_model_state_dict(model, loaded)
    if load_optim:
        # Without TE/apex, megatron_patches.distrib_optim_load fixes the Adam step state.
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["scheduler"])
    else:
        # The optimizer's fp32 main weights are copies: refresh them from the loaded weights.
        optimizer.reload_model_params()
        if not finetune:  # --no-load-optim: fresh moments, but the LR continues its schedule
            scheduler.step(increment=int(loaded["train_state"]["consumed_samples"]))
    if load_rng:
        _set_rng_state(loaded["rng_state"])
    logger.info("loaded checkpoint %s (layout %s -> %s)", path, saved_layout, layout)
    if finetune:
        return {"iteration": 0, "train_state": None}
    return {"iteration": int(loaded["iteration"]), "train_state": loaded["train_state"]}


class SigtermFlag:
    """Records SIGTERM; ranks agree on it through an all-reduce so that all save together."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._got = False
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        self._got = True

    def received(self) -> bool:
        """True on every rank if any rank got SIGTERM (collective: call on all ranks)."""
        flag = torch.tensor([1.0 if self._got else 0.0], device=self._device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


class StopSignal(Protocol):
    """What :class:`SaveCadence` asks once per step: did a stop request arrive (e.g. SIGTERM)?"""

    def received(self) -> bool: ...


@dataclass
class SaveCadence:
    """When the training loop saves a checkpoint and when it stops.

    :meth:`maybe_save` is called on every rank after every step, and once more with
    ``final=True`` after the loop; it saves every ``interval`` steps, when the run stops early,
    and at the end, never twice for the same iteration.
    """

    enabled: bool
    """Whether there is a ``--save`` directory; without it nothing is saved, stops still apply."""
    interval: int | None = None
    """``--save-interval``: save every that many iterations (None or 0: only at stops and end)."""
    exit_interval: int | None = None
    """``--exit-interval``: stop (and save) once this iteration is reached."""
    sigterm: StopSignal | None = None
    """With ``--exit-signal-handler``: stop (and save) once any rank got SIGTERM."""
    last_saved: int | None = None
    """The iteration saved last by this run."""

    def should_stop(self, iteration: int) -> bool:
        """True once ``iteration`` reaches the exit interval or SIGTERM arrived (collective)."""
        stop = self.exit_interval is not None and iteration >= self.exit_interval
        # Asked every step, whatever the exit interval says: it is a collective on all ranks.
        if self.sigterm is not None and self.sigterm.received():
            logger.warning("SIGTERM received: saving iteration %d and exiting", iteration)
            stop = True
        return stop

    def maybe_save(self, iteration: int, save: Callable[[], Any], final: bool = False) -> bool:
        """Call ``save()`` if the checkpoint of ``iteration`` is due; True if the loop must stop.

        Args:
            iteration: the step just completed.
            save: writes the checkpoint of ``iteration`` (called on every rank, or on none).
            final: the call after the loop: saves ``iteration`` unless already saved, and
                checks no stop condition.
        """
        stop = False if final else self.should_stop(iteration)
        due = final or stop or bool(self.interval and iteration % self.interval == 0)
        if self.enabled and due and iteration != self.last_saved:
            save()
            self.last_saved = iteration
        return stop
