"""Logging section of the config: console cadence, metrics file, wandb, MFU reference."""

from __future__ import annotations

from dataclasses import dataclass

from chatflow.config._fields import documented, flag

WANDB_MODES = ("offline", "online", "disabled")


@documented
@dataclass
class LoggingConfig:
    """What the trainer reports and where.

    Every ``log_interval`` iterations rank 0 logs one line to the console (``logging``) and
    appends one JSON object to ``<save>/metrics.jsonl`` (or ``metrics_file``), and optionally to
    wandb. wandb runs offline unless ``wandb_mode`` is ``online``: training never needs network.
    """

    log_interval: int = flag("--log-interval", 10)
    """Log (console, metrics file, wandb) every this many iterations."""

    metrics_file: str | None = flag("--metrics-file", None)
    """Where metrics are appended as one JSON object per log interval; None: beside --save."""

    wandb_project: str | None = flag("--wandb-project", None)
    """wandb project; None disables wandb."""

    wandb_exp_name: str | None = flag("--wandb-exp-name", None)
    """wandb run name (default: wandb's generated name)."""

    wandb_save_dir: str | None = flag("--wandb-save-dir", None)
    """Directory for wandb's local files."""

    wandb_mode: str = flag("--wandb-mode", "offline")
    """wandb mode; offline so that a run on a cluster without internet never blocks."""

    peak_tflops: float | None = flag("--peak-tflops", None)
    """Peak TFLOP/s of one device in the training dtype; None looks it up by device name."""

    log_level: str = flag("--log-level", "INFO")
    """Level of the ``chatflow`` loggers on rank 0 (other ranks log warnings only)."""

    def __post_init__(self) -> None:
        if self.log_interval <= 0:
            raise ValueError(f"--log-interval must be > 0, got {self.log_interval}")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"--wandb-mode must be one of {WANDB_MODES}, got {self.wandb_mode!r}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"--peak-tflops must be > 0, got {self.peak_tflops}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"--log-level must be DEBUG, INFO, WARNING or ERROR: {self.log_level}")
        self.log_level = self.log_level.upper()
