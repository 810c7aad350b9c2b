"""Parallel (and other) corpora from TSV/CSV columns or from two aligned plain-text files.

TSV/CSV columns are named by ``--json-keys``: when every key is an integer, the keys are 0-based
column indexes and the file has no header; otherwise the first line is a header and the keys are
its names (dotted paths do not apply to columns). TSV is split at tabs with no quoting (corpus
TSVs carry raw quotes); CSV follows the usual quoting rules (``csv`` module), so one record may
span lines. A row with too few columns lacks the missing keys and is rejected by the worker.

Aligned files (``--input train.zh --input-aligned train.en``) pair line *n* of one file with line
*n* of the other as ``{zh_key: ..., en_key: ...}``. A pair of two blank lines carries no data and is
skipped; a pair with one blank side is a record with an empty field (rejected, so that the loss is
visible). When one file ends before the other the run stops with an error naming both files and
the first line where one of them has none.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence

from chatflow.data.input_source import InputError
from chatflow.data.text_reader import iter_raw_lines

TABULAR_FORMATS = {"tsv": "\t", "csv": ","}


def _record(obj: dict) -> bytes:
    # ensure_ascii keeps undecodable input (lone surrogates from surrogateescape) as \udcxx
    # escapes, which the worker rejects as invalid Unicode naming the field.
    try:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj).encode("ascii")


def _column_map(path: str, keys: Sequence[str], header: list[str] | None) -> list[tuple[str, int]]:
    if header is None:
        return [(k, int(k)) for k in keys]
    out = []
    for k in keys:
        if k not in header:
            raise InputError(f"{path}: line 1: no column {k!r} in the header ({', '.join(header)})")
        out.append((k, header.index(k)))
    return out


def by_index(keys: Sequence[str] | None) -> bool:
    """True when ``keys`` are all column indexes (the file has no header)."""
    return bool(keys) and all(k.lstrip("-").isdigit() for k in keys)


def iter_tabular_records(
    path: str, stream, kind: str, keys: Sequence[str] | None
) -> Iterator[tuple[int, bytes]]:
    """``(line, record)`` of a TSV/CSV input; ``keys=None`` takes every header column."""
    delim = TABULAR_FORMATS[kind]
    raw_lines = iter_raw_lines(path, stream)
    lines = ((n, raw.decode("utf-8", "surrogateescape")) for n, raw in raw_lines)
    if kind == "tsv":
        rows: Iterator[tuple[int, list[str]]] = ((n, s.split(delim)) for n, s in lines)
    else:
        rows = _csv_rows(lines)
    cols: list[tuple[str, int]] | None = None
    if by_index(keys):
        cols = _column_map(path, keys, None)  # type: ignore[arg-type]
    for n, row in rows:
        if cols is None:  # the header line
            cols = _column_map(path, keys if keys else row, row)
            continue
        if not any(c.strip() for c in row):
            continue
        yield n, _record({k: row[i] for k, i in cols if -len(row) <= i < len(row)})


def _csv_rows(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """CSV rows with the line number where each starts."""
    current = [0]

    def texts() -> Iterator[str]:
        for n, s in lines:
            current[0] = n
            yield s + "\n"

    reader = csv.reader(texts())
    last = 0
    for row in reader:
        yield last + 1, row
        last = current[0]


def iter_aligned_records(
    path_a: str, stream_a, path_b: str, stream_b, key_a: str, key_b: str
) -> Iterator[tuple[int, bytes]]:
    """``(line, {key_a: line of a, key_b: line of b})`` of two aligned files."""
    a = iter_raw_lines(path_a, stream_a)
    b = iter_raw_lines(path_b, stream_b)
    n = 0
    while True:
        la, lb = next(a, None), next(b, None)
        if la is None or lb is None:
            if la is None and lb is None:
                return
            short, long_ = (path_a, path_b) if la is None else (path_b, path_a)
            raise InputError(
                f"aligned inputs differ in length: {short} ends after line {n}, {long_} goes on "
                f"(line {n + 1} is the first line where {short} has none)"
            )
        n += 1
        ta = la[1].decode("utf-8", "surrogateescape")
        tb = lb[1].decode("utf-8", "surrogateescape")
        if ta.strip() or tb.strip():
            yield n, _record({key_a: ta, key_b: tb})
