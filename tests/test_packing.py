"""chatflow._C conversation packing == its slow Python reference; determinism, prefix stability,
coverage of every document token, turn boundaries from a loss-mask shard."""

from __future__ import annotations

import numpy as np
import pytest
import reference_packing as ref

from chatflow.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from chatflow.data.packing import bin_tokens, build_packing, no_split_points, turn_boundaries

pytestmark = pytest.mark.unit


def random_corpus(rs, n, capacity):
    """Sizes and sorted split points: empty docs, short ones, ones several bins long, and long
    turns without any split point (truncation)."""
    sizes, points = [], []
    for _ in range(n):
        kind = rs.randint(0, 4)
        size = [0, int(rs.randint(1, capacity + 1)), int(rs.randint(capacity, 5 * capacity))][
            min(kind, 2)
        ]
        if kind == 3:
            size = int(rs.randint(1, 3 * capacity))
        k = int(rs.randint(0, max(1, size // 2))) if size > 1 else 0
        pts = sorted(set(rs.randint(1, size, size=k).tolist())) if size > 1 else []
        sizes.append(size)
        points.append(pts)
    return sizes, points


def csr(points):
    offsets = np.zeros(len(points) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in points])
    flat = np.array([q for p in points for q in p], dtype=np.int32)
    return offsets, flat


def as_bins(index):
    out = []
    for b in range(index.num_bins):
        lo, hi = int(index.bin_offsets[b]), int(index.bin_offsets[b + 1])
        out.append(
            [
                (int(index.piece_doc[i]), int(index.piece_start[i]), int(index.piece_len[i]))
                for i in range(lo, hi)
            ]
        )
    return out


@pytest.mark.parametrize("chunk", [False, True])
def test_matches_reference_on_random_inputs(chunk):
    rs = np.random.RandomState(7)
    for trial in range(60):
        capacity = int(rs.randint(1, 20))
        n = int(rs.randint(1, 25))
        sizes, points = random_corpus(rs, n, capacity)
        docs = sorted(set(rs.randint(0, n, size=int(rs.randint(1, n + 1))).tolist()))
        if sum(sizes[d] for d in docs) == 0:
            sizes[docs[0]] = 1  # a size-0 document has no split points, so 1 stays valid
        seed = [0, 1, 2**64 - 1, trial * 7919][trial % 4]
        min_bins = int(rs.randint(0, 40))
        offsets, flat = csr(points)
        got = build_packing(np.array(sizes, np.int32), np.array(docs), offsets, flat, capacity,
                            min_bins, seed, chunk)  # fmt: skip
        bins, epoch_bins, stats = ref.build_packing(
            sizes, docs, points, capacity, min_bins, seed, chunk
        )
        assert as_bins(got) == bins, trial
        assert got.epoch_bins.tolist() == epoch_bins
        assert got.epoch_stats.reshape(-1, 4).tolist() == (stats or [])
        if min_bins:
            assert got.num_bins >= min_bins
        # int64 document ids take the other template instance and agree.
        wide = build_packing(np.array(sizes, np.int32), np.array(docs, np.int64) + 0, offsets,
                             flat, capacity, min_bins, seed, chunk)  # fmt: skip
        assert as_bins(wide) == bins


def test_int64_doc_ids_instance():
    from chatflow import _C

    sizes = np.array([3, 4, 5], np.int32)
    offsets, flat = no_split_points(3)
    a = _C.build_packing_int32(sizes, np.arange(3, dtype=np.int32), offsets, flat, 6, 5, 1, False)
    b = _C.build_packing_int64(sizes, np.arange(3, dtype=np.int64), offsets, flat, 6, 5, 1, False)
    assert b["piece_doc"].dtype == np.int64
    for key in a:
        assert a[key].tolist() == b[key].tolist()


def test_deterministic_and_prefix_stable():
    rs = np.random.RandomState(3)
    sizes, points = random_corpus(rs, 40, 16)
    offsets, flat = csr(points)
    sizes = np.array(sizes, np.int32)
    docs = np.arange(40)
    small = build_packing(sizes, docs, offsets, flat, 16, 5, 11)
    again = build_packing(sizes, docs, offsets, flat, 16, 5, 11)
    large = build_packing(sizes, docs, offsets, flat, 16, 500, 11)
    assert as_bins(small) == as_bins(again)
    assert as_bins(large)[: small.num_bins] == as_bins(small)
    assert large.epoch_bins[: len(small.epoch_bins)].tolist() == small.epoch_bins.tolist()
    assert len(large.epoch_bins) > 5  # many epochs, each shuffled anew
    e0 = as_bins(large)[: large.epoch_bins[1]]
    e1 = as_bins(large)[large.epoch_bins[1] : large.epoch_bins[2]]
    assert e0 != e1
    other = build_packing(sizes, docs, offsets, flat, 16, 5, 12)
    assert as_bins(other) != as_bins(small)


def test_every_token_once_per_epoch_and_bins_never_overflow():
    rs = np.random.RandomState(5)
    capacity = 12
    sizes, points = random_corpus(rs, 60, capacity)
    offsets, flat = csr(points)
    docs = [d for d in range(60) if d % 7 != 3]  # a split: the others never appear
    index = build_packing(np.array(sizes, np.int32), np.array(docs), offsets, flat, capacity,
                          200, 0)  # fmt: skip
    bins = as_bins(index)
    assert all(sum(p[2] for p in b) <= capacity for b in bins)
    assert all(b for b in bins)
    for e in range(len(index.epoch_bins) - 1):
        seen: dict[int, list[int]] = {}
        for b in bins[index.epoch_bins[e] : index.epoch_bins[e + 1]]:
            for d, start, length in b:
                seen.setdefault(d, []).extend(range(start, start + length))
        assert set(seen) <= set(docs)
        splits = truncations = dropped = 0
        for d in docs:
            got = sorted(seen.get(d, []))
            assert len(got) == len(set(got))  # no token twice
            if sizes[d] == 0:
                assert d not in seen
                continue
            missing = set(range(sizes[d])) - set(got)
            if missing:
                # Only the tails of turns longer than a bin are dropped.
                truncations += 1
                dropped += len(missing)
            pieces = [(s, n) for dd, s, n in (p for b in bins[index.epoch_bins[e]:
                      index.epoch_bins[e + 1]] for p in b) if dd == d]  # fmt: skip
            for s, n in pieces:  # every piece starts at 0 or at a turn boundary
                assert s == 0 or s in points[d]
            splits += len(pieces) - 1
        stats = index.epoch_stats[e].tolist()
        assert stats[2] == dropped and stats[3] == sum(sizes[d] for d in docs) - dropped
        assert stats[1] >= truncations and stats[0] + stats[1] >= splits
    assert index.epoch_stats[:, 0].sum() > 0 and index.epoch_stats[:, 1].sum() > 0  # both cases
    assert bin_tokens(index, 10).tolist() == [sum(p[2] for p in b) for b in bins[:10]]


def test_long_turn_truncated_and_chunked():
    # One document of 20 tokens, turn boundaries at 4 and 15, bins of 6: pieces [0,4),
    # [4,10) truncated (turn 4..15 is 11 long: 5 tokens dropped), [15,20).
    sizes = np.array([20], np.int32)
    offsets, flat = np.array([0, 2]), np.array([4, 15], np.int32)
    index = build_packing(sizes, np.arange(1), offsets, flat, 6, 1, 0)
    pieces = sorted(p for b in as_bins(index) for p in b)
    assert pieces == [(0, 0, 4), (0, 4, 6), (0, 15, 5)]
    assert index.epoch_stats[0].tolist() == [1, 1, 5, 15]
    chunked = build_packing(sizes, np.arange(1), *no_split_points(1), 6, 1, 0, True)
    assert sorted(p for b in as_bins(chunked) for p in b) == [
        (0, 0, 6), (0, 6, 6), (0, 12, 6), (0, 18, 2)
    ]  # fmt: skip
    assert chunked.epoch_stats[0].tolist() == [3, 0, 0, 20]


def test_first_fit_fills_earlier_bins():
    # Order-independent check: sizes 5, 5, 1 with capacity 6 need two bins, never three.
    sizes = np.array([5, 5, 1], np.int32)
    for seed in range(20):
        index = build_packing(sizes, np.arange(3), *no_split_points(3), 6, 1, seed)
        assert index.num_bins == 2


def test_errors():
    sizes = np.array([0, 0], np.int32)
    with pytest.raises(ValueError, match="no tokens"):
        build_packing(sizes, np.arange(2), *no_split_points(2), 4, 1, 0)
    empty = build_packing(sizes, np.arange(2), *no_split_points(2), 4, 0, 0)
    assert empty.num_bins == 0 and empty.epoch_bins.tolist() == [0]
    with pytest.raises(ValueError, match="no tokens"):
        build_packing(np.array([3], np.int32), np.arange(0), *no_split_points(1), 4, 1, 0)
    with pytest.raises(ValueError, match="split points"):
        build_packing(np.array([3], np.int32), np.arange(1), np.array([0, 1]),
                      np.array([3], np.int32), 4, 1, 0)  # fmt: skip
    with pytest.raises(ValueError, match="outside"):
        build_packing(np.array([3], np.int32), np.array([1]), *no_split_points(1), 4, 1, 0)
    with pytest.raises(ValueError, match="capacity"):
        build_packing(np.array([3], np.int32), np.arange(1), *no_split_points(1), 0, 1, 0)


def test_turn_boundaries_of_a_mask_shard(tmp_path):
    masks = [
        [0, 0, 1, 1, 0, 0, 1, 1],  # boundary at 4
        [1, 1, 0],  # boundary at 2
        [],
        [0, 1, 1, 0, 1, 0, 0],  # 3, 5
        [0, 0, 0],  # none; and the 1 -> 0 step from the sequence above into this one is no point
    ]
    prefix = str(tmp_path / "m")
    with IndexedDatasetWriter(prefix, np.uint8) as w:
        w.add_documents(masks)
    offsets, points = turn_boundaries(IndexedDataset(prefix))
    got = [points[offsets[i] : offsets[i + 1]].tolist() for i in range(len(masks))]
    assert got == [[4], [2], [], [3, 5], []]


def test_turn_boundaries_across_scan_chunks(tmp_path, monkeypatch):
    import chatflow.data.packing as packing

    rs = np.random.RandomState(9)
    masks = [rs.randint(0, 2, size=int(n)).tolist() for n in rs.randint(0, 30, size=40)]
    prefix = str(tmp_path / "m")
    with IndexedDatasetWriter(prefix, np.uint8) as w:
        w.add_documents(masks)
    want = [[p for p in range(1, len(m)) if m[p - 1] == 1 and m[p] == 0] for m in masks]
    for chunk in (1, 2, 7, 1 << 24):  # boundaries falling on every chunk edge
        monkeypatch.setattr(packing, "_SCAN_CHUNK", chunk)
        offsets, points = turn_boundaries(IndexedDataset(prefix))
        assert [points[offsets[i] : offsets[i + 1]].tolist() for i in range(40)] == want
