"""Chinese vocabulary expansion (chatflow/vocab.py, tools/expand_vocab.py).

The "old" tokenizer is English-only (trained here on en_text.jsonl in well under a second), like
LLaMA2's for most Chinese characters: they fall back to UTF-8 byte pieces.
"""

from __future__ import annotations

import glob
import logging
import os

import pytest
import sentencepiece as spm
import torch
from conftest import call_tool

from chatflow import vocab
from chatflow.tokenizer import Tokenizer
from chatflow.tokenizer_training import train as train_tokenizer
from chatflow.vocab_resize import resize_hf_model

pytestmark = pytest.mark.unit

MIXED = "ChatFlow 今天北京的天气非常热，气温大约22度。 The model learns 中文 quickly!"


@pytest.fixture(scope="module")
def en_model(tmp_path_factory, sample_data_dir) -> str:
    path = str(tmp_path_factory.mktemp("tok") / "en.model")
    train_tokenizer([os.path.join(sample_data_dir, "en_text.jsonl")], path, 800)
    return path


@pytest.fixture(scope="module")
def expanded(en_model, sample_data_dir) -> vocab.ExpansionResult:
    old = vocab.load_proto(en_model)
    mined = vocab.mine_corpus(
        sorted(glob.glob(os.path.join(sample_data_dir, "*.jsonl"))), old, 8076
    )
    return vocab.expand_model(old, [c for c, _ in mined])


def _sp(proto: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto)


def test_old_pieces_unchanged_and_new_appended(en_model, expanded, tmp_path):
    old, new = _sp(vocab.load_proto(en_model)), _sp(expanded.model_proto)
    assert expanded.old_vocab_size == old.get_piece_size() == 800
    assert new.get_piece_size() == expanded.new_vocab_size == 800 + len(expanded.added)
    for i in range(800):  # control, byte-fallback and normal pieces: same id, piece, score, type
        assert (new.id_to_piece(i), new.get_score(i)) == (old.id_to_piece(i), old.get_score(i))
        assert new.is_byte(i) == old.is_byte(i) and new.is_control(i) == old.is_control(i)
    assert [new.id_to_piece(i) for i in range(800, new.get_piece_size())] == expanded.added
    assert "的" in expanded.added and "。" in expanded.added and "，" in expanded.added
    # Same ids, same strict LLaMA2 control ids: the project's tokenizer wrapper accepts it.
    (tmp_path / "zh.model").write_bytes(expanded.model_proto)
    tok = Tokenizer(str(tmp_path / "zh.model"))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, expanded.new_vocab_size)


def test_mining_is_frequency_ordered_and_deterministic(en_model, sample_data_dir):
    old = vocab.load_proto(en_model)
    files = [os.path.join(sample_data_dir, "zh_text.jsonl")]
    a, b = vocab.mine_corpus(files, old, 20), vocab.mine_corpus(files, old, 20)
    assert a == b and len(a) == 20 and a[0][0] == "。"
    assert [k for _, k in a] == sorted((k for _, k in a), reverse=True)


def test_new_pieces_are_single_tokens_and_text_shrinks(en_model, expanded):
    old, new = _sp(vocab.load_proto(en_model)), _sp(expanded.model_proto)
    inner = vocab.in_word_processor(expanded.model_proto)
    for i, piece in enumerate(expanded.added, start=800):
        assert inner.encode(piece) == [i]
        assert new.encode("a" + piece)[-1] == i  # also after other text
    assert expanded.not_single_token == []
    zh = "今天北京的天气非常热，气温大约22度。"
    assert len(new.encode(zh)) < len(old.encode(zh)) / 2
    # English text never touches the new pieces: identical tokenization.
    en = "The quick brown fox jumps over the lazy dog, twice."
    assert new.encode(en) == old.encode(en)


@pytest.mark.parametrize(
    "text", [MIXED, "量子力学与相对论 qubit", "  两个空格\t和 tab\n换行", "“引号”…"]
)
def test_round_trip_mixed_text(expanded, text):
    new = _sp(expanded.model_proto)
    assert new.decode(new.encode(text)) == text


def test_demo_tokenizer_add_file(demo_tokenizer_path, tmp_path, caplog, capsys):
    chars = tmp_path / "chars.txt"
    chars.write_text("量\n论\n\n的\n量\n北京大学\n", encoding="utf-8")  # 的: present; 量: twice
    out = tmp_path / "demo_zh.model"
    with caplog.at_level(logging.WARNING):
        code, stdout, err = call_tool(
            "expand_vocab",
            "--tokenizer-model",
            demo_tokenizer_path,
            "--add-chars",
            chars,
            "--output",
            out,
            capsys=capsys,
        )
    assert code == 0, err
    assert "added 3 normal pieces, vocab 4000 -> 4003 (1 already present, 1 repeated)" in stdout
    assert "already in the vocabulary: '的'" in caplog.text
    new = Tokenizer(str(out))
    assert [new.id_to_piece(i) for i in (4000, 4001, 4002)] == ["量", "论", "北京大学"]
    assert new.decode(new.encode(MIXED)) == MIXED


def test_user_defined_pieces(en_model):
    res = vocab.expand_model(vocab.load_proto(en_model), ["北京", "▁中文", "的"], "user_defined")
    new = _sp(res.model_proto)
    assert new.encode("在北京学中文的人", out_type=str).count("北京") == 1
    assert "▁中文" in new.encode("学习 中文", out_type=str)
    assert res.not_single_token == []


def test_mean_init_matches_slow_reference(en_model, expanded):
    old_proto = vocab.load_proto(en_model)
    old = _sp(old_proto)
    sources = vocab.new_piece_sources(old_proto, expanded.model_proto)
    weight = torch.randn(800, 16, generator=torch.Generator().manual_seed(0))
    out = vocab.expand_embedding(weight, sources)
    assert out.shape == (800 + len(expanded.added), 16)
    assert torch.equal(out[:800], weight)
    for i, piece in enumerate(expanded.added):
        # Independent reference: a character absent from the old vocabulary is its UTF-8 bytes.
        ids = [old.piece_to_id(f"<0x{b:02X}>") for b in piece.encode("utf-8")]
        assert sources[i] == ids
        ref = torch.stack([weight[j] for j in ids]).mean(0)
        torch.testing.assert_close(out[800 + i], ref, rtol=0, atol=1e-6)


def test_word_initial_piece_uses_word_initial_tokenization(en_model):
    old_proto = vocab.load_proto(en_model)
    old = _sp(old_proto)
    res = vocab.expand_model(old_proto, ["▁the", "▁thequick", "quick"])  # ▁the exists
    assert res.skipped_existing == ["▁the"]
    sources = vocab.new_piece_sources(old_proto, res.model_proto)
    # "▁thequick" is how "thequick" appears at a word start; "quick" without the boundary marker.
    assert sources[0] == old.encode("thequick")
    assert old.id_to_piece(sources[1][0])[0] != "▁"
    assert old.decode(sources[1]) == "quick"
    # NORMAL multi-character words need a BPE merge path; these have none, and are reported.
    assert res.not_single_token == ["▁thequick", "quick"]


def test_mean_init_bf16_and_validation():
    w = torch.randn(10, 4).to(torch.bfloat16)
    out = vocab.expand_embedding(w, [[3, 4, 5]])
    assert out.dtype == torch.bfloat16 and torch.equal(out[:10], w)
    torch.testing.assert_close(out[10], w[3:6].float().mean(0).bfloat16(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"source ids must lie in \[0, 10\)"):
        vocab.expand_embedding(w, [[10]])


def _tiny_llama(path: str, vocab_size: int, tied: bool = False) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    LlamaForCausalLM(config).save_pretrained(path)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_resize(en_model, expanded, tmp_path, tied):
    from transformers import LlamaForCausalLM

    src, dst = str(tmp_path / "old"), str(tmp_path / "new")
    _tiny_llama(src, 800, tied)
    old_proto = vocab.load_proto(en_model)
    stats = resize_hf_model(src, dst, old_proto, expanded.model_proto)
    v_new = expanded.new_vocab_size
    assert stats == {"old_rows": 800, "new_rows": v_new}
    before, after = LlamaForCausalLM.from_pretrained(src), LlamaForCausalLM.from_pretrained(dst)
    assert after.config.vocab_size == v_new
    with open(os.path.join(dst, "tokenizer.model"), "rb") as f:
        assert f.read() == expanded.model_proto
    sources = vocab.new_piece_sources(old_proto, expanded.model_proto)
    for get in ("get_input_embeddings", "get_output_embeddings"):
        w_old, w_new = getattr(before, get)().weight, getattr(after, get)().weight
        assert w_new.shape == (v_new, 32) and torch.equal(w_new[:800], w_old)
        for i in (0, len(sources) // 2, len(sources) - 1):
            ref = torch.stack([w_old[j] for j in sources[i]]).mean(0)
            torch.testing.assert_close(w_new[800 + i], ref, rtol=0, atol=1e-6)
    ids = torch.tensor([_sp(old_proto).encode("The weather is nice today.")])
    with torch.no_grad():
        l_old, l_new = before(ids).logits, after(ids).logits
    assert l_new.shape[-1] == v_new
    torch.testing.assert_close(l_new[..., :800], l_old, rtol=1e-5, atol=1e-5)


def test_hf_resize_errors(en_model, expanded, tmp_path):
    old_proto = vocab.load_proto(en_model)
    with pytest.raises(FileNotFoundError, match="not an HF model directory"):
        resize_hf_model(str(tmp_path), str(tmp_path / "o"), old_proto, expanded.model_proto)
    _tiny_llama(str(tmp_path / "m"), 900)
    with pytest.raises(ValueError, match="embedding has 900 rows but the old tokenizer has 800"):
        resize_hf_model(str(tmp_path / "m"), str(tmp_path / "o"), old_proto, expanded.model_proto)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty"):
        resize_hf_model(
            str(tmp_path / "m"), str(tmp_path / "full"), old_proto, expanded.model_proto
        )
    other = vocab.expand_model(vocab.load_proto(en_model), ["甲"]).model_proto
    with pytest.raises(ValueError, match="id 800 changed from .甲. to .。.: not an expansion"):
        vocab.new_piece_sources(other, expanded.model_proto)  # id 800: "甲" vs "。"


def test_bad_inputs(en_model, tmp_path, capsys):
    def run(*args):
        return call_tool("expand_vocab", "--tokenizer-model", *args, capsys=capsys)

    out = str(tmp_path / "x.model")
    code, _, err = run(str(tmp_path / "nope.model"), "--add-chars", "c.txt", "--output", out)
    assert code == 1 and "nope.model: tokenizer model not found" in err
    code, _, err = run(en_model, "--add-chars", str(tmp_path / "nope.txt"), "--output", out)
    assert code == 1 and "nope.txt: piece list not found" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    code, _, err = run(en_model, "--add-chars", str(empty), "--output", out)
    assert code == 1 and "no pieces to add (the file is empty)" in err
    present = tmp_path / "present.txt"
    present.write_text("▁the\nhe\n", encoding="utf-8")
    code, _, err = run(en_model, "--add-chars", str(present), "--output", out)
    assert (
        code == 1 and "nothing to add: all 2 distinct piece(s) are already in the vocabulary" in err
    )
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("北京\n你 好\n", encoding="utf-8")
    code, _, err = run(en_model, "--add-chars", str(spaced), "--output", out)
    assert code == 1 and "spaced.txt:2: piece '你 好' contains whitespace" in err
    bad = tmp_path / "bad.model"
    bad.write_text("hello, not a model")
    code, _, err = run(str(bad), "--add-chars", str(spaced), "--output", out)
    assert code == 1 and "bad.model: not a sentencepiece model" in err
    assert not os.path.exists(out)  # nothing written on failure
    with pytest.raises(ValueError, match="list is empty"):
        vocab.expand_model(vocab.load_proto(en_model), [])
    with pytest.raises(ValueError, match="piece_type must be one of"):
        vocab.expand_model(vocab.load_proto(en_model), ["甲"], "control")


def test_cli_mine_and_resize(en_model, demo_tokenizer_path, sample_data_dir, tmp_path, capsys):
    _tiny_llama(str(tmp_path / "old"), 800)
    out = tmp_path / "zh.model"
    code, stdout, err = call_tool(
        "expand_vocab", "--tokenizer-model", en_model, "--mine-corpus",
        os.path.join(sample_data_dir, "*.jsonl"), "--top-n", "100", "--output", out,
        "--hf-model-dir", tmp_path / "old", "--output-hf-dir", tmp_path / "new", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "added 100 normal pieces, vocab 800 -> 900" in stdout
    assert "tokens per Chinese character on 2000 sample texts: 3.000 -> " in stdout
    assert "embeddings 800 -> 900 rows" in stdout
    assert (tmp_path / "zh.vocab").read_text(encoding="utf-8").count("\n") == 900
    assert (tmp_path / "new" / "tokenizer.model").read_bytes() == out.read_bytes()
    # Mining a corpus whose characters are all pieces already (the demo tokenizer's own corpus).
    code, _, err = call_tool(
        "expand_vocab", "--tokenizer-model", demo_tokenizer_path, "--mine-corpus",
        os.path.join(sample_data_dir, "zh_text.jsonl"), "--output", tmp_path / "d.model",
        capsys=capsys,
    )  # fmt: skip
    assert code == 1 and "nothing to add: every CJK character of the corpus is a piece" in err


def test_expansion_job_validates_its_sources(tmp_path):
    from chatflow.vocab_expansion import VocabExpansionJob

    with pytest.raises(ValueError, match="exactly one"):
        VocabExpansionJob("a.model", str(tmp_path / "b.model"))
    with pytest.raises(ValueError, match="exactly one"):
        VocabExpansionJob("a.model", "b.model", add_chars="c.txt", mine_corpus=["d.jsonl"])
    with pytest.raises(ValueError, match="go together"):
        VocabExpansionJob("a.model", "b.model", add_chars="c.txt", hf_model_dir="hf")
