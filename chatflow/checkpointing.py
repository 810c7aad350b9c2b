"""Crash-safe megatron-core distributed checkpoints: save every N steps, keep the last K, resume.

Layout of a checkpoint directory::

    <save>/
      iter_0000040/                     complete dist-checkpoint (metadata.json, common.pt, shards)
      iter_0000060/
      iter_0000080.tmp/                 a save in progress, or left by a crash: never loaded
      latest_checkpointed_iteration.txt "60": the newest complete checkpoint
      metrics.jsonl                     written by the trainer

A save writes everything into ``iter_XXXXXXX.tmp``, waits for all ranks, renames it to
``iter_XXXXXXX`` and only then rewrites the tracker (temp file + ``os.replace``). A crash at any
point therefore leaves the tracker naming a complete checkpoint; stale ``.tmp`` directories are
deleted by the next save. dist_checkpointing stores tensors by global key with their global shape,
so a checkpoint loads into any TP/PP/VPP/DP layout (with the fully-reshardable optimizer format).
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from chatflow.config.checkpoint import CheckpointConfig

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")

# Fault injection for the crash tests: "kill_in_save:<iteration>" SIGKILLs rank 0 after the
# shards of that iteration are written but before the rename, i.e. in the middle of a save.
FAULT_ENV = "CHATFLOW_FAULT_INJECT"


def checkpoint_dir_name(iteration: int) -> str:
    """Directory name of the checkpoint of ``iteration`` (Megatron's ``iter_%07d``)."""
    return f"iter_{iteration:07d}"


def maybe_inject_fault(point: str, iteration: int) -> None:
    """SIGKILL this process if ``$CHATFLOW_FAULT_INJECT`` is ``<point>:<iteration>`` (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{point}:{iteration}" and torch.distributed.get_rank() == 0:
        logger.warning("fault injection: SIGKILL at %s, iteration %d", point, iteration)
        os.kill(os.getpid(), signal.SIGKILL)


def read_tracker(ckpt_dir: str) -> Optional[int]:
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


def complete_checkpoints(ckpt_dir: str) -> List[int]:
    """Iterations of the complete (renamed) checkpoints in ``ckpt_dir``, ascending."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = (_ITER_DIR.match(name) for name in os.listdir(ckpt_dir))
    return sorted(int(m.group(1)) for m in found if m)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(path: str) -> None:
    # Make the rename itself durable: without this a power loss can undo it.
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers (they hold it as ``.module``)."""
    while hasattr(chunk, "module") and isinstance(chunk.module, torch.nn.Module):
        chunk = chunk.module
    return chunk


def _layout() -> Dict[str, int]:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "world": torch.distributed.get_world_size(),
    }


def _rng_state() -> Dict[str, Any]:
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


def _set_rng_state(state: Dict[str, Any]) -> None:
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


def _materialize_adam_state(optimizer: Any) -> None:
    """Create torch Adam's per-parameter state (zeros, step 0) where it does not exist yet.

    torch's Adam creates its state lazily at the first step. Without TE/apex (always so on CPU)
    megatron-core 0.16.1's ``DistributedOptimizer.state_dict()`` asserts that every parameter has
    a ``step``, so a freshly built optimizer cannot even describe the state it is about to load.
    The zeros are placeholders: the load overwrites them (``step`` comes from the param groups).
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _unshare_adam_steps(optimizer: Any) -> None:
    """Give every parameter its own Adam ``step`` tensor after a load.

    Without TE/apex, megatron-core 0.16.1's ``DistributedOptimizer.load_state_dict`` assigns one
    ``step`` tensor object to every parameter's state; torch's Adam increments steps in place,
    once per parameter, so the shared counter would run ahead and skew the bias correction
    (the resumed loss curve would drift from the uninterrupted one from the second step on).
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            for state in inner.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].detach().clone()


def _sharded_state_dict(
    model: List[torch.nn.Module],
    optimizer: Any,
    cfg: CheckpointConfig,
    include_optimizer: bool,
    include_rng: bool,
    is_loading: bool,
) -> Dict[str, Any]:
    state: Dict[str, Any] = {}
    for i, chunk in enumerate(model):
        # Keys inside are global (layer numbers include the PP/VPP offset), so the nesting
        # name does not matter for resharding; Megatron uses model / model0, model1, ...
        state["model" if len(model) == 1 else f"model{i}"] = _unwrap(chunk).sharded_state_dict()
    if include_optimizer:
        if is_loading:
            _materialize_adam_state(optimizer)
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
    model: List[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    train_state: Dict[str, Any],
) -> str:
    """Save a complete checkpoint of ``iteration`` under ``cfg.save``; returns its directory.

    Args:
        cfg: checkpoint settings (``save`` must be set).
        iteration: completed optimizer steps.
        model: model chunks (one, or one per virtual pipeline stage).
        optimizer: megatron-core optimizer.
        scheduler: ``OptimizerParamScheduler`` (its ``state_dict()`` is stored as common state).
        train_state: picklable dict identical on all ranks (consumed samples, data resume state).
    """
    assert cfg.save is not None, "save_checkpoint needs --save"
    rank = torch.distributed.get_rank()
    final = os.path.join(cfg.save, checkpoint_dir_name(iteration))
    tmp = final + ".tmp"
    if rank == 0:
        os.makedirs(cfg.save, exist_ok=True)
        for name in os.listdir(cfg.save):  # leftovers of crashed saves
            if name.endswith(".tmp") and _ITER_DIR.match(name[:-4]):
                shutil.rmtree(os.path.join(cfg.save, name), ignore_errors=True)
        os.makedirs(tmp)
    torch.distributed.barrier()

    state = _sharded_state_dict(model, optimizer, cfg, True, True, is_loading=False)
    state["iteration"] = iteration
    state["train_state"] = train_state
    state["scheduler"] = scheduler.state_dict()
    state["layout"] = _layout()
    dist_checkpointing.save(
        state,
        tmp,
        content_metadata={"distrib_optim_sharding_type": cfg.ckpt_optim_sharding_type},
    )
    torch.distributed.barrier()  # every rank's shards are on disk before the rename
    maybe_inject_fault("kill_in_save", iteration)
    if rank == 0:
        if os.path.isdir(final):
            # An older save of the same iteration that the tracker does not name (a crash after
            # the rename, before the tracker update, then a resume from an earlier checkpoint).
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(cfg.save)
        _write_atomic(os.path.join(cfg.save, TRACKER_FILE), f"{iteration}\n")
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
    model: List[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
) -> Optional[Dict[str, Any]]:
    """Restore the newest complete checkpoint of ``cfg.load_dir`` into model/optimizer/scheduler.

    Returns:
        None if there is nothing to load (a fresh run). Otherwise a dict with ``iteration`` and
        ``train_state`` (as given to ``save_checkpoint``); with ``--finetune`` only the weights
        are loaded and ``{"iteration": 0, "train_state": None}`` is returned.
    """
    ckpt_root = cfg.load_dir
    if ckpt_root is None:
        return None
    iteration = read_tracker(ckpt_root)
    if iteration is None:
        if cfg.load is not None:
            raise FileNotFoundError(f"--load {cfg.load}: no {TRACKER_FILE}, nothing to load")
        return None  # --save directory without a checkpoint yet: fresh start
    path = os.path.join(ckpt_root, checkpoint_dir_name(iteration))
    common = dist_checkpointing.load_common_state_dict(path)
    saved_layout, layout = common.get("layout", {}), _layout()
    load_optim = not (cfg.finetune or cfg.no_load_optim)
    # RNG streams only continue meaningfully in the same layout; elsewhere keep the fresh seeds.
    load_rng = not (cfg.finetune or cfg.no_load_rng) and saved_layout == layout
    if not load_rng and not (cfg.finetune or cfg.no_load_rng):
        logger.warning("layout %s differs from checkpoint's %s: RNG states not restored",
                       layout, saved_layout)
    if load_optim:
        saved_type = (common.get("content_metadata") or {}).get("distrib_optim_sharding_type")
        if saved_type is not None and saved_type != cfg.ckpt_optim_sharding_type:
            raise ValueError(
                f"{path}: optimizer state was saved as {saved_type!r}; "
                f"pass --ckpt-optim-sharding-type {saved_type}"
            )
    state = _sharded_state_dict(model, optimizer, cfg, load_optim, load_rng, is_loading=True)
    loaded = dist_checkpointing.load(state, path)

    for i, chunk in enumerate(model):
        _unwrap(chunk).load_state_dict(loaded["model" if len(model) == 1 else f"model{i}"])
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_steps(optimizer)
        scheduler.load_state_dict(loaded["scheduler"])
    else:
        # The optimizer's fp32 main weights are copies: refresh them from the loaded weights.
        optimizer.reload_model_params()
    if load_rng:
        _set_rng_state(loaded["rng_state"])
    logger.info("loaded checkpoint %s (layout %s -> %s)", path, saved_layout, layout)
    if cfg.finetune:
        return {"iteration": 0, "train_state": None}
    return {"iteration": int(loaded["iteration"]), "train_state": loaded["train_state"]}
