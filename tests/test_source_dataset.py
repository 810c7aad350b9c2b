"""SourceDataset: windows == a token-stream oracle; masks == megatron-core's; splits; masks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from chatflow.data.index_cache import IndexCache
from chatflow.data.indexed_dataset import IndexedDatasetWriter
from chatflow.data.source_dataset import SampleOptions, SourceDataset, make_sample
from chatflow.data.templates import loss_mask_prefix

pytestmark = pytest.mark.unit

BOS, EOS = 1, 2


def doc_tokens(d: int, length: int) -> list[int]:
    """Document d: BOS, body tokens naming the document, EOS (length >= 2), or empty."""
    if length == 0:
        return []
    return [BOS] + [3 + d] * (length - 2) + [EOS]


def write_shard(prefix: str, lengths: list[int], with_mask: bool = False) -> list[list[int]]:
    docs = [doc_tokens(d, n) for d, n in enumerate(lengths)]
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_documents(docs)
    if with_mask:
        with IndexedDatasetWriter(loss_mask_prefix(prefix), np.uint8) as w:
            # Mask 1 on the second half of every document (its "response").
            w.add_documents([[int(i >= len(d) // 2) for i in range(len(d))] for d in docs])
    return docs


LENGTHS = [7, 0, 3, 40, 2, 9, 0, 15, 5, 26, 11, 2]  # empty docs, docs longer than seq_length


def oracle_windows(ds: SourceDataset, docs) -> list[list[int]]:
    """Sample j of the unshuffled order = stream[j*seq : j*seq + seq + 1] of the document order."""
    seq = ds.options.seq_length
    stream = [t for d in ds.document_index.tolist() for t in docs[d]]
    return [stream[j * seq : j * seq + seq + 1] for j in ds.shuffle_index[: len(ds)].tolist()]


def test_samples_match_token_stream_and_re_epoch(tmp_path):
    prefix = str(tmp_path / "src")
    docs = write_shard(prefix, LENGTHS)
    total = sum(LENGTHS)
    opts = SampleOptions(seq_length=8)
    ds = SourceDataset(prefix, 50, opts, seed=3, shuffle_block=7)  # ~3.3 epochs
    assert len(ds) == 50
    n_docs = len(LENGTHS)
    assert len(ds.document_index) >= 3 * n_docs
    for e in range(len(ds.document_index) // n_docs):  # each epoch uses every document once
        assert sorted(ds.document_index[e * n_docs : (e + 1) * n_docs].tolist()) == list(
            range(n_docs)
        )
    want = oracle_windows(ds, docs)
    for i in range(len(ds)):
        s = ds[i]
        assert s["tokens"].dtype == torch.int64 and s["tokens"].shape == (8,)
        assert s["tokens"].tolist() == want[i][:-1]
        assert s["labels"].tolist() == want[i][1:]
        assert s["loss_mask"].dtype == torch.float32 and s["loss_mask"].sum() == 8
        assert s["position_ids"].tolist() == list(range(8))
        assert "attention_mask" not in s
    assert 50 * 8 > 3 * total  # really re-epoched
    with pytest.raises(IndexError, match="out of range"):
        ds[50]


def test_sample_order_is_prefix_stable(tmp_path):
    prefix = str(tmp_path / "src")
    write_shard(prefix, LENGTHS)
    opts = SampleOptions(seq_length=5)
    few = SourceDataset(prefix, 6, opts, seed=1)
    many = SourceDataset(prefix, 90, opts, seed=1)
    for i in range(6):
        assert few[i]["tokens"].tolist() == many[i]["tokens"].tolist()
    other = SourceDataset(prefix, 6, opts, seed=2)
    assert [other[i]["tokens"].tolist() for i in range(6)] != [
        few[i]["tokens"].tolist() for i in range(6)
    ]


@pytest.mark.parametrize(
    "flags", [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]
)
def test_masks_match_megatron_core(tmp_path, flags):
    gpt = pytest.importorskip("megatron.core.datasets.gpt_dataset")
    reset_pos, reset_attn, eod_loss = flags
    opts = SampleOptions(
        seq_length=16,
        eod_id=EOS,
        reset_position_ids=reset_pos,
        reset_attention_mask=reset_attn,
        eod_mask_loss=eod_loss,
    )
    rs = np.random.RandomState(0)
    for _ in range(20):
        window = rs.choice([EOS, 5, 6, 7], size=17, p=[0.2, 0.3, 0.3, 0.2]).astype(np.uint16)
        ours = make_sample(window, None, opts)
        tokens = torch.from_numpy(window[:-1].astype(np.int64))
        attn, loss_mask, pos = gpt._get_ltor_masks_and_position_ids(
            tokens, EOS, reset_pos, reset_attn, eod_loss, True
        )
        assert torch.equal(ours["position_ids"], pos)
        assert torch.equal(ours["loss_mask"], loss_mask)
        if reset_attn:
            assert ours["attention_mask"].dtype == torch.bool
            assert torch.equal(ours["attention_mask"], attn)
        else:
            assert "attention_mask" not in ours


def test_loss_mask_shard_at_label_positions(tmp_path):
    prefix = str(tmp_path / "inst")
    docs = write_shard(prefix, [6, 9, 4, 12, 0, 7], with_mask=True)
    masks = [[int(i >= len(d) // 2) for i in range(len(d))] for d in docs]
    ds = SourceDataset(prefix, 10, SampleOptions(seq_length=6), seed=0, packing="windows")
    mask_stream = [m for d in ds.document_index.tolist() for m in masks[d]]
    for i in range(len(ds)):
        j = int(ds.shuffle_index[i])
        want = mask_stream[j * 6 + 1 : j * 6 + 7]  # the mask of each label token
        assert ds[i]["loss_mask"].tolist() == want
    assert (
        SourceDataset(prefix, 10, SampleOptions(seq_length=6), seed=0, use_loss_mask=False)[0][
            "loss_mask"
        ].sum()
        == 6
    )


def test_mask_shard_mismatch_is_an_error(tmp_path):
    prefix = str(tmp_path / "inst")
    write_shard(prefix, [6, 9, 4])
    with IndexedDatasetWriter(loss_mask_prefix(prefix), np.uint8) as w:
        w.add_documents([[1] * 6, [1] * 8, [1] * 4])
    with pytest.raises(ValueError, match="inst_loss_mask.idx: loss-mask sequence lengths differ"):
        SourceDataset(prefix, 2, SampleOptions(seq_length=4), seed=0)


def test_validation_split_holds_out_documents(tmp_path):
    prefix = str(tmp_path / "src")
    lengths = [5 + (d % 7) for d in range(60)]
    write_shard(prefix, lengths)
    opts = SampleOptions(seq_length=4)
    train = SourceDataset(prefix, 100, opts, seed=5, valid_fraction=0.2)
    valid = SourceDataset(prefix, None, opts, seed=5, split="valid", valid_fraction=0.2)
    train_docs = set(train.document_index.tolist())
    valid_docs = set(valid.document_index.tolist())
    assert len(valid_docs) == 12 and not train_docs & valid_docs
    assert len(train_docs | valid_docs) == 60
    valid_tokens = sum(lengths[d] for d in valid_docs)
    assert len(valid) == (valid_tokens - 1) // 4  # one pass by default
    body = {t for i in range(len(valid)) for t in valid[i]["tokens"].tolist()} - {BOS, EOS}
    assert body <= {3 + d for d in valid_docs}
    with pytest.raises(ValueError, match="valid_fraction > 0"):
        SourceDataset(prefix, None, opts, seed=5, split="valid")


def test_options_validation_and_errors(tmp_path):
    with pytest.raises(ValueError, match="eod_id is required"):
        SampleOptions(seq_length=4, reset_position_ids=True)
    with pytest.raises(ValueError, match="seq_length"):
        SampleOptions(seq_length=0)
    prefix = str(tmp_path / "empty")
    write_shard(prefix, [0, 0])
    with pytest.raises(ValueError, match="has no tokens"):
        SourceDataset(prefix, 3, SampleOptions(seq_length=4), seed=0)
    with pytest.raises(Exception, match="index file not found"):
        SourceDataset(str(tmp_path / "missing"), 3, SampleOptions(seq_length=4), seed=0)


def test_cached_indices_equal_in_memory(tmp_path):
    prefix = str(tmp_path / "src")
    write_shard(prefix, LENGTHS)
    opts = SampleOptions(seq_length=8)
    cache = IndexCache(str(tmp_path / "cache"))
    built = SourceDataset(prefix, 30, opts, seed=3, cache=cache)
    loaded = SourceDataset(prefix, 30, opts, seed=3, cache=cache)
    plain = SourceDataset(prefix, 30, opts, seed=3)
    assert isinstance(loaded.sample_index, np.memmap)
    for a in ("document_index", "sample_index", "shuffle_index"):
        np.testing.assert_array_equal(getattr(loaded, a), getattr(plain, a))
        np.testing.assert_array_equal(getattr(built, a), getattr(plain, a))


class _MegatronTokenizer:
    vocab_size = 32000
    eod = EOS
    pad = -1
    unique_identifiers: ClassVar[dict] = {"class": "test"}


@pytest.mark.parametrize("eod_options", [False, True])
def test_samples_equal_megatron_gpt_dataset_on_its_indices(tmp_path, eod_options):
    """Reading megatron-core's own indices, our __getitem__ returns its samples."""
    gpt = pytest.importorskip("megatron.core.datasets.gpt_dataset")
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MIndexedDataset
    from megatron.core.datasets.utils import Split

    prefix = str(tmp_path / "src")
    write_shard(prefix, LENGTHS * 3)
    seq = 7
    config = gpt.GPTDatasetConfig(
        random_seed=5,
        sequence_length=seq,
        split="100,0,0",
        tokenizer=_MegatronTokenizer(),
        reset_position_ids=eod_options,
        reset_attention_mask=eod_options,
        eod_mask_loss=eod_options,
        create_attention_mask=eod_options,
        path_to_cache=None,
    )
    idx = MIndexedDataset(prefix)
    theirs = gpt.GPTDataset(
        idx, prefix, np.arange(len(idx.sequence_lengths), dtype=np.int32), 40, Split.train, config
    )
    opts = SampleOptions(
        seq_length=seq,
        eod_id=EOS,
        reset_position_ids=eod_options,
        reset_attention_mask=eod_options,
        eod_mask_loss=eod_options,
    )
    ours = SourceDataset(prefix, 1, opts, seed=0)
    ours.document_index = theirs.document_index
    ours.sample_index = theirs.sample_index
    ours.shuffle_index = theirs.shuffle_index
    ours.num_samples = len(theirs)
    assert len(theirs) >= 40
    for i in range(len(theirs)):
        a, b = ours[i], theirs[i]
        keys = ["tokens", "labels", "loss_mask", "position_ids"]
        keys += ["attention_mask"] if eod_options else []
        assert set(a) == set(keys)
        for key in keys:
            assert torch.equal(a[key], b[key]), (i, key)
