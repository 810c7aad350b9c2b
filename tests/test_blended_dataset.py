"""DynamicBlendedDataset: exact per-source counts, routing, schedules honored, cache, pickling."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from chatflow.data.blended_dataset import BlendedDatasetConfig, DynamicBlendedDataset
from chatflow.data.indexed_dataset import IndexedDatasetWriter
from chatflow.data.schedule import Schedule
from chatflow.data.source_dataset import SourceDataset


def make_shards(tmp_path, specs):
    """specs: {name: list of document lengths}; body tokens of shard s, doc d = 3 + 100*s + d."""
    prefixes = {}
    for s, (name, lengths) in enumerate(specs.items()):
        prefixes[name] = str(tmp_path / name)
        with IndexedDatasetWriter(prefixes[name], np.uint16) as w:
            w.add_documents(
                [
                    [1] + [3 + 100 * s + d] * (n - 2) + [2] if n else []
                    for d, n in enumerate(lengths)
                ]
            )
    return prefixes


def ramp_schedule(prefixes, names_from, names_to, at_fraction=0.5):
    """Linear ramp from uniform over names_from to uniform over names_to, constant afterwards."""
    return Schedule.from_dict(
        {
            "sources": [{"name": n, "prefix": p} for n, p in prefixes.items()],
            "knots": [
                {"at": 0, "weights": {n: 1.0 for n in names_from}},
                {"at_fraction": at_fraction, "weights": {n: 1.0 for n in names_to}},
            ],
        }
    )


@pytest.fixture
def shards(tmp_path):
    rs = np.random.RandomState(0)
    return make_shards(
        tmp_path,
        {
            "en": [int(n) if n != 1 else 0 for n in rs.randint(0, 30, size=40)],
            "zh": list(rs.randint(2, 12, size=25)),
            "tiny": [5, 0, 9],  # 14 tokens: exhausted and re-epoched many times
        },
    )


@pytest.mark.unit
def test_exact_counts_and_routing(shards, tmp_path):
    sched = Schedule.from_data_path(
        ["0.5", shards["en"], "0.3", shards["zh"], "0.2", shards["tiny"]]
    )
    cfg = BlendedDatasetConfig(seq_length=6, num_samples=200, seed=7)
    ds = DynamicBlendedDataset(cfg, sched)
    assert len(ds) == 200 and ds.names == sched.names
    counts = np.bincount(ds.dataset_index, minlength=3)
    assert counts.tolist() == [100, 60, 40]  # constant weights, exact deficit blending
    for k, src in enumerate(ds.sources):
        assert len(src) == counts[k]  # exactly the blend's count, no surplus
        assert sorted(ds.dataset_sample_index[ds.dataset_index == k].tolist()) == list(
            range(counts[k])
        )
    assert len(ds.sources[2].document_index) > 3 * 10  # tiny re-epoched (40 * 6 tokens / 14)
    for i in range(0, 200, 7):
        s = ds[i]
        k, j = int(ds.dataset_index[i]), int(ds.dataset_sample_index[i])
        assert s["source_id"].item() == k and s["source_id"].dtype == torch.int64
        assert torch.equal(s["tokens"], ds.sources[k][j]["tokens"])
    body = set(ds[int(np.flatnonzero(ds.dataset_index == 1)[0])]["tokens"].tolist()) - {1, 2}
    assert body and all(103 <= t < 103 + 25 for t in body)  # a zh sample holds zh tokens


@pytest.mark.unit
def test_blend_matches_megatron_core_for_constant_weights(shards):
    helpers = pytest.importorskip("megatron.core.datasets.helpers_cpp")
    sched = Schedule.from_data_path(
        ["0.2", shards["en"], "0.5", shards["zh"], "0.3", shards["tiny"]]
    )
    ds = DynamicBlendedDataset(BlendedDatasetConfig(seq_length=4, num_samples=500), sched)
    di = np.zeros(500, np.int16)
    dsi = np.zeros(500, np.int64)
    helpers.build_blending_indices(di, dsi, np.array([0.2, 0.5, 0.3]), 3, 500, False)
    np.testing.assert_array_equal(ds.dataset_index, di)
    np.testing.assert_array_equal(ds.dataset_sample_index, dsi)


@pytest.mark.unit
def test_dynamic_schedule_moves_the_mix(shards):
    sched = ramp_schedule(shards, ["en", "tiny"], ["zh"], at_fraction=0.5)
    ds = DynamicBlendedDataset(BlendedDatasetConfig(seq_length=4, num_samples=400), sched)
    first = np.bincount(ds.dataset_index[:50], minlength=3)
    last = np.bincount(ds.dataset_index[200:], minlength=3)
    assert first[1] < 15 and last.tolist() == [0, 200, 0]
    assert [len(s) for s in ds.sources] == np.bincount(ds.dataset_index, minlength=3).tolist()


@pytest.mark.unit
def test_dataloader_batches(shards):
    sched = Schedule.from_data_path(["1", shards["en"], "1", shards["zh"]])
    cfg = BlendedDatasetConfig(
        seq_length=8, num_samples=16, eod_id=2, reset_attention_mask=True, reset_position_ids=True
    )
    ds = DynamicBlendedDataset(cfg, sched)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["tokens"].shape == (4, 8) and batch["attention_mask"].shape == (4, 1, 8, 8)
    assert batch["source_id"].shape == (4,) and batch["loss_mask"].dtype == torch.float32


@pytest.mark.unit
def test_cache_reuse_and_invalidation(shards, tmp_path):
    cache_dir = str(tmp_path / "cache")
    cfg = BlendedDatasetConfig(seq_length=6, num_samples=120, cache_dir=cache_dir)
    s1 = Schedule.from_data_path(["0.5", shards["en"], "0.5", shards["zh"]])
    a = DynamicBlendedDataset(cfg, s1)
    entries = set(os.listdir(cache_dir))
    b = DynamicBlendedDataset(cfg, s1)
    assert set(os.listdir(cache_dir)) == entries and isinstance(b.dataset_index, np.memmap)
    for i in range(0, 120, 11):
        assert torch.equal(a[i]["tokens"], b[i]["tokens"])
    s2 = Schedule.from_data_path(["0.4", shards["en"], "0.6", shards["zh"]])
    DynamicBlendedDataset(cfg, s2)
    new = set(os.listdir(cache_dir)) - entries
    assert any(e.startswith("blend-") for e in new)  # schedule change: new blend
    cfg2 = BlendedDatasetConfig(
        seq_length=6, num_samples=120, cache_dir=cache_dir, exact_blend=False
    )
    before = set(os.listdir(cache_dir))
    DynamicBlendedDataset(cfg2, s1)
    assert any(e.startswith("blend-") for e in set(os.listdir(cache_dir)) - before)


@pytest.mark.unit
def test_validation_datasets(shards, tmp_path):
    sched = Schedule.from_data_path(["0.5", shards["en"], "0.5", shards["zh"]])
    cfg = BlendedDatasetConfig(seq_length=4, num_samples=50, valid_fraction=0.2, seed=3)
    ds = DynamicBlendedDataset(cfg, sched)
    valid = ds.validation_datasets()
    assert set(valid) == {"en", "zh"}
    for k, name in enumerate(ds.names):
        assert isinstance(valid[name], SourceDataset) and len(valid[name]) > 0
        held_out = set(valid[name].document_index.tolist())
        assert held_out and not held_out & set(ds.sources[k].document_index.tolist())
    valid2 = ds.validation_datasets(num_samples=7)
    assert len(valid2["zh"]) == 7
    # A shard too small to hold out anything gets no validation set, and a warning.
    one = make_shards(tmp_path, {"one_doc": [30]})["one_doc"]
    tiny = Schedule.from_data_path(["0.5", shards["en"], "0.5", one])
    assert set(DynamicBlendedDataset(cfg, tiny).validation_datasets()) == {"en"}
    no_valid = DynamicBlendedDataset(BlendedDatasetConfig(seq_length=4, num_samples=50), sched)
    with pytest.raises(ValueError, match="valid_fraction"):
        no_valid.validation_datasets()


@pytest.mark.unit
def test_config_and_schedule_errors(shards, tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        BlendedDatasetConfig(seq_length=4, num_samples=0)
    with pytest.raises(ValueError, match="eod_id is required"):
        BlendedDatasetConfig(seq_length=4, num_samples=5, eod_mask_loss=True)
    with pytest.raises(ValueError, match="valid_fraction"):
        BlendedDatasetConfig(seq_length=4, num_samples=5, valid_fraction=1.5)
    missing = Schedule.from_data_path(["1", shards["en"], "1", str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="nope"):
        DynamicBlendedDataset(BlendedDatasetConfig(seq_length=4, num_samples=5), missing)


@pytest.mark.unit
def test_build_index_tool_prebuilds_the_trainer_cache(shards, tmp_path, capsys):
    from chatflow.cli import build_index as tool

    cache_dir = str(tmp_path / "cache")
    tool.main(
        [
            "--data-path",
            "0.25",
            shards["en"],
            "0.75",
            shards["zh"],
            "--seq-length",
            "6",
            "--train-iters",
            "10",
            "--global-batch-size",
            "8",
            "--cache-dir",
            cache_dir,
            "--valid-fraction",
            "0.1",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert "80 samples" in out and "en" in out and "0.2500" in out and "0.7500" in out
    entries = set(os.listdir(cache_dir))
    cfg = BlendedDatasetConfig(
        seq_length=6, num_samples=80, cache_dir=cache_dir, valid_fraction=0.1
    )
    ds = DynamicBlendedDataset(
        cfg, Schedule.from_data_path(["0.25", shards["en"], "0.75", shards["zh"]])
    )
    ds.validation_datasets()
    assert set(os.listdir(cache_dir)) == entries  # everything was prebuilt: nothing new
    assert isinstance(ds.sources[0].shuffle_index, np.memmap)


@pytest.mark.dist
def test_pickles_cheaply_for_spawned_workers(shards, tmp_path):
    import pickle

    sched = Schedule.from_data_path(["1", shards["en"], "1", shards["zh"]])
    cfg = BlendedDatasetConfig(seq_length=6, num_samples=300, cache_dir=str(tmp_path / "c"))
    ds = DynamicBlendedDataset(cfg, sched)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # paths, not the memory-mapped arrays
    again = pickle.loads(blob)
    assert isinstance(again.dataset_index, np.memmap)
    for i in range(0, 300, 17):
        assert torch.equal(again[i]["tokens"], ds[i]["tokens"])
    loader = torch.utils.data.DataLoader(
        ds, batch_size=5, num_workers=1, multiprocessing_context="spawn"
    )
    first = next(iter(loader))
    assert torch.equal(first["tokens"][3], ds[3]["tokens"])


@pytest.mark.unit
@pytest.mark.parametrize("exact", [True, False])
def test_each_segment_follows_its_schedule(tmp_path, exact):
    from chatflow.data.blended_dataset import Segment, build_segment_blend, segment_names

    sh = make_shards(tmp_path, {n: [10] * 10 for n in ("en", "para", "zh", "inst")})
    s1 = ramp_schedule({k: sh[k] for k in ("en", "para", "zh")}, ["en", "para"], ["zh"], 0.8)
    s2 = ramp_schedule({k: sh[k] for k in ("para", "zh", "inst")}, ["zh"], ["inst", "para"], 0.6)
    s3 = ramp_schedule({k: sh[k] for k in ("en", "inst")}, ["en", "inst"], ["en"], 0.9)
    segs = [Segment(0, s1, 2000), Segment(700, s2, 3000), Segment(1900, s3, 4000)]
    di, dsi = build_segment_blend(segs, exact)
    names, _ = segment_names(segs)
    assert names == ("en", "inst", "para", "zh")
    for i, seg in enumerate(segs):
        end = segs[i + 1].start if i + 1 < len(segs) else seg.num_samples
        gid = [names.index(n) for n in seg.schedule.names]
        assert set(di[seg.start : end].tolist()) <= set(gid)
        for p in range(seg.start + 1, end + 1, 13):
            drawn = np.bincount(di[seg.start : p], minlength=len(names))[gid]
            owed = seg.schedule.cumulative_weights(
                np.array([max(seg.start, 1), p], float), seg.num_samples
            )
            # Within each segment the mix tracks that segment's schedule (deficits stay bounded).
            assert np.abs(drawn - (owed[1] - owed[0])).max() <= seg.schedule.num_sources
    for k in range(len(names)):  # every source's numbering continues: 0..n-1 over the whole run
        assert sorted(dsi[di == k].tolist()) == list(range(int((di == k).sum())))
