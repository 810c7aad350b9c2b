"""Instruction segments encode to what the rendered text says (chatflow.data.segment_encoding).

Oracle: sentencepiece's own encoding of the whole rendered string, with piece offsets. Wherever
none of its pieces crosses a segment boundary, the segment encoding must equal it token for token;
everywhere, decoding must give back the rendered text and every prefix of segments.
"""

from __future__ import annotations

import json
import os

import pytest
import sentencepiece as spm

from chatflow.data.segment_encoding import encode_segments
from chatflow.data.templates import InstructionTemplate
from chatflow.tokenizer import Tokenizer

pytestmark = pytest.mark.unit

EDGE_CASES = [
    {"instruction": "Say hi", "output": " Hi there."},  # a response that starts with a space
    {"instruction": "数一数", "output": "123456。"},  # digits are split one by one
    {"instruction": "表情", "output": "\U0001f600好的"},  # byte-fallback pieces
    {"instruction": "Hello", "input": "world\n", "output": "\n换行开头"},
    {"conversations": [
        {"from": "system", "value": "你是一个助手。"},
        {"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
        {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"},
    ]},
]  # fmt: skip


def _records(sample_data_dir: str) -> list[list[str]]:
    template = InstructionTemplate()
    with open(os.path.join(sample_data_dir, "instruct.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [[text for text, _ in template.segments(r)] for r in records + EDGE_CASES]


def _crosses(offsets: list[tuple[int, int]], boundaries: list[int]) -> bool:
    return any(a < b < e for a, e in offsets for b in boundaries)


@pytest.fixture(params=["demo", "32k"])
def model_path(request, demo_tokenizer_path, bilingual_32k_path) -> str:
    return demo_tokenizer_path if request.param == "demo" else bilingual_32k_path


def test_tokens_match_the_rendered_text(model_path, sample_data_dir):
    tok = Tokenizer(model_path)
    sp = spm.SentencePieceProcessor(model_file=model_path)
    records = _records(sample_data_dir)
    encoded = encode_segments(tok, records)
    lone = tok.piece_to_id("▁")
    equal = crossing = 0
    for segs, ids in zip(records, encoded, strict=True):
        flat = [i for seg in ids for i in seg]
        joined = "".join(segs)
        assert tok.decode(flat) == joined
        # Boundaries fall exactly between segments: every prefix decodes to its prefix text.
        for s in range(1, len(segs)):
            prefix = [i for seg in ids[:s] for i in seg]
            assert tok.decode(prefix) == "".join(segs[:s])
            if not segs[s][:1].isspace():
                assert ids[s][:1] != [lone], f"segment {s} of {segs!r} starts with a lone ▁"
        whole = sp.encode(joined, return_type="offset_mapping")
        bounds = [sum(map(len, segs[:s])) for s in range(1, len(segs))]
        if _crosses(whole["offsets"], bounds):
            crossing += 1
        else:
            assert flat == whole["ids"], segs
            equal += 1
    assert equal > len(records) // 2  # the oracle comparison really ran on most records


def test_segments_encoded_alone_had_the_stray_prefix(model_path, sample_data_dir):
    """The defect fixed here: a segment encoded alone starts with ``▁`` (lone, or glued to its
    first piece), so the shard said ``### Response: 答案`` where the template says no space."""
    tok = Tokenizer(model_path)
    records = [r for r in _records(sample_data_dir) if "\u4e00" <= r[1][:1] <= "\u9fff"]
    assert len(records) > 10
    alone = tok.encode_batch([r[1] for r in records])
    assert all(tok.id_to_piece(ids[0]).startswith("▁") for ids in alone)
    joined = encode_segments(tok, records)
    assert not any(tok.id_to_piece(ids[1][0]).startswith("▁") for ids in joined)


def test_a_piece_that_would_cross_is_split_at_the_boundary(demo_tokenizer_path):
    """ "我的朋友" is one piece of the demo model; cut between prompt and response, it is split."""
    tok = Tokenizer(demo_tokenizer_path)
    sp = spm.SentencePieceProcessor(model_file=demo_tokenizer_path)
    segs = ["### Instruction:我的", "朋友在学校。"]
    whole = sp.encode("".join(segs), return_type="offset_mapping")
    assert _crosses(whole["offsets"], [len(segs[0])])  # the case is real for this model
    ids = encode_segments(tok, [segs])[0]
    assert tok.decode(ids[0]) == segs[0] and tok.decode(ids[0] + ids[1]) == "".join(segs)
    assert ids[1] == tok.encode_continuation_batch([segs[1]])[0]


def test_empty_and_single_segment_records(demo_tokenizer):
    out = encode_segments(demo_tokenizer, [[], ["只有一段"], ["a", "b"]])
    assert out[0] == []
    assert out[1] == [demo_tokenizer.encode("只有一段")]
    assert demo_tokenizer.decode(out[2][0] + out[2][1]) == "ab"


def test_continuation_survives_pickling(demo_tokenizer):
    import pickle

    clone = pickle.loads(pickle.dumps(demo_tokenizer))
    texts = ["答案", " x"]
    assert clone.encode_continuation_batch(texts) == demo_tokenizer.encode_continuation_batch(texts)
    with pytest.raises(TypeError):
        demo_tokenizer.encode_continuation_batch("not a list")
