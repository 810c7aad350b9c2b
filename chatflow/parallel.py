"""Process-group set-up: torch.distributed from the torchrun environment, megatron-core's
parallel state (TP/PP/VPP/DP groups) and its per-rank random seeds."""

from __future__ import annotations

import datetime
import logging
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch

from chatflow.config.parallel import ParallelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in the job."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank within the node (selects the GPU)."""
    tensor_rank: int
    """Rank within the tensor-parallel group."""
    pipeline_rank: int
    """Pipeline stage of this process."""
    data_rank: int
    """Rank within the data-parallel group: which shard of each global batch this process reads."""
    data_parallel_size: int
    """Number of data-parallel replicas."""
    device: torch.device
    """Device the model lives on (cuda:<local_rank> or cpu)."""


def uses_cuda() -> bool:
    """Whether megatron-core runs on CUDA here: CUDA is present and the CPU patches are not
    active (``megatron_patches.apply(cuda_available=False)`` forces CPU on a GPU machine)."""
    import megatron_patches

    return torch.cuda.is_available() and not megatron_patches.cpu_mode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def initialize(
    parallel: ParallelConfig,
    seed: int = 1234,
    backend: str | None = None,
    timeout_minutes: int = 30,
) -> DistributedInfo:
    """Initialises torch.distributed and megatron-core's parallel state, then seeds every RNG.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` as set by
    ``torchrun``; without them it starts a one-process group (megatron-core needs a group even
    then). Call ``megatron_patches.apply()`` first on CPU.

    Args:
        parallel: the layout; ``world_size`` must be divisible by TP x PP.
        seed: base seed. Like Megatron-LM, pipeline stage ``p`` uses ``seed + 100 * p`` so that
            stages initialise different layers differently; TP ranks share the default stream
            (so CPU-initialised master weights agree) and get distinct model-parallel streams.
        backend: ``"nccl"`` or ``"gloo"``; default nccl with CUDA, gloo otherwise.
        timeout_minutes: collective timeout.

    Returns:
        This process's :class:`DistributedInfo`.
    """
    from megatron.core import parallel_state, rerun_state_machine, tensor_parallel

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    parallel.data_parallel_size(world_size)  # fail fast, before any collective
    # Megatron's TP communication overlap needs one CUDA work queue, ordered as issued; it must
    # be set before the first CUDA call (Megatron-LM requires the same).
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    cuda = uses_cuda()
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        init_method = None  # env:// from torchrun
        if "MASTER_ADDR" not in os.environ:
            if world_size > 1:
                raise RuntimeError(
                    f"WORLD_SIZE={world_size} but MASTER_ADDR is not set; launch with torchrun"
                )
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        torch.distributed.init_process_group(
            backend=backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    info = DistributedInfo(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
        pipeline_rank=parallel_state.get_pipeline_model_parallel_rank(),
        data_rank=parallel_state.get_data_parallel_rank(),
        data_parallel_size=parallel_state.get_data_parallel_world_size(),
        device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"),
    )
    # Without this megatron-core initialises it implicitly and warns on the first step.
    if rerun_state_machine._GLOBAL_RERUN_STATE_MACHINE is None:
        rerun_state_machine.initialize_rerun_state_machine(
            mode=rerun_state_machine.RerunMode.DISABLED
        )
    set_seed(seed + 100 * info.pipeline_rank)
    tensor_parallel.model_parallel_cuda_manual_seed(seed + 100 * info.pipeline_rank)
    logger.info(
        "rank %d/%d: tp %d, pp %d, dp %d/%d on %s (%s)",
        rank, world_size, info.tensor_rank, info.pipeline_rank, info.data_rank,
        info.data_parallel_size, info.device, backend,
    )  # fmt: skip
    return info


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU, and CUDA when present)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def destroy(process_group: bool = True) -> None:
    """Tears down megatron-core's parallel state (and the default process group).

    Args:
        process_group: also destroy torch.distributed's default group. Pass False to re-initialise
            megatron-core with another layout over the same processes (tests do this).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mrandom

    parallel_state.destroy_model_parallel()
    mrandom.initialize_rng_tracker(force_reset=True)
    if process_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
