"""One optimizer step on megatron-core: optimizer and LR schedule set-up, the training step over
the micro-batches of a global batch (any TP/PP/VPP/DP layout) and a forward-only eval step.

Data contract. Each process passes an iterator over the micro-batches of *its* data-parallel
shard (collated dicts: ``tokens``, ``labels``, ``position_ids`` int64 ``[b, s]``, ``loss_mask``
float32 ``[b, s]`` of 0/1, ``source_id`` int64 ``[b]``, optional ``attention_mask`` bool
``[b, 1, s, s]``, True = masked). TP ranks of one DP rank must see the same micro-batches. Every
process pulls exactly ``num_microbatches`` micro-batches per step, including middle pipeline
stages that use only the attention mask: so all ranks' data iterators (and sampler states)
advance in lockstep, which keeps checkpointing and resuming simple.

Loss. The loss is a token sum; megatron-core divides gradients by the global number of loss
tokens (``calculate_per_token_loss``), so the update equals that of one process running the
whole global batch, whatever the layout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch

from chatflow.config.optim import OptimizerConfig
from chatflow.config.parallel import ParallelConfig

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclass
class StepResult:
    """Metrics of one step, identical on every rank (reduced over DP, sent along the pipeline)."""

    loss: float
    """Masked mean loss over all loss tokens of the global batch."""
    num_tokens: int
    """Loss tokens (sum of loss_mask) in the global batch."""
    source_loss_sum: torch.Tensor
    """float64 ``[num_sources]``: summed token losses per source_id."""
    source_tokens: torch.Tensor
    """float64 ``[num_sources]``: loss tokens per source_id."""
    source_samples: torch.Tensor
    """float64 ``[num_sources]``: samples per source_id (the realised mix)."""
    grad_norm: float | None = None
    """Global gradient L2 norm before clipping (None for eval)."""
    skipped: bool = False
    """True when the optimizer skipped the update (fp16 overflow / NaN); LR is not advanced."""
    lr: float | None = None
    """Learning rate used for this update."""
    data_wait_s: float = 0.0
    """Seconds this rank spent waiting for its data iterator."""


def build_optimizer(
    chunks: list[torch.nn.Module], optim: OptimizerConfig, parallel: ParallelConfig
):
    """megatron-core optimizer (AdamW, fp32 main weights with bf16, optional distributed).

    Also installs the schedule hooks megatron-core reads from the model config (gradient
    finalisation, loss scaling, overlapped gradient/parameter sync).

    Args:
        chunks: DDP-wrapped model chunks from :func:`chatflow.model.build_model_chunks`.
        optim: optimizer settings.
        parallel: layout (``use_distributed_optimizer``, overlap flags).
    """
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer
    from megatron.core.utils import get_model_config

    config = get_model_config(chunks[0])
    mcore_config = McoreOptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=optim.bf16,
        params_dtype=torch.bfloat16 if optim.bf16 else torch.float32,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        overlap_param_gather=parallel.overlap_param_gather,
    )
    optimizer = get_megatron_optimizer(mcore_config, chunks)
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    if parallel.overlap_grad_reduce:
        # The schedule suppresses the reduction during all but the last micro-batch and starts
        # each chunk's reduction as soon as its last backward is done (as Megatron-LM does).
        no_sync = [c.no_sync for c in chunks]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        grad_sync = [c.start_grad_sync for c in chunks]
        config.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
    # overlap_param_gather needs no hook here: DDP's forward pre-hooks wait for each bucket's
    # all-gather (Megatron-LM's default, align_param_gather=False).
    return optimizer


def build_scheduler(optimizer, optim: OptimizerConfig, train_samples: int):
    """megatron-core ``OptimizerParamScheduler`` counting in samples: linear warmup from 0 to
    ``lr``, then ``lr_decay_style`` to ``min_lr`` at ``lr_decay_samples`` (default: the run).

    Step it with ``scheduler.step(increment=global_batch_size)``; :func:`train_step` does.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    if train_samples <= optim.lr_warmup_samples:
        raise ValueError(
            f"train_samples: {train_samples} must exceed "
            f"lr_warmup_samples={optim.lr_warmup_samples}"
        )
    decay = optim.lr_decay_samples or train_samples
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=optim.lr_warmup_samples,
        lr_decay_steps=decay,
        lr_decay_style=optim.lr_decay_style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=decay,
        wd_incr_style="constant",
    )


def _loss_func(loss_mask: torch.Tensor, source_id: torch.Tensor, num_sources: int, output_tensor):
    """Token-summed masked loss, its token count, and a report row for logging."""
    mask = loss_mask.float()
    per_sample = (output_tensor.float() * mask).sum(dim=1)
    loss_sum = per_sample.sum()
    tokens_per_sample = mask.sum(dim=1)
    num_tokens = tokens_per_sample.sum().round().to(torch.int)
    source = source_id.view(-1)
    zeros = torch.zeros(num_sources, dtype=torch.float64, device=mask.device)
    report = torch.cat(
        [
            per_sample.detach().double().sum().view(1),
            tokens_per_sample.sum().double().view(1),
            zeros.index_add(0, source, per_sample.detach().double()),
            zeros.index_add(0, source, tokens_per_sample.double()),
            zeros.index_add(0, source, torch.ones_like(per_sample, dtype=torch.float64)),
        ]
    )
    return loss_sum, num_tokens, {"report": report}


def _forward_step(num_sources: int, data_iterator, model):
    batch = next(data_iterator)
    output = model(
        input_ids=batch["tokens"],
        position_ids=batch["position_ids"],
        attention_mask=batch.get("attention_mask"),
        labels=batch["labels"],
    )
    return output, partial(_loss_func, batch["loss_mask"], batch["source_id"], num_sources)


REQUIRED_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "source_id")


def check_batch(batch: Batch, micro_batch_size: int, seq_length: int, num_sources: int) -> None:
    """Validates one collated micro-batch against the data contract.

    Raises:
        ValueError: naming the offending field.
    """
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise ValueError(f"micro-batch is missing field(s) {missing}; has {sorted(batch)}")
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        if tuple(batch[key].shape) != (micro_batch_size, seq_length):
            raise ValueError(
                f"{key}: shape {tuple(batch[key].shape)}, expected "
                f"(micro_batch_size={micro_batch_size}, seq_length={seq_length})"
            )
    source = batch["source_id"]
    if source.numel() != micro_batch_size:
        raise ValueError(f"source_id: {source.numel()} values for {micro_batch_size} samples")
    if source.numel() and (int(source.min()) < 0 or int(source.max()) >= num_sources):
        raise ValueError(f"source_id: values must lie in [0, num_sources={num_sources})")


def _pull_microbatches(data_iterator: Iterator[Batch], n: int, shape_args: tuple) -> tuple:
    start = time.perf_counter()
    batches = []
    for i in range(n):
        try:
            batch = next(data_iterator)
        except StopIteration:
            raise RuntimeError(f"data iterator ran out after {i} of {n} micro-batches") from None
        batches.append(batch)
    wait = time.perf_counter() - start
    for batch in batches:
        check_batch(batch, *shape_args)  # on the host copy: no device sync
    return batches, wait


def _to_device(device: torch.device, batch: Batch) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _run_schedule(
    chunks, data_iterator, num_microbatches, micro_batch_size, seq_length, num_sources, forward_only
):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = next(chunks[0].parameters()).device
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches: must be >= 1, got {num_microbatches}")
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if len(chunks) > 1 and num_microbatches % pp != 0:
        raise ValueError(
            f"num_microbatches: the interleaved pipeline schedule needs a multiple of "
            f"pipeline_model_parallel_size={pp} micro-batches per step, got {num_microbatches} "
            f"(= global batch / (micro batch x data-parallel size))"
        )
    batches, wait = _pull_microbatches(
        data_iterator, num_microbatches, (micro_batch_size, seq_length, num_sources)
    )
    # Every model chunk walks the same micro-batches in order (the interleaved schedule calls
    # the forward step num_microbatches times per chunk).
    # Host copies are kept; each micro-batch moves to the device only when the schedule reaches
    # it, so device memory holds one or a few micro-batches, not the whole global batch.
    iterators = [map(partial(_to_device, device), batches) for _ in chunks]
    losses = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, num_sources),
        data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return _reduce_report(losses, num_sources, device), wait


def _reduce_report(losses: list, num_sources: int, device: torch.device) -> torch.Tensor:
    """Sums the micro-batch reports, all-reduces over DP, and sends them to every stage."""
    from megatron.core import parallel_state

    width = 2 + 3 * num_sources
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        report = torch.stack([d["report"] for d in losses]).sum(dim=0)
        torch.distributed.all_reduce(report, group=parallel_state.get_data_parallel_group())
    else:
        report = torch.zeros(width, dtype=torch.float64, device=device)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(
            report,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    return report.cpu()


def _result(report: torch.Tensor, num_sources: int, **extra) -> StepResult:
    n = num_sources
    tokens = report[1].item()
    return StepResult(
        loss=report[0].item() / max(tokens, 1.0),
        num_tokens=int(round(tokens)),
        source_loss_sum=report[2 : 2 + n].clone(),
        source_tokens=report[2 + n : 2 + 2 * n].clone(),
        source_samples=report[2 + 2 * n : 2 + 3 * n].clone(),
        **extra,
    )


def train_step(
    chunks: list[torch.nn.Module],
    optimizer,
    scheduler,
    data_iterator: Iterator[Batch],
    *,
    num_microbatches: int,
    micro_batch_size: int,
    seq_length: int,
    num_sources: int,
) -> StepResult:
    """Forward+backward over one global batch, gradient reduction, optimizer and LR step.

    Args:
        chunks: DDP-wrapped model chunks.
        optimizer: from :func:`build_optimizer`.
        scheduler: from :func:`build_scheduler`; advanced by the global batch size.
        data_iterator: this rank's micro-batches (see the module docstring).
        num_microbatches: micro-batches per DP rank: global batch / (micro batch x DP).
        micro_batch_size: samples per micro-batch.
        seq_length: tokens per sample.
        num_sources: number of data sources; ``source_id`` values lie in ``[0, num_sources)``.
    """
    from megatron.core import parallel_state

    for chunk in chunks:
        chunk.train()
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    lr = optimizer.param_groups[0]["lr"]
    report, wait = _run_schedule(
        chunks, data_iterator, num_microbatches, micro_batch_size, seq_length, num_sources, False
    )
    update_successful, grad_norm, _ = optimizer.step()
    if update_successful:
        dp = parallel_state.get_data_parallel_world_size()
        scheduler.step(increment=num_microbatches * micro_batch_size * dp)
    return _result(
        report,
        num_sources,
        grad_norm=None if grad_norm is None else float(grad_norm),
        skipped=not update_successful,
        lr=lr,
        data_wait_s=wait,
    )


@torch.no_grad()
def eval_step(
    chunks: list[torch.nn.Module],
    data_iterator: Iterator[Batch],
    *,
    num_microbatches: int,
    micro_batch_size: int,
    seq_length: int,
    num_sources: int,
) -> StepResult:
    """Forward-only pass over one global batch; same arguments and metrics as :func:`train_step`."""
    for chunk in chunks:
        chunk.eval()
    report, wait = _run_schedule(
        chunks, data_iterator, num_microbatches, micro_batch_size, seq_length, num_sources, True
    )
    for chunk in chunks:
        chunk.train()
    return _result(report, num_sources, data_wait_s=wait)
