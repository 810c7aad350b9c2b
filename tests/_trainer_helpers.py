"""Shared by the trainer tests: tiny real shards, a schedule, and ways to run the trainer.

The corpus is synthetic token ids (the trainer never sees text), written with ChatFlow's own
indexed-dataset writer in Megatron's format: two text sources and one instruction source with a
loss-mask shard, mixed by a schedule that shifts from text to instructions over the run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import yaml

from chatflow.data import IndexedDatasetWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 384

# A tiny LLaMA (GQA, SwiGLU) small enough for 2 CPU processes: ~0.2M parameters.
TINY_MODEL = [
    "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "176",
    "--num-attention-heads", "4", "--num-query-groups", "2", "--vocab-size", str(VOCAB),
    "--seq-length", "32", "--make-vocab-size-divisible-by", "64",
]  # fmt: skip


def write_corpus(root: str, seed: int = 0) -> str:
    """Write 3 sources of shards under ``root`` and a schedule YAML; returns the YAML path."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for name, low, high in (("en", 3, 200), ("zh", 200, VOCAB), ("instruct", 3, VOCAB)):
        prefix = os.path.join(root, f"{name}_document")
        masks = []
        with IndexedDatasetWriter(prefix, np.uint16) as writer:
            for _ in range(60):
                n = int(rng.integers(8, 90))
                # Each source has its own token range and a simple learnable pattern (an
                # arithmetic run), so per-source losses fall at visibly different speeds.
                start = int(rng.integers(low, high))
                body = low + (start - low + np.arange(n) * (1 + (name == "zh"))) % (high - low)
                writer.add_document(np.concatenate([[1], body, [2]]).astype(np.uint16))
                mask = np.ones(n + 2, dtype=np.uint8)
                mask[: n // 2] = 0  # the "prompt" half gives no loss
                masks.append(mask)
        if name == "instruct":
            with IndexedDatasetWriter(prefix + "_loss_mask", np.uint8) as writer:
                for mask in masks:
                    writer.add_document(mask)
    schedule = {
        "sources": [{"name": n, "prefix": f"{n}_document"} for n in ("en", "zh", "instruct")],
        "knots": [
            {"at": 0, "weights": {"en": 0.6, "zh": 0.3, "instruct": 0.1}},
            {"at_fraction": 1.0, "weights": {"en": 0.2, "zh": 0.4, "instruct": 0.4}},
        ],
    }
    path = os.path.join(root, "schedule.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(schedule, fh)
    return path


def trainer_argv(schedule: str, save: str, *extra: str, iters: int = 6) -> list[str]:
    """Flags of a short fp32 CPU run: 8-sample global batches, ``iters`` steps."""
    return [
        *TINY_MODEL, "--device", "cpu", "--data-schedule", schedule,
        "--micro-batch-size", "2", "--global-batch-size", "8",
        "--train-samples", str(8 * iters), "--lr", "3e-3", "--min-lr", "3e-4",
        "--lr-warmup-samples", "16", "--seed", "7", "--log-interval", "1",
        "--num-workers", "0", "--save", save, "--split", "90,10",
        "--data-cache-path", os.path.join(os.path.dirname(schedule), "cache"), *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(
    argv: Sequence[str], nproc: int = 2, env: dict[str, str] | None = None, timeout: int = 240
) -> tuple[int, str, list[str]]:
    """Run ``python -m chatflow.train`` under torchrun.

    Returns:
        (return code, combined output, the job's processes still alive after torchrun exited as
        ``"pid cmdline"``). The last must be empty, also after a SIGKILLed rank: before
        ``megatron_patches.ckpt_results_queue``, megatron-core's checkpoint-writer Manager
        process outlived its rank. Such leftovers are found by a marker in their environment and
        killed, so that none stays running; output goes to a file, not a pipe, so that a
        leftover holding it open is reported here instead of hanging the test.
    """
    import tempfile
    import uuid

    import psutil

    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        "-m", "chatflow.train", *argv,
    ]  # fmt: skip
    marker = uuid.uuid4().hex
    # tests/ too, for the hook modules of fault_env.
    pythonpath = os.pathsep.join([REPO, os.path.join(REPO, "tests")])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath,
                "CHATFLOW_TEST_RUN": marker, **(env or {})}  # fmt: skip
    leftovers = []
    with tempfile.TemporaryFile("w+") as out:
        try:
            code = subprocess.run(
                cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        finally:
            for proc in psutil.process_iter():
                try:
                    if proc.environ().get("CHATFLOW_TEST_RUN") == marker:
                        leftovers.append(f"{proc.pid} {' '.join(proc.cmdline())}")
                        proc.kill()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
        out.seek(0)
        return code, out.read(), leftovers


def fault_env(spec: str) -> dict[str, str]:
    """Environment for :func:`torchrun` that makes the trainer inject the fault ``spec``, e.g.
    ``"kill_in_save:4"`` (tests/_fault_hooks.py lists them)."""
    return {"CHATFLOW_HOOKS": "_fault_hooks", "CHATFLOW_FAULT_INJECT": spec}


def train_losses(metrics_path: str) -> dict[int, float]:
    """{iteration: loss} of the training records of a metrics.jsonl file."""
    out = {}
    with open(metrics_path) as fh:
        for line in fh:
            r = json.loads(line)
            if r["kind"] == "train":
                out[r["iteration"]] = r["loss"]
    return out


def _phase_worker(rank: int, world: int, port: int, phases: list, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    import torch

    torch.set_num_threads(1)
    from chatflow import parallel
    from chatflow.config.cli import parse_config
    from chatflow.train import train

    results = []
    for argv in phases:
        results.append(train(parse_config(argv, world_size=world)))
        parallel.destroy(process_group=False)  # the next phase may use another layout
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(results, fh)
    parallel.destroy()


def run_phases(phases: Sequence[Sequence[str]], out: str, nproc: int = 2) -> list:
    """Run several trainer invocations in turn in one set of ``nproc`` spawned processes.

    Saves the interpreter and megatron-core start-up of one torchrun per invocation; each phase
    re-initialises megatron's parallel state, so phases may use different layouts. Returns rank
    0's metrics records of each phase.
    """
    import torch.multiprocessing as mp

    mp.start_processes(
        _phase_worker, args=(nproc, free_port(), [list(p) for p in phases], out),
        nprocs=nproc, start_method="spawn",
    )  # fmt: skip
    with open(out) as fh:
        return json.load(fh)
