"""Our .bin/.idx reader and writer against megatron-core's, both ways, and bad-file errors."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import torch
from megatron.core.datasets import indexed_dataset as mcore_ids

from chatflow.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    token_dtype,
)

pytestmark = pytest.mark.unit


def _random_docs(rng: np.random.Generator, n: int, vocab: int) -> list[list[np.ndarray]]:
    """Documents of 1-3 sequences each, with some empty sequences (legal in the format)."""
    return [
        [rng.integers(0, vocab, rng.integers(0, 40)) for _ in range(rng.integers(1, 4))]
        for _ in range(n)
    ]


def _write_ours(prefix: str, docs, dtype) -> None:
    with IndexedDatasetWriter(prefix, dtype) as w:
        for doc in docs:
            for seq in doc:
                w.add_sequence(seq)
            w.end_document()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint8])
def test_ours_read_by_megatron(tmp_path, dtype):
    vocab = 250 if dtype == np.uint8 else 60000
    docs = _random_docs(np.random.default_rng(0), 50, vocab)
    prefix = str(tmp_path / "ours")
    _write_ours(prefix, docs, dtype)
    theirs = mcore_ids.IndexedDataset(prefix)
    seqs = [s for d in docs for s in d]
    assert len(theirs) == len(seqs)
    assert theirs.index.dtype == dtype
    expected_doc_idx = np.cumsum([0] + [len(d) for d in docs])
    np.testing.assert_array_equal(theirs.document_indices, expected_doc_idx)
    np.testing.assert_array_equal(theirs.sequence_lengths, [len(s) for s in seqs])
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(theirs[i], s.astype(dtype))
    # Partial reads agree too.
    i = int(np.argmax([len(s) for s in seqs]))
    np.testing.assert_array_equal(theirs.get(i, offset=3, length=5), seqs[i][3:8])


def test_megatron_builder_read_by_ours(tmp_path):
    rng = np.random.default_rng(1)
    docs = _random_docs(rng, 40, 32000)
    prefix = str(tmp_path / "theirs")
    builder = mcore_ids.IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for doc in docs:
        for seq in doc:
            builder.add_item(torch.from_numpy(seq.astype(np.int64)))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    ours = IndexedDataset(prefix)
    seqs = [s for d in docs for s in d]
    assert ours.dtype == np.uint16 and len(ours) == len(seqs)
    assert ours.num_documents == len(docs)
    assert ours.num_tokens == sum(len(s) for s in seqs)
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(ours[i], s)


def test_byte_identical_to_megatron_writer(tmp_path):
    docs = [[np.arange(n) % 500] for n in (5, 0, 17, 3)]
    ours, theirs = str(tmp_path / "a"), str(tmp_path / "b")
    _write_ours(ours, docs, np.uint16)
    builder = mcore_ids.IndexedDatasetBuilder(theirs + ".bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(doc[0], [len(doc[0])])
    builder.finalize(theirs + ".idx")
    for ext in (".bin", ".idx"):
        with open(ours + ext, "rb") as f1, open(theirs + ext, "rb") as f2:
            assert f1.read() == f2.read(), ext


def test_token_dtype_matches_megatron():
    for vocab in (100, 32000, 65499, 65500, 128256):
        assert token_dtype(vocab) == mcore_ids.DType.optimal_dtype(vocab)


# ---------------------------------------------------------------------------- bad files
@pytest.fixture
def good_shard(tmp_path) -> str:
    prefix = str(tmp_path / "good")
    _write_ours(prefix, [[np.arange(10)], [np.arange(7)]], np.uint16)
    return prefix


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _expect_error(prefix: str, path_suffix: str, words: str) -> None:
    with pytest.raises(IndexedDatasetError) as e:
        IndexedDataset(prefix)
    msg = str(e.value)
    assert prefix + path_suffix in msg, msg
    assert words in msg, msg


def test_bad_magic(good_shard):
    _patch(good_shard + ".idx", 0, b"NOTMAGIC!")
    _expect_error(good_shard, ".idx", "bad magic")


def test_bad_version(good_shard):
    _patch(good_shard + ".idx", 9, struct.pack("<Q", 2))
    _expect_error(good_shard, ".idx", "version 2")


def test_unknown_dtype_code(good_shard):
    _patch(good_shard + ".idx", 17, bytes([42]))
    _expect_error(good_shard, ".idx", "dtype code 42")


@pytest.mark.parametrize("keep", [10, 40])
def test_truncated_idx(good_shard, keep):
    path = good_shard + ".idx"
    os.truncate(path, keep)
    _expect_error(good_shard, ".idx", "truncated")


def test_bin_shorter_than_index(good_shard):
    os.truncate(good_shard + ".bin", 20)
    _expect_error(good_shard, ".bin", "truncated")


def test_missing_files(tmp_path, good_shard):
    os.unlink(good_shard + ".bin")
    _expect_error(good_shard, ".bin", "not found")
    _expect_error(str(tmp_path / "nothing"), ".idx", "not found")


def test_writer_abort_keeps_previous_shard(good_shard):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(good_shard, np.uint16) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("boom")
    ds = IndexedDataset(good_shard)
    assert len(ds) == 2 and list(ds[1]) == list(range(7))
    assert sorted(os.listdir(os.path.dirname(good_shard))) == ["good.bin", "good.idx"]
