"""Parallel and instruction templates: rendering, direction RNG, loss masks, bad records."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encode_segments_oracle

from chatflow.data.jsonl_reader import RecordError
from chatflow.data.templates import (
    EN_TO_ZH,
    ZH_TO_EN,
    InstructionTemplate,
    ParallelTemplate,
    keyed_uniform,
    loss_mask_prefix,
    render_instruction,
)

pytestmark = pytest.mark.unit

PAIR = {"zh": "我喜欢读书。", "en": "I like reading."}


def test_loss_mask_prefix():
    assert loss_mask_prefix("out/sft_instruction_document") == (
        "out/sft_instruction_document_loss_mask"
    )


def test_parallel_directions_are_keyed_and_balanced():
    t = ParallelTemplate()
    dirs = [t.direction(seed=3, source=0, line=n) for n in range(2000)]
    # Same key, same answer, whatever order records are visited in (worker-count independence).
    assert dirs[::-1] == [t.direction(3, 0, n) for n in reversed(range(2000))]
    share = dirs.count(ZH_TO_EN) / len(dirs)
    assert 0.45 < share < 0.55
    assert dirs != [t.direction(4, 0, n) for n in range(2000)], "seed must matter"
    assert dirs != [t.direction(3, 1, n) for n in range(2000)], "source must matter"
    assert 0.0 <= keyed_uniform(1, 2, 3) < 1.0


def test_parallel_render_both_directions():
    t = ParallelTemplate()
    texts = {t.render(PAIR, 0, 0, n) for n in range(50)}
    assert texts == {
        "Translate into English: 我喜欢读书。\nI like reading.",
        "翻译成中文：I like reading.\n我喜欢读书。",
    }
    fixed = ParallelTemplate(zh_to_en="{zh} = {en}", zh_to_en_probability=1.0)
    assert {fixed.render(PAIR, 0, 0, n) for n in range(50)} == {"我喜欢读书。 = I like reading."}
    only_en_zh = ParallelTemplate(zh_to_en_probability=0.0)
    assert {only_en_zh.direction(0, 0, n) for n in range(50)} == {EN_TO_ZH}


def test_parallel_custom_keys_and_bad_records():
    t = ParallelTemplate(zh_key="src", en_key="tgt", zh_to_en_probability=1.0, zh_to_en="{zh}|{en}")
    assert t.render({"src": "你好", "tgt": "hello"}, 0, 0, 1) == "你好|hello"
    with pytest.raises(RecordError, match="missing key 'tgt'"):
        t.render({"src": "你好"}, 0, 0, 1)
    with pytest.raises(RecordError, match="'src' must be a string"):
        t.render({"src": 5, "tgt": "x"}, 0, 0, 1)
    with pytest.raises(RecordError, match="'tgt' is empty"):
        t.render({"src": "你好", "tgt": "  "}, 0, 0, 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"zh_to_en": "{zh} only"}, "must contain {en}"),
        ({"en_to_zh": "{zh} {en} {oops}"}, "unknown placeholder {oops}"),
        ({"zh_to_en": "{zh"}, "malformed"),
        ({"zh_to_en_probability": 1.5}, r"\[0, 1\]"),
        ({"zh_key": "a", "en_key": "a"}, "two different"),
    ],
)
def test_parallel_template_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParallelTemplate(**kwargs)


def test_instruction_template_validation():
    with pytest.raises(ValueError, match="must contain {instruction}"):
        InstructionTemplate(prompt="### Instruction: ### Response:")
    with pytest.raises(ValueError, match="unknown placeholder {output}"):
        InstructionTemplate(prompt="{instruction}{output}")


def test_alpaca_segments():
    t = InstructionTemplate()
    segs = t.segments({"instruction": "计算 2 加 3。", "input": "", "output": "5"})
    assert segs == [("### Instruction:计算 2 加 3。 ### Response:", False), ("5", True)]
    segs = t.segments({"instruction": "Translate.", "input": "你好", "output": "Hello"})
    assert segs[0] == ("### Instruction:Translate.\n你好 ### Response:", False)
    custom = InstructionTemplate(
        prompt="Q: {instruction}\nA:", alpaca_input="{input} ({instruction})"
    )
    assert custom.segments({"instruction": "why", "input": "sky", "output": "blue"})[0] == (
        "Q: sky (why)\nA:",
        False,
    )


def _oracle(tok, segments):
    """Independent reference: token by token, BOS, prompts masked 0, responses + EOS masked 1."""
    ids, mask = [tok.bos_id], [0]
    encoded = encode_segments_oracle(tok.model_path, [text for text, _ in segments])
    for (_, trained), piece in zip(segments, encoded, strict=True):
        ids += piece
        mask += [int(trained)] * len(piece)
        if trained:
            ids.append(tok.eos_id)
            mask.append(1)
    return ids, mask


def test_multi_turn_mask(demo_tokenizer):
    record = {
        "conversations": [
            {"from": "system", "value": "You are helpful."},
            {"from": "human", "value": "法国的首都是哪里？"},
            {"from": "gpt", "value": "巴黎。"},
            {"from": "human", "value": "In English?"},
            {"from": "gpt", "value": "Paris."},
        ]
    }
    t = InstructionTemplate()
    segs = t.segments(record)
    assert [s[1] for s in segs] == [False, False, True, False, True]
    assert segs[0] == ("You are helpful.\n", False)
    ids, mask = render_instruction(record, demo_tokenizer, t)
    assert ids.dtype == np.int32 and mask.dtype == np.uint8 and len(ids) == len(mask)
    exp_ids, exp_mask = _oracle(demo_tokenizer, segs)
    assert ids.tolist() == exp_ids and mask.tolist() == exp_mask
    # Both gpt turns are trained, each ending with EOS; decoding the trained tokens gives them back.
    assert ids[mask == 1].tolist().count(demo_tokenizer.eos_id) == 2
    trained = demo_tokenizer.decode(ids[mask == 1].tolist())
    assert "巴黎。" in trained and "Paris." in trained and "首都" not in trained
    assert ids[0] == demo_tokenizer.bos_id and mask[0] == 0 and ids[-1] == demo_tokenizer.eos_id


def test_alpaca_mask(demo_tokenizer):
    rec = {"instruction": "What is 2 plus 3?", "input": "", "output": "2 + 3 = 5."}
    ids, mask = render_instruction(rec, demo_tokenizer, InstructionTemplate())
    exp_ids, exp_mask = _oracle(demo_tokenizer, InstructionTemplate().segments(rec))
    assert ids.tolist() == exp_ids and mask.tolist() == exp_mask
    assert demo_tokenizer.decode(ids[mask == 0].tolist()) == (
        "### Instruction:What is 2 plus 3? ### Response:"
    )


@pytest.mark.parametrize(
    "record,match",
    [
        ({"instruction": "hi"}, "missing key 'output'"),
        ({"instruction": "hi", "output": ""}, "'output' is empty"),
        ({"instruction": "hi", "input": 3, "output": "x"}, "'input' must be a string"),
        ({"prompt": "hi"}, "expected 'instruction'"),
        ({"conversations": []}, "non-empty list"),
        ({"conversations": "hi"}, "non-empty list"),
        # Issue 8's repair policy drops a leading gpt / trailing human turn instead of rejecting
        # the chat; a chat that is nothing but such a turn still has no response to train on.
        ({"conversations": [{"from": "gpt", "value": "x"}]}, "no trainable.*leading gpt turn"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "no trainable.*trailing human"),
        (
            {"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]},
            "got 'bot'",
        ),
        (
            {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": 1}]},
            r"conversations\[1\].value' must be a string",
        ),
        (
            {"conversations": [{"from": "human", "value": "x"}, {"from": "system", "value": "y"}]},
            "'system' as the first turn",
        ),
        ({"conversations": ["x"]}, r"conversations\[0\] must be an object"),
    ],
)
def test_bad_instruction_records(record, match):
    with pytest.raises(RecordError, match=match):
        InstructionTemplate().segments(record)
