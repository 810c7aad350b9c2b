"""Input readers (chatflow/data/*_reader.py, readers.py): every layout into the same shards.

Oracles: the same records as plain JSON Lines through the existing path, sentencepiece over the
texts, pyarrow's own readers, the stdlib / zstandard decoders.
"""

from __future__ import annotations

import base64
import bz2
import csv
import gzip
import json
import lzma
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import zstandard
from conftest import ROOT

from chatflow.data.indexed_dataset import IndexedDataset
from chatflow.data.input_source import DamagedInputError, InputError
from chatflow.data.jsonl_reader import JsonlError, lookup
from chatflow.data.output_guard import RejectLimitError
from chatflow.data.preprocess import PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, preprocess
from chatflow.data.templates import ParallelTemplate

ZH = os.path.join(ROOT, "examples", "data", "zh_text.jsonl")
PARALLEL = os.path.join(ROOT, "examples", "data", "parallel.jsonl")


def _run(inputs, out, tok, *, workers=0, on_error="fail", block_bytes=4096, job=None, **enc):
    paths = [str(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    return preprocess(
        PreprocessJob(
            inputs=paths, output_prefix=str(out), tokenizer_model=tok,
            encoding=PreprocessConfig(**enc), on_error=on_error, workers=workers,
            block_bytes=block_bytes, **(job or {}),
        )
    )  # fmt: skip


def _docs(prefix) -> list[list[int]]:
    ds = IndexedDataset(str(prefix))
    return [ds[i].tolist() for i in range(len(ds))]


def _bytes(prefix) -> tuple[bytes, bytes]:
    return open(f"{prefix}.bin", "rb").read(), open(f"{prefix}.idx", "rb").read()


def _texts(path=ZH, key="text") -> list[str]:
    return [json.loads(x)[key] for x in open(path, encoding="utf-8")]


def _expected(tok, texts) -> list[list[int]]:
    sp = spm.SentencePieceProcessor(model_file=tok)
    return [[sp.bos_id()] + sp.encode(t) for t in texts]


@pytest.fixture(scope="module")
def jsonl_oracle(tmp_path_factory, demo_tokenizer_path):
    """zh_text.jsonl through the plain JSON Lines path: the shard bytes every layout must match."""
    out = tmp_path_factory.mktemp("oracle") / "o"
    _run(ZH, out, demo_tokenizer_path)
    return _bytes(f"{out}_text_document")


@pytest.mark.unit
def test_streamed_json_array_matches_jsonl(tmp_path, demo_tokenizer_path, jsonl_oracle):
    records = [json.loads(x) for x in open(ZH, encoding="utf-8")]
    src = tmp_path / "alpaca_like.json"  # pretty-printed, many times the block size
    src.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    assert os.path.getsize(src) > 20 * 4096
    s = _run(src, tmp_path / "a", demo_tokenizer_path, block_bytes=4096)
    assert s.documents == len(records) and s.skipped == 0
    assert _bytes(tmp_path / "a_text_document") == jsonl_oracle
    assert _docs(tmp_path / "a_text_document") == _expected(demo_tokenizer_path, _texts())


@pytest.mark.unit
def test_json_array_bad_elements_are_located(tmp_path, demo_tokenizer_path):
    src = tmp_path / "a.jsonl"  # content decides: a .jsonl name does not matter
    src.write_bytes(
        b'  [{"text": "\xe4\xb8\x80"}, 42, {"text": ""},\n {"text": "\xff"}, {"text": "b"}]'
    )
    s = _run(
        src, tmp_path / "o", demo_tokenizer_path, on_error="skip", block_bytes=8,
        job={"max_reject_fraction": 1.0},
    )  # fmt: skip
    assert (s.documents, s.skipped) == (2, 3)
    rejects = [json.loads(x) for x in open(s.rejects_file, encoding="utf-8")]
    assert [(r["element"], r["error"]) for r in rejects] == [
        (2, "expected a JSON object, got int"),
        (3, "field 'text' is empty"),
        (4, "invalid UTF-8 at byte 10"),
    ]
    assert base64.b64decode(rejects[2]["raw_base64"]) == b'{"text": "\xff"}'
    with pytest.raises(JsonlError, match=r"a.jsonl: element 2: expected a JSON object"):
        _run(src, tmp_path / "f", demo_tokenizer_path)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "一"}, {"text": "二"', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken.json: element 2: .*byte offset"):
        _run(broken, tmp_path / "b", demo_tokenizer_path)


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["gz", "zst", "bz2", "xz", "zst-misnamed"])
def test_compressed_jsonl(tmp_path, demo_tokenizer_path, jsonl_oracle, kind):
    data = open(ZH, "rb").read()
    packed = {
        "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
        "zst": zstandard.ZstdCompressor().compress,
        "zst-misnamed": zstandard.ZstdCompressor().compress,
    }[kind](data)  # fmt: skip
    # Magic bytes decide: a zstd file named .jsonl is still read as zstd.
    src = tmp_path / ("c.jsonl" if kind == "zst-misnamed" else f"c.jsonl.{kind}")
    src.write_bytes(packed)
    _run(src, tmp_path / "o", demo_tokenizer_path)
    assert _bytes(tmp_path / "o_text_document") == jsonl_oracle


@pytest.mark.dist
def test_zst_from_standard_input(tmp_path, demo_tokenizer_path, jsonl_oracle):
    # Two zstd frames in a row, as `cat a.zst b.zst` gives.
    data = open(ZH, "rb").read()
    cut = data.index(b"\n", len(data) // 2) + 1
    c = zstandard.ZstdCompressor()
    stdin = c.compress(data[:cut]) + c.compress(data[cut:])
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", "-",
         "--output-prefix", str(tmp_path / "s"), "--tokenizer-model", demo_tokenizer_path,
         "--workers", "2", "--no-progress"],
        input=stdin, capture_output=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert _bytes(tmp_path / "s_text_document") == jsonl_oracle


@pytest.mark.unit
def test_dotted_keys(tmp_path, demo_tokenizer_path):
    assert lookup({"a.b": 1, "a": {"b": 2}}, "a.b") == 1  # a literal dotted key wins
    assert lookup({"a": {"b": {"c": 3}}}, "a.b.c") == 3
    assert lookup({"a": {"b.c": 4}}, "a.b.c") == 4
    flat = [json.loads(x) for x in open(PARALLEL, encoding="utf-8")][:60]
    nested = tmp_path / "wmt.jsonl"  # the HF wmt19 layout
    nested.write_text(
        "".join(json.dumps({"translation": r, "meta": {"i": i}}) + "\n" for i, r in enumerate(flat))
    )
    plain = tmp_path / "flat.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in flat))
    tmpl = ParallelTemplate(zh_key="translation.zh", en_key="translation.en")
    _run(nested, tmp_path / "n", demo_tokenizer_path, format="parallel", parallel=tmpl)
    _run(plain, tmp_path / "p", demo_tokenizer_path, format="parallel")
    assert _bytes(tmp_path / "n_parallel_document") == _bytes(tmp_path / "p_parallel_document")


def _parquet(path, texts, row_group_size):
    table = pa.table({"id": list(range(len(texts))), "text": texts, "extra": ["x"] * len(texts)})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.mark.unit
def test_parquet_row_groups(tmp_path, demo_tokenizer_path, jsonl_oracle):
    src = tmp_path / "train-00000-of-00001.parquet"
    _parquet(src, _texts(), row_group_size=37)
    assert pq.ParquetFile(src).num_row_groups > 5
    _run(src, tmp_path / "o", demo_tokenizer_path)
    oracle = pq.read_table(src).column("text").to_pylist()  # pyarrow's own read
    assert _docs(tmp_path / "o_text_document") == _expected(demo_tokenizer_path, oracle)
    assert _bytes(tmp_path / "o_text_document") == jsonl_oracle
    # A null and a missing column: located by row / named with the file.
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["一", None, "三"]}), bad, row_group_size=1)
    s = _run(bad, tmp_path / "b", demo_tokenizer_path, on_error="skip")
    (rej,) = [json.loads(x) for x in open(s.rejects_file, encoding="utf-8")]
    assert (rej["file"], rej["row"], s.documents) == (str(bad), 2, 2)
    with pytest.raises(JsonlError, match=r"bad.parquet: row 2: missing key 'text'"):
        _run(bad, tmp_path / "f", demo_tokenizer_path)
    with pytest.raises(InputError, match=r"bad.parquet: no column 'body'"):
        _run(bad, tmp_path / "c", demo_tokenizer_path, json_keys=("body",))


@pytest.mark.unit
def test_parquet_chat_records(tmp_path, demo_tokenizer_path):
    # Mixed Alpaca and multi-turn records in one table: absent fields are nulls there, and must
    # read as absent (not as a null "conversations").
    src = os.path.join(ROOT, "examples", "data", "instruct.jsonl")
    records = [json.loads(x) for x in open(src, encoding="utf-8")]
    assert {"conversations", "instruction"} <= {k for r in records for k in r}
    table = pa.Table.from_struct_array(pa.array(records))  # schema inferred from every row
    pq.write_table(table, tmp_path / "i.parquet", row_group_size=64)
    _run(src, tmp_path / "j", demo_tokenizer_path, format="instruction")
    _run(tmp_path / "i.parquet", tmp_path / "p", demo_tokenizer_path, format="instruction")
    for suffix in ("", "_loss_mask"):
        j, p = (f"{tmp_path}/{x}_instruction_document{suffix}" for x in "jp")
        assert _bytes(p) == _bytes(j)


def _save_to_disk(path, texts, shards=2):
    """The layout of ``datasets.Dataset.save_to_disk``: IPC *stream* files + two JSON files."""
    os.makedirs(path)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    per = (len(texts) + shards - 1) // shards
    for i, name in enumerate(names):
        part = texts[i * per : (i + 1) * per]
        table = pa.table({"text": part, "meta": [{"source": "s"}] * len(part)})
        with ipc.new_stream(os.path.join(path, name), table.schema) as w:
            for batch in table.to_batches(max_chunksize=25):
                w.write_batch(batch)
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump({"_data_files": [{"filename": n} for n in names], "_split": "train"}, f)
    with open(os.path.join(path, "dataset_info.json"), "w") as f:
        json.dump({"features": {"text": {"dtype": "string", "_type": "Value"}}}, f)


@pytest.mark.unit
def test_save_to_disk_directory(tmp_path, demo_tokenizer_path, jsonl_oracle):
    ds = tmp_path / "zh_ds"
    _save_to_disk(ds, _texts())
    s = _run(ds, tmp_path / "o", demo_tokenizer_path)
    assert s.inputs == [str(ds)]
    oracle = []
    for name in sorted(os.listdir(ds)):
        if name.endswith(".arrow"):
            with pa.memory_map(str(ds / name)) as src:
                oracle += ipc.open_stream(src).read_all().column("text").to_pylist()
    assert _docs(tmp_path / "o_text_document") == _expected(demo_tokenizer_path, oracle)
    assert _bytes(tmp_path / "o_text_document") == jsonl_oracle


@pytest.fixture()
def parallel_oracle(tmp_path, demo_tokenizer_path):
    rows = [json.loads(x) for x in open(PARALLEL, encoding="utf-8")][:80]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _run(src, tmp_path / "ref", demo_tokenizer_path, format="parallel")
    return rows, _bytes(tmp_path / "ref_parallel_document")


@pytest.mark.unit
def test_aligned_files(tmp_path, demo_tokenizer_path, parallel_oracle):
    rows, oracle = parallel_oracle
    zh, en = tmp_path / "train.zh", tmp_path / "train.en"
    zh.write_text("".join(r["zh"] + "\n" for r in rows), encoding="utf-8")
    en.write_text("".join(r["en"] + "\r\n" for r in rows), encoding="utf-8")
    job = {"aligned_inputs": [str(en)]}
    _run(zh, tmp_path / "o", demo_tokenizer_path, format="parallel", job=job)
    assert _bytes(tmp_path / "o_parallel_document") == oracle
    en.write_text("".join(r["en"] + "\n" for r in rows[:-3]), encoding="utf-8")
    with pytest.raises(InputError) as e:
        _run(zh, tmp_path / "m", demo_tokenizer_path, format="parallel", job=job)
    msg = str(e.value)
    assert str(zh) in msg and str(en) in msg and f"line {len(rows) - 2} " in msg


@pytest.mark.unit
def test_tsv_and_csv(tmp_path, demo_tokenizer_path, parallel_oracle):
    rows, oracle = parallel_oracle
    tsv = tmp_path / "pairs.tsv"  # header, columns by name, raw quotes allowed
    tsv.write_text(
        "id\ten\tzh\n" + "".join(f"{i}\t{r['en']}\t{r['zh']}\n" for i, r in enumerate(rows)),
        encoding="utf-8",
    )
    _run(tsv, tmp_path / "t", demo_tokenizer_path, format="parallel")
    # Locators are file lines, and the direction hash uses them: the header shifts every pair by
    # one line, as a blank first line does in JSON Lines.
    shifted = tmp_path / "shifted.jsonl"
    shifted.write_text("\n" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _run(shifted, tmp_path / "ref2", demo_tokenizer_path, format="parallel")
    assert _bytes(tmp_path / "t_parallel_document") == _bytes(tmp_path / "ref2_parallel_document")
    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as f:  # no header
        csv.writer(f).writerows([[r["zh"], r["en"]] for r in rows])
    tmpl = ParallelTemplate(zh_key="0", en_key="1")
    _run(tmp_path / "pairs.csv", tmp_path / "c", demo_tokenizer_path, format="parallel",
         parallel=tmpl)  # fmt: skip
    assert _bytes(tmp_path / "c_parallel_document") == oracle
    # A short row is rejected at its own line (header is line 1).
    tsv.write_text("zh\ten\n一\tone\n二\n", encoding="utf-8")
    s = _run(tsv, tmp_path / "s", demo_tokenizer_path, format="parallel", on_error="skip")
    (rej,) = [json.loads(x) for x in open(s.rejects_file, encoding="utf-8")]
    assert (rej["line"], rej["error"], s.documents) == (3, "missing key 'en'", 1)


@pytest.mark.unit
@pytest.mark.parametrize(
    "boundary,docs,lines",
    [
        ("line", ["一段", "二段 a", "二段 b", "三"], None),
        ("blank-line", ["一段", "二段 a\n二段 b", "三"], [1, 3, 6]),
        ("file", ["一段\n\n二段 a\n二段 b\n \n三"], None),
    ],
)
def test_plain_text_boundaries(tmp_path, demo_tokenizer_path, boundary, docs, lines):
    src = tmp_path / "corpus.txt"
    src.write_bytes("一段\n\n二段 a\r\n二段 b\n \n三\n".encode())
    job = {"text_boundary": boundary}
    s = _run(src, tmp_path / "o", demo_tokenizer_path, block_bytes=4, json_keys=("body",), job=job)
    assert _docs(tmp_path / "o_body_document") == _expected(demo_tokenizer_path, docs)
    if lines:  # locators: the first line of each paragraph
        src.write_bytes(b"ok\n\n\xff bad\nmore\n\n\n\xfe\n")
        job["max_reject_fraction"] = 1.0  # 2 of 3 paragraphs are bad
        s = _run(src, tmp_path / "r", demo_tokenizer_path, on_error="skip", job=job)
        assert [json.loads(x)["line"] for x in open(s.rejects_file)] == [3, 7]


def _three_files(tmp_path, damaged: bytes):
    texts = _texts()
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:100]))
    (d / "b.jsonl.gz").write_bytes(damaged)
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[300:]))
    return str(d / "*.jsonl*"), texts


@pytest.mark.unit
def test_truncated_gz_in_a_glob_skip_mode(tmp_path, demo_tokenizer_path):
    texts = _texts()
    middle = "".join(json.dumps({"text": t}) + "\n" for t in texts[100:300]).encode()
    packed = gzip.compress(middle)
    pattern, _ = _three_files(tmp_path, packed[: len(packed) * 2 // 3])
    s = _run(pattern, tmp_path / "o", demo_tokenizer_path, on_error="skip")
    docs = _docs(tmp_path / "o_text_document")
    a, c = _expected(demo_tokenizer_path, texts[:100]), _expected(demo_tokenizer_path, texts[300:])
    kept = len(docs) - len(a) - len(c)
    assert docs[:100] == a and docs[len(docs) - len(c) :] == c
    assert 0 < kept < 200  # the records before the damage are kept
    assert docs[100 : 100 + kept] == _expected(demo_tokenizer_path, texts[100 : 100 + kept])
    (dmg,) = s.damaged_files
    assert dmg["file"].endswith("b.jsonl.gz") and dmg["last_good"] == kept
    assert dmg["offset"] == len(b"".join(middle.splitlines(keepends=True)[:kept]))
    rejects = [json.loads(x) for x in open(s.rejects_file, encoding="utf-8")]
    assert [(r["file"], r["line"], r["offset"]) for r in rejects] == [
        (dmg["file"], kept + 1, dmg["offset"])
    ]
    with pytest.raises(DamagedInputError, match=r"b.jsonl.gz: damaged input at byte offset"):
        _run(pattern, tmp_path / "f", demo_tokenizer_path)
    assert not os.path.exists(f"{tmp_path}/f_text_document.idx")


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["zst", "bz2", "xz", "gz-crc", "json-array-gz"])
def test_damaged_compressed_files(tmp_path, demo_tokenizer_path, kind):
    texts = _texts()[:200]
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    if kind == "json-array-gz":
        packed = gzip.compress(json.dumps([{"text": t} for t in texts]).encode())
        packed = packed[: len(packed) // 2]
    elif kind == "gz-crc":  # garbage inside deflate data is only caught by the CRC at the end
        packed = bytearray(gzip.compress(data))
        packed[-8] ^= 0xFF
        packed = bytes(packed)
    else:
        comp = {"zst": zstandard.ZstdCompressor().compress, "bz2": bz2.compress,
                "xz": lzma.compress}[kind]  # fmt: skip
        packed = comp(data)[: len(comp(data)) // 2]
    src = tmp_path / f"d.{kind}"
    src.write_bytes(packed)
    with pytest.raises(DamagedInputError, match=rf"d.{kind}: damaged input at byte offset \d+"):
        _run(src, tmp_path / "f", demo_tokenizer_path)
    try:
        s = _run(src, tmp_path / "o", demo_tokenizer_path, on_error="skip")
    except RejectLimitError:  # the cut left no whole record: nothing published, damage logged
        (entry,) = [json.loads(x) for x in open(tmp_path / "o.rejects.jsonl", encoding="utf-8")]
        assert "damaged input" in entry["error"] and kind in ("zst", "bz2", "xz")
        assert not os.path.exists(tmp_path / "o_text_document.idx")
        return
    assert len(s.damaged_files) == 1 and s.documents < len(texts) + (kind == "gz-crc")
    assert (
        _docs(tmp_path / "o_text_document") == _expected(demo_tokenizer_path, texts)[: s.documents]
    )


@pytest.mark.dist
def test_every_reader_is_worker_count_independent(tmp_path, demo_tokenizer_path):
    texts = _texts()
    rows = [json.loads(x) for x in open(PARALLEL, encoding="utf-8")][:120]
    (tmp_path / "arr.json").write_text(json.dumps([{"text": t} for t in texts] + [1], indent=1))
    _parquet(tmp_path / "p.parquet", texts, row_group_size=33)
    _save_to_disk(tmp_path / "ds", texts, shards=3)
    (tmp_path / "t.txt").write_text("\n\n".join(texts[:150]) + "\n", encoding="utf-8")
    (tmp_path / "x.tsv").write_text("zh\ten\n" + "".join(f"{r['zh']}\t{r['en']}\n" for r in rows))
    (tmp_path / "a.zh").write_text("".join(r["zh"] + "\n" for r in rows))
    (tmp_path / "a.en").write_text("".join(r["en"] + "\n" for r in rows))
    with open(tmp_path / "x.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["zh", "en"]] + [[r["zh"], r["en"]] for r in rows])
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    (tmp_path / "l.jsonl.xz").write_bytes(lzma.compress(lines))
    (tmp_path / "t2.txt.bz2").write_bytes(bz2.compress(b"\n".join(t.encode() for t in texts)))
    middle = gzip.compress(lines)
    pattern, _ = _three_files(tmp_path, middle[: len(middle) // 2])
    cases = [
        ([tmp_path / "arr.json"], {}, {}),
        ([tmp_path / "p.parquet"], {}, {}),
        ([tmp_path / "ds"], {}, {}),
        ([tmp_path / "t.txt"], {}, {"text_boundary": "blank-line"}),
        ([tmp_path / "x.tsv"], {"format": "parallel"}, {}),
        ([tmp_path / "a.zh"], {"format": "parallel"}, {"aligned_inputs": [str(tmp_path / "a.en")]}),
        ([tmp_path / "t2.txt.bz2"], {}, {"text_boundary": "line"}),
        ([tmp_path / "x.csv"], {"format": "parallel"}, {}),
        ([tmp_path / "l.jsonl.xz"], {}, {}),
        ([pattern], {}, {}),
    ]
    for i, (inputs, enc, job) in enumerate(cases):
        outs = []
        for w in (0, 1, 2):
            out = tmp_path / f"o{i}_{w}"
            s = _run(inputs, out, demo_tokenizer_path, workers=w, on_error="skip",
                     block_bytes=2048, job=job, **enc)  # fmt: skip
            prefix = s.outputs[0]
            outs.append((_bytes(prefix), open(s.rejects_file, "rb").read(), s.damaged_files))
        assert outs[0][0][0] and outs[0] == outs[1] == outs[2], inputs


@pytest.mark.unit
def test_locators_do_not_depend_on_block_size(tmp_path, demo_tokenizer_path):
    (tmp_path / "a.json").write_text('[{"text": "a"}, 1, {"text": "b"}, {}, {"text": "c"}]')
    (tmp_path / "t.tsv").write_text("zh\ten\n一\tone\n\n二\n三\tthree\n四\n")
    (tmp_path / "p.txt").write_bytes(b"a\nb\n\n\xff\n\nc\n\n\n\xfe\nd\n")
    cases = [
        ("a.json", {}, {}, "element", [2, 4]),
        ("t.tsv", {"format": "parallel"}, {}, "line", [4, 6]),
        ("p.txt", {}, {"text_boundary": "blank-line"}, "line", [4, 9]),
    ]
    for name, enc, job, unit, expected in cases:
        seen = []
        for block in (1, 7, 1 << 20):
            s = _run(tmp_path / name, tmp_path / f"o{block}", demo_tokenizer_path,
                     on_error="skip", block_bytes=block, job=job, **enc)  # fmt: skip
            seen.append([json.loads(x) for x in open(s.rejects_file, encoding="utf-8")])
        assert [r[unit] for r in seen[0]] == expected, name
        assert seen[0] == seen[1] == seen[2], name


@pytest.mark.unit
def test_array_elements_across_chunk_boundaries():
    from chatflow.data.json_reader import iter_array_blocks

    values = [{"text": "長" * 300_000, "n": 1.5e-3}, 12345.678, -7, "s\u00e9\n", True, None, []]
    data = json.dumps(values, ensure_ascii=False, indent=1).encode()
    for size in (1, 7, 4096):  # pieces cut anywhere: inside numbers, escapes, UTF-8 sequences
        # The byte-by-byte case without the huge element, to stay fast.
        data_ = json.dumps(values[1:], indent=1).encode() if size == 1 else data
        chunks = iter(data_[i : i + size] for i in range(0, len(data_), size))
        blocks = list(iter_array_blocks("x", chunks, 1 << 16))
        got = [json.loads(x) for _, b in blocks for x in b.splitlines()]
        assert got == json.loads(data_), size
        assert [f for f, _ in blocks][0] == 1
