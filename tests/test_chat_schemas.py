"""Chat and instruction schemas (chatflow.data.chat_schemas), repairs and their accounting in
preprocessing, and the same schemas in tokenizer training (with long-paragraph splitting)."""

from __future__ import annotations

import json
import logging
import os

import pytest
import sentencepiece as spm
from conftest import call_tool

from chatflow.data.chat_schemas import (
    ASSISTANT,
    ROLE_ALIASES,
    USER,
    ChatSchemaConfig,
    Conversation,
    RepairPolicy,
    Turn,
    detect_schema,
    parse_map,
    parse_record,
    schema_texts,
)
from chatflow.data.indexed_dataset import IndexedDataset
from chatflow.data.jsonl_reader import RecordError
from chatflow.data.preprocess import PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, preprocess
from chatflow.data.templates import InstructionTemplate, loss_mask_prefix
from chatflow.text_split import split_to_limit
from chatflow.tokenizer_training import TrainingCounts, record_texts, train

U = lambda t, c=None: Turn(USER, t, c)  # noqa: E731
A = lambda t: Turn(ASSISTANT, t)  # noqa: E731

SHAREGPT = {
    "system": "Be brief.",
    "conversations": [
        {"from": "human", "value": "法国的首都是哪里？"},
        {"from": "gpt", "value": "巴黎。"},
        {"from": "human", "value": "In English?"},
        {"from": "gpt", "value": "Paris."},
    ],
}
# The same chat in the other layouts: all must give the same conversation.
EXPECTED = Conversation(
    "Be brief.", (U("法国的首都是哪里？"), A("巴黎。"), U("In English?"), A("Paris."))
)
MESSAGES = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "法国的首都是哪里？"},
        {"role": "assistant", "content": "巴黎。"},
        {"role": "user", "content": "In English?"},
        {"role": "assistant", "content": "Paris."},
    ]
}
ALPACA_HISTORY = {
    "system": "Be brief.",
    "history": [["法国的首都是哪里？", "巴黎。"]],
    "instruction": "In English?",
    "input": "",
    "output": "Paris.",
}


def _conv(record, **cfg):
    return parse_record(record, ChatSchemaConfig(**cfg))


# ----------------------------------------------------------------------------------- schemas
@pytest.mark.unit
@pytest.mark.parametrize(
    "record,schema",
    [(SHAREGPT, "sharegpt"), (MESSAGES, "messages"), (ALPACA_HISTORY, "alpaca")],
)
def test_each_schema_gives_the_same_conversation(record, schema):
    parsed = parse_record(record)
    assert parsed.schema == schema == detect_schema(record)
    assert parsed.conversation == EXPECTED
    assert parsed.repairs == () and parsed.unused == ()
    # Explicitly chosen, the same result.
    assert _conv(record, schema=schema).conversation == EXPECTED


@pytest.mark.unit
def test_firefly_and_plain_alpaca():
    firefly = {
        "conversation_id": 7,
        "category": "Brainstorming",
        "conversation": [
            {"human": "法国的首都是哪里？", "assistant": "巴黎。"},
            {"human": "In English?", "assistant": "Paris."},
        ],
    }
    parsed = parse_record(firefly)
    assert parsed.schema == "firefly"
    assert parsed.conversation == Conversation(None, EXPECTED.turns)
    assert parsed.unused == ("category", "conversation_id")
    alpaca = parse_record({"instruction": "Translate.", "input": "你好", "output": "Hello"})
    assert alpaca.conversation == Conversation(None, (U("Translate.", "你好"), A("Hello")))
    # An empty input is "no input", not a repair.
    empty = parse_record({"instruction": "Hi", "input": " ", "output": "Hello", "system": ""})
    assert empty.conversation == Conversation(None, (U("Hi"), A("Hello"))) and not empty.repairs


@pytest.mark.unit
def test_detection_order_and_explicit_schema():
    both = {"messages": MESSAGES["messages"], "conversations": SHAREGPT["conversations"]}
    assert detect_schema(both) == "messages"  # messages comes first
    assert parse_record(both).unused == ("conversations",)  # and the other is reported
    assert _conv(both, schema="sharegpt").conversation == Conversation(None, EXPECTED.turns)
    assert detect_schema({"output": "x"}) == "alpaca"
    with pytest.raises(RecordError, match="expected 'instruction'/'output'.*--field-map"):
        parse_record({"prompt": "hi", "answer": "x"})
    with pytest.raises(RecordError, match="field 'messages' must be a non-empty list"):
        _conv(SHAREGPT, schema="messages")
    with pytest.raises(ValueError, match="chat schema must be one of"):
        ChatSchemaConfig(schema="openai")


@pytest.mark.unit
@pytest.mark.parametrize("alias", sorted(ROLE_ALIASES))
def test_each_role_alias(alias):
    role = ROLE_ALIASES[alias]
    turns = [{"from": alias, "value": "S" if role == "system" else "x"}]
    if role == "system":
        turns += [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    elif role == USER:
        turns += [{"from": "gpt", "value": "a"}]
    else:
        turns = [{"from": "human", "value": "q"}] + turns
    conv = parse_record({"conversations": turns}).conversation
    if role == "system":
        assert conv.system == "S"
    else:
        assert [t.role for t in conv.turns] == [USER, ASSISTANT]
        assert "x" in [t.text for t in conv.turns if t.role == role]
    # Case does not matter (ShareGPT dumps have "Human"/"GPT"), in messages too.
    msgs = [{"role": t["from"].upper(), "content": t["value"]} for t in turns]
    assert parse_record({"messages": msgs}).conversation == conv


@pytest.mark.unit
def test_role_map_and_unknown_roles():
    rec = {"conversations": [{"from": "asker", "value": "q"}, {"from": "bot", "value": "a"}]}
    with pytest.raises(RecordError, match=r"conversations\[0\]\.from: unknown role: got 'asker'"):
        parse_record(rec)
    conv = _conv(rec, role_map={"bot": "assistant", "Asker": "user"}).conversation
    assert conv == Conversation(None, (U("q"), A("a")))
    # A map overrides a built-in alias.
    flipped = {"conversations": [{"from": "gpt", "value": "q"}, {"from": "human", "value": "a"}]}
    conv = _conv(flipped, role_map={"gpt": "user", "human": "assistant"}).conversation
    assert conv == Conversation(None, (U("q"), A("a")))
    with pytest.raises(ValueError, match="target must be user, assistant or system"):
        ChatSchemaConfig(role_map={"bot": "robot"})
    with pytest.raises(RecordError, match="role must be a string"):
        parse_record({"messages": [{"role": 1, "content": "x"}]})


@pytest.mark.unit
def test_field_map_pclue_and_parse_map():
    pclue = {"input": "文本：天空是蓝的。问题：天空是什么颜色？", "target": "蓝色", "type": "mrc"}
    fm = parse_map("input=instruction,target=output", "--field-map")
    assert fm == {"input": "instruction", "target": "output"}
    parsed = _conv(pclue, field_map=fm)
    assert parsed.schema == "alpaca" and parsed.unused == ("type",)
    assert parsed.conversation == Conversation(None, (U(pclue["input"]), A("蓝色")))
    with pytest.raises(RecordError, match="has both 'target' and 'output'"):
        _conv({**pclue, "output": "x"}, field_map=fm)
    for bad in ("input", "a=b,a=c", "=x", "a="):
        with pytest.raises(ValueError, match="--field-map"):
            parse_map(bad, "--field-map")
    with pytest.raises(ValueError, match="two fields map to one name"):
        ChatSchemaConfig(field_map={"a": "output", "b": "output"})


# ----------------------------------------------------------------------------------- repairs
def _sg(*turns):
    return {"conversations": [{"from": f, "value": v} for f, v in turns]}


REPAIR_CASES = {
    "trailing_user": (
        _sg(("human", "q"), ("gpt", "a"), ("human", "unanswered")),
        Conversation(None, (U("q"), A("a"))),
        r"conversations\[2\]: a trailing human turn without a response",
    ),
    "leading_assistant": (
        _sg(("gpt", "Hello! How can I help?"), ("human", "q"), ("gpt", "a")),
        Conversation(None, (U("q"), A("a"))),
        r"conversations\[0\]: a leading gpt turn",
    ),
    "merged_turns": (
        _sg(("human", "q1"), ("human", "q2"), ("gpt", "a1"), ("gpt", "a2")),
        Conversation(None, (U("q1\nq2"), A("a1\na2"))),
        r"conversations\[1\]: a second user turn in a row",
    ),
    "empty_turn": (
        _sg(("human", "q"), ("gpt", "a"), ("human", "q2"), ("gpt", "  ")),
        # The empty answer goes, then q2 is a trailing user turn: two repairs.
        Conversation(None, (U("q"), A("a"))),
        r"conversations\[3\]: an empty gpt turn",
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize("kind", sorted(REPAIR_CASES))
def test_each_repair_and_its_strict_error(kind):
    record, expected, message = REPAIR_CASES[kind]
    parsed = parse_record(record)
    assert parsed.conversation == expected
    assert parsed.repairs[0] == kind
    assert (
        len(parsed.details) == len(parsed.repairs)
        and message.replace("\\", "") in (parsed.details[0])
    )
    with pytest.raises(RecordError, match=message + ".*not repaired"):
        _conv(record, repair=RepairPolicy.named("strict"))
    # Switching off only this rule rejects the record too; the other rules stay on.
    off = {
        "trailing_user": "drop_trailing_user",
        "leading_assistant": "drop_leading_assistant",
        "merged_turns": "merge_consecutive",
        "empty_turn": "drop_empty_turns",
    }[kind]
    with pytest.raises(RecordError, match="not repaired"):
        _conv(record, repair=RepairPolicy(**{off: False}))


@pytest.mark.unit
def test_empty_turn_then_merge_and_counts():
    # Dropping the empty answer makes q1 and q2 neighbours, which are then merged.
    rec = _sg(("human", "q1"), ("gpt", ""), ("human", "q2"), ("gpt", "a"))
    parsed = parse_record(rec)
    assert parsed.conversation == Conversation(None, (U("q1\nq2"), A("a")))
    assert parsed.repairs == ("empty_turn", "merged_turns")
    sep = _conv(rec, repair=RepairPolicy(merge_separator="\n\n")).conversation
    assert sep.turns[0].text == "q1\n\nq2"
    # Top-level system plus a system turn: one system text.
    both = {"system": "A.", **_sg(("system", "B."), ("human", "q"), ("gpt", "a"))}
    parsed = parse_record(both)
    assert parsed.conversation.system == "A.\nB." and parsed.repairs == ("merged_turns",)
    # Alpaca history is repaired like any chat.
    hist = {"history": [["", "r0"], ["p1", "r1"]], "instruction": "i", "output": "o"}
    parsed = parse_record(hist)
    assert parsed.conversation == Conversation(None, (U("p1"), A("r1"), U("i"), A("o")))
    assert parsed.repairs == ("empty_turn", "leading_assistant")


@pytest.mark.unit
@pytest.mark.parametrize(
    "record,match",
    [
        (_sg(("gpt", "a")), "no trainable response.*leading gpt turn"),
        (_sg(("human", "q"), ("human", "q2")), "no trainable response.*trailing human"),
        (_sg(("human", " "), ("gpt", "")), "no trainable response.*empty human"),
        (_sg(("human", "q"), ("system", "s"), ("gpt", "a")), "'system' as the first turn"),
        (_sg(("human", "q"), ("gpt", 3)), r"'conversations\[1\].value' must be a string"),
        ({"conversations": [{"value": "q"}]}, "missing 'from'"),
        ({"conversation": [{"human": "q"}]}, r"conversation\[0\]: missing 'assistant'"),
        ({"instruction": "i", "output": " "}, "'output' is empty"),
        ({"instruction": "i", "output": "o", "history": [["p"]]}, "prompt, response"),
        ({"instruction": "i", "output": "o", "system": 1}, "'system' must be a string"),
    ],
)
def test_records_that_stay_rejected(record, match):
    with pytest.raises(RecordError, match=match):
        parse_record(record)


@pytest.mark.unit
def test_unused_fields_are_named():
    rec = {
        "id": "a1",
        "messages": [
            {"role": "user", "content": "q", "name": "bob"},
            {"role": "assistant", "content": "a", "weight": 1},
        ],
    }
    assert parse_record(rec).unused == ("id", "messages[].name", "messages[].weight")
    # Fields the schema reads are not reported (history, system, input of Alpaca).
    assert parse_record(ALPACA_HISTORY).unused == ()
    assert parse_record({**ALPACA_HISTORY, "category": "x"}).unused == ("category",)


@pytest.mark.unit
def test_rendering_unchanged_for_accepted_records(demo_tokenizer):
    # The segments of an already-accepted ShareGPT chat, written out by hand (today's layout).
    t = InstructionTemplate()
    expected = [
        ("Be brief.\n", False),
        ("### Instruction:法国的首都是哪里？ ### Response:", False),
        ("巴黎。", True),
        ("### Instruction:In English? ### Response:", False),
        ("Paris.", True),
    ]
    assert t.segments(SHAREGPT) == expected
    assert t.segments(MESSAGES) == expected == t.segments(ALPACA_HISTORY)
    assert t.render(EXPECTED) == expected
    assert t.segments({"instruction": "Translate.", "input": "你好", "output": "Hello"})[0] == (
        "### Instruction:Translate.\n你好 ### Response:",
        False,
    )


# ------------------------------------------------------------------------------ preprocessing
CHAT_RECORDS = [
    SHAREGPT,  # 1: clean
    {"id": 2, **_sg(("human", "q"), ("gpt", "a"), ("human", "unanswered"))},  # 2: repaired
    _sg(("gpt", "only an answer")),  # 3: rejected
    {"id": 4, **MESSAGES},  # 4: clean, unused id
    {"conversation": [{"human": "q", "assistant": ""}, {"human": "q2", "assistant": "a2"}]},  # 5
    {"input": "x", "target": "y"},  # 6: rejected without a field map
]


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def _run(src, out, tokenizer, *, workers=0, on_error="skip", block_bytes=None, **chat):
    extra = {} if block_bytes is None else {"block_bytes": block_bytes}
    job = PreprocessJob(
        inputs=[src], output_prefix=str(out), tokenizer_model=tokenizer,
        encoding=PreprocessConfig(format="instruction", chat=ChatSchemaConfig(**chat)),
        on_error=on_error, workers=workers, **extra,
    )  # fmt: skip
    return preprocess(job)


def _docs(prefix):
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


@pytest.mark.unit
def test_preprocess_counts_repairs_and_writes_audit_entries(tmp_path, demo_tokenizer_path, caplog):
    src = _write(tmp_path / "chat.jsonl", CHAT_RECORDS)
    with caplog.at_level(logging.WARNING, logger="chatflow.data.chat_audit"):
        s = _run(src, tmp_path / "o", demo_tokenizer_path)
    (warning,) = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert "'id'" in warning and "2 record(s)" in warning and f"{src}:2" in warning
    assert s.records == 6 and s.documents == 4 and s.skipped == 2
    assert s.repairs == {"empty_turn": 1, "merged_turns": 1, "trailing_user": 1}
    assert s.repaired_records == 2
    assert s.unused_fields == [{"field": "id", "file": src, "line": 2, "count": 2}]
    entries = [json.loads(x) for x in open(tmp_path / "o.rejects.jsonl", encoding="utf-8")]
    assert [e["line"] for e in entries] == [2, 3, 5, 6]  # in input order
    repaired = [e for e in entries if "repaired" in e]
    assert [e["line"] for e in repaired] == [2, 5] and all("error" not in e for e in repaired)
    assert repaired[0]["repaired"] == ["trailing_user"]
    assert repaired[1]["repaired"] == ["empty_turn", "merged_turns"]
    # The ORIGINAL record, byte for byte, so users can audit the repair.
    raw = (tmp_path / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    assert repaired[0]["text"] == raw[1] and repaired[1]["text"] == raw[4]
    assert "no trainable response" in entries[1]["error"]
    # Oracle: a repaired record gives exactly the tokens of its hand-repaired version.
    fixed = [_sg(("human", "q"), ("gpt", "a")), {"conversation": [{"human": "q\nq2",
             "assistant": "a2"}]}]  # fmt: skip
    s2 = _run(_write(tmp_path / "fixed.jsonl", fixed), tmp_path / "f", demo_tokenizer_path)
    assert s2.repairs == {} and s2.unused_fields == []
    docs, ref = (
        _docs(str(tmp_path / "o_instruction_document")),
        _docs(str(tmp_path / "f_instruction_document")),
    )
    assert docs[1] == ref[0] and docs[3] == ref[1]
    # With the field map the pCLUE-like record is read too.
    s3 = _run(src, tmp_path / "m", demo_tokenizer_path, field_map={"input": "instruction",
              "target": "output"})  # fmt: skip
    assert s3.documents == 5 and s3.skipped == 1


@pytest.mark.unit
def test_fail_mode_keeps_repairs_and_strict_rejects(tmp_path, demo_tokenizer_path):
    src = _write(tmp_path / "c.jsonl", CHAT_RECORDS[:2])
    s = _run(src, tmp_path / "o", demo_tokenizer_path, on_error="fail")
    assert s.documents == 2 and s.repairs == {"trailing_user": 1} and s.rejects_file is None
    assert not os.path.exists(tmp_path / "o.rejects.jsonl")
    from chatflow.data.jsonl_reader import JsonlError

    with pytest.raises(JsonlError, match=r"c\.jsonl:2: conversations\[2\]: a trailing human"):
        _run(src, tmp_path / "s", demo_tokenizer_path, on_error="fail",
             repair=RepairPolicy.named("strict"))  # fmt: skip


@pytest.mark.dist
def test_chat_corpus_identical_for_any_workers(tmp_path, demo_tokenizer_path):
    records = []
    for i in range(120):
        base = CHAT_RECORDS[i % len(CHAT_RECORDS)]
        records.append({**base, "n": i} if i % 7 else base)
    src = _write(tmp_path / "chat.jsonl", records)
    seen = {}
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        s = _run(src, out, demo_tokenizer_path, workers=workers, block_bytes=2048)
        files = sorted(p for p in os.listdir(tmp_path) if p.startswith(f"w{workers}"))
        data = {f.split(".", 1)[-1] if f.endswith(".jsonl") else f.split("_", 1)[1]:
                (tmp_path / f).read_bytes() for f in files}  # fmt: skip
        seen[workers] = (data, s.repairs, s.repaired_records, s.unused_fields, s.skipped)
    assert len(seen[0][0]) == 7  # tokens and mask .bin/.idx/.meta.json, rejects
    assert seen[0][1] and seen[0][3][0]["field"] == "id"
    assert seen[0] == seen[1] == seen[2]
    assert os.path.getsize(loss_mask_prefix(str(tmp_path / "w2_instruction_document")) + ".bin")


@pytest.mark.unit
def test_cli_flags_and_summary(tmp_path, demo_tokenizer_path, capsys):
    src = _write(tmp_path / "c.jsonl", [
        {"q": "问题", "a": "答案", "id": 1},
        {"dialog": [{"speaker": "asker", "text": "q"}, {"speaker": "bot", "text": "a"}]},
    ])  # fmt: skip
    args = [
        "--input", src, "--output-prefix", tmp_path / "o", "--tokenizer-model", demo_tokenizer_path,
        "--format", "instruction", "--workers", "0", "--no-progress",
    ]  # fmt: skip
    code, out, _ = call_tool(
        "preprocess_data", *args, "--field-map", "q=instruction,a=output", "--on-error", "skip",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0 and "1 written, 1 skipped" in out
    assert "unused:    field 'id' in 1 record(s), first" in out and "line 1" in out
    src2 = _write(tmp_path / "r.jsonl", [_sg(("human", "q"), ("bot", "a"), ("human", "x"))])
    args[1] = src2
    code, out, err = call_tool("preprocess_data", *args, capsys=capsys)
    assert code == 1 and "unknown role: got 'bot'" in err
    code, out, _ = call_tool("preprocess_data", *args, "--role-map", "bot=assistant", capsys=capsys)
    assert code == 0 and "repairs:   1 record(s) repaired and kept (1 trailing_user)" in out
    code, _, err = call_tool(
        "preprocess_data", *args, "--role-map", "bot=assistant", "--chat-repair", "strict",
        capsys=capsys,
    )  # fmt: skip
    assert code == 1 and "trailing human turn" in err
    code, _, err = call_tool("preprocess_data", *args, "--chat-schema", "messages", capsys=capsys)
    assert code == 1 and "'messages' must be a non-empty list" in err


# ------------------------------------------------------------------------- tokenizer training
@pytest.mark.unit
def test_tokenizer_training_reads_every_schema():
    cases = [
        (MESSAGES, ["Be brief.", "法国的首都是哪里？", "巴黎。", "In English?", "Paris."]),
        (SHAREGPT, ["Be brief.", "法国的首都是哪里？", "巴黎。", "In English?", "Paris."]),
        ({"conversation": [{"human": "h", "assistant": "a"}]}, ["h", "a"]),
        (ALPACA_HISTORY, ["Be brief.", "In English?", "Paris.", "法国的首都是哪里？", "巴黎。"]),
        ({"input": "pclue in", "target": "pclue out", "type": "x"}, ["pclue in", "pclue out"]),
        ({"kind": "Couplet", "input": "上联", "target": "下联"}, ["上联", "下联"]),  # Firefly-1.1M
        ({"text": "plain"}, ["plain"]),
        ({"zh": "你好", "en": "hello"}, ["你好", "hello"]),
    ]
    for record, expected in cases:
        assert sorted(record_texts(record)) == sorted(expected), record
        assert sorted(schema_texts(record)) == sorted(expected)
    # The field map renames first (a layout with its own names).
    assert record_texts({"query": "q", "answer": "a"}, field_map={"query": "instruction",
                        "answer": "output"}) == ["q", "a"]  # fmt: skip
    counts = TrainingCounts()
    assert record_texts({"instruction": "i", "input": "", "output": 3}, counts=counts) == ["i"]
    assert counts.skipped_texts == 2
    with pytest.raises(RecordError, match="no text field found"):
        record_texts({"meta": "x"})


@pytest.mark.unit
def test_split_to_limit():
    en = "The cat sat. " * 20 + "Pi is 3.14 exactly!"
    pieces = split_to_limit(en, 64)
    assert all(len(p.encode()) <= 64 for p in pieces) and len(pieces) > 1
    assert all(p.endswith((".", "!")) for p in pieces)  # cut at sentence ends only
    assert "".join(pieces).replace(" ", "") == en.replace(" ", "")
    assert "Pi is 3.14 exactly!" in pieces[-1]  # no cut inside "3.14"
    zh = "天空是蓝的。" * 30  # Chinese: no space after 。
    pieces = split_to_limit(zh, 50)
    assert "".join(pieces) == zh and all(len(p.encode()) <= 50 for p in pieces)
    assert all(p.endswith("。") for p in pieces)
    solid = "汉字a" * 100  # no sentence end at all: character boundaries
    pieces = split_to_limit(solid, 10)
    assert "".join(pieces) == solid and all(len(p.encode()) <= 10 for p in pieces)
    assert split_to_limit("short", 10) == ["short"]
    with pytest.raises(ValueError):
        split_to_limit("x", 3)


@pytest.mark.unit
def test_long_paragraphs_contribute_to_the_vocabulary(tmp_path, capsys):
    # 21 KB paragraphs (one line each), over sentencepiece's 16,384-byte sentence limit.
    words = ["quokkaberry", "zanthoxylum", "mbirafolk", "xylophonist", "grumblewick"]
    paragraphs = []
    for p in range(12):
        sentences, size = [], 0
        i = p
        while size < 21_000:
            s = f"The {words[i % 5]} met the {words[(i * 3 + 1) % 5]} number {i}. "
            sentences.append(s)
            size += len(s)
            i += 1
        paragraphs.append("".join(sentences).strip())
    assert all(len(x.encode()) > 16384 for x in paragraphs)
    src = _write(tmp_path / "long.jsonl", [{"text": x} for x in paragraphs])
    # The oracle: sentencepiece itself, fed the paragraphs whole, drops every one of them.
    with pytest.raises(RuntimeError, match=r"sentences_\.empty\(\)"):
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(paragraphs), model_writer=open(os.devnull, "wb"),
            model_type="bpe", vocab_size=300, byte_fallback=True, minloglevel=2,
        )  # fmt: skip
    model = tmp_path / "m.model"
    summary = train([src], str(model), 400)
    assert summary.split_paragraphs == 12 and summary.skipped == 0
    assert summary.sentences > 12
    sp = spm.SentencePieceProcessor(model_file=str(model))
    vocab = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    assert {"▁" + w for w in words} <= vocab  # the paragraphs' words were learned
    code, out, _ = call_tool("train_tokenizer", "--input", src, "--output", tmp_path / "c.model",
                             "--vocab-size", "400", capsys=capsys)  # fmt: skip
    assert code == 0 and "split to fit 16384 bytes: 12" in out and "skipped: 0" in out
