"""Training metrics: model FLOPs and MFU, throughput, per-source loss and mix aggregation.

FLOP formula (model FLOPs, the convention of PaLM's MFU and megatron-core's published figures:
recomputation is *not* counted, attention is counted over the full s x s score matrix).
For one token of a LLaMA layer with hidden size h, q heads n of size d = h / n, g KV groups,
SwiGLU FFN size f, sequence length s, and vocabulary V, the forward pass costs (multiply-add = 2):

    q, k, v projections     2 h (h + 2 g d)
    scores QK^T and A.V     2 * 2 s h
    output projection       2 h h
    SwiGLU (gate, up, down) 2 * 3 h f

plus the output layer 2 h V once per token. Backward costs twice the forward, so a training
token costs 3 x (L x layer + 2 h V) = 6 x (matmul parameters) + 12 L h s, which is what
``ModelConfig.flops_per_token()`` computes. Example: LLaMA2-7B at s = 2048 costs 1.43e10 FLOPs per
token forward, 4.29e10 per trained token (close to 6N + 12 L h s = 4.36e10).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from chatflow.fileio import atomic_open

logger = logging.getLogger("chatflow.train")

# Dense bf16/fp16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity).
PEAK_TFLOPS_BF16 = {
    "H200": 989.0,
    "H100": 989.0,  # SXM; PCIe is 756 (override with --peak-tflops)
    "H800": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "V100": 125.0,
}


def peak_tflops_for_device(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s for a device name such as ``NVIDIA H100 80GB HBM3``, else None."""
    name = device_name.upper()
    # Longest key first, so that "A10" does not claim an A100 nor "H20" an H200.
    for key in sorted(PEAK_TFLOPS_BF16, key=len, reverse=True):
        if key in name:
            if key == "H100" and "PCIE" in name:
                return 756.0
            return PEAK_TFLOPS_BF16[key]
    return None


@dataclass
class StepTiming:
    """Throughput figures of one logging interval."""

    tokens_per_s: float
    """Real (non-padding) tokens trained per second over all ranks."""
    tflops_per_device: float
    """Achieved model TFLOP/s per device (rank)."""
    mfu: float | None
    """Model FLOPs utilization (0..1) if the device peak is known, else None."""
    padding_tokens_per_s: float = 0.0
    """Padding positions of packed samples per second (computed on, never trained on)."""


def throughput(
    tokens: int,
    seconds: float,
    flops_per_token: float,
    world_size: int,
    peak_tflops: float | None,
) -> StepTiming:
    """Tokens/s, TFLOP/s per device and MFU for ``tokens`` trained in ``seconds``."""
    seconds = max(seconds, 1e-9)
    tflops = tokens * flops_per_token / seconds / world_size / 1e12
    mfu = tflops / peak_tflops if peak_tflops else None
    return StepTiming(tokens_per_s=tokens / seconds, tflops_per_device=tflops, mfu=mfu)


def packed_throughput(
    tokens: int,
    padding: int,
    seconds: float,
    flops_per_token: float,
    world_size: int,
    peak_tflops: float | None,
) -> StepTiming:
    """:func:`throughput` of ``tokens`` positions of which ``padding`` are padding: tokens/s
    counts the real ones only, padding/s is reported beside it, and TFLOP/s and MFU count every
    position (the device computes them all)."""
    timing = throughput(tokens, seconds, flops_per_token, world_size, peak_tflops)
    seconds = max(seconds, 1e-9)
    timing.tokens_per_s = (tokens - padding) / seconds
    timing.padding_tokens_per_s = padding / seconds
    return timing


def padding_metrics(
    padding: dict[str, int], samples: dict[str, int], seq_length: int, packing: dict[str, dict]
) -> dict:
    """The padding fields of a train record: overall and per-source padding share of the
    interval's input positions, and each packed source's split/truncation counts."""
    total = sum(samples.values()) * seq_length
    packed = [n for n, st in packing.items() if st.get("packed")]
    return {
        "padding_share": sum(padding.values()) / total if total else 0.0,
        "source_padding_share": {
            n: padding.get(n, 0) / (samples[n] * seq_length) if samples.get(n) else None
            for n in samples
        },
        "source_splits": {n: packing[n]["splits"] for n in packed},
        "source_truncations": {n: packing[n]["truncations"] for n in packed},
    }


class IntervalTimer:
    """Training time of the current logging interval: wall time less the ``paused()`` blocks.

    Throughput and MFU count training only, so the loop runs evaluation and checkpoint saves
    inside :meth:`paused`. ``clock`` returns seconds (tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = clock()
        self._paused = 0.0

    def restart(self) -> None:
        """Start a new interval now (forgetting the pauses of the previous one)."""
        self._start = self._clock()
        self._paused = 0.0

    def elapsed(self) -> float:
        """Seconds since the interval started, without the time spent paused."""
        return self._clock() - self._start - self._paused

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The time spent inside this block does not count towards :meth:`elapsed`."""
        begin = self._clock()
        try:
            yield
        finally:
            self._paused += self._clock() - begin


class SourceStats:
    """Accumulates per-source loss sums, token counts and sample counts over a log interval.

    The inputs are a step's sums already reduced over data-parallel ranks (``StepResult``).
    Sums (not means) are accumulated so that combining steps is exact: the overall loss equals
    ``sum_k loss_sum_k / sum_k tokens_k``, i.e. the per-source losses weighted by their token
    shares add up to it.
    """

    def __init__(self, num_sources: int) -> None:
        self.num_sources = num_sources
        # float64 so that long intervals do not lose precision in the sums.
        self.loss_sum = torch.zeros(num_sources, dtype=torch.float64)
        self.tokens = torch.zeros(num_sources, dtype=torch.float64)
        self.samples = torch.zeros(num_sources, dtype=torch.float64)

    def add(self, loss_sum: torch.Tensor, tokens: torch.Tensor, samples: torch.Tensor) -> None:
        """Add per-source sums (each a length-K tensor) from one or more micro-batches."""
        self.loss_sum += loss_sum.detach().to("cpu", torch.float64)
        self.tokens += tokens.detach().to("cpu", torch.float64)
        self.samples += samples.detach().to("cpu", torch.float64)

    def reset(self) -> None:
        """Zero all sums (start of a new interval)."""
        for t in (self.loss_sum, self.tokens, self.samples):
            t.zero_()

    def overall_loss(self) -> float:
        """Token-weighted mean loss over all sources (NaN if no tokens)."""
        total = float(self.tokens.sum())
        return float(self.loss_sum.sum()) / total if total > 0 else math.nan

    def per_source_loss(self, names: Sequence[str]) -> dict[str, float | None]:
        """Mean loss per source name; None for sources with no tokens in the interval."""
        return {
            n: (float(self.loss_sum[k] / self.tokens[k]) if self.tokens[k] > 0 else None)
            for k, n in enumerate(names)
        }

    def token_share(self, names: Sequence[str]) -> dict[str, float]:
        """Fraction of loss tokens per source (the weights that make per-source losses add up)."""
        total = float(self.tokens.sum())
        return {n: (float(self.tokens[k]) / total if total else 0.0) for k, n in enumerate(names)}

    def realized_mix(self, names: Sequence[str]) -> dict[str, float]:
        """Fraction of samples per source in the interval."""
        total = float(self.samples.sum())
        return {n: (float(self.samples[k]) / total if total else 0.0) for k, n in enumerate(names)}


def scheduled_mix(schedule, start: int, end: int, num_samples: int) -> dict[str, float]:
    """Mean scheduled weight per source over global sample positions [start, end)."""
    if end <= start:
        return {n: 0.0 for n in schedule.names}
    # Evaluating at up to 64 evenly spaced positions is exact enough for a log line.
    positions = np.linspace(start, end - 1, num=min(64, end - start)).astype(np.int64)
    weights = np.asarray(schedule.weights_at(positions, num_samples)).mean(axis=0)
    return {n: float(w) for n, w in zip(schedule.names, weights)}


class MetricsLogger:
    """Rank 0's reporting: one console line, one JSON line and one wandb row per interval.

    The JSON-lines file (``--metrics-file``, default ``<save>/metrics.jsonl``) is what
    tools/plot_training.py reads. On resume, records after the resumed iteration (written by
    the run that crashed) are dropped first, so the file always holds one continuous curve.
    """

    def __init__(self, job, names: Sequence[str], is_writer: bool, resumed_iteration: int) -> None:
        self.names = list(names)
        self.is_writer = is_writer
        self.records: list = []
        self.path = job.logging.metrics_file or (
            os.path.join(job.checkpoint.save, "metrics.jsonl") if job.checkpoint.save else None
        )
        self._wandb = None
        if not is_writer:
            return
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            _truncate_after(self.path, resumed_iteration)
        if job.logging.wandb_project and job.logging.wandb_mode != "disabled":
            import wandb  # optional: only imported when asked for

            self._wandb = wandb.init(
                project=job.logging.wandb_project,
                name=job.logging.wandb_exp_name,
                dir=job.logging.wandb_save_dir or job.checkpoint.save,
                mode=job.logging.wandb_mode,
                config=job.to_dict(),
                resume="allow",
            )

    def _emit(self, record: dict) -> None:
        self.records.append(record)
        if not self.is_writer:
            return
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            flat = {}
            for key, value in record.items():
                if isinstance(value, dict):
                    flat.update({f"{key}/{k}": v for k, v in value.items() if v is not None})
                elif value is not None:
                    flat[key] = value
            self._wandb.log(flat, step=record["iteration"])

    def train_record(
        self,
        iteration: int,
        consumed: int,
        stats: SourceStats,
        step,
        timing: StepTiming,
        elapsed: float,
        data_wait: float,
        scheduled: dict[str, float],
        padding: dict | None = None,
    ) -> dict:
        """Record one training interval (``step`` is the interval's last ``StepResult``;
        ``padding`` from :func:`padding_metrics`)."""
        record = {
            "kind": "train",
            "iteration": iteration,
            "consumed_samples": consumed,
            "loss": stats.overall_loss(),
            "source_loss": stats.per_source_loss(self.names),
            "source_token_share": stats.token_share(self.names),
            "realized_mix": stats.realized_mix(self.names),
            "scheduled_mix": scheduled,
            "lr": step.lr,
            "grad_norm": step.grad_norm,
            "tokens_per_s": timing.tokens_per_s,
            "tflops_per_device": timing.tflops_per_device,
            "mfu": timing.mfu,
            "interval_s": elapsed,
            "data_wait_frac": data_wait / max(elapsed, 1e-9),
        }
        if padding is not None:
            record["padding_tokens_per_s"] = timing.padding_tokens_per_s
            record.update(padding)
        self._emit(record)
        if self.is_writer:
            losses = " ".join(
                f"{n} {v:.3f}" for n, v in record["source_loss"].items() if v is not None
            )
            mix = " ".join(
                f"{n} {record['realized_mix'][n]:.2f}/{scheduled.get(n, 0.0):.2f}"
                for n in self.names
            )
            mfu = f" | MFU {timing.mfu:.1%}" if timing.mfu is not None else ""
            if padding is not None and padding["padding_share"] > 0:
                mfu += f" | padding {padding['padding_share']:.1%}"
            logger.info(
                "iter %d | loss %.4f | %s | mix (real/sched) %s | lr %.3g | gnorm %.3g | "
                "%.0f tok/s | %.3g TFLOP/s/dev%s | data wait %.2f%%",
                iteration, record["loss"], losses, mix, step.lr or 0.0, step.grad_norm or 0.0,
                timing.tokens_per_s, timing.tflops_per_device, mfu, 100 * record["data_wait_frac"],
            )  # fmt: skip
        return record

    def eval_record(self, iteration: int, consumed: int, result: dict) -> dict:
        """Record one validation run (``result`` from ``chatflow.train.evaluate``)."""
        record = {"kind": "valid", "iteration": iteration, "consumed_samples": consumed, **result}
        self._emit(record)
        if self.is_writer:
            per = " ".join(
                f"{n} {v:.3f}" for n, v in result["valid_source_loss"].items() if v is not None
            )
            logger.info("iter %d | validation loss %.4f | %s", iteration, result["valid_loss"], per)
        return record

    def close(self) -> None:
        """Finish the wandb run, if any."""
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str) -> list:
    """All records of a metrics.jsonl file (a torn last line from a crash is ignored)."""
    records = []
    with open(path) as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash is always the last one
    return records


def _truncate_after(path: str, iteration: int) -> None:
    """Atomically drop records with ``iteration`` greater than the resumed one."""
    if not os.path.isfile(path):
        return
    kept = [r for r in read_metrics(path) if r.get("iteration", 0) <= iteration]
    with atomic_open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
