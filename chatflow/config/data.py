"""Data section of the config: schedule or shards, tokenizer, validation split, index cache."""

from __future__ import annotations

import os
from dataclasses import dataclass

from chatflow.config._fields import documented, flag


@documented
@dataclass
class DataConfig:
    """Where training samples come from.

    Give either ``data_schedule`` (ChatFlow's YAML schedule: sources and weights that change over
    the run) or ``data_path`` (Megatron's ``w1 prefix1 w2 prefix2 ...``: a constant mix).
    Shard files are checked here, before anything heavy is built, so a typo fails in a second
    instead of after model construction on every rank.
    """

    data_schedule: str | None = flag("--data-schedule", None)
    """Path of the schedule YAML (see examples/chatflow_schedule.yaml)."""

    data_root: str | None = flag("--data-root", None)
    """Directory the schedule's relative shard prefixes resolve against (default: the YAML's
    ``data_root``, else the YAML file's directory)."""

    data_path: list[str] | None = flag("--data-path", None)
    """Constant blend in Megatron's format, used when no schedule file is given."""

    tokenizer_model: str | None = flag("--tokenizer-model", None)
    """LLaMA2-style sentencepiece model; its vocabulary size sizes the embedding."""

    data_cache_path: str | None = flag("--data-cache-path", None)
    """Where the index arrays (.npy) are cached; build them offline with tools/build_index.py."""

    split: str = flag("--split", "99,1")
    """Train,validation[,test] proportions of each source's documents (Megatron's --split); the
    validation share is held out and gives the per-source validation loss."""

    eod_mask_loss: bool = flag("--eod-mask-loss", False)
    """Drop the loss on EOD tokens (Megatron's --eod-mask-loss)."""

    reset_position_ids: bool = flag("--reset-position-ids", False)
    """Restart position ids after each end-of-document token."""

    reset_attention_mask: bool = flag("--reset-attention-mask", False)
    """Prevent attention across document boundaries inside a packed sample."""

    num_workers: int = flag("--num-workers", 2)
    """DataLoader workers per rank; samples are memory-mapped so 2 is plenty."""

    def __post_init__(self) -> None:
        if (self.data_schedule is None) == (not self.data_path):
            raise ValueError("data: give exactly one of --data-schedule or --data-path")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        parts = self.split.replace("/", ",").split(",")
        try:
            shares = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"data.split must be comma-separated numbers, got {self.split!r}")
        if len(shares) not in (1, 2, 3) or any(s < 0 for s in shares) or shares[0] <= 0:
            raise ValueError(
                f"--split must be like '98,2' with a positive train share: {self.split!r}"
            )
        if self.tokenizer_model is not None and not os.path.isfile(self.tokenizer_model):
            raise FileNotFoundError(f"--tokenizer-model: file not found: {self.tokenizer_model}")
        if self.data_schedule is not None and not os.path.isfile(self.data_schedule):
            raise FileNotFoundError(f"--data-schedule: file not found: {self.data_schedule}")
        self.check_shards()

    @property
    def valid_fraction(self) -> float:
        """Fraction of each source's documents held out for validation (from ``split``)."""
        shares = [float(p) for p in self.split.replace("/", ",").split(",")]
        return (shares[1] if len(shares) > 1 else 0.0) / sum(shares)

    def schedule(self):
        """The data schedule: from the YAML file, or a constant one from --data-path."""
        from chatflow.data.schedule import Schedule  # lazy: keeps `import chatflow.config` cheap

        if self.data_schedule is not None:
            return Schedule.from_yaml(self.data_schedule, data_root=self.data_root)
        return Schedule.from_data_path(list(self.data_path))

    def check_shards(self) -> None:
        """Raise FileNotFoundError naming every missing ``.bin``/``.idx`` of every source, and
        :class:`~chatflow.data.shard_meta.ShardMetaError` for a shard whose ``.meta.json``
        names another tokenizer than ``--tokenizer-model``."""
        # lazy, as in schedule(): keeps `import chatflow.config` free of the data package
        from chatflow.data.indexed_dataset import missing_shard_files

        schedule = self.schedule()
        # sorted: this message has always named a shard's .bin before its .idx
        missing = [f for p in schedule.prefixes for f in sorted(missing_shard_files(p))]
        if missing:
            where = f"--data-schedule {self.data_schedule}" if self.data_schedule else "--data-path"
            raise FileNotFoundError(f"{where}: missing shard files: {', '.join(missing)}")
        from chatflow.data.shard_meta import check_training_shards

        # A shard made with another tokenizer would train on wrong ids without any error.
        check_training_shards(list(schedule.prefixes), self.tokenizer_model)
