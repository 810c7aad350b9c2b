"""chatflow._C per-source index builders == slow Python references == megatron-core helpers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference_sample_index as ref

from chatflow import _C
from chatflow.data.sample_index import (
    build_document_index,
    build_sample_index,
    build_shuffle_index,
    build_source_indices,
    split_documents,
)

pytestmark = pytest.mark.unit

SEEDS = [0, 1, 1234, 2**63 + 5, 2**64 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_rng_stream_matches_reference(seed):
    for stream, index in [(1, 0), (2, 7), (3, 2**40)]:
        got = _C.splitmix64_stream(seed, stream, index, 50).tolist()
        rng = ref.SplitMix64(seed, stream, index)
        assert got == [rng.next() for _ in range(50)]


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_shuffles_match_reference(dtype):
    rs = np.random.RandomState(0)
    for trial in range(30):
        n = int(rs.randint(0, 60))
        seed = SEEDS[trial % len(SEEDS)] ^ trial
        ids = rs.randint(0, 10**6, size=n).astype(dtype)
        assert _C.__dict__[f"shuffled_{dtype}"](ids, seed, 5, trial).tolist() == ref.shuffled(
            ids.tolist(), seed, 5, trial
        )
        epochs = int(rs.randint(0, 4))
        assert _C.__dict__[f"build_document_index_{dtype}"](ids, epochs, seed).tolist() == (
            ref.build_document_index(ids.tolist(), epochs, seed)
        )
        block = int(rs.randint(1, 20))
        got = _C.__dict__[f"build_shuffle_index_{dtype}"](-(-n // block), block, seed)
        assert got.tolist() == ref.build_shuffle_index(n, block, seed)


def test_shuffle_is_a_uniform_permutation():
    counts = {}
    for seed in range(3000):
        perm = tuple(build_document_index(np.arange(3), 1, seed).tolist())
        counts[perm] = counts.get(perm, 0) + 1
    assert set(counts) == set(itertools.permutations(range(3)))
    assert all(400 < c < 600 for c in counts.values()), counts  # expected 500 each


def test_document_index_epochs_are_permutations_and_prefix_stable():
    ids = np.array([3, 9, 4, 7, 0], dtype=np.int32)
    four = build_document_index(ids, 4, 42)
    assert four.dtype == np.int32
    for e in range(4):
        assert sorted(four[5 * e : 5 * e + 5].tolist()) == sorted(ids.tolist())
    assert four[:10].tolist() == build_document_index(ids, 2, 42).tolist()
    assert four[:5].tolist() != four[5:10].tolist() or four[5:10].tolist() != four[10:15].tolist()


def _random_sizes(rs, n, seq_length):
    """Mix of empty documents, short ones and ones several windows long."""
    kind = rs.randint(0, 3, size=n)
    sizes = np.where(kind == 0, 0, rs.randint(1, seq_length + 1, size=n))
    sizes = np.where(kind == 2, rs.randint(seq_length, 4 * seq_length, size=n), sizes)
    return sizes.astype(np.int32)


@pytest.mark.parametrize("extra", [1, 0])
def test_sample_index_matches_reference(extra):
    rs = np.random.RandomState(1)
    for _ in range(40):
        seq = int(rs.randint(1, 12))
        sizes = _random_sizes(rs, int(rs.randint(1, 30)), seq)
        if sizes.sum() <= seq:
            sizes[0] += seq + 1
        order = build_document_index(np.arange(len(sizes)), 3, int(rs.randint(1 << 30)))
        total = int(sizes[order].sum())
        n = (total - extra) // seq
        got32 = _C.build_sample_index_int32(sizes, order.astype(np.int32), seq, n, extra)
        got64 = _C.build_sample_index_int64(sizes, order.astype(np.int64), seq, n, extra)
        want = ref.build_sample_index(sizes.tolist(), order.tolist(), seq, n, extra)
        assert [tuple(r) for r in got32.tolist()] == want
        assert got64.tolist() == got32.tolist()


def test_sample_index_matches_megatron_core():
    helpers = pytest.importorskip("megatron.core.datasets.helpers_cpp")
    rs = np.random.RandomState(2)
    for trial in range(25):
        seq = int(rs.randint(1, 40))
        sizes = _random_sizes(rs, int(rs.randint(1, 80)), seq)
        sizes[0] += seq + 1  # at least one full sample per epoch
        epochs = int(rs.randint(1, 4))
        order = build_document_index(np.arange(len(sizes)), epochs, trial).astype(np.int32)
        tokens_per_epoch = int(sizes.sum())
        theirs = helpers.build_sample_idx_int32(
            sizes, order, seq, epochs, tokens_per_epoch, True, 1
        )
        n = theirs.shape[0] - 1
        ours = build_sample_index(sizes, order, seq, n)
        np.testing.assert_array_equal(ours, theirs)
        theirs64 = helpers.build_sample_idx_int64(
            sizes, order, seq, epochs, tokens_per_epoch, True, 1
        )
        np.testing.assert_array_equal(
            _C.build_sample_index_int64(sizes, order.astype(np.int64), seq, n, 1), theirs64
        )


def test_sample_index_documented_example():
    got = build_sample_index(np.array([5, 3, 7], np.int32), np.array([0, 1, 2]), 4, 3)
    assert got.tolist() == [[0, 0], [0, 4], [2, 0], [2, 4]]


def test_sample_index_int64_sizes():
    # Documents near 2**31 tokens and windows of 2**30: token positions pass 2**32, which must not
    # wrap anywhere (the reference uses Python integers).
    big = 2**31 - 1
    sizes = np.array([big, 0, big, 5, big], dtype=np.int32)
    order = np.array([0, 1, 2, 3, 4, 0], dtype=np.int64)
    seq = 2**30 + 7
    n = (int(sizes[order].sum()) - 1) // seq
    want = ref.build_sample_index(sizes.tolist(), order.tolist(), seq, n)
    assert n > 6
    got = _C.build_sample_index_int64(sizes, order, seq, n, 1)
    assert [tuple(r) for r in got.tolist()] == want
    assert build_sample_index(sizes, order, seq, n).tolist() == got.tolist()


def test_sample_index_errors():
    sizes = np.array([3, 4], np.int32)
    with pytest.raises(ValueError, match="holds 7 tokens; 2 samples of 4 tokens need 9"):
        build_sample_index(sizes, np.array([0, 1]), 4, 2)
    with pytest.raises(ValueError, match="outside"):
        build_sample_index(sizes, np.array([0, 2]), 1, 1)
    with pytest.raises(ValueError, match="seq_length"):
        build_sample_index(sizes, np.array([0, 1]), 0, 1)
    with pytest.raises(ValueError, match="seed"):
        build_document_index(np.arange(3), 1, -1)
    with pytest.raises(ValueError, match="too few tokens"):  # the C++ check, past the wrapper's
        _C.build_sample_index_int32(sizes, np.array([0, 1], np.int32), 4, 2, 1)


def test_shuffle_index_blocks():
    idx = build_shuffle_index(10, 4, 3)
    assert len(idx) == 12
    for b in range(3):
        assert sorted(idx[4 * b : 4 * b + 4].tolist()) == list(range(4 * b, 4 * b + 4))
    assert build_shuffle_index(13, 4, 3)[:12].tolist() == idx.tolist()


def test_split_documents_matches_reference():
    for n, frac, seed in [(10, 0.3, 1), (1000, 0.01, 7), (3, 0.01, 0), (1, 0.5, 0), (50, 0.0, 0)]:
        train, valid = split_documents(n, frac, seed)
        want_train, want_valid = ref.split_documents(n, frac, seed)
        assert train.tolist() == want_train and valid.tolist() == want_valid
        assert sorted(train.tolist() + valid.tolist()) == list(range(n))
    with pytest.raises(ValueError, match="valid_fraction"):
        split_documents(10, 1.0, 0)


def _windows(sizes, idx, seq, count):
    """Token windows of the first count samples, as (doc id, offset) lists, from the indices."""
    stream = [(d, o) for d in idx.document_index.tolist() for o in range(sizes[d])]
    starts = np.cumsum([0] + [int(sizes[d]) for d in idx.document_index.tolist()])
    out = []
    for j in idx.shuffle_index[:count].tolist():
        p, off = idx.sample_index[j]
        begin = starts[p] + off
        out.append(stream[begin : begin + seq + 1])
    return out


def test_source_indices_prefix_stable_and_cover_epochs():
    rs = np.random.RandomState(3)
    sizes = _random_sizes(rs, 17, 8)
    docs = np.array([d for d in range(17) if d != 5])
    small = build_source_indices(sizes, docs, 8, 5, seed=9, shuffle_block=4)
    large = build_source_indices(sizes, docs, 8, 60, seed=9, shuffle_block=4)
    assert len(small.shuffle_index) == 8 and len(large.shuffle_index) == 60
    assert large.sample_index.shape == (61, 2)
    # Many epochs: the source is exhausted and re-epoched, document 5 never appears.
    assert len(large.document_index) > 2 * len(docs) and 5 not in large.document_index
    assert _windows(sizes, small, 8, 5) == _windows(sizes, large, 8, 60)[:5]
    for w in _windows(sizes, large, 8, 60):
        assert len(w) == 9
    empty = build_source_indices(sizes, docs, 8, 0, seed=9, shuffle_block=4)
    assert len(empty.shuffle_index) == 0 and empty.sample_index.shape == (1, 2)
    with pytest.raises(ValueError, match="no tokens"):
        build_source_indices(np.zeros(3, np.int32), np.arange(3), 8, 1, 0, 4)
