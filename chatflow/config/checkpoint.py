"""Checkpoint section of the config: where and how often to save, what to load."""

from __future__ import annotations

from dataclasses import dataclass

from chatflow.config._fields import documented, flag

SHARDING_TYPES = ("dp_reshardable", "fully_reshardable")


@documented
@dataclass
class CheckpointConfig:
    """Saving and loading of megatron-core distributed checkpoints.

    Layout under ``save``: ``iter_0000100/`` (one dist-checkpoint per saved iteration), a
    ``latest_checkpointed_iteration.txt`` tracker naming the newest complete one, and
    ``metrics.jsonl``. A save is written to ``iter_XXXXXXX.tmp`` and renamed only when complete,
    so a crash mid-save leaves the previous checkpoint as the one that loads.
    """

    save: str | None = flag("--save", None)
    """Checkpoint directory (also receives metrics.jsonl); None disables saving."""

    load: str | None = flag("--load", None)
    """Checkpoint directory to start from while ``save`` holds none (``save`` wins once it has
    one, so a restarted job resumes itself)."""

    save_interval: int = flag("--save-interval", 0)
    """Save every this many iterations; the final iteration is always saved when --save is set."""

    keep_last_checkpoints: int = flag("--keep-last-checkpoints", 3)
    """How many complete checkpoints to keep; older ones are deleted after a successful save."""

    finetune: bool = flag("--finetune", False)
    """Start a new run from --load's weights only: iteration, optimizer, LR schedule and data
    restart (e.g. from a converted LLaMA2 checkpoint)."""

    no_load_optim: bool = flag("--no-load-optim", False)
    """Resume with fresh Adam moments (the LR schedule continues at the consumed samples)."""

    no_load_rng: bool = flag("--no-load-rng", False)
    """Skip python/numpy/torch and model-parallel RNG states when resuming."""

    ckpt_optim_sharding_type: str = flag("--ckpt-optim-sharding-type", "fully_reshardable")
    """``fully_reshardable`` loads into any TP/PP/DP layout; ``dp_reshardable`` saves faster."""

    def __post_init__(self) -> None:
        if self.save_interval < 0:
            raise ValueError(f"--save-interval must be >= 0, got {self.save_interval}")
        if self.keep_last_checkpoints < 0:
            raise ValueError(
                f"--keep-last-checkpoints must be >= 0, got {self.keep_last_checkpoints}"
            )
        if self.ckpt_optim_sharding_type not in SHARDING_TYPES:
            raise ValueError(
                f"--ckpt-optim-sharding-type must be one of {SHARDING_TYPES}, "
                f"got {self.ckpt_optim_sharding_type!r}"
            )
        if self.finetune and self.load is None:
            raise ValueError("--finetune needs --load (the weights to start from)")
        if self.save_interval and self.save is None:
            raise ValueError("--save-interval is set but --save (the directory) is not")
