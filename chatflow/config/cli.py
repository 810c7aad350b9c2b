"""Command line and YAML config file -> typed config sections.

Every field that carries ``metadata={"flag": "--name", "help": ...}`` becomes a command-line flag
(Megatron's name where the concept is the same). ``--config run.yaml`` loads a file whose top-level
keys are section names and whose entries are field names::

    train: {micro_batch_size: 1, global_batch_size: 512}
    parallel: {tensor_model_parallel_size: 2}

Precedence: dataclass defaults < config file < command line. Each section is then constructed,
so its ``__post_init__`` validates it, and finally the cross-section checks of ``JobConfig`` run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from chatflow.config.checkpoint import CheckpointConfig
from chatflow.config.data import DataConfig
from chatflow.config.logging import LoggingConfig
from chatflow.config.model import ModelConfig
from chatflow.config.optim import OptimizerConfig
from chatflow.config.parallel import ParallelConfig
from chatflow.config.train import TrainConfig
from chatflow.fileio import atomic_open


def _section_classes() -> dict[str, type]:
    return {
        "model": ModelConfig,
        "parallel": ParallelConfig,
        "optim": OptimizerConfig,
        "train": TrainConfig,
        "data": DataConfig,
        "checkpoint": CheckpointConfig,
        "logging": LoggingConfig,
    }


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag, field or file."""


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for ``Optional[X]`` / ``X | None``; (tp, False) otherwise."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _add_field(group: argparse._ArgumentGroup, section: str, f: dataclasses.Field, tp: Any) -> None:
    meta = f.metadata
    flags = [meta["flag"], *meta.get("aliases", [])]
    kwargs: dict[str, Any] = {
        "dest": f"{section}.{f.name}",
        "default": argparse.SUPPRESS,  # only flags actually given override the file/defaults
        "help": meta.get("help", ""),
    }
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        # --bf16 / --no-bf16; a flag that is already negative (--no-load-optim) only sets True.
        negative = meta["flag"].startswith("--no-")
        kwargs["action"] = "store_true" if negative else argparse.BooleanOptionalAction
    elif origin in (list, list, tuple, Sequence):
        (elem,) = typing.get_args(inner)[:1] or (str,)
        kwargs.update(nargs="+", type=elem)
    else:
        kwargs["type"] = inner if inner in (int, float, str) else str
    if inner is not bool:
        kwargs["metavar"] = f.name.upper()
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    group.add_argument(*flags, **kwargs)


def build_parser(sections: Mapping[str, type] | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one group per config section and ``--config FILE``."""
    sections = sections or _section_classes()
    parser = argparse.ArgumentParser(
        prog="python -m chatflow.train",
        description="ChatFlow: continued pretraining of LLaMA2 on megatron-core.",
    )
    parser.add_argument("--config", help="YAML file of settings ({section: {field: value}}).")
    parser.add_argument(
        "--model-preset",
        help="LLaMA2 shape to start from: 7b, 13b, 70b or tiny; other model flags override it. "
        "The vocabulary size comes from --tokenizer-model unless --vocab-size is given.",
    )
    for name, cls in sections.items():
        group = parser.add_argument_group(name, (cls.__doc__ or "").strip().split("\n")[0])
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "flag" in f.metadata:
                _add_field(group, name, f, hints[f.name])
    return parser


def _read_yaml(path: str, sections: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file not found: {path}")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of section names")
    out: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section {section!r} (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
        known = {f.name for f in dataclasses.fields(sections[section])}
        if section == "model":
            known.add("preset")  # model: {preset: 7b, ...}, like --model-preset
        for key in values:
            if key not in known:
                raise ConfigError(f"{path}: unknown field {section}.{key}")
        out[section] = dict(values)
    return out


def parse_config(
    argv: Sequence[str] | None = None,
    world_size: int | None = None,
    sections: Mapping[str, type] | None = None,
) -> JobConfig:
    """Parse ``argv`` (and ``--config``) into a validated ``JobConfig``.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        world_size: number of ranks, for the layout checks (default ``$WORLD_SIZE`` or 1).
        sections: section classes to use (tests); default all of ChatFlow's.

    Raises:
        ConfigError: naming the flag/field/file that is wrong.
    """
    sections = dict(sections or _section_classes())
    args = vars(build_parser(sections).parse_args(argv))
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}
    if args.get("config"):
        for name, entries in _read_yaml(args["config"], sections).items():
            values[name].update(entries)
    for dest, value in args.items():
        if "." in dest:
            section, key = dest.split(".", 1)
            values[section][key] = value
    preset = args.get("model_preset") or values["model"].pop("preset", None)
    values["model"].pop("preset", None)
    built = {}
    for name, cls in sections.items():
        try:
            if name == "model":
                built[name] = _build_model(cls, preset, values["model"], values["data"])
            else:
                built[name] = cls(**values[name])
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise ConfigError(f"invalid {name} settings: {_with_flag(str(e), cls)}") from e
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    job = JobConfig(**built)
    job.validate(world_size)
    return job


def _with_flag(message: str, cls: type) -> str:
    """Append the flag of the field a ``"<field>: ..."`` message starts with, if it has one."""
    name = message.split(":", 1)[0].strip()
    for f in dataclasses.fields(cls):
        if f.name == name and "flag" in f.metadata:
            return f"{message} ({f.metadata['flag']})"
    return message


def _build_model(cls: type, preset: str | None, values: dict[str, Any], data: dict[str, Any]):
    """ModelConfig from a preset (or explicit shape flags) and the tokenizer's vocabulary."""
    values = dict(values)
    if "vocab_size" not in values and data.get("tokenizer_model"):
        import sentencepiece  # only when the vocabulary must be read from the tokenizer

        path = data["tokenizer_model"]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--tokenizer-model: file not found: {path}")
        values["vocab_size"] = sentencepiece.SentencePieceProcessor(model_file=path).vocab_size()
    if "vocab_size" not in values:
        raise ValueError("vocab_size: give --tokenizer-model or --vocab-size")
    if preset is None:
        return cls(**values)
    return cls.from_preset(preset, **values)


@dataclasses.dataclass
class JobConfig:
    """All sections of one training job."""

    model: ModelConfig
    """Architecture (preset) of the LLaMA model."""
    parallel: ParallelConfig
    """TP/PP/VPP/DP layout and distributed-optimizer options."""
    optim: OptimizerConfig
    """Adam, LR schedule, clipping, bf16."""
    train: TrainConfig
    """Batch sizes, run length, seed, evaluation cadence."""
    data: DataConfig
    """Schedule or shards, tokenizer, validation split."""
    checkpoint: CheckpointConfig
    """Save, load, keep-last-K."""
    logging: LoggingConfig
    """Console, metrics file, wandb."""

    def validate(self, world_size: int) -> None:
        """Cross-section checks that need the world size; raise ConfigError with the flags."""
        try:
            # Heads/groups/FFN divisible by TP, layers by PP x VPP, world by TP x PP.
            self.parallel.validate(self.model, world_size)
        except ValueError as e:
            raise ConfigError(f"invalid parallel layout: {_with_flag(str(e), type(self.parallel))}")
        try:
            self.train.num_microbatches(self.parallel.data_parallel_size(world_size))
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (for metrics headers, wandb config and config.yaml dumps)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}


def dump_config(job: JobConfig, path: str) -> None:
    """Write the effective config as YAML (re-loadable with --config), atomically."""
    with atomic_open(path, "w") as fh:
        yaml.safe_dump(job.to_dict(), fh, sort_keys=False)
