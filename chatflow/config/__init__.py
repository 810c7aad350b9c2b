"""Typed configuration sections. Each field carries ``metadata={"flag", "help"}`` for the CLI."""

from chatflow.config.model import PRESETS, ModelConfig
from chatflow.config.optim import OptimizerConfig
from chatflow.config.parallel import ParallelConfig

__all__ = ["PRESETS", "ModelConfig", "OptimizerConfig", "ParallelConfig"]
