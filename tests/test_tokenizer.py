"""The LLaMA2-semantics tokenizer wrapper and tools/train_tokenizer.py."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest
import sentencepiece as spm
from conftest import call_tool

from chatflow.tokenizer import Tokenizer

pytestmark = pytest.mark.unit


def test_llama_control_ids(demo_tokenizer):
    tok = demo_tokenizer
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.pad_id == -1, "LLaMA2 has no pad piece"
    assert tok.padding_id == tok.eos_id
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.byte_fallback
    assert 4000 <= tok.vocab_size <= 8000 and len(tok) == tok.vocab_size


def test_encode_matches_sentencepiece(demo_tokenizer, demo_tokenizer_path):
    sp = spm.SentencePieceProcessor(model_file=demo_tokenizer_path)
    texts = ["我的朋友每天早上在公园看书。", "The teacher reads books at the library.", "x"]
    for t in texts:
        assert demo_tokenizer.encode(t) == sp.encode(t)
        assert demo_tokenizer.encode(t, bos=True, eos=True) == [1] + sp.encode(t) + [2]
    batch = demo_tokenizer.encode_batch(texts, bos=True, eos=False)
    assert batch == [[1] + sp.encode(t) for t in texts]
    with pytest.raises(TypeError):
        demo_tokenizer.encode_batch("a single string")


def test_byte_fallback_roundtrip(demo_tokenizer):
    # Characters never seen in training must come out as byte pieces, never as UNK.
    text = "😀 Ωmega 龘 ünïcödé\ttab  two spaces 12345"
    ids = demo_tokenizer.encode(text)
    assert demo_tokenizer.unk_id not in ids
    assert "<0xF0>" in [demo_tokenizer.id_to_piece(i) for i in ids]
    assert demo_tokenizer.decode(ids) == text
    # Digits are split one per piece (split_digits).
    pieces = [demo_tokenizer.id_to_piece(i) for i in demo_tokenizer.encode("12345")]
    assert [p for p in pieces if p.strip("▁")] == ["1", "2", "3", "4", "5"]
    # Control ids are dropped on decode.
    assert demo_tokenizer.decode([1] + demo_tokenizer.encode("hello") + [2]) == "hello"


def test_pickle_carries_the_model(demo_tokenizer, tmp_path):
    clone = pickle.loads(pickle.dumps(demo_tokenizer))
    assert clone.encode("公园 park") == demo_tokenizer.encode("公园 park")
    assert clone.vocab_size == demo_tokenizer.vocab_size


def test_bad_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="bad.model"):
        Tokenizer(str(bad))


def test_non_llama_ids_rejected_unless_lenient(tmp_path, sample_data_dir):
    # A model with sentencepiece's default ids (unk 0, bos 1, eos 2 but a pad at 3 would still be
    # LLaMA-like), so move bos/eos to make it genuinely different.
    prefix = str(tmp_path / "odd")
    lines = [json.loads(x)["text"] for x in open(f"{sample_data_dir}/en_text.jsonl")][:50]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        vocab_size=300,
        unk_id=2,
        bos_id=0,
        eos_id=1,
        minloglevel=2,
        num_threads=1,
    )
    with pytest.raises(ValueError, match="control ids"):
        Tokenizer(prefix + ".model")
    assert Tokenizer(prefix + ".model", strict=False).bos_id == 0


def _write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def test_train_tokenizer_tool(tmp_path, capsys):
    corpus = [
        {"text": "今天天气很好，我们去公园散步。"},
        {"text": "The weather is nice today."},
        {"zh": "我喜欢读书。", "en": "I like reading."},
        {"instruction": "计算 2 加 3。", "input": "", "output": "2 + 3 = 5。"},
        {
            "conversations": [
                {"from": "human", "value": "Hi there"},
                {"from": "gpt", "value": "Hello! How can I help?"},
            ]
        },
    ] * 20
    _write_jsonl(tmp_path / "a.jsonl", corpus[:50])
    _write_jsonl(tmp_path / "b.jsonl.gz", corpus[50:], opener=gzip.open)
    out1, out2 = tmp_path / "m1" / "tok.model", tmp_path / "tok2.model"
    for out in (out1, out2):
        code, stdout, _ = call_tool(
            "train_tokenizer",
            "--input",
            tmp_path / "*.jsonl*",
            "--vocab-size",
            "360",
            "--output",
            out,
            capsys=capsys,
        )
        assert code == 0 and "100 records" in stdout
    assert out1.read_bytes() == out2.read_bytes(), "training must be deterministic"
    assert (tmp_path / "m1" / "tok.vocab").is_file()
    tok = Tokenizer(str(out1))
    assert tok.vocab_size == 360 and tok.pad_id == -1 and tok.byte_fallback
    for text in ("公园散步", "Hello! How can I help?", "2 + 3 = 5。", "unseen 字符 ✓"):
        assert tok.decode(tok.encode(text)) == text
    assert not list(tmp_path.glob("**/*.tmp*")), "no temporary files left behind"


def test_train_tokenizer_bad_input(tmp_path, capsys):
    _write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, "{not json", {"text": "also fine"}])
    code, _, err = call_tool(
        "train_tokenizer",
        "--input",
        tmp_path / "bad.jsonl",
        "--vocab-size",
        "300",
        "--output",
        tmp_path / "t.model",
        capsys=capsys,
    )
    assert code == 1
    assert f"{tmp_path / 'bad.jsonl'}:2: invalid JSON" in err
    assert not (tmp_path / "t.model").exists()
    code, _, err = call_tool(
        "train_tokenizer",
        "--input",
        tmp_path / "nothing*.jsonl",
        "--output",
        tmp_path / "t.model",
        capsys=capsys,
    )
    assert code == 1 and "no file matches" in err


def test_shipped_demo_tokenizer_is_reproducible(tmp_path, sample_data_dir, demo_tokenizer_path,
                                                capsys):  # fmt: skip
    """The shipped model is exactly what the tool trains from the shipped corpus."""
    out = tmp_path / "demo.model"
    code, _, _ = call_tool("train_tokenizer", "--input", f"{sample_data_dir}/*.jsonl",
                           "--vocab-size", "4000", "--output", out, capsys=capsys)  # fmt: skip
    assert code == 0
    assert out.read_bytes() == open(demo_tokenizer_path, "rb").read()


def test_sample_corpus_is_reproducible(tmp_path, sample_data_dir):
    """examples/data/*.jsonl are exactly the output of make_sample_corpus.py (default seed)."""
    import importlib.util
    import os

    path = os.path.join(sample_data_dir, "make_sample_corpus.py")
    spec = importlib.util.spec_from_file_location("make_sample_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    corpora = mod.build(seed=1234)
    assert set(corpora) == {"zh_text", "en_text", "parallel", "instruct"}
    for name, records in corpora.items():
        mod._write_jsonl(str(tmp_path / f"{name}.jsonl"), records)
        shipped = open(os.path.join(sample_data_dir, f"{name}.jsonl"), "rb").read()
        assert (tmp_path / f"{name}.jsonl").read_bytes() == shipped, name
    kinds = {("conversations" in r) for r in corpora["instruct"]}
    assert kinds == {True, False}, "both single-turn and multi-turn records"


def test_shipped_32k_tokenizer_is_reproducible(tmp_path, bilingual_32k_path, capsys):
    """examples/tokenizer/bilingual_32k.model is what `make tokenizer-32k` trains (same bytes)."""
    import importlib.util
    import os

    path = os.path.join(
        os.path.dirname(bilingual_32k_path), "..", "data", "make_bilingual_corpus.py"
    )
    spec = importlib.util.spec_from_file_location("make_bilingual_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    corpus = tmp_path / "corpus.jsonl"
    mod.generate(str(corpus), 30)
    out = tmp_path / "t.model"
    code, _, _ = call_tool("train_tokenizer", "--input", corpus, "--vocab-size", "32000",
                           "--threads", "1", "--output", out, capsys=capsys)  # fmt: skip
    assert code == 0
    assert out.read_bytes() == open(bilingual_32k_path, "rb").read()
    # LLaMA-like: the template and common words of both languages are whole pieces.
    sp = spm.SentencePieceProcessor(model_file=bilingual_32k_path)
    assert sp.get_piece_size() == 32000
    pieces = sp.encode("### Response:中国的首都是北京。", out_type=str)
    assert "▁Response" in pieces and not any(p.startswith("<0x") for p in pieces)
