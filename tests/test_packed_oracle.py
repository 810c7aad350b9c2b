"""Correctness oracle for packed samples: per-token losses of a packed sample with its document
mask equal those of running each of its conversations alone through the model (fp32, 1e-5).

Single process (a 1-process gloo group, so ``dist`` tier), megatron-core's local spec on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_packed_dataset import write_conversations

from chatflow.config import ModelConfig, ParallelConfig
from chatflow.data.source_dataset import SampleOptions, SourceDataset

VOCAB = 512


@pytest.mark.dist
def test_packed_losses_equal_each_conversation_alone(single_process, tmp_path):
    from chatflow.model import build_model_chunks

    seq = 64
    rs = np.random.RandomState(0)
    prefix = str(tmp_path / "chat")
    docs, _ = write_conversations(prefix, rs, 40, max_turns=3, max_len=12)
    ds = SourceDataset(prefix, 12, SampleOptions(seq_length=seq), seed=1)
    cfg = ModelConfig.from_preset("tiny", VOCAB, num_layers=2, seq_length=seq)
    torch.manual_seed(0)
    (model,) = build_model_chunks(cfg, ParallelConfig(), wrap_ddp=False, use_te=False)
    model.eval()
    checked = multi = 0
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            packed = model(
                s["tokens"][None], s["position_ids"][None], s["attention_mask"][None],
                labels=s["labels"][None],
            )[0]  # fmt: skip
            pieces = ds.bin_pieces(i)
            multi += len(pieces) > 1
            if len(pieces) > 1 and i < 3:
                # Negative control: without the document mask, later documents see earlier ones.
                leaky = model(
                    s["tokens"][None], s["position_ids"][None], None, labels=s["labels"][None]
                )[0]  # fmt: skip
                first = pieces[0][2]
                assert (leaky[first:] - packed[first:]).abs().max() > 1e-3
            at = 0
            for d, start, n in pieces:
                piece = torch.tensor(docs[d][start : start + n], dtype=torch.int64)
                if n >= 2:
                    alone = model(
                        piece[None, :-1], torch.arange(n - 1)[None], None, labels=piece[None, 1:]
                    )[0]  # fmt: skip
                    # Labels inside the piece: input positions at .. at + n - 2 of the sample.
                    k = min(n - 1, seq - at)
                    torch.testing.assert_close(packed[at : at + k], alone[:k], rtol=0, atol=1e-5)
                    checked += k
                at += n
    assert multi >= 6 and checked > 8 * seq  # several documents per sample, most positions
