"""End to end: examples/pretrain_chatflow.sh (CPU mode) -> torchrun -> 2 x `python -m
chatflow.train` on real shards with a shifting schedule; checks the metrics file, per-source
losses, the realized mix, validation, the checkpoint and the training plot."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from _trainer_helpers import REPO, TINY_MODEL, free_port, write_corpus

from chatflow.checkpointing import complete_checkpoints, read_tracker
from chatflow.metrics import read_metrics

GLOBAL_BATCH, ITERS = 8, 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    schedule = write_corpus(str(root / "data"))
    save = str(root / "ckpt")
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],  # torchrun
        "PYTHONPATH": REPO,
        "DEVICE": "cpu", "NPROC": "2", "MASTER_PORT": str(free_port()),
        "DATA_SCHEDULE": schedule, "CHECKPOINT_DIR": save,
        "TOKENIZER_MODEL": os.path.join(REPO, "examples/tokenizer/chatflow_demo.model"),
        "MICRO_BATCH": "2", "GLOBAL_BATCH": str(GLOBAL_BATCH),
        "TRAIN_SAMPLES": str(GLOBAL_BATCH * ITERS), "WARMUP_SAMPLES": "16",
        "LOG_INTERVAL": "1", "SAVE_INTERVAL": "4", "EVAL_INTERVAL": "4", "EVAL_ITERS": "1",
    }  # fmt: skip
    extra = [*TINY_MODEL, "--num-workers", "1", "--split", "90,10",
             "--data-cache-path", str(root / "cache")]  # fmt: skip
    proc = subprocess.run(
        ["bash", "examples/pretrain_chatflow.sh", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return {"proc": proc, "save": save, "root": root}


@pytest.mark.dist
@pytest.mark.slow
def test_run_succeeds_and_logs_per_source_losses(run):
    proc = run["proc"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Console lines name every source and the realized/scheduled mix.
    lines = [line for line in proc.stderr.splitlines() if "chatflow.train: iter" in line]
    assert any("en " in line and "zh " in line and "instruct " in line for line in lines)
    assert any("mix (real/sched)" in line for line in lines)


@pytest.mark.dist
@pytest.mark.slow
def test_metrics_file(run):
    records = read_metrics(os.path.join(run["save"], "metrics.jsonl"))
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["iteration"] for r in train] == list(range(1, ITERS + 1))
    assert [r["iteration"] for r in valid] == [4, 8]
    for r in train:
        # Per-source losses, weighted by their token shares, add up to the overall loss.
        total = sum(
            r["source_token_share"][n] * loss for n, loss in r["source_loss"].items() if loss
        )
        assert total == pytest.approx(r["loss"], rel=1e-12, abs=1e-12)
        # The mix counts whole samples of the global batch (reduced over both DP ranks).
        counts = [share * GLOBAL_BATCH for share in r["realized_mix"].values()]
        assert all(abs(c - round(c)) < 1e-9 for c in counts) and sum(counts) == pytest.approx(8)
        assert sum(r["scheduled_mix"].values()) == pytest.approx(1.0)
        assert r["tokens_per_s"] > 0 and r["tflops_per_device"] > 0
        assert 0 <= r["data_wait_frac"] < 1 and math.isfinite(r["grad_norm"])
        assert r["mfu"] is None  # no known peak for a CPU
        # The instruct source (a loss-mask shard) is packed by conversation: padded, counted.
        assert r["source_padding_share"]["en"] in (0.0, None)
        assert set(r["source_truncations"]) == {"instruct"} and 0 <= r["padding_share"] < 1
        assert r["padding_tokens_per_s"] >= 0
    # The schedule shifts from en toward instruct: so does the scheduled mix logged.
    assert train[-1]["scheduled_mix"]["instruct"] > train[0]["scheduled_mix"]["instruct"]
    assert train[-1]["scheduled_mix"]["en"] < train[0]["scheduled_mix"]["en"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert any((r["source_padding_share"]["instruct"] or 0) > 0 for r in train)
    assert train[2]["lr"] == pytest.approx(3e-3)  # end of the 16-sample warmup (CPU mode LR)
    for r in valid:
        assert set(r["valid_source_loss"]) == {"en", "zh", "instruct"}
        assert all(v is not None and v > 0 for v in r["valid_source_loss"].values())
    assert valid[1]["valid_loss"] < valid[0]["valid_loss"]


@pytest.mark.dist
@pytest.mark.slow
def test_checkpoint_written(run):
    assert read_tracker(run["save"]) == ITERS
    assert complete_checkpoints(run["save"]) == [4, 8]
    assert os.path.isfile(os.path.join(run["save"], "config.yaml"))


@pytest.mark.dist
@pytest.mark.slow
def test_plot_training(run):
    png = str(run["root"] / "training.png")
    proc = subprocess.run(
        [sys.executable, "tools/plot_training.py", "--metrics",
         os.path.join(run["save"], "metrics.jsonl"), "--output", png],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.dist
def test_bad_settings_fail_before_starting(tmp_path):
    """A missing shard stops `python -m chatflow.train` with the file name, before any
    process group or model is built."""
    proc = subprocess.run(
        [sys.executable, "-m", "chatflow.train", *TINY_MODEL, "--device", "cpu",
         "--data-path", str(tmp_path / "nope_document")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "missing shard files" in proc.stderr and "nope_document.bin" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.unit
def test_source_stats_and_throughput_math():
    import torch

    from chatflow.metrics import SourceStats, peak_tflops_for_device, throughput

    stats = SourceStats(3)
    t = torch.tensor
    stats.add(t([10.0, 0.0, 6.0]), t([5.0, 0.0, 2.0]), t([1, 0, 1]))  # loss sums, tokens, samples
    stats.add(t([2.0, 0.0, 0.0]), t([1.0, 0.0, 0.0]), t([1, 0, 0]))
    names = ["a", "b", "c"]
    assert stats.per_source_loss(names) == {"a": 2.0, "b": None, "c": 3.0}
    assert stats.overall_loss() == pytest.approx(18.0 / 8.0)
    assert stats.realized_mix(names) == {"a": 2 / 3, "b": 0.0, "c": 1 / 3}
    t = throughput(tokens=4096, seconds=2.0, flops_per_token=1e9, world_size=2, peak_tflops=1.0)
    assert t.tokens_per_s == 2048 and t.tflops_per_device == pytest.approx(1.024)
    assert t.mfu == pytest.approx(1.024)
    assert peak_tflops_for_device("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_for_device("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_for_device("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_for_device("cpu") is None


@pytest.mark.unit
def test_llama2_7b_flops_per_token_formula():
    from chatflow.config.model import ModelConfig

    m = ModelConfig.from_preset("7b", vocab_size=32000, seq_length=2048)
    h, s, f, L, V = 4096, 2048, 11008, 32, 32000
    layer = 2 * h * (h + 2 * h) + 4 * s * h + 2 * h * h + 6 * h * f  # q,k,v; attn; proj; SwiGLU
    expected = 3 * (L * layer + 2 * h * V)
    # The config's 6 x params + 12 L h s also counts the (tiny) norm weights.
    assert m.flops_per_token() == pytest.approx(expected, rel=1e-4)


@pytest.mark.unit
def test_metrics_file_truncated_on_resume(tmp_path):
    from chatflow.metrics import _truncate_after, read_metrics

    path = tmp_path / "metrics.jsonl"
    lines = "".join(f'{{"kind": "train", "iteration": {i}}}\n' for i in range(1, 7))
    path.write_text(lines + '{"ki')
    _truncate_after(str(path), 4)  # a crash left iterations 5, 6 and a torn line
    assert [r["iteration"] for r in read_metrics(str(path))] == [1, 2, 3, 4]
