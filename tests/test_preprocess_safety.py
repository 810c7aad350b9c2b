"""Failure behaviour of preprocessing: per-record failures, limits, no hangs, refusals.

See docs/data.md, "Failure behaviour".
"""

from __future__ import annotations

import glob
import json
import os
import random

import pytest

from chatflow.data.jsonl_reader import JsonlError, RecordError, parse_line
from chatflow.data.output_guard import OutputOverlapError, RejectLimitError
from chatflow.data.preprocess import PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, preprocess

DEEP = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = b'{"text": "x", "n": ' + b"7" * 100_000 + b"}"

# (raw line, fragment of the reason)
BAD_RECORDS = [
    (DEEP, "nested too deeply"),
    (HUGE_INT, "an integer of more than 4,300 digits"),
    (b'{"text": "a", "text": "b"}', "duplicate key 'text'"),
    (b'{"text": "a", "m": {"k": 1, "k": 2}}', "duplicate key 'k'"),
    (b'{"text": "a", "x": NaN}', "NaN is not a JSON value"),
    (b'{"text": "a", "x": Infinity}', "Infinity is not a JSON value"),
    (b'{"text": "a", "x": -Infinity}', "-Infinity is not a JSON value"),
]


def _job(inputs, out, tokenizer, **kw) -> PreprocessJob:
    encoding = kw.pop("encoding", PreprocessConfig())
    return PreprocessJob(
        inputs=[str(p) for p in inputs], output_prefix=str(out), tokenizer_model=tokenizer,
        encoding=encoding, **kw,
    )  # fmt: skip


def _write_lines(path, lines: list[bytes]) -> str:
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return str(path)


def _good(i: int) -> bytes:
    return json.dumps({"text": f"document number {i} with some words"}).encode()


@pytest.mark.unit
@pytest.mark.parametrize(("raw", "reason"), BAD_RECORDS)
def test_parse_line_rejects_with_reason(raw, reason):
    with pytest.raises(RecordError, match=None) as e:
        parse_line(raw)
    assert reason in str(e.value)


@pytest.mark.unit
def test_parse_line_still_accepts_valid_json():
    raw = b'{"text": "a", "n": ' + b"9" * 4000 + b', "f": 1e400, "m": {"k": [1, {"k": 2}]}}'
    assert parse_line(raw)["m"] == {"k": [1, {"k": 2}]}
    assert parse_line(b'{"a": {"b": 1}, "b": {"b": 2}}') == {"a": {"b": 1}, "b": {"b": 2}}


@pytest.mark.unit
@pytest.mark.parametrize(("raw", "reason"), BAD_RECORDS)
def test_bad_record_located_in_both_modes(tmp_path, demo_tokenizer_path, raw, reason):
    src = _write_lines(tmp_path / "in.jsonl", [_good(0), _good(1), raw, _good(3)])
    with pytest.raises(JsonlError) as e:
        preprocess(_job([src], tmp_path / "fail", demo_tokenizer_path, workers=0))
    assert (e.value.path, e.value.line) == (src, 3)
    assert reason in e.value.reason
    assert not glob.glob(str(tmp_path / "fail*"))

    job = _job([src], tmp_path / "skip", demo_tokenizer_path, workers=0, on_error="skip")
    summary = preprocess(job)
    assert (summary.documents, summary.skipped) == (3, 1)
    (entry,) = [json.loads(x) for x in open(job.rejects_path, encoding="utf-8")]
    assert (entry["file"], entry["line"]) == (src, 3)
    assert reason in entry["error"]
    assert entry["text"].encode() == raw  # the exact bytes, for inspection


@pytest.mark.unit
def test_bad_records_in_a_json_array(tmp_path, demo_tokenizer_path):
    """The array reader finds the extent of every bad element (deep, huge numbers...) and the
    worker rejects just that element."""
    good = [_good(i) for i in range(len(BAD_RECORDS) + 1)]
    elements = [x for pair in zip(good, [r for r, _ in BAD_RECORDS]) for x in pair] + good[-1:]
    src = tmp_path / "a.json"
    src.write_bytes(b"[" + b",\n".join(elements) + b"]")
    job = _job([src], tmp_path / "o", demo_tokenizer_path, workers=0, on_error="skip")
    job.block_bytes = 4096  # elements longer than a block
    summary = preprocess(job)
    assert (summary.documents, summary.skipped) == (len(good), len(BAD_RECORDS))
    rejects = [json.loads(x) for x in open(job.rejects_path, encoding="utf-8")]
    assert [r["element"] for r in rejects] == [2 * k + 2 for k in range(len(BAD_RECORDS))]
    for r, (_, reason) in zip(rejects, BAD_RECORDS, strict=True):
        assert reason in r["error"]


@pytest.mark.dist
@pytest.mark.timeout(60)
def test_failing_run_with_workers_never_hangs(tmp_path, demo_tokenizer_path):
    """50 failing runs, 2 workers, the bad record at seeded random positions: each raises the
    right error quickly and leaves no temporary file."""
    rng = random.Random(8)
    n = 120
    for rep in range(50):
        bad = rng.randrange(n)
        lines = [_good(i) for i in range(n)]
        lines[bad] = b'{"text": broken'
        src = _write_lines(tmp_path / f"in{rep}.jsonl", lines)
        out = tmp_path / f"out{rep}"
        job = _job([src], out, demo_tokenizer_path, workers=2, block_bytes=rng.choice([64, 300]))
        with pytest.raises(JsonlError) as e:
            preprocess(job)
        assert (e.value.path, e.value.line) == (src, bad + 1)
        assert not glob.glob(str(tmp_path / f"out{rep}*")), "temporary files left"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


@pytest.mark.unit
def test_oversized_record_rejected_in_both_modes(tmp_path, demo_tokenizer_path):
    big = json.dumps({"text": "x" * 5000}).encode()
    src = _write_lines(tmp_path / "in.jsonl", [_good(0), big, _good(2), _good(3)])
    enc = PreprocessConfig(max_document_bytes=1000)
    with pytest.raises(JsonlError) as e:
        preprocess(_job([src], tmp_path / "f", demo_tokenizer_path, workers=0, encoding=enc))
    assert e.value.line == 2
    assert f"record of {len(big):,} bytes is larger than --max-document-bytes 1,000" in str(e.value)
    job = _job(
        [src], tmp_path / "s", demo_tokenizer_path, workers=0, encoding=enc, on_error="skip",
        block_bytes=256,
    )  # fmt: skip
    summary = preprocess(job)
    assert (summary.documents, summary.skipped) == (3, 1)
    (entry,) = [json.loads(x) for x in open(job.rejects_path, encoding="utf-8")]
    assert entry["line"] == 2 and "--max-document-bytes" in entry["error"]


@pytest.mark.unit
def test_skip_mode_reject_limits(tmp_path, demo_tokenizer_path):
    lines = [_good(0), b"{bad", b"{bad", _good(3)]  # half rejected: allowed by default
    src = _write_lines(tmp_path / "half.jsonl", lines)
    job = _job([src], tmp_path / "h", demo_tokenizer_path, workers=0, on_error="skip")
    assert preprocess(job).skipped == 2
    src = _write_lines(tmp_path / "most.jsonl", [_good(0), b"{bad", b"{bad", b"[1]"])
    job = _job([src], tmp_path / "m", demo_tokenizer_path, workers=0, on_error="skip")
    with pytest.raises(RejectLimitError, match=r"3 of 4 records rejected \(75.0%\)"):
        preprocess(job)
    # Nothing published but the rejects file, kept for inspection.
    assert sorted(os.listdir(tmp_path)).count("m.rejects.jsonl") == 1
    assert not [f for f in os.listdir(tmp_path) if f.startswith("m_") or ".tmp" in f]
    assert len(open(job.rejects_path).readlines()) == 3
    job.max_reject_fraction = 1.0
    assert preprocess(job).documents == 1
    src = _write_lines(tmp_path / "none.jsonl", [b"{bad"])
    job = _job([src], tmp_path / "n", demo_tokenizer_path, workers=0, on_error="skip")
    job.max_reject_fraction = 1.0
    with pytest.raises(RejectLimitError, match="no document was written"):
        preprocess(job)


@pytest.mark.unit
@pytest.mark.parametrize("case", ["same", "symlink", "hardlink", "rejects", "in-dir"])
def test_output_that_is_an_input_is_refused(tmp_path, demo_tokenizer_path, case):
    keep = b"\n".join(_good(i) for i in range(3)) + b"\n"
    if case == "in-dir":  # an output prefix inside an Arrow dataset directory given as input
        import pyarrow as pa

        ds = tmp_path / "ds"
        ds.mkdir()
        with pa.OSFile(str(ds / "data-00000-of-00001.arrow"), "wb") as f:
            table = pa.table({"text": ["a b c"]})
            with pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)
        (ds / "state.json").write_text(
            json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
        )
        inputs, out = [ds], ds / "o"
    else:
        victim = tmp_path / {"same": "o_text_document.bin", "symlink": "v.jsonl",
                             "hardlink": "v.jsonl", "rejects": "o.rejects.jsonl"}[case]  # fmt: skip
        victim.write_bytes(keep)
        inputs, out = [victim], tmp_path / "o"
        if case == "symlink":
            os.symlink(victim, tmp_path / "o_text_document.idx")
        if case == "hardlink":
            os.link(victim, tmp_path / "o_text_document.bin")
    before = {
        f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if (tmp_path / f).is_file()
    }
    job = _job(inputs, out, demo_tokenizer_path, workers=0, on_error="skip")
    with pytest.raises(OutputOverlapError):
        preprocess(job)
    after = {
        f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if (tmp_path / f).is_file()
    }
    assert after == before  # nothing written, nothing changed


@pytest.mark.unit
def test_long_texts_encode_like_whole_texts(
    tmp_path, demo_tokenizer, demo_tokenizer_path, monkeypatch
):
    """Huge documents are encoded piece by piece (memory); the ids equal one whole encode."""
    import numpy as np

    from chatflow.data import long_text, segment_encoding
    from chatflow.data import preprocess as pre

    rng = random.Random(3)
    words = ["数据", "模型", " ", "  ", "\t", "the", "x", "é", "e\u0301", "1234", "。", " \n"]
    texts = ["".join(rng.choice(words) for _ in range(rng.randrange(1, 3000))) for _ in range(40)]
    for t in texts:
        whole = demo_tokenizer.encode_batch([t], bos=True, eos=True)[0]
        got = long_text.encode_long(demo_tokenizer, t, True, True, np.int32, rng.choice([5, 64]))
        assert got.tolist() == whole
    assert long_text.cut_points("ab cd  ef", 1) == [2]  # never inside a run of spaces
    # Chinese without spaces is cut after "lonely" characters (。，digits), as a continuation; and
    # a segment that itself continues a line (no dummy prefix) keeps that at its start.
    zh = ["数据", "模型", "。", "，", "我的朋友", "2024", "好", "\n", "é"]
    for _ in range(40):
        t = "".join(rng.choice(zh) for _ in range(rng.randrange(1, 3000)))
        whole = demo_tokenizer.encode_batch([t], bos=True, eos=True)[0]
        pieces = rng.choice([5, 64])
        assert (
            long_text.encode_long(demo_tokenizer, t, True, True, np.int32, pieces).tolist() == whole
        )
        cont = demo_tokenizer.encode_continuation_batch([t])[0]
        got = long_text.encode_long(demo_tokenizer, t, False, False, np.int32, pieces, True)
        assert got.tolist() == cont
    lonely = long_text._lonely_chars(demo_tokenizer.model_proto)
    assert "。" in lonely and len(long_text.cut_plan("数据。" * 100, 10, lonely)) > 5
    # The encoder's long path (threshold lowered) gives the same shards as the normal path.
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    enc = PreprocessConfig(append_eod=True)
    preprocess(_job([src], tmp_path / "n", demo_tokenizer_path, workers=0, encoding=enc))
    monkeypatch.setattr(pre, "LONG_TEXT_CHARS", 100)
    monkeypatch.setattr(long_text, "LONG_TEXT_CHARS", 100)
    preprocess(_job([src], tmp_path / "l", demo_tokenizer_path, workers=0, encoding=enc))
    for ext in (".bin", ".idx"):
        a = (tmp_path / f"n_text_document{ext}").read_bytes()
        assert a == (tmp_path / f"l_text_document{ext}").read_bytes()
    # Instruction records: long segments take the same path, with the same tokens and mask
    # (continuation segments too: their head without the dummy prefix, the rest cut at spaces).
    monkeypatch.setattr(segment_encoding, "LONG_TEXT_CHARS", 100)
    inst = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "instruct.jsonl")
    enc = PreprocessConfig(format="instruction")
    preprocess(_job([inst], tmp_path / "il", demo_tokenizer_path, workers=0, encoding=enc))
    monkeypatch.setattr(pre, "LONG_TEXT_CHARS", 1 << 30)
    monkeypatch.setattr(segment_encoding, "LONG_TEXT_CHARS", 1 << 30)
    preprocess(_job([inst], tmp_path / "in", demo_tokenizer_path, workers=0, encoding=enc))
    for name in ("instruction_document", "instruction_document_loss_mask"):
        for ext in (".bin", ".idx"):
            a = (tmp_path / f"in_{name}{ext}").read_bytes()
            assert a == (tmp_path / f"il_{name}{ext}").read_bytes()


@pytest.mark.unit
def test_drop_oversized_lines_against_split_oracle():
    """The reader-side filter equals "replace each too-long line by its marker", any chunking."""
    from chatflow.data.oversized import drop_oversized_lines, marker, oversized_size

    rng = random.Random(5)
    for _ in range(1500):
        lines = [b"x" * rng.choice([0, 1, 3, 5, 9, 20]) for _ in range(rng.randrange(0, 8))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        limit, size = rng.choice([1, 4, 8, 30]), rng.choice([1, 2, 3, 7, 100])
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        got = b"".join(drop_oversized_lines(iter(chunks), limit))
        want = b"\n".join(marker(len(x)) if len(x) > limit else x for x in data.split(b"\n"))
        assert got == want
    assert oversized_size(marker(123)) == 123 and oversized_size(b'{"a": 1}') is None


def _noop() -> None:
    pass


def _task(x: int) -> int:
    import time

    if x == -1:
        os._exit(7)  # a worker that dies (killed, segfault)
    if x == -2:
        raise KeyError("boom")
    time.sleep((x * 7919 % 5) / 1000)  # uneven task times: results finish out of order
    return x * x


@pytest.mark.dist
@pytest.mark.timeout(30)
def test_ordered_pool_order_bound_and_failures():
    from chatflow.data.worker_pool import OrderedPool, WorkerError

    pulled = []

    def tasks(items):
        for x in items:
            pulled.append(x)
            yield x

    with OrderedPool(3, _noop, (), _task) as pool:
        out = []
        for r in pool.imap(tasks(range(40))):
            out.append(r)
            assert len(pulled) - len(out) <= pool.max_in_flight  # bounded read-ahead
    assert out == [x * x for x in range(40)]
    for bad, match in ((-1, r"died \(exit code 7\)"), (-2, "KeyError: 'boom'")):
        with OrderedPool(2, _noop, (), _task) as pool:
            procs = list(pool._procs)
            with pytest.raises(WorkerError, match=match):
                list(pool.imap([1, 2, bad, 3, 4]))
        assert not any(p.is_alive() for p in procs)  # all stopped on the way out
