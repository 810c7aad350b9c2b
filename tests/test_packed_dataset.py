"""SourceDataset with conversations packing: samples == the bins' pieces (an oracle over the raw
shards), no response token without its own prompt (generated long conversations and the demo
corpus), padding, masks, position ids, prefix stability, cache, pickling, and blends."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import reference_packing as ref
import torch

from chatflow.data.blended_dataset import BlendedDatasetConfig, DynamicBlendedDataset
from chatflow.data.index_cache import IndexCache
from chatflow.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from chatflow.data.preprocess import PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, preprocess
from chatflow.data.schedule import Schedule
from chatflow.data.source_dataset import SampleOptions, SourceDataset
from chatflow.data.templates import loss_mask_prefix

pytestmark = pytest.mark.unit

PAD = 2


def write_conversations(prefix: str, rs, n_docs: int, max_turns: int, max_len: int):
    """Random multi-turn conversations: BOS, then per turn a prompt (mask 0) and a response
    (mask 1, ending in EOS). Token ids say nothing about turns: the test reads the mask."""
    docs, masks = [], []
    for _ in range(n_docs):
        toks, mask = [1], [0]
        for _ in range(int(rs.randint(1, max_turns + 1))):
            p, r = int(rs.randint(1, max_len)), int(rs.randint(1, max_len))
            toks += rs.randint(3, 500, size=p).tolist() + rs.randint(3, 500, size=r).tolist()
            toks += [2]
            mask += [0] * p + [1] * (r + 1)
        docs.append(toks)
        masks.append(mask)
    docs.append([])  # an empty document
    masks.append([])
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_documents(docs)
    with IndexedDatasetWriter(loss_mask_prefix(prefix), np.uint8) as w:
        w.add_documents(masks)
    return docs, masks


def turn_starts(mask: list[int]) -> list[int]:
    """0 and every position where a new prompt starts (the mask steps from 1 to 0)."""
    return [0] + [p for p in range(1, len(mask)) if mask[p - 1] == 1 and mask[p] == 0]


def check_sample(ds: SourceDataset, idx: int, docs, masks) -> None:
    """Sample idx against its pieces, read straight from the lists the shards were written from."""
    seq = ds.options.seq_length
    sample = ds[idx]
    buf, lmask, seg = [], [], []
    for k, (d, start, n) in enumerate(ds.bin_pieces(idx)):
        starts = turn_starts(masks[d])
        # The piece starts a turn, so each of its responses comes after its own prompt.
        assert start in starts, (d, start)
        for p in range(start, start + n):
            if masks[d][p]:
                turn = max(t for t in starts if t <= p)
                assert turn >= start and 0 in masks[d][turn:p], (d, p)
        buf += docs[d][start : start + n]
        lmask += masks[d][start : start + n]
        seg += [k] * n
    used = len(buf)
    assert 0 < used <= seq + 1
    pad = seq + 1 - used
    buf += [PAD] * pad
    lmask += [0] * pad
    seg += [-1] * pad
    assert sample["tokens"].tolist() == buf[:-1]
    assert sample["labels"].tolist() == buf[1:]
    want_loss = [lmask[t + 1] if seg[t] == seg[t + 1] != -1 else 0 for t in range(seq)]
    assert sample["loss_mask"].tolist() == want_loss
    pos, att = [], torch.ones(seq, seq, dtype=torch.bool)
    first = 0
    for t in range(seq):
        if t and seg[t] != seg[t - 1]:
            first = t  # a new piece (or the padding) starts
        pos.append(t - first)
        att[t, first : t + 1] = False
    assert sample["position_ids"].tolist() == pos
    assert torch.equal(sample["attention_mask"][0], att)
    assert int(sample["num_pad"]) == max(pad - 1, 0)  # padded input positions


def test_long_conversations_are_packed_whole(tmp_path):
    rs = np.random.RandomState(0)
    prefix = str(tmp_path / "chat")
    docs, masks = write_conversations(prefix, rs, 80, max_turns=6, max_len=20)
    opts = SampleOptions(seq_length=32)
    ds = SourceDataset(prefix, 150, opts, seed=4)  # a mask shard: conversations by default
    assert ds.packing == "conversations" and len(ds) == 150
    for i in range(len(ds)):
        check_sample(ds, i, docs, masks)
    stats = ds.packing_stats()
    assert stats["splits"] > 0 and stats["truncations"] > 0 and 0 < stats["padding_share"] < 0.5
    # The bins are the reference packing's, with split points read naively off the mask lists.
    points = [turn_starts(m)[1:] for m in masks]
    bins, _, _ = ref.build_packing([len(d) for d in docs], list(range(len(docs))), points, 33,
                                   1, 4, False)  # fmt: skip
    first_epoch = len(bins)
    got = [ds.bin_pieces(i) for i in range(len(ds))]
    by_bin = {int(ds.shuffle_index[i]): got[i] for i in range(len(ds))}
    for b in range(first_epoch):
        if b in by_bin:
            assert by_bin[b] == bins[b]
    # One pass by default: one epoch of bins, covering every token but the truncated ones.
    one = SourceDataset(prefix, None, opts, seed=4)
    assert len(one) == first_epoch
    placed = sum(n for i in range(len(one)) for _, _, n in one.bin_pieces(i))
    assert placed == sum(map(len, docs)) - one.packing_stats()["dropped_tokens"]


def test_prefix_stable_deterministic_cached_and_picklable(tmp_path):
    rs = np.random.RandomState(1)
    prefix = str(tmp_path / "chat")
    write_conversations(prefix, rs, 30, max_turns=3, max_len=10)
    opts = SampleOptions(seq_length=24)
    few = SourceDataset(prefix, 7, opts, seed=2, shuffle_block=5)
    many = SourceDataset(prefix, 300, opts, seed=2, shuffle_block=5)
    for i in range(7):
        assert few.bin_pieces(i) == many.bin_pieces(i)
        assert torch.equal(few[i]["tokens"], many[i]["tokens"])
    assert [few.bin_pieces(i) for i in range(7)] != [
        SourceDataset(prefix, 7, opts, seed=3, shuffle_block=5).bin_pieces(i) for i in range(7)
    ]
    cache = IndexCache(str(tmp_path / "cache"))
    built = SourceDataset(prefix, 40, opts, seed=2, cache=cache)
    loaded = SourceDataset(prefix, 40, opts, seed=2, cache=cache)
    assert isinstance(loaded.packed.piece_len, np.memmap)
    assert sorted(os.listdir(cache.cache_dir)) and all(
        n.startswith("packing") for n in os.listdir(cache.cache_dir)
    )
    clone = pickle.loads(pickle.dumps(loaded))
    for i in range(len(built)):
        assert built.bin_pieces(i) == loaded.bin_pieces(i) == clone.bin_pieces(i)
        assert torch.equal(built[i]["tokens"], clone[i]["tokens"])
    # The same shard read as windows keys another cache entry and gives windows.
    windows = SourceDataset(prefix, 40, opts, seed=2, cache=cache, packing="windows")
    assert windows.packed is None and "attention_mask" not in windows[0]
    with pytest.raises(ValueError, match="packing must be one of"):
        SourceDataset(prefix, 4, opts, seed=2, packing="whole")
    none = SourceDataset(prefix, 0, opts, seed=2)
    assert len(none) == 0 and none.packing_stats()["padding_share"] == 0
    empty = str(tmp_path / "empty")
    write_conversations(empty, rs, 0, max_turns=1, max_len=2)  # one empty document only
    assert len(SourceDataset(empty, 0, opts, seed=2)) == 0  # a source the blend never draws
    with pytest.raises(ValueError, match="no tokens"):
        SourceDataset(empty, 3, opts, seed=2)


def test_plain_text_source_packed_by_document(tmp_path):
    prefix = str(tmp_path / "text")
    docs = [[1] + [5 + d] * n + [2] for d, n in enumerate([3, 40, 0, 7, 12, 1])]
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_documents(docs)
    ds = SourceDataset(prefix, 20, SampleOptions(seq_length=16), seed=0, packing="conversations")
    for i in range(len(ds)):
        s = ds[i]
        # No mask shard: every label inside a document is trained, none across documents.
        pieces = ds.bin_pieces(i)
        assert int(s["loss_mask"].sum()) == sum(n - 1 for _, _, n in pieces)
    # The 42-token document was cut into 17-token chunks, nothing dropped.
    assert ds.packing_stats()["splits"] > 0 and ds.packing_stats()["dropped_tokens"] == 0


def test_demo_corpus_responses_keep_their_prompts(tmp_path, sample_data_dir, demo_tokenizer_path):
    out = str(tmp_path / "demo")
    job = PreprocessJob(
        inputs=[os.path.join(sample_data_dir, "instruct.jsonl")],
        output_prefix=out,
        tokenizer_model=demo_tokenizer_path,
        encoding=PreprocessConfig(format="instruction"),
        workers=0,
    )
    prefix = preprocess(job).outputs[0]
    data, mask = IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix))
    docs = [data[i].tolist() for i in range(len(data))]
    masks = [mask[i].tolist() for i in range(len(mask))]
    for seq in (48, 256):  # 48: most conversations are split, some turns truncated
        ds = SourceDataset(prefix, None, SampleOptions(seq_length=seq), seed=1234)
        for i in range(len(ds)):
            check_sample(ds, i, docs, masks)
        stats = ds.packing_stats()
        assert (stats["splits"] > 0) == (seq == 48) and 0 < stats["padding_share"] < 1
    assert max(len(d) for d in docs) > 48


def test_blend_of_windows_and_packed_collates(tmp_path):
    rs = np.random.RandomState(2)
    chat = str(tmp_path / "chat")
    write_conversations(chat, rs, 40, max_turns=4, max_len=10)
    text = str(tmp_path / "text")
    with IndexedDatasetWriter(text, np.uint16) as w:
        w.add_documents([[1] + [9] * int(n) + [2] for n in rs.randint(0, 40, size=40)])
    sched = Schedule.from_data_path(["0.5", text, "0.5", chat])
    cfg = BlendedDatasetConfig(seq_length=16, num_samples=64, seed=3)
    ds = DynamicBlendedDataset(cfg, sched)
    assert ds.packings == ("windows", "conversations")
    batch = torch.utils.data.default_collate([ds[i] for i in range(16)])
    assert batch["attention_mask"].shape == (16, 1, 16, 16)
    assert set(batch["source_id"].tolist()) == {0, 1}
    windows = batch["source_id"] == 0
    assert (batch["num_pad"][windows] == 0).all()
    causal = torch.triu(torch.ones(16, 16, dtype=torch.bool), 1)
    assert all(torch.equal(m[0], causal) for m in batch["attention_mask"][windows])
    stats = ds.packing_stats()
    assert stats["text"]["padding_share"] == 0 and stats["chat"]["padding_share"] > 0
    # --data-path can force windows on the mask source.
    forced = Schedule.from_data_path(["0.5", text, "0.5", chat + ":packing=windows"])
    assert DynamicBlendedDataset(cfg, forced).packings == ("windows", "windows")
    valid_cfg = BlendedDatasetConfig(seq_length=16, num_samples=64, seed=3, valid_fraction=0.2)
    valid = DynamicBlendedDataset(valid_cfg, sched).validation_datasets()
    assert valid["chat"].packing == "conversations" and valid["text"].packing == "windows"


def test_packing_option_in_schedules(tmp_path):
    from chatflow.data.schedule import ScheduleError

    doc = {
        "sources": [
            {"name": "a", "prefix": "pa", "packing": "windows"},
            {"name": "b", "prefix": "pb"},
        ],
        "knots": [{"at": 0, "weights": {"a": 1, "b": 1}}],
    }
    sched = Schedule.from_dict(doc)
    assert [s.packing for s in sched.sources] == ["windows", None]
    again = Schedule.from_dict(sched.to_dict())  # checkpoints keep the option
    assert [s.packing for s in again.sources] == ["windows", None]
    doc["sources"][1]["packing"] = "docs"
    with pytest.raises(ScheduleError, match=r"s.yaml: sources\[1\].packing must be one of"):
        Schedule.from_dict(doc, origin="s.yaml")
    dp = Schedule.from_data_path(["1", "/d/x:packing=conversations", "1", "/d/y"])
    assert dp.prefixes == ("/d/x", "/d/y") and dp.names == ("x", "y")
    assert [s.packing for s in dp.sources] == ["conversations", None]
    with pytest.raises(ScheduleError, match="--data-path '/d/x:packing=bins': packing must be"):
        Schedule.from_data_path(["/d/x:packing=bins"])


def test_padding_between_counts_padded_inputs(tmp_path):
    rs = np.random.RandomState(4)
    chat = str(tmp_path / "chat")
    write_conversations(chat, rs, 30, max_turns=3, max_len=9)
    text = str(tmp_path / "text")
    with IndexedDatasetWriter(text, np.uint16) as w:
        w.add_documents([[1] + [9] * int(n) + [2] for n in rs.randint(0, 40, size=40)])
    ds = DynamicBlendedDataset(
        BlendedDatasetConfig(seq_length=16, num_samples=50, seed=3),
        Schedule.from_data_path(["0.5", text, "0.5", chat]),
    )
    for start, end in [(0, 50), (7, 23), (10, 10)]:
        want = {"text": 0, "chat": 0}
        for i in range(start, end):
            want[ds.names[int(ds[i]["source_id"])]] += int(ds[i]["num_pad"])
        assert ds.padding_between(start, end) == want
    assert ds.padding_between(0, 50)["chat"] > 0
    share = ds.padding_between(0, 50)["chat"] / (16 * int(ds.source_samples[1]))
    assert share == pytest.approx(ds.packing_stats()["chat"]["padding_share"])
