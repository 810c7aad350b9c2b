"""The packed-sample oracle under TP=2 and PP=2 over gloo: in each layout, the loss of every
document of a packed sample (with its document mask) equals that of the document run alone.

Both runs use the same model of the layout, so no weights need moving between layouts; the loss is
read through ``engine.eval_step`` (so through the pipeline schedule with PP=2), one document's
loss tokens at a time (fp32, 1e-5).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _trainer_helpers import free_port
from test_packed_dataset import write_conversations

pytestmark = [pytest.mark.dist, pytest.mark.slow]

SEQ, VOCAB = 48, 512
LAYOUTS = {"tp2": dict(tensor_model_parallel_size=2), "pp2": dict(pipeline_model_parallel_size=2)}


def _batches(ds, docs):
    """(packed batch, alone batch) pairs: one pair per document piece that has loss tokens."""
    pairs = []
    for i in range(8):
        s = ds[i]
        at = 0
        for d, start, n in ds.bin_pieces(i):
            k = min(n - 1, SEQ - at)  # label positions of this piece inside the sample
            piece_mask = s["loss_mask"][at : at + k].clone()
            if k > 0 and piece_mask.sum() > 0:
                packed = {key: v[None].clone() for key, v in s.items()}
                packed["loss_mask"] = torch.zeros(1, SEQ)
                packed["loss_mask"][0, at : at + k] = piece_mask
                packed["source_id"] = torch.zeros(1, dtype=torch.int64)
                del packed["num_pad"]
                # Alone: the piece at the start of a causal sample; what follows cannot reach it.
                buf = torch.full((SEQ + 1,), 2, dtype=torch.int64)
                buf[: min(n, SEQ + 1)] = torch.tensor(docs[d][start : start + n])[: SEQ + 1]
                alone = {
                    "tokens": buf[None, :-1], "labels": buf[None, 1:],
                    "position_ids": torch.arange(SEQ)[None], "loss_mask": torch.zeros(1, SEQ),
                    "source_id": torch.zeros(1, dtype=torch.int64),
                }  # fmt: skip
                alone["loss_mask"][0, :k] = piece_mask
                pairs.append((packed, alone))
            at += n
    return pairs


def _run(layout: dict, prefix: str, docs) -> list[list[float]]:
    from chatflow import engine, parallel
    from chatflow.config import ModelConfig, ParallelConfig
    from chatflow.data.source_dataset import SampleOptions, SourceDataset
    from chatflow.model import build_model_chunks

    par = ParallelConfig(**layout)
    parallel.initialize(par, seed=5)
    try:
        model = ModelConfig.from_preset("tiny", VOCAB, num_layers=4, seq_length=SEQ)
        chunks = build_model_chunks(model, par, use_te=False)
        ds = SourceDataset(prefix, 8, SampleOptions(seq_length=SEQ), seed=1)
        kw = dict(num_microbatches=1, micro_batch_size=1, seq_length=SEQ, num_sources=1)
        out = []
        for packed, alone in _batches(ds, docs):
            a = engine.eval_step(chunks, iter([packed]), **kw)
            b = engine.eval_step(chunks, iter([alone]), **kw)
            out.append([float(a.source_loss_sum[0]), float(b.source_loss_sum[0])])
        return out
    finally:
        parallel.destroy(process_group=False)


def _worker(rank: int, port: int, prefix: str, docs, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    import megatron_patches

    megatron_patches.apply(cuda_available=False)
    results = {name: _run(layout, prefix, docs) for name, layout in LAYOUTS.items()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def test_packed_losses_equal_each_document_alone_under_tp2_and_pp2(tmp_path):
    prefix = str(tmp_path / "chat")
    docs, _ = write_conversations(prefix, np.random.RandomState(0), 40, max_turns=3, max_len=12)
    mp.spawn(_worker, args=(free_port(), prefix, docs, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name in LAYOUTS:
            pairs = results[name]
            assert len(pairs) >= 8, name
            for packed, alone in pairs:
                assert packed > 0
                assert packed == pytest.approx(alone, rel=1e-6, abs=1e-5), (name, rank)
