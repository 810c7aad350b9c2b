"""ChatFlow trainer: ``torchrun ... -m chatflow.train --model-preset 7b --data-schedule x.yaml``.

A straight-line loop on megatron-core's public pieces (through chatflow.engine):

    parse + validate config (fails before anything heavy)
    -> init torch.distributed + megatron parallel state (chatflow.parallel)
    -> model chunks, optimizer, LR scheduler (chatflow.model, chatflow.engine)
    -> resume from the newest complete checkpoint (chatflow.checkpointing)
    -> dynamic blended dataset continuing exactly where the checkpoint stopped (chatflow.data)
    -> loop: train_step, log every interval, validate every interval, save every interval.

Run ``python -m chatflow.train --help`` for every flag; examples/pretrain_chatflow.sh launches it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import torch

import megatron_patches
from chatflow import hooks, parallel
from chatflow.config.cli import ConfigError, JobConfig, dump_config, parse_config
from chatflow.data.blended_dataset import BlendedDatasetConfig, DynamicBlendedDataset
from chatflow.data.data_state import DataState
from chatflow.data.sampler import DataParallelBatchSampler
from chatflow.engine import build_optimizer, build_scheduler, eval_step, train_step
from chatflow.metrics import (
    IntervalTimer,
    MetricsLogger,
    SourceStats,
    packed_throughput,
    padding_metrics,
    peak_tflops_for_device,
    scheduled_mix,
)

logger = logging.getLogger("chatflow.train")


def _setup_logging(job: JobConfig, rank: int) -> None:
    # Rank 0 speaks for the job; the others only report problems.
    level = job.logging.log_level if rank == 0 else "WARNING"
    logging.basicConfig(
        level=level, format=f"[%(asctime)s r{rank}] %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("chatflow").setLevel(level)
    if level != "DEBUG":
        # megatron-core logs every parameter name of every DDP bucket at INFO.
        logging.getLogger("megatron").setLevel("WARNING")
        # Without TE/apex (CPU) megatron-core warns about each fallback at import; say it once.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
        warnings.filterwarnings(
            "ignore", category=FutureWarning, module=r"(torch\.distributed|megatron)"
        )
        # Raised once per process when megatron-core reads .grad under the CPU device patch.
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not")


def _device_is_cpu(job: JobConfig) -> bool:
    if job.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device on this machine")
    if job.train.device == "cpu" and torch.cuda.is_available():
        # Model building follows torch.cuda.is_available(); hide the GPUs to train on CPU.
        raise RuntimeError("--device cpu on a machine with GPUs: set CUDA_VISIBLE_DEVICES=''")
    return job.train.device == "cpu" or not torch.cuda.is_available()


def check_document_masks(
    use_te: bool, packings: dict[str, str], reset_attention_mask: bool
) -> None:
    """Refuse document masks on the TransformerEngine spec, which would silently drop them.

    Packed conversations and ``--reset-attention-mask`` carry a dense block-diagonal
    ``attention_mask``. The local spec applies it; TransformerEngine's attention with the causal
    mask type applies its own causal mask and ignores it, so samples would attend across
    documents without a word. Until the packed THD form (``cu_seqlens``) exists, such runs must
    use windows on TE.

    Raises:
        ValueError: document masks are asked for and the TE spec is in use.
    """
    packed = sorted(n for n, p in packings.items() if p == "conversations")
    if not use_te or not (packed or reset_attention_mask):
        return
    what = f"packing: conversations for {', '.join(packed)}" if packed else "--reset-attention-mask"
    raise ValueError(
        f"{what} needs document masks, which the TransformerEngine attention (causal mask type) "
        "does not apply; until ChatFlow's packed THD path exists, use 'packing: windows' for these "
        "sources (schedule YAML, or --data-path PREFIX:packing=windows) on TransformerEngine, or "
        "run without TransformerEngine (local spec)"
    )


def _build_data(job: JobConfig, schedule, info, consumed: int, data_state: dict | None):
    """The run's dynamic blended dataset and this rank's micro-batch iterator from ``consumed``."""
    d = job.data
    cfg = BlendedDatasetConfig(
        seq_length=job.model.seq_length,
        num_samples=job.train.train_iters * job.train.global_batch_size,
        seed=job.train.seed,
        cache_dir=d.data_cache_path,
        valid_fraction=d.valid_fraction,
        # LLaMA2's EOS ends every document; only these options read it (and it keys the cache,
        # so leaving it unset otherwise lets tools/build_index.py's prebuilt indices match).
        eod_id=2 if (d.reset_position_ids or d.reset_attention_mask or d.eod_mask_loss) else None,
        reset_position_ids=d.reset_position_ids,
        reset_attention_mask=d.reset_attention_mask,
        eod_mask_loss=d.eod_mask_loss,
    )
    if data_state is None:
        dataset = DynamicBlendedDataset(cfg, schedule)
    else:
        # Each source continues from its own consumed count, even if the schedule changed.
        state = DataState.from_dict(data_state)
        dataset = DynamicBlendedDataset(cfg, state.segments_for(schedule, cfg.num_samples))
        state.verify(dataset)
    sampler = DataParallelBatchSampler(
        total_samples=len(dataset),
        consumed_samples=consumed,
        micro_batch_size=job.train.micro_batch_size,
        data_parallel_rank=info.data_rank,
        data_parallel_size=info.data_parallel_size,
    )
    workers = d.num_workers
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,  # keep a few steps ahead of the GPU
    )
    return dataset, iter(loader)


def _valid_iterator(dataset, source: int, job: JobConfig, info) -> Iterator[dict[str, Any]]:
    """This rank's micro-batches of one source's held-out split, tagged with its source id."""
    sampler = DataParallelBatchSampler(
        total_samples=len(dataset),
        consumed_samples=0,
        micro_batch_size=job.train.micro_batch_size,
        data_parallel_rank=info.data_rank,
        data_parallel_size=info.data_parallel_size,
    )
    for batch in torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0):
        batch["source_id"] = torch.full((batch["tokens"].shape[0],), source, dtype=torch.long)
        yield batch


def evaluate(job: JobConfig, chunks, valid: dict[str, Any], names: Sequence[str], info) -> dict:
    """Validation loss overall and per source on each source's held-out documents."""
    stats = SourceStats(len(names))
    num_mb = job.train.num_microbatches(info.data_parallel_size)
    for k, name in enumerate(names):
        if name not in valid:
            continue
        batches = _valid_iterator(valid[name], k, job, info)
        for _ in range(job.train.eval_iters):
            r = eval_step(chunks, batches, num_microbatches=num_mb,
                          micro_batch_size=job.train.micro_batch_size,
                          seq_length=job.model.seq_length, num_sources=len(names))  # fmt: skip
            stats.add(r.source_loss_sum, r.source_tokens, r.source_samples)
    return {"valid_loss": stats.overall_loss(), "valid_source_loss": stats.per_source_loss(names)}


def train(job: JobConfig) -> list[dict[str, Any]]:
    """Run (or resume) the job on an initialised process group; returns rank 0's log records."""
    # The modules that import megatron-core come in here, not at the top: `python -m
    # chatflow.train` first validates the config (a bad flag fails at once, not after seconds of
    # megatron-core imports), and _setup_logging filters megatron-core's import-time warnings.
    from chatflow import checkpointing as ckpt
    from chatflow.model import build_model_chunks, transformer_engine_available

    megatron_patches.apply(cuda_available=not _device_is_cpu(job))
    info = parallel.initialize(
        job.parallel, seed=job.train.seed, backend="gloo" if _device_is_cpu(job) else None
    )
    tc, schedule = job.train, job.data.schedule()
    names = list(schedule.names)
    num_samples = tc.train_iters * tc.global_batch_size
    num_mb = tc.num_microbatches(info.data_parallel_size)

    uses_te = transformer_engine_available()  # what build_model_chunks picks by default
    chunks = build_model_chunks(job.model, job.parallel, bf16=job.optim.bf16, use_te=uses_te)
    optimizer = build_optimizer(chunks, job.optim, job.parallel)
    scheduler = build_scheduler(optimizer, job.optim, num_samples)
    loaded = ckpt.load_checkpoint(
        job.checkpoint, chunks, optimizer, scheduler, vocab_size=job.model.vocab_size
    )
    iteration, train_state = (loaded["iteration"], loaded["train_state"]) if loaded else (0, None)
    consumed = train_state["consumed_samples"] if train_state else 0
    if iteration >= tc.train_iters:
        logger.info("checkpoint is at iteration %d of %d: nothing left to train",
                    iteration, tc.train_iters)  # fmt: skip
        return []
    dataset, data_iter = _build_data(
        job, schedule, info, consumed, train_state["data_state"] if train_state else None
    )
    packings = dict(zip(dataset.names, dataset.packings, strict=True))
    check_document_masks(uses_te, packings, job.data.reset_attention_mask)
    # Each evaluation reads the same first eval_iters global batches of every held-out split.
    valid = (
        dataset.validation_datasets(num_samples=tc.eval_iters * tc.global_batch_size)
        if tc.eval_interval
        else {}
    )

    log = MetricsLogger(job, names, is_writer=info.rank == 0, resumed_iteration=iteration)
    saver = ckpt.SaveCadence(
        enabled=bool(job.checkpoint.save),
        interval=job.checkpoint.save_interval,
        exit_interval=tc.exit_interval,
        sigterm=ckpt.SigtermFlag(info.device) if tc.exit_signal_handler else None,
    )

    def save(step: int, samples: int) -> None:  # the checkpoint of `step`, `samples` consumed
        state = {
            "consumed_samples": samples,
            "data_state": DataState.capture(dataset, samples).to_dict(),
        }
        ckpt.save_checkpoint(
            job.checkpoint, step, chunks, optimizer, scheduler, state,
            vocab_size=job.model.vocab_size,
        )  # fmt: skip

    if info.rank == 0 and job.checkpoint.save:
        os.makedirs(job.checkpoint.save, exist_ok=True)
        dump_config(job, os.path.join(job.checkpoint.save, "config.yaml"))
    device_name = torch.cuda.get_device_name() if info.device.type == "cuda" else "cpu"
    peak = job.logging.peak_tflops or peak_tflops_for_device(device_name)
    flops_per_token = job.model.flops_per_token()
    stats = SourceStats(len(names))
    packing = {
        n: {**st, "packed": p == "conversations" and bool(st)}  # retired sources: no stats
        for (n, st), p in zip(dataset.packing_stats().items(), dataset.packings)
    }
    for n, st in packing.items():
        if st["packed"]:
            logger.info("%s: packed by conversation: padding %.1f%% of its samples, %d splits, "
                        "%d truncated turns (%d tokens dropped)", n, 100 * st["padding_share"],
                        st["splits"], st["truncations"], st["dropped_tokens"])  # fmt: skip
    timer = IntervalTimer()  # throughput counts training only: evaluation and saves are paused
    interval_consumed, interval_wait = consumed, 0.0
    logger.info("training %.1fM-parameter LLaMA (%d layers, hidden %d), iterations %d -> %d, "
                "%d micro-batches of %d per DP rank per step", job.model.num_parameters() / 1e6,
                job.model.num_layers, job.model.hidden_size, iteration, tc.train_iters, num_mb,
                tc.micro_batch_size)  # fmt: skip

    while iteration < tc.train_iters:
        result = train_step(chunks, optimizer, scheduler, data_iter, num_microbatches=num_mb,
                            micro_batch_size=tc.micro_batch_size,
                            seq_length=job.model.seq_length, num_sources=len(names))  # fmt: skip
        iteration += 1
        consumed += tc.global_batch_size
        stats.add(result.source_loss_sum, result.source_tokens, result.source_samples)
        interval_wait += result.data_wait_s
        hooks.on_iteration_end(iteration)

        if iteration % job.logging.log_interval == 0 or iteration == tc.train_iters:
            elapsed = timer.elapsed()
            # Padding of packed samples, read off the indices: tokens/s counts real tokens.
            pad = dataset.padding_between(interval_consumed, consumed)
            timing = packed_throughput(
                (consumed - interval_consumed) * job.model.seq_length, sum(pad.values()),
                elapsed, flops_per_token, info.world_size, peak,
            )  # fmt: skip
            before, after = (
                dataset.source_counts(interval_consumed),
                dataset.source_counts(consumed),
            )
            samples = {n: after[n] - before[n] for n in after}
            log.train_record(
                iteration, consumed, stats, result, timing, elapsed, interval_wait,
                scheduled_mix(schedule, interval_consumed, consumed, num_samples),
                padding_metrics(pad, samples, job.model.seq_length, packing),
            )  # fmt: skip
            stats.reset()
            timer.restart()
            interval_consumed, interval_wait = consumed, 0.0
        with timer.paused():
            if tc.eval_interval and iteration % tc.eval_interval == 0:
                log.eval_record(iteration, consumed, evaluate(job, chunks, valid, names, info))
            stop = saver.maybe_save(iteration, partial(save, iteration, consumed))
        if stop:
            logger.info("stopping at iteration %d", iteration)
            break
    saver.maybe_save(iteration, partial(save, iteration, consumed), final=True)
    log.close()
    return log.records


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m chatflow.train``)."""
    try:
        job = parse_config(argv)  # every setting is checked before torch.distributed starts
    except ConfigError as e:
        raise SystemExit(f"chatflow.train: {e}") from None
    _setup_logging(job, int(os.environ.get("RANK", "0")))
    hooks.install_from_env()  # callbacks named by $CHATFLOW_HOOKS (tests); none in production
    try:
        train(job)
    finally:
        if torch.distributed.is_initialized():
            parallel.destroy()


if __name__ == "__main__":  # guard: DataLoader workers and async checkpoint saves spawn processes
    main()
