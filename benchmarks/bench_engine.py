"""Engine throughput of the tiny preset per parallel layout (synthetic data, CPU or GPU).

Run:  torchrun --nproc-per-node 2 benchmarks/bench_engine.py --layout tp2
      python benchmarks/bench_engine.py --layout single
Prints one line per layout: tokens/s (global), step time, share of step time waiting for data.
"""

from __future__ import annotations

import argparse
import time

import torch

import megatron_patches
from chatflow import engine, parallel
from chatflow.config import ModelConfig, OptimizerConfig, ParallelConfig
from chatflow.model import build_model_chunks

LAYOUTS = {
    "single": {},
    "dp2": dict(),
    "dp2_distopt": dict(use_distributed_optimizer=True),
    "tp2": dict(tensor_model_parallel_size=2),
    "pp2": dict(pipeline_model_parallel_size=2),
    "pp2_vpp2": dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
}


def batches(mbs: int, seq: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    while True:
        t = torch.randint(0, vocab, (mbs, seq + 1), generator=g)
        yield {
            "tokens": t[:, :-1],
            "labels": t[:, 1:],
            "loss_mask": torch.ones(mbs, seq),
            "position_ids": torch.arange(seq).expand(mbs, seq),
            "source_id": torch.zeros(mbs, dtype=torch.long),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=sorted(LAYOUTS), required=True)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--global-batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    megatron_patches.apply()
    model = ModelConfig.from_preset("tiny", args.vocab)
    par = ParallelConfig(**LAYOUTS[args.layout])
    info = parallel.initialize(par, seed=1)
    optim = OptimizerConfig(bf16=args.bf16)
    chunks = build_model_chunks(model, par, bf16=args.bf16)
    optimizer = engine.build_optimizer(chunks, optim, par)
    scheduler = engine.build_scheduler(optimizer, optim, train_samples=10**6)
    n_micro = args.global_batch_size // (args.micro_batch_size * info.data_parallel_size)
    data = batches(args.micro_batch_size, model.seq_length, args.vocab)
    kw = dict(num_microbatches=n_micro, micro_batch_size=args.micro_batch_size,
              seq_length=model.seq_length, num_sources=1)  # fmt: skip
    engine.train_step(chunks, optimizer, scheduler, data, **kw)  # warm-up
    wait, start = 0.0, time.perf_counter()
    for _ in range(args.steps):
        result = engine.train_step(chunks, optimizer, scheduler, data, **kw)
        wait += result.data_wait_s
    elapsed = time.perf_counter() - start
    tokens = args.steps * args.global_batch_size * model.seq_length
    if info.rank == 0:
        print(
            f"{args.layout:12s} {'bf16' if args.bf16 else 'fp32'} world={info.world_size} "
            f"tokens/s={tokens / elapsed:8.0f} "
            f"step={elapsed / args.steps:.3f}s data_wait={100 * wait / elapsed:.2f}% "
            f"loss={result.loss:.4f}"
        )
    parallel.destroy()


if __name__ == "__main__":
    main()
