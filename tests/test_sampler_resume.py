"""Data-parallel sampling from consumed_samples, and resume with changed schedules.

The resume tests iterate like a trainer (DP ranks, micro-batches, consumed_samples), stop, save a
DataState through JSON, switch schedule (sources added and removed), rebuild and go on; then check
that each source's samples seen are exactly a prefix of that source's own order, with no duplicate,
against SourceDatasets built independently with a generous sample count (prefix-stable oracles).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from test_blended_dataset import make_shards, ramp_schedule

from chatflow.data.blended_dataset import BlendedDatasetConfig, DynamicBlendedDataset, Segment
from chatflow.data.data_state import DataState
from chatflow.data.indexed_dataset import IndexedDatasetWriter
from chatflow.data.sampler import DataParallelBatchSampler
from chatflow.data.source_dataset import SourceDataset
from chatflow.data.templates import loss_mask_prefix

pytestmark = pytest.mark.unit


def megatron_pretraining_sampler(total, consumed, mbs, rank, world, drop_last=True):
    """Reference: MegatronPretrainingSampler.__iter__ (megatron/training/datasets/data_samplers.py)
    re-stated: accumulate the global order into groups of mbs * world, yield this rank's slice."""
    batch = []
    for idx in range(consumed, total):
        batch.append(idx)
        if len(batch) == mbs * world:
            yield batch[rank * mbs : (rank + 1) * mbs]
            batch = []
    if batch and not drop_last:
        part = batch[rank * mbs : (rank + 1) * mbs]
        if part:
            yield part


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_matches_megatron_semantics(drop_last):
    cases = [(50, 0, 2, 2), (50, 12, 3, 2), (7, 0, 4, 1), (100, 99, 1, 3), (41, 5, 2, 4)]
    for total, consumed, mbs, world in cases:
        for rank in range(world):
            s = DataParallelBatchSampler(total, consumed, mbs, rank, world, drop_last)
            got = list(s)
            assert got == list(
                megatron_pretraining_sampler(total, consumed, mbs, rank, world, drop_last)
            )
            assert len(s) == len(got)


def test_dp_slices_partition_each_global_batch():
    mbs, world = 3, 2
    per_rank = [list(DataParallelBatchSampler(60, 6, mbs, r, world)) for r in range(world)]
    assert len(per_rank[0]) == len(per_rank[1]) == 9
    for step, batches in enumerate(zip(*per_rank)):
        flat = [i for b in batches for i in b]
        assert len(set(flat)) == len(flat) == mbs * world
        assert sorted(flat) == list(range(6 + step * 6, 12 + step * 6))


def test_sampler_errors():
    with pytest.raises(ValueError, match="used all its data"):
        DataParallelBatchSampler(10, 10, 1, 0, 1)
    with pytest.raises(ValueError, match="data_parallel_rank"):
        DataParallelBatchSampler(10, 0, 1, 2, 2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        DataParallelBatchSampler(10, 0, 0, 0, 1)


@pytest.fixture
def shards(tmp_path):
    rs = np.random.RandomState(1)
    specs = {
        name: [int(n) if n != 1 else 0 for n in rs.randint(0, 25, size=30)]
        for name in ("en", "para", "zh", "inst")
    }
    specs["inst"][:3] = [0, 40, 3]  # an empty document and one longer than seq_length
    prefixes = make_shards(tmp_path, specs)
    # inst gets a loss-mask shard (turns of 3 prompt + 3 response tokens), so it is packed by
    # conversation by default, with long documents split at turn boundaries.
    with IndexedDatasetWriter(loss_mask_prefix(prefixes["inst"]), np.uint8) as w:
        w.add_documents([[int(i % 6 >= 3) for i in range(n)] for n in specs["inst"]])
    return prefixes


def train(ds, seen, start, stop, mbs=2, world=2):
    """Iterate like a DP trainer from consumed=start until consumed reaches stop; record, per
    source name, the (source sample index, tokens) of every sample the ranks received."""
    samplers = [iter(DataParallelBatchSampler(len(ds), start, mbs, r, world)) for r in range(world)]
    consumed = start
    while consumed < stop:
        for it in samplers:
            for i in next(it):
                sample = ds[i]
                name = ds.names[int(sample["source_id"])]
                seen[name].append((int(ds.dataset_sample_index[i]), sample["tokens"].tolist()))
        consumed += mbs * world
    return consumed


def check_prefixes(seen, prefixes, cfg):
    """Each source's samples seen are exactly samples 0..n-1 of its own order, none repeated."""
    for name, items in seen.items():
        idx = [j for j, _ in items]
        assert sorted(idx) == list(range(len(idx))), f"{name}: not a duplicate-free prefix"
        oracle = SourceDataset(prefixes[name], len(idx) + 50, cfg.sample_options(), cfg.seed)
        for j, tokens in items:
            assert tokens == oracle[j]["tokens"].tolist(), f"{name}: sample {j} differs"


def roundtrip(state: DataState) -> DataState:
    return DataState.from_dict(json.loads(json.dumps(state.to_dict())))


def test_resume_with_changed_schedule_sees_each_source_as_a_prefix(shards):
    s1 = ramp_schedule({k: shards[k] for k in ("en", "para", "zh")}, ["en", "para"], ["zh"], 0.8)
    s2 = ramp_schedule(
        {k: shards[k] for k in ("para", "zh", "inst")}, ["zh"], ["inst", "para"], 0.6
    )  # en removed, inst added
    cfg = BlendedDatasetConfig(seq_length=8, num_samples=160, seed=11)
    seen = defaultdict(list)

    ds1 = DynamicBlendedDataset(cfg, s1)
    m = train(ds1, seen, 0, 64)
    state = roundtrip(DataState.capture(ds1, m))
    assert state.source_counts == {n: len(seen[n]) for n in ds1.names}

    segments = state.segments_for(s2, cfg.num_samples)
    assert [(s.start, s.num_samples) for s in segments] == [(0, 160), (64, 160)]
    ds2 = DynamicBlendedDataset(cfg, segments)
    state.verify(ds2)
    # The current schedule's sources first: source_id is an index into s2.names after the switch.
    assert ds2.names == ("para", "zh", "inst", "en")
    assert ds2.packings == ("windows", "windows", "conversations", "windows")
    assert ds2.sources[2].packing_stats()["splits"] > 0  # the packed source cut long documents
    as_names = np.array(ds2.names)
    np.testing.assert_array_equal(
        as_names[ds2.dataset_index[:m]], np.array(ds1.names)[ds1.dataset_index[:m]]
    )
    m2 = train(ds2, seen, m, 120)
    assert ds2.dataset_index[m:].max() < 3  # en is gone after the switch

    # Third segment: en comes back, zh leaves, and the run grows to 200 samples.
    s3 = ramp_schedule({k: shards[k] for k in ("en", "inst")}, ["en", "inst"], ["en"], 0.9)
    cfg3 = BlendedDatasetConfig(seq_length=8, num_samples=200, seed=11)
    state2 = roundtrip(DataState.capture(ds2, m2))
    ds3 = DynamicBlendedDataset(cfg3, state2.segments_for(s3, 200))
    state2.verify(ds3)
    train(ds3, seen, m2, 200)
    assert set(seen) == {"en", "para", "zh", "inst"} and len(seen["inst"]) > 0
    assert sum(len(v) for v in seen.values()) == 200
    check_prefixes(seen, shards, cfg)


def test_unchanged_resume_is_bit_identical(shards):
    s1 = ramp_schedule({k: shards[k] for k in ("en", "zh")}, ["en"], ["zh"], 0.5)
    cfg = BlendedDatasetConfig(seq_length=8, num_samples=100)
    ds = DynamicBlendedDataset(cfg, s1)
    state = roundtrip(DataState.capture(ds, 40))
    for sched in (s1, None):
        segments = state.segments_for(sched, 100)
        assert len(segments) == 1
        again = DynamicBlendedDataset(cfg, segments)
        np.testing.assert_array_equal(again.dataset_index, ds.dataset_index)
        np.testing.assert_array_equal(again.dataset_sample_index, ds.dataset_sample_index)
    # Resuming at 0 with another schedule is a fresh run with it.
    fresh = roundtrip(DataState.capture(ds, 0)).segments_for(
        ramp_schedule({k: shards[k] for k in ("en", "zh")}, ["zh"], ["en"]), 100
    )
    assert len(fresh) == 1 and fresh[0].start == 0


def test_verify_detects_a_different_blend(shards):
    s1 = ramp_schedule({k: shards[k] for k in ("en", "zh")}, ["en"], ["zh"], 0.5)
    cfg = BlendedDatasetConfig(seq_length=8, num_samples=100)
    ds = DynamicBlendedDataset(cfg, s1)
    state = DataState.capture(ds, 50)
    state.source_counts["en"] += 1
    with pytest.raises(RuntimeError, match="does not reproduce"):
        state.verify(ds)
    moved = DataState.capture(ds, 50)
    reseeded = DynamicBlendedDataset(
        BlendedDatasetConfig(seq_length=8, num_samples=100, seed=9), s1
    )
    with pytest.raises(RuntimeError, match="seed"):
        roundtrip(moved).verify(reseeded)
    with pytest.raises(ValueError, match="version"):
        DataState.from_dict({"consumed_samples": 3})
    with pytest.raises(ValueError, match="first segment must start at 0"):
        DynamicBlendedDataset(cfg, [Segment(5, s1, 100)])


def test_resume_after_a_dropped_source_shard_is_deleted(shards, tmp_path):
    import os

    s1 = ramp_schedule({k: shards[k] for k in ("en", "zh")}, ["en"], ["zh"], 0.5)
    s2 = ramp_schedule({k: shards[k] for k in ("zh", "inst")}, ["zh"], ["inst"], 0.5)
    cfg = BlendedDatasetConfig(seq_length=8, num_samples=80)
    state = roundtrip(DataState.capture(DynamicBlendedDataset(cfg, s1), 32))
    for suffix in (".bin", ".idx"):
        os.unlink(shards["en"] + suffix)
    ds = DynamicBlendedDataset(cfg, state.segments_for(s2, 80))
    state.verify(ds)
    seen = defaultdict(list)
    train(ds, seen, 32, 80)
    assert "en" not in seen and sum(len(v) for v in seen.values()) == 48
    with pytest.raises(RuntimeError, match="dropped from the schedule"):
        ds[int(np.flatnonzero(ds.dataset_index[:32] == ds.names.index("en"))[0])]
    with pytest.raises(Exception, match="zh"):  # a current source must exist
        os.unlink(shards["zh"] + ".idx")
        DynamicBlendedDataset(cfg, state.segments_for(s2, 80))


def test_renamed_source_is_warned_about(shards, caplog):
    s1 = ramp_schedule({k: shards[k] for k in ("en", "zh")}, ["en"], ["zh"], 0.5)
    renamed = ramp_schedule({"english": shards["en"], "zh": shards["zh"]}, ["english"], ["zh"])
    cfg = BlendedDatasetConfig(seq_length=8, num_samples=80)
    state = roundtrip(DataState.capture(DynamicBlendedDataset(cfg, s1), 40))
    with caplog.at_level("WARNING"):
        DynamicBlendedDataset(cfg, state.segments_for(renamed, 80))
    assert "read the same shard" in caplog.text


def test_saved_schedules_rebuild_bit_identically():
    """Checkpointed schedules come back with the same weights (so no spurious new segment)."""
    import random

    from chatflow.data.schedule import Schedule

    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(1, 5)
        sched = Schedule.from_dict(
            {
                "sources": [{"name": f"s{i}", "prefix": f"/data/s{i}"} for i in range(k)],
                "knots": [
                    {"at": 0, "weights": {f"s{i}": rng.random() * 3 for i in range(k)}},
                    {
                        "at_fraction": rng.random(),
                        "weights": {f"s{i}": rng.random() for i in range(k)},
                        "interpolation": rng.choice(["linear", "cosine", "step"]),
                    },
                ],
            }
        )
        seg = {
            "start": 0,
            "num_samples": 1000,
            "schedule": sched.to_dict(),
            "fingerprint": sched.fingerprint(),
        }
        state = roundtrip(DataState(500, [seg]))
        again = state.saved_segments()[0].schedule
        assert again.fingerprint() == sched.fingerprint()
        assert [kn.weights for kn in again.knots] == [kn.weights for kn in sched.knots]
        assert len(state.segments_for(sched, 1000)) == 1


def test_packing_change_across_a_resume_is_warned_about(shards, caplog):
    import dataclasses

    s1 = ramp_schedule({k: shards[k] for k in ("en", "inst")}, ["en"], ["inst"], 0.5)
    windows = dataclasses.replace(
        s1, sources=(s1.sources[0], dataclasses.replace(s1.sources[1], packing="windows"))
    )
    cfg = BlendedDatasetConfig(seq_length=8, num_samples=80)
    state = roundtrip(DataState.capture(DynamicBlendedDataset(cfg, s1), 40))
    # Same weights: no new segment, so the switch would silently re-mean inst's samples 0..n.
    ds = DynamicBlendedDataset(cfg, state.segments_for(windows, 80))
    assert ds.packings == ("windows", "windows")
    with pytest.raises(RuntimeError, match=r"packing changed.*'inst': \('conversations', 'wi"):
        state.verify(ds)
    # A longer run adds a segment: the dataset warns, verify refuses all the same.
    with caplog.at_level("WARNING"):
        longer = DynamicBlendedDataset(
            BlendedDatasetConfig(seq_length=8, num_samples=96), state.segments_for(windows, 96)
        )
    assert "inst changes packing" in caplog.text and "conversations -> windows" in caplog.text
    with pytest.raises(RuntimeError, match="packing changed"):
        state.verify(longer)
    state.verify(DynamicBlendedDataset(cfg, state.segments_for(s1, 80)))  # unchanged: fine
