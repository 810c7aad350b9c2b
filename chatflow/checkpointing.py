"""Crash-safe megatron-core distributed checkpoints: save every N steps, keep the last K, resume.

Layout of a checkpoint directory::

    <save>/
      iter_0000040/                     complete dist-checkpoint (metadata.json, common.pt, shards,
                                        data_state.json for tools/build_index.py --data-state)
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

import json
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
from chatflow.fileio import atomic_write, fsync_dir

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")

# Fault injection for the crash tests: "kill_in_save:<iteration>" SIGKILLs rank 0 after the
# shards of that iteration are written but before the rename, i.e. in the middle of a save;
# "kill_at_iter:<i>" SIGKILLs it after step i; "sigterm_at_iter:<i>" sends it SIGTERM instead.
FAULT_ENV = "CHATFLOW_FAULT_INJECT"


def checkpoint_dir_name(iteration: int) -> str:
    """Directory name of the checkpoint of ``iteration`` (Megatron's ``iter_%07d``)."""
    return f"iter_{iteration:07d}"


def maybe_inject_fault(point: str, iteration: int) -> None:
    """Signal rank 0 if ``$CHATFLOW_FAULT_INJECT`` is ``<point>:<iteration>`` (crash tests)."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{point}:{iteration}" and torch.distributed.get_rank() == 0:
        sig = signal.SIGTERM if point.startswith("sigterm") else signal.SIGKILL
        logger.warning("fault injection: %s at %s, iteration %d", sig.name, point, iteration)
        os.kill(os.getpid(), sig)


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


def _precision(model: List[torch.nn.Module]) -> str:
    return str(next(_unwrap(model[0]).parameters()).dtype).replace("torch.", "")


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
    vocab_size: Optional[int] = None,
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
    maybe_inject_fault("kill_in_save", iteration)
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
    model: List[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    vocab_size: Optional[int] = None,
) -> Optional[Dict[str, Any]]:
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
        logger.warning("layout %s differs from checkpoint's %s: RNG states not restored",
                       layout, saved_layout)
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

    for i, chunk in enumerate(model):
        _unwrap(chunk).load_state_dict(loaded["model" if len(model) == 1 else f"model{i}"])
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
