"""tools/merge_datasets.py: token shards and their loss masks merged consistently."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import call_tool
from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from chatflow.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from chatflow.data.templates import loss_mask_prefix

pytestmark = pytest.mark.unit


def _shard(prefix: str, docs: list[list[int]], masks: bool = False, dtype=np.uint16) -> None:
    with IndexedDatasetWriter(prefix, dtype) as w:
        w.add_documents(docs)
    if masks:
        with IndexedDatasetWriter(loss_mask_prefix(prefix), np.uint8) as w:
            w.add_documents([[(t % 2) for t in d] for d in docs])


def _docs(seed: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 4000, rng.integers(1, 30)).tolist() for _ in range(n)]


def _all(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def test_merge_with_masks_from_directory(tmp_path, capsys):
    shards = tmp_path / "shards"
    a, b = _docs(0, 7), _docs(1, 5)
    _shard(str(shards / "b_instruction_document"), b, masks=True)
    _shard(str(shards / "a_instruction_document"), a, masks=True)
    out = str(tmp_path / "merged" / "all")
    code, out_text, _ = call_tool(
        "merge_datasets", "--input", shards, "--output-prefix", out, capsys=capsys
    )
    assert code == 0 and "2 shard(s): 12 documents" in out_text
    # Directory order is sorted by name: a before b; masks follow the same order.
    assert _all(out) == a + b
    assert _all(loss_mask_prefix(out)) == [[t % 2 for t in d] for d in a + b]
    np.testing.assert_array_equal(
        IndexedDataset(out).sequence_lengths, IndexedDataset(loss_mask_prefix(out)).sequence_lengths
    )


def test_merge_matches_megatron_builder(tmp_path, capsys):
    """Byte-identical to megatron-core's IndexedDatasetBuilder.add_index on the same inputs."""
    parts = [str(tmp_path / f"p{i}") for i in range(3)]
    for i, p in enumerate(parts):
        _shard(p, _docs(10 + i, 4 + i))
    ours = str(tmp_path / "ours")
    assert (
        call_tool("merge_datasets", "--input", *parts, "--output-prefix", ours, capsys=capsys)[0]
        == 0
    )
    theirs = str(tmp_path / "theirs")
    builder = IndexedDatasetBuilder(theirs + ".bin", dtype=np.uint16)
    for p in parts:
        builder.add_index(p)
    builder.finalize(theirs + ".idx")
    for ext in (".bin", ".idx"):
        assert open(ours + ext, "rb").read() == open(theirs + ext, "rb").read()
    reader = MegatronIndexedDataset(ours)
    assert len(reader) == 4 + 5 + 6
    assert torch.equal(
        torch.from_numpy(reader[0].astype(np.int64)), torch.tensor(_all(parts[0])[0])
    )


def test_mixed_masks_need_fill(tmp_path, capsys):
    _shard(str(tmp_path / "sft"), [[5, 6, 7]], masks=True)
    _shard(str(tmp_path / "text"), [[8, 9], [10]])
    out = str(tmp_path / "out" / "m")
    code, _, err = call_tool(
        "merge_datasets",
        "--input",
        tmp_path / "sft",
        tmp_path / "text",
        "--output-prefix",
        out,
        capsys=capsys,
    )
    assert code == 1 and "--fill-missing-masks" in err
    assert str(tmp_path / "text") in err
    assert not os.path.exists(out + ".idx")
    assert (
        call_tool(
            "merge_datasets",
            "--input",
            tmp_path / "sft",
            tmp_path / "text",
            "--output-prefix",
            out,
            "--fill-missing-masks",
            capsys=capsys,
        )[0]
        == 0
    )
    assert _all(out) == [[5, 6, 7], [8, 9], [10]]
    assert _all(loss_mask_prefix(out)) == [[1, 0, 1], [1, 1], [1]]


@pytest.mark.parametrize("problem", ["dtype", "mask_lengths", "missing"])
def test_merge_errors(tmp_path, capsys, problem):
    _shard(str(tmp_path / "a"), [[1, 2, 3]])
    if problem == "dtype":
        _shard(str(tmp_path / "b"), [[1, 2]], dtype=np.int32)
        match = "dtype"
    elif problem == "mask_lengths":
        _shard(str(tmp_path / "b"), [[1, 2]])
        with IndexedDatasetWriter(loss_mask_prefix(str(tmp_path / "b")), np.uint8) as w:
            w.add_document([1, 1, 1])
        match = "loss mask does not match"
    else:
        match = "no "
    code, _, err = call_tool(
        "merge_datasets",
        "--input",
        tmp_path / "a",
        tmp_path / "b",
        "--output-prefix",
        tmp_path / "out",
        capsys=capsys,
    )
    assert code == 1 and match in err, err
    assert str(tmp_path / "b") in err
    assert not os.path.exists(str(tmp_path / "out.idx"))
