"""Preprocessing (chatflow.data.preprocess_run, tools/preprocess_data.py).

Formats, loss masks, determinism, bad input, gzip, atomic output.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import sentencepiece as spm
from conftest import ROOT, encode_segments_oracle, load_tool
from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset

from chatflow.data.indexed_dataset import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter
from chatflow.data.preprocess import PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, PreprocessSummary, preprocess
from chatflow.data.templates import InstructionTemplate, ParallelTemplate, loss_mask_prefix

preprocess_data = load_tool("preprocess_data")


def run(*argv: str) -> int:
    """The command line, in-process: its exit code (output goes to capsys)."""
    return preprocess_data.main([str(a) for a in argv] + ["--no-progress"])


def _preprocess(
    inputs, out, tokenizer: str, *, on_error: str = "fail", workers: int = 1,
    block_bytes: int | None = None, **encoding,
) -> PreprocessSummary:  # fmt: skip
    """The library call: ``inputs`` (one path or a list) preprocessed into ``out``."""
    paths = [str(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    extra = {} if block_bytes is None else {"block_bytes": block_bytes}
    job = PreprocessJob(
        inputs=paths, output_prefix=str(out), tokenizer_model=tokenizer,
        encoding=PreprocessConfig(**encoding), on_error=on_error, workers=workers, **extra,
    )  # fmt: skip
    return preprocess(job)


def _lines(path: str) -> list[dict]:
    return [json.loads(x) for x in open(path, encoding="utf-8")]


def _read_all(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


@pytest.mark.dist
def test_text_format(tmp_path, sample_data_dir, demo_tokenizer_path, capsys):
    src = os.path.join(sample_data_dir, "zh_text.jsonl")
    out = tmp_path / "zh"
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            out,
            "--tokenizer-model",
            demo_tokenizer_path,
            "--append-eod",
            "--workers",
            "2",
        )
        == 0
    )
    summary = capsys.readouterr().out
    texts = [r["text"] for r in _lines(src)]
    assert f"documents: {len(texts)} written, 0 skipped" in summary
    sp = spm.SentencePieceProcessor(model_file=demo_tokenizer_path)
    expected = [[1] + sp.encode(t) + [2] for t in texts]
    assert f"tokens:    {sum(map(len, expected)):,}" in summary
    # Oracle: megatron-core's own reader over our file, sentencepiece over the texts.
    theirs = MegatronIndexedDataset(str(out) + "_text_document")
    assert theirs.index.dtype == np.uint16
    assert [theirs[i].tolist() for i in range(len(theirs))] == expected
    assert len(theirs.document_indices) == len(texts) + 1


@pytest.mark.unit
def test_text_format_several_keys_without_eod(tmp_path, demo_tokenizer_path):
    src = tmp_path / "kv.jsonl"
    src.write_text(
        "\n".join(json.dumps({"title": f"t{i}", "body": f"body {i}"}) for i in range(5)) + "\n"
    )
    summary = _preprocess(
        src, tmp_path / "o", demo_tokenizer_path, workers=0, json_keys=("title", "body")
    )
    assert summary.documents == 5 and summary.outputs == [
        str(tmp_path / "o_title_document"),
        str(tmp_path / "o_body_document"),
    ]
    sp = spm.SentencePieceProcessor(model_file=demo_tokenizer_path)
    assert _read_all(str(tmp_path / "o_title_document")) == [
        [1] + sp.encode(f"t{i}") for i in range(5)
    ]
    assert _read_all(str(tmp_path / "o_body_document")) == [
        [1] + sp.encode(f"body {i}") for i in range(5)
    ]


@pytest.mark.dist
def test_parallel_format(tmp_path, sample_data_dir, demo_tokenizer_path):
    src = os.path.join(sample_data_dir, "parallel.jsonl")
    tpl = ParallelTemplate(zh_to_en="ZH: {zh}\nEN: {en}")
    _preprocess(
        src, tmp_path / "p", demo_tokenizer_path, format="parallel", seed=11, append_eod=True,
        parallel=tpl,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=demo_tokenizer_path)
    texts = [tpl.render(r, 11, 0, n) for n, r in enumerate(_lines(src), start=1)]
    assert _read_all(str(tmp_path / "p_parallel_document")) == [
        [1] + sp.encode(t) + [2] for t in texts
    ]
    assert any(t.startswith("ZH: ") for t in texts) and any(
        t.startswith("翻译成中文") for t in texts
    )


@pytest.mark.dist
def test_instruction_format_and_mask(
    tmp_path, sample_data_dir, demo_tokenizer, demo_tokenizer_path
):
    src = os.path.join(sample_data_dir, "instruct.jsonl")
    prefix = str(tmp_path / "sft") + "_instruction_document"
    summary = _preprocess(
        src, tmp_path / "sft", demo_tokenizer_path, format="instruction", workers=2
    )
    assert summary.outputs == [prefix, loss_mask_prefix(prefix)]
    tokens, mask = IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(tokens.sequence_lengths, mask.sequence_lengths)
    np.testing.assert_array_equal(tokens.document_indices, mask.document_indices)
    records = _lines(src)
    assert len(tokens) == len(records)
    tpl = InstructionTemplate()
    for i, rec in enumerate(records):
        # Oracle: the segments as one text, split at their boundaries; prompt tokens 0, response
        # tokens and their EOS 1.
        exp_ids, exp_mask = [1], [0]
        segs = tpl.segments(rec)
        encoded = encode_segments_oracle(demo_tokenizer.model_path, [t for t, _ in segs])
        for (_, trained), ids in zip(segs, encoded, strict=True):
            ids = ids + [2] if trained else ids
            exp_ids += ids
            exp_mask += [int(trained)] * len(ids)
        assert tokens[i].tolist() == exp_ids, i
        assert mask[i].tolist() == exp_mask, i
    # Token shards stay readable by megatron-core unchanged. (Keep the reader alive: its __del__
    # unmaps the file under any view still in use.)
    theirs = MegatronIndexedDataset(prefix)
    assert theirs[3].tolist() == tokens[3].tolist()
    theirs_mask = MegatronIndexedDataset(loss_mask_prefix(prefix))  # the mask shard is one too
    assert theirs_mask.index.dtype == np.uint8 and theirs_mask[3].tolist() == mask[3].tolist()


@pytest.mark.dist
@pytest.mark.parametrize(
    "fmt,src", [("instruction", "instruct.jsonl"), ("parallel", "parallel.jsonl")]
)
def test_worker_count_determinism(tmp_path, sample_data_dir, demo_tokenizer_path, fmt, src):
    outputs = {}
    for workers in ("0", "1", "2"):
        out = tmp_path / f"w{workers}"
        # Small blocks: many tasks, so workers really interleave.
        path = os.path.join(sample_data_dir, src)
        _preprocess(
            [path, path], out, demo_tokenizer_path, format=fmt, workers=int(workers),
            block_bytes=8192,
        )  # fmt: skip
        files = sorted(p for p in os.listdir(tmp_path) if p.startswith(f"w{workers}_"))
        outputs[workers] = {f.split("_", 1)[1]: (tmp_path / f).read_bytes() for f in files}
    assert len(outputs["0"]) == (6 if fmt == "instruction" else 3)  # .bin, .idx, .meta.json
    assert outputs["0"] == outputs["1"] == outputs["2"]


# --------------------------------------------------------------------------------- bad input
GOOD = json.dumps({"text": "好的文本 good text"}).encode()
BAD_CASES = {
    "invalid JSON": b'{"text": "unterminated',
    "missing key 'text'": json.dumps({"body": "x"}).encode(),
    "field 'text' must be a string, got int": json.dumps({"text": 42}).encode(),
    "invalid UTF-8 at byte 10": b'{"text": "\xff\xfe bad"}',
    "field 'text' is empty": json.dumps({"text": "   "}).encode(),
    "expected a JSON object, got list": b'["text"]',
    "invalid Unicode": b'{"text": "lone \\ud800 surrogate"}',
}


def _bad_file(path, bad: bytes) -> None:
    # Line 1 good, line 2 blank (ignored), line 3 bad, line 4 good.
    path.write_bytes(GOOD + b"\n\n" + bad + b"\n" + GOOD + b"\n")


@pytest.mark.dist
@pytest.mark.parametrize("reason", list(BAD_CASES))
def test_bad_input_fail_mode(tmp_path, demo_tokenizer_path, capsys, reason):
    src = tmp_path / "in.jsonl"
    _bad_file(src, BAD_CASES[reason])
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            tmp_path / "o",
            "--tokenizer-model",
            demo_tokenizer_path,
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{src}:3: " in err and reason in err, err
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"], "nothing may be left behind"


@pytest.mark.dist
def test_bad_input_skip_mode(tmp_path, demo_tokenizer_path, capsys):
    src = tmp_path / "in.jsonl"
    bad = list(BAD_CASES.values())
    src.write_bytes(b"\n".join([GOOD] + bad + [GOOD]) + b"\n")
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            tmp_path / "o",
            "--on-error",
            "skip",
            "--tokenizer-model",
            demo_tokenizer_path,
            "--workers",
            "2",
            "--max-reject-fraction",
            "1",
        )
        == 0
    )
    assert f"documents: 2 written, {len(bad)} skipped" in capsys.readouterr().out
    assert len(IndexedDataset(str(tmp_path / "o_text_document"))) == 2
    rejects = _lines(str(tmp_path / "o.rejects.jsonl"))
    assert [r["line"] for r in rejects] == list(range(2, 2 + len(bad)))
    assert all(r["file"] == str(src) for r in rejects)
    for r, (reason, raw) in zip(rejects, BAD_CASES.items()):
        assert reason in r["error"]
        # Nothing is lost: the exact original bytes are recoverable from the rejects file.
        got = base64.b64decode(r["raw_base64"]) if "raw_base64" in r else r["text"].encode()
        assert got == raw


@pytest.mark.dist
def test_instruction_bad_record_skipped(tmp_path, demo_tokenizer_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"instruction": "a", "output": "b"})
        + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "x"}]})
        + "\n"
    )
    summary = _preprocess(
        src, tmp_path / "o", demo_tokenizer_path, format="instruction", on_error="skip"
    )
    assert summary.skipped == 1 and summary.rejects_file == str(tmp_path / "o.rejects.jsonl")
    (rej,) = _lines(str(tmp_path / "o.rejects.jsonl"))
    assert rej["line"] == 2 and "human turn" in rej["error"]
    assert len(IndexedDataset(str(tmp_path / "o_instruction_document_loss_mask"))) == 1


@pytest.mark.dist
def test_gzip_input_same_output(tmp_path, sample_data_dir, demo_tokenizer_path):
    src = os.path.join(sample_data_dir, "en_text.jsonl")
    gz = tmp_path / "en.jsonl.gz"
    with open(src, "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    for name, path in (("plain", src), ("gz", gz)):
        _preprocess(path, tmp_path / name, demo_tokenizer_path, block_bytes=10000)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"plain_text_document{ext}").read_bytes() == (
            tmp_path / f"gz_text_document{ext}"
        ).read_bytes()


@pytest.mark.dist
def test_input_glob_and_errors(tmp_path, sample_data_dir, demo_tokenizer_path, capsys):
    assert (
        run(
            "--input",
            os.path.join(sample_data_dir, "*_text.jsonl"),
            "--output-prefix",
            tmp_path / "both",
            "--tokenizer-model",
            demo_tokenizer_path,
        )
        == 0
    )
    n = sum(
        len(_lines(os.path.join(sample_data_dir, f))) for f in ("en_text.jsonl", "zh_text.jsonl")
    )
    assert len(IndexedDataset(str(tmp_path / "both_text_document"))) == n
    assert (
        run(
            "--input",
            tmp_path / "none*.jsonl",
            "--output-prefix",
            tmp_path / "x",
            "--tokenizer-model",
            demo_tokenizer_path,
        )
        == 1
    )
    assert "no file matches" in capsys.readouterr().err
    assert (
        run(
            "--input",
            os.path.join(sample_data_dir, "parallel.jsonl"),
            "--output-prefix",
            tmp_path / "x",
            "--format",
            "parallel",
            "--json-keys",
            "zh",
            "--tokenizer-model",
            demo_tokenizer_path,
        )
        == 1
    )
    assert "takes 2 keys" in capsys.readouterr().err


# ------------------------------------------------------------------------------ atomicity
def _big_instruct(tmp_path, sample_data_dir, copies: int = 60) -> str:
    data = open(os.path.join(sample_data_dir, "instruct.jsonl"), "rb").read()
    path = tmp_path / "big.jsonl"
    path.write_bytes(data * copies)
    return str(path)


def _kill_mid_write(input_path: str, out, tokenizer: str) -> None:
    """Run preprocess_data.py on ``input_path`` and SIGKILL it (and its workers) mid-write."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"),
           "--input", input_path, "--output-prefix", str(out), "--format", "instruction",
           "--tokenizer-model", tokenizer, "--workers", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 60
        while not any(".tmp" in f for f in os.listdir(out.parent)):  # it has started writing
            assert proc.poll() is None, "finished before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        assert proc.poll() is None, "finished before it could be killed; use a bigger input"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and its worker processes
        proc.wait()


@pytest.mark.dist
def test_killed_run_leaves_previous_output(tmp_path, sample_data_dir, demo_tokenizer_path):
    out = tmp_path / "out" / "sft"
    prefix = str(out) + "_instruction_document"
    small = os.path.join(sample_data_dir, "instruct.jsonl")
    _preprocess(small, out, demo_tokenizer_path, format="instruction", workers=0)
    before = (_read_all(prefix), _read_all(loss_mask_prefix(prefix)))
    _kill_mid_write(_big_instruct(tmp_path, sample_data_dir), out, demo_tokenizer_path)
    assert (_read_all(prefix), _read_all(loss_mask_prefix(prefix))) == before


@pytest.mark.dist
def test_killed_first_run_leaves_no_index(tmp_path, sample_data_dir, demo_tokenizer_path):
    out = tmp_path / "first"
    _kill_mid_write(_big_instruct(tmp_path, sample_data_dir), out, demo_tokenizer_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".idx")]
    for p in (
        str(out) + "_instruction_document",
        loss_mask_prefix(str(out) + "_instruction_document"),
    ):
        with pytest.raises(IndexedDatasetError):
            IndexedDataset(p)


@pytest.mark.unit
def test_crash_between_mask_and_tokens_never_pairs_old_tokens(
    tmp_path, sample_data_dir, demo_tokenizer_path, monkeypatch
):
    """A crash after the new mask is published must not leave the old token shard loadable."""
    out = tmp_path / "sft"
    prefix = str(out) + "_instruction_document"
    src = os.path.join(sample_data_dir, "instruct.jsonl")
    kwargs = dict(format="instruction", workers=0)
    _preprocess(src, out, demo_tokenizer_path, **kwargs)
    real = IndexedDatasetWriter.finalize

    def finalize(self):
        if self.prefix == prefix:  # the token shard: published after the mask
            raise KeyboardInterrupt("simulated crash")
        real(self)

    monkeypatch.setattr(IndexedDatasetWriter, "finalize", finalize)
    with pytest.raises(KeyboardInterrupt):
        _preprocess([src, src], out, demo_tokenizer_path, **kwargs)
    with pytest.raises(IndexedDatasetError, match="index file not found"):
        IndexedDataset(prefix)


@pytest.mark.unit
def test_blocks_agree_with_line_reader(tmp_path):
    """Blocks of any size split back into exactly the lines (and numbers) of a plain reader."""
    from chatflow.data.jsonl_reader import iter_blocks, iter_lines, split_block

    rng = np.random.default_rng(0)
    for trial in range(20):
        lines = [b"x" * int(rng.choice([0, 1, 5, 50, 300])) for _ in range(rng.integers(0, 40))]
        path = tmp_path / f"f{trial}.jsonl"
        path.write_bytes(b"\n".join(lines) + (b"\n" if trial % 2 else b""))
        ref = list(iter_lines(str(path)))
        assert [n for n, _ in ref] == [i + 1 for i, x in enumerate(lines) if x]
        for block in (1, 3, 17, 100, 10000):
            got = [
                x for first, blob in iter_blocks(str(path), block) for x in split_block(first, blob)
            ]
            assert got == ref, (trial, block)


@pytest.mark.dist
def test_only_bad_lines_and_empty_input(tmp_path, demo_tokenizer_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"{oops\n[1]\n")
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            tmp_path / "o",
            "--on-error",
            "skip",
            "--tokenizer-model",
            demo_tokenizer_path,
            "--workers",
            "1",
        )
        == 1
    )
    # Skip mode that writes nothing fails and publishes only the rejects file.
    assert "no document was written (2 records read, 2 rejected)" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "o_text_document.idx"))
    assert len(_lines(str(tmp_path / "o.rejects.jsonl"))) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert (
        run(
            "--input",
            empty,
            "--output-prefix",
            tmp_path / "e",
            "--format",
            "instruction",
            "--tokenizer-model",
            demo_tokenizer_path,
        )
        == 0
    )
    assert len(IndexedDataset(str(tmp_path / "e_instruction_document_loss_mask"))) == 0


@pytest.mark.dist
def test_progress_lines_and_summary(tmp_path, sample_data_dir, demo_tokenizer_path, capsys):
    """Off a terminal, progress is a line every --log-interval documents with all three rates."""
    src = os.path.join(sample_data_dir, "en_text.jsonl")
    code = preprocess_data.main(
        ["--input", src, "--output-prefix", str(tmp_path / "p"), "--tokenizer-model",
         demo_tokenizer_path, "--log-interval", "100", "--block-bytes", "20000"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0
    progress = [x for x in out.err.splitlines() if x.startswith("processed ")]
    assert len(progress) >= 2, out.err
    assert all("docs/s" in x and "tokens/s" in x and "MB/s" in x for x in progress)
    assert "documents: 300 written, 0 skipped" in out.out and "tokens/s" in out.out


@pytest.mark.dist
def test_cli_script_exit_codes(tmp_path, sample_data_dir, demo_tokenizer_path):
    """``python tools/preprocess_data.py`` itself: summary on stdout and 0, ``error:`` and 1."""
    tool = os.path.join(ROOT, "tools", "preprocess_data.py")
    src = os.path.join(sample_data_dir, "zh_text.jsonl")
    base = [sys.executable, tool, "--tokenizer-model", demo_tokenizer_path, "--no-progress"]
    ok = subprocess.run(
        [*base, "--input", src, "--output-prefix", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "documents: " in ok.stdout and ok.stderr == ""
    bad = subprocess.run(
        [*base, "--input", src, "--output-prefix", str(tmp_path / "x"), "--workers", "-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr == "error: --workers must be >= 0, got -1\n"
