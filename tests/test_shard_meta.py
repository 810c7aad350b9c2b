"""Shard sidecars (chatflow.data.shard_meta): written by preprocess and merge, checked by merge
and by the training data setup; --no-bos."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
import sentencepiece as spm
from conftest import call_tool

from chatflow.config.data import DataConfig
from chatflow.data import shard_meta
from chatflow.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from chatflow.data.merge import merge
from chatflow.data.output_guard import OutputOverlapError
from chatflow.data.preprocess import PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, preprocess
from chatflow.data.shard_meta import ShardMetaError, meta_path, read_meta
from chatflow.data.templates import loss_mask_prefix

pytestmark = pytest.mark.unit

TEXTS = ["第一篇文档 first document", "second one, a little longer", "第三 third"]


@pytest.fixture(autouse=True)
def _fresh_warning_state(monkeypatch):
    monkeypatch.setattr(shard_meta, "_warned_missing", False)


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> str:
    """A second (tiny) LLaMA-id sentencepiece model: another tokenizer identity."""
    d = tmp_path_factory.mktemp("tok")
    corpus = d / "c.txt"
    corpus.write_text("\n".join(TEXTS * 20) + "\nabcdefghijklmnopqrstuvwxyz\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(d / "other"), vocab_size=400, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, minloglevel=2,
    )  # fmt: skip
    return str(d / "other.model")


def _make(tmp_path, name: str, tokenizer: str, fmt: str = "text", **enc) -> str:
    src = tmp_path / f"{name}.jsonl"
    if fmt == "instruction":
        rows = [{"instruction": t, "input": "", "output": t[::-1]} for t in TEXTS]
    else:
        rows = [{"text": t} for t in TEXTS]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    job = PreprocessJob(
        inputs=[str(src)], output_prefix=str(tmp_path / name), tokenizer_model=tokenizer,
        encoding=PreprocessConfig(format=fmt, **enc), workers=0,
    )  # fmt: skip
    return preprocess(job).outputs[0]


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _docs(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def test_preprocess_writes_sidecars(tmp_path, demo_tokenizer, demo_tokenizer_path):
    prefix = _make(tmp_path, "i", demo_tokenizer_path, fmt="instruction")
    meta = read_meta(prefix)
    assert meta["tokenizer"] == {
        "sha256": _sha(demo_tokenizer_path), "model": os.path.basename(demo_tokenizer_path),
        "vocab_size": demo_tokenizer.vocab_size, "bos_id": 1, "eos_id": 2,
    }  # fmt: skip
    assert (meta["kind"], meta["format"], meta["bos"], meta["append_eod"]) == (
        "tokens", "instruction", True, False,
    )  # fmt: skip
    assert meta["settings"]["instruction"]["prompt"] == PreprocessConfig().instruction.prompt
    assert read_meta(loss_mask_prefix(prefix))["kind"] == "loss_mask"
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_no_bos(tmp_path, demo_tokenizer, demo_tokenizer_path):
    with_bos = _docs(_make(tmp_path, "b", demo_tokenizer_path, append_eod=True))
    without = _docs(_make(tmp_path, "n", demo_tokenizer_path, append_eod=True, bos=False))
    # Oracle: sentencepiece itself, then EOS; Megatron-LM's current wrapper adds no BOS.
    expected = [demo_tokenizer._sp.encode(t) + [2] for t in TEXTS]
    assert without == expected and with_bos == [[1] + d for d in expected]
    assert read_meta(str(tmp_path / "n_text_document"))["bos"] is False
    inst = _make(tmp_path, "in", demo_tokenizer_path, fmt="instruction")
    inst_nb = _make(tmp_path, "inb", demo_tokenizer_path, fmt="instruction", bos=False)
    assert _docs(inst_nb) == [d[1:] for d in _docs(inst)]
    assert _docs(loss_mask_prefix(inst_nb)) == [d[1:] for d in _docs(loss_mask_prefix(inst))]


def test_merge_refuses_other_tokenizer(tmp_path, demo_tokenizer_path, other_tokenizer, caplog):
    a = _make(tmp_path, "a", demo_tokenizer_path)
    b = _make(tmp_path, "b", demo_tokenizer_path)
    c = _make(tmp_path, "c", other_tokenizer)
    summary = merge([a, b], str(tmp_path / "ab"))
    assert summary.documents == 6
    meta = read_meta(str(tmp_path / "ab"))
    assert meta["tokenizer"]["sha256"] == _sha(demo_tokenizer_path)
    assert meta["merged_from"] == [os.path.abspath(a), os.path.abspath(b)]
    with pytest.raises(ShardMetaError, match=r"different tokenizers.*c_text_document.*--force"):
        merge([a, c], str(tmp_path / "ac"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith("ac")]
    with caplog.at_level(logging.WARNING):
        merge([a, c], str(tmp_path / "ac"), force=True)
    assert "merging anyway (--force)" in caplog.text
    assert read_meta(str(tmp_path / "ac"))["mixed_tokenizers"] is True
    assert _docs(str(tmp_path / "ac")) == _docs(a) + _docs(c)


def test_merge_cli_force_and_missing_sidecar(
    tmp_path, demo_tokenizer_path, other_tokenizer, capsys
):
    a = _make(tmp_path, "a", demo_tokenizer_path)
    c = _make(tmp_path, "c", other_tokenizer)
    code, _, err = call_tool(
        "merge_datasets", "--input", a, c, "--output-prefix", tmp_path / "m", capsys=capsys
    )
    assert code == 1 and "different tokenizers" in err
    code, _, _ = call_tool(
        "merge_datasets", "--input", a, c, "--output-prefix", tmp_path / "m", "--force",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0 and read_meta(str(tmp_path / "m"))["mixed_tokenizers"]
    # A Megatron-LM shard (no sidecar) merges, and the output keeps the known tokenizer.
    w = IndexedDatasetWriter(str(tmp_path / "mega"), "uint16")
    w.add_document([1, 5, 6])
    w.finalize()
    merge([a, str(tmp_path / "mega")], str(tmp_path / "am"))
    assert read_meta(str(tmp_path / "am"))["tokenizer"]["sha256"] == _sha(demo_tokenizer_path)


def test_merge_refuses_output_on_input(tmp_path, demo_tokenizer_path):
    a = _make(tmp_path, "a", demo_tokenizer_path)
    before = open(a + ".bin", "rb").read()
    with pytest.raises(OutputOverlapError, match="would be overwritten"):
        merge([a, a], a)
    os.symlink(a + ".idx", tmp_path / "alias.idx")
    with pytest.raises(OutputOverlapError):
        merge([str(tmp_path / "alias")], a)
    assert open(a + ".bin", "rb").read() == before


def _data_config(prefixes: list[str], tokenizer: str) -> DataConfig:
    path = [x for p in prefixes for x in ("1", p)]
    return DataConfig(data_path=path, tokenizer_model=tokenizer)


def test_training_refuses_shard_of_other_tokenizer(
    tmp_path, demo_tokenizer_path, other_tokenizer, caplog
):
    a = _make(tmp_path, "a", demo_tokenizer_path)
    c = _make(tmp_path, "c", other_tokenizer)
    _data_config([a], demo_tokenizer_path)  # same tokenizer: fine
    with pytest.raises(ShardMetaError, match=r"c_text_document: shard made with another tokenizer"):
        _data_config([a, c], demo_tokenizer_path)
    # Shards without a sidecar (Megatron-LM's) load, with one warning per run.
    os.unlink(meta_path(c))
    os.unlink(meta_path(a))
    with caplog.at_level(logging.WARNING, logger="chatflow.data.shard_meta"):
        _data_config([a, c], demo_tokenizer_path)
        _data_config([a, c], demo_tokenizer_path)
    warnings = [r for r in caplog.records if "no .meta.json sidecar" in r.getMessage()]
    assert len(warnings) == 1 and c in warnings[0].getMessage()


def test_unreadable_sidecar_is_an_error(tmp_path, demo_tokenizer_path):
    a = _make(tmp_path, "a", demo_tokenizer_path)
    with open(meta_path(a), "w") as f:
        f.write("{not json")
    with pytest.raises(ShardMetaError, match="unreadable shard sidecar"):
        _data_config([a], demo_tokenizer_path)
