"""Training-loop section of the config: batch sizes, run length, seeds, evaluation cadence."""

from __future__ import annotations

from dataclasses import dataclass

from chatflow.config._fields import documented, flag


@documented
@dataclass
class TrainConfig:
    """How long to train and how samples are grouped into steps.

    One optimizer step consumes ``global_batch_size`` samples, split into micro-batches of
    ``micro_batch_size`` per data-parallel rank; the number of micro-batches per step (gradient
    accumulation) is ``global_batch_size / (micro_batch_size * data_parallel_size)``.
    """

    micro_batch_size: int = flag("--micro-batch-size", 1)
    """Samples per forward/backward pass on one data-parallel rank."""

    global_batch_size: int = flag("--global-batch-size", 8)
    """Samples per optimizer step over all data-parallel ranks."""

    train_samples: int = flag("--train-samples", 1024)
    """Run length in samples; the data schedule and LR schedule are defined over it."""

    exit_interval: int | None = flag("--exit-interval", None)
    """Stop early at this iteration, e.g. to fit a job in a scheduler slot; resume continues."""

    exit_signal_handler: bool = flag("--exit-signal-handler", False)
    """On SIGTERM (e.g. a scheduler's preemption notice), finish the step, save and exit 0."""

    seed: int = flag("--seed", 1234)
    """Base seed for python/numpy/torch and the per-TP-rank model-parallel RNG streams."""

    eval_interval: int = flag("--eval-interval", 0)
    """Run validation every this many iterations; 0 disables it."""

    eval_iters: int = flag("--eval-iters", 2)
    """Global batches of held-out data evaluated per validation run."""

    device: str = flag("--device", "auto")
    """Where to train. ``cpu`` uses gloo and megatron-core's CPU patches."""

    def __post_init__(self) -> None:
        for name in ("micro_batch_size", "global_batch_size", "train_samples", "eval_iters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.eval_interval < 0:
            raise ValueError(f"train.eval_interval must be >= 0, got {self.eval_interval}")
        if self.exit_interval is not None and self.exit_interval <= 0:
            raise ValueError(f"train.exit_interval must be > 0, got {self.exit_interval}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"--global-batch-size {self.global_batch_size} is not divisible by "
                f"--micro-batch-size {self.micro_batch_size}"
            )
        if self.train_samples < self.global_batch_size:
            raise ValueError(
                f"--train-samples {self.train_samples} is smaller than one global batch "
                f"({self.global_batch_size})"
            )
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"train.device must be auto, cuda or cpu, got {self.device!r}")

    @property
    def train_iters(self) -> int:
        """Optimizer steps in the run (the last partial global batch is dropped)."""
        return self.train_samples // self.global_batch_size

    def num_microbatches(self, data_parallel_size: int) -> int:
        """Micro-batches per DP rank per step; raises if the batch does not split evenly."""
        per_step = self.micro_batch_size * data_parallel_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"--global-batch-size {self.global_batch_size} is not divisible by "
                f"--micro-batch-size {self.micro_batch_size} x data-parallel size "
                f"{data_parallel_size} = {per_step}"
            )
        return self.global_batch_size // per_step
