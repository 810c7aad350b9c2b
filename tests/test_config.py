"""Config sections and the command line: Megatron flag names, YAML overrides, fail-fast checks."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from chatflow.config.cli import ConfigError, build_parser, dump_config, parse_config
from chatflow.data import IndexedDatasetWriter

pytestmark = pytest.mark.unit

MEGATRON_FLAGS = [
    "--tensor-model-parallel-size", "--pipeline-model-parallel-size",
    "--num-virtual-stages-per-pipeline-rank", "--micro-batch-size", "--global-batch-size",
    "--train-samples", "--seq-length", "--lr", "--min-lr", "--lr-warmup-samples",
    "--lr-decay-style", "--weight-decay", "--clip-grad", "--bf16", "--use-distributed-optimizer",
    "--save", "--load", "--save-interval", "--finetune", "--log-interval", "--eval-interval",
    "--eval-iters", "--data-path", "--tokenizer-model", "--seed", "--recompute-granularity",
    "--num-layers", "--hidden-size", "--num-attention-heads", "--num-query-groups",
    "--exit-interval", "--no-load-optim", "--no-load-rng", "--split", "--data-cache-path",
    "--wandb-project", "--wandb-exp-name",
]  # fmt: skip
CHATFLOW_FLAGS = ["--data-schedule", "--keep-last-checkpoints", "--model-preset", "--config"]


def _write_shard(prefix: str, num_docs: int = 4) -> str:
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for d in range(num_docs):
            writer.add_document(np.arange(1, 20 + d, dtype=np.uint16))
    return prefix


@pytest.fixture
def shard(tmp_path) -> str:
    return _write_shard(str(tmp_path / "en_text_document"))


def _argv(shard: str, *extra: str) -> list:
    return ["--model-preset", "tiny", "--vocab-size", "1000", "--data-path", shard, *extra]


def test_flag_names_are_megatrons_and_chatflows():
    option_strings = {s for a in build_parser()._actions for s in a.option_strings}
    missing = [f for f in MEGATRON_FLAGS + CHATFLOW_FLAGS if f not in option_strings]
    assert not missing, f"flags missing from the CLI: {missing}"


def test_command_line_values_reach_sections(shard):
    job = parse_config(
        _argv(
            shard, "--tensor-model-parallel-size", "2", "--micro-batch-size", "2",
            "--global-batch-size", "16", "--lr", "1e-3", "--bf16", "--seq-length", "64",
            "--no-load-optim", "--save", "/tmp/x", "--keep-last-checkpoints", "5",
        ),
        world_size=4,
    )  # fmt: skip
    assert job.parallel.tensor_model_parallel_size == 2
    assert job.train.micro_batch_size == 2 and job.train.global_batch_size == 16
    assert job.train.num_microbatches(job.parallel.data_parallel_size(4)) == 4
    assert job.optim.lr == 1e-3 and job.optim.bf16 is True
    assert job.model.seq_length == 64 and job.model.num_layers == 4  # preset + override
    assert job.model.vocab_size == 1000
    assert job.checkpoint.no_load_optim and job.checkpoint.keep_last_checkpoints == 5
    assert job.data.data_path == [shard]


def test_vocab_size_is_read_from_the_tokenizer(shard):
    import sentencepiece

    path = "examples/tokenizer/chatflow_demo.model"
    job = parse_config(
        ["--model-preset", "tiny", "--tokenizer-model", path, "--data-path", shard], world_size=1
    )
    expected = sentencepiece.SentencePieceProcessor(model_file=path).vocab_size()
    assert job.model.vocab_size == expected


def test_config_file_then_command_line_overrides(shard, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "vocab_size": 1000},
                "train": {"micro_batch_size": 4, "global_batch_size": 32, "seed": 7},
                "optim": {"lr": 0.01, "bf16": True},
                "data": {"data_path": [shard]},
            }
        )
    )
    job = parse_config(["--config", str(path), "--lr", "0.02", "--no-bf16"], world_size=1)
    assert job.train.micro_batch_size == 4 and job.train.seed == 7  # from the file
    assert job.optim.lr == 0.02 and job.optim.bf16 is False  # command line wins
    # The dumped effective config re-loads to the same values.
    dumped = tmp_path / "effective.yaml"
    dump_config(job, str(dumped))
    again = parse_config(["--config", str(dumped)], world_size=1)
    assert again.to_dict() == job.to_dict()


def test_config_file_unknown_field_names_file_and_key(shard, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"micro_batch_sise": 4}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.micro_batch_sise"):
        parse_config(_argv(shard, "--config", str(path)), world_size=1)


def test_heads_not_divisible_by_tp_fails_fast(shard):
    # tiny: 4 heads, 2 KV groups; TP=3 divides neither.
    with pytest.raises(ConfigError, match=r"num_attention_heads=4.*tensor.model.parallel.size=3"):
        parse_config(_argv(shard, "--tensor-model-parallel-size", "3"), world_size=3)


def test_global_batch_not_divisible_by_micro_times_dp(shard):
    with pytest.raises(ConfigError, match=r"--global-batch-size 12.*--micro-batch-size 2.*8"):
        parse_config(
            _argv(shard, "--micro-batch-size", "2", "--global-batch-size", "12"), world_size=4
        )
    # The same batch is fine with DP = 2.
    parse_config(_argv(shard, "--micro-batch-size", "2", "--global-batch-size", "12"), world_size=2)


def test_world_not_divisible_by_model_parallel(shard):
    with pytest.raises(ConfigError, match="not divisible"):
        parse_config(_argv(shard, "--pipeline-model-parallel-size", "2"), world_size=3)


def test_missing_shards_name_the_files(tmp_path):
    prefix = str(tmp_path / "zh_text_document")
    with pytest.raises(ConfigError, match=r"zh_text_document\.bin.*zh_text_document\.idx"):
        parse_config(_argv(prefix), world_size=1)
    # Only the .idx missing: the message names exactly that file.
    _write_shard(prefix)
    (tmp_path / "zh_text_document.idx").unlink()
    with pytest.raises(ConfigError, match=r"missing shard files: .*zh_text_document\.idx$"):
        parse_config(_argv(prefix), world_size=1)


def test_missing_schedule_file(tmp_path):
    argv = ["--model-preset", "tiny", "--vocab-size", "100", "--data-schedule", "nope.yaml"]
    with pytest.raises(ConfigError, match=r"--data-schedule: file not found: nope\.yaml"):
        parse_config(argv, world_size=1)


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--micro-batch-size", "0"], "micro_batch_size must be > 0"),
        (["--global-batch-size", "6", "--micro-batch-size", "4"], "not divisible"),
        (["--train-samples", "4", "--global-batch-size", "8"], "smaller than one global batch"),
        (["--keep-last-checkpoints", "-1"], "--keep-last-checkpoints"),
        (["--finetune"], "--finetune needs --load"),
        (["--save-interval", "5"], "--save-interval is set but --save"),
        (["--log-interval", "0"], "--log-interval"),
        (["--ckpt-optim-sharding-type", "bogus"], "--ckpt-optim-sharding-type"),
        (["--lr-decay-style", "bogus"], "lr_decay_style.*--lr-decay-style"),
    ],
)
def test_invalid_settings_fail_with_clear_messages(shard, extra, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(_argv(shard, *extra), world_size=1)
