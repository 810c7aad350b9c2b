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
from chatflow.data.preprocess import PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, preprocess

DEEP = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = b'{"text": "x", "n": ' + b"7" * 100_000 + b"}"

# (raw line, fragment of the reason)
BAD_RECORDS = [
    (DEEP, "nested too deeply"),
    (HUGE_INT, "digits"),
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
