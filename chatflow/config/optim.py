"""Optimizer, learning-rate schedule and precision."""

from __future__ import annotations

from dataclasses import dataclass

from chatflow.config._fields import documented, flag, require

LR_DECAY_STYLES = ("cosine", "linear", "constant")


@documented
@dataclass
class OptimizerConfig:
    """AdamW with decoupled weight decay, warmup then decay (in samples), bf16 + fp32 master."""

    lr: float = flag("--lr", 3e-4)
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = flag("--min-lr", 3e-5)
    """Learning rate at the end of the decay (and after it)."""
    lr_warmup_samples: int = flag("--lr-warmup-samples", 0)
    """Samples of linear warmup from 0 to lr."""
    lr_decay_samples: int | None = flag("--lr-decay-samples", None)
    """Samples from the start until the decay reaches min_lr; None means the whole run."""
    lr_decay_style: str = flag("--lr-decay-style", "cosine")
    """Decay after warmup: 'cosine', 'linear' or 'constant'."""
    weight_decay: float = flag("--weight-decay", 0.1)
    """Decoupled weight decay on matrices (norm weights and biases are not decayed)."""
    adam_beta1: float = flag("--adam-beta1", 0.9)
    """Adam beta1."""
    adam_beta2: float = flag("--adam-beta2", 0.95)
    """Adam beta2 (LLaMA2: 0.95)."""
    adam_eps: float = flag("--adam-eps", 1e-5)
    """Adam epsilon (LLaMA2: 1e-5)."""
    clip_grad: float = flag("--clip-grad", 1.0)
    """Clip the global gradient L2 norm to this value; 0 disables clipping."""
    bf16: bool = flag("--bf16", False)
    """bf16 weights and activations with fp32 main weights, fp32 gradient reduction."""

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}]")
        require(self.lr_warmup_samples >= 0, "lr_warmup_samples", "must be >= 0")
        if self.lr_decay_samples is not None:
            require(
                self.lr_decay_samples > self.lr_warmup_samples,
                "lr_decay_samples",
                f"{self.lr_decay_samples} must exceed lr_warmup_samples={self.lr_warmup_samples}",
            )
        require(
            self.lr_decay_style in LR_DECAY_STYLES,
            "lr_decay_style",
            f"must be one of {LR_DECAY_STYLES}, got {self.lr_decay_style!r}",
        )
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            require(0 <= getattr(self, name) < 1, name, "must be in [0, 1)")
        require(self.adam_eps > 0, "adam_eps", "must be positive")
        require(self.clip_grad >= 0, "clip_grad", "must be >= 0 (0 disables clipping)")
