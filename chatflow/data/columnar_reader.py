"""Parquet files and Arrow / HF ``datasets.save_to_disk`` directories, streamed by record batch.

Rows become JSON objects of only the needed columns (the top-level column of each ``--json-keys``
path, e.g. ``translation`` for ``translation.zh``; every column for the instruction format), one
per line, top-level nulls left out (a table has every column in every row, a record only its
fields), numbered by ``row`` (1-based, across all files of a directory). Parquet is read one row
group at a time (``ParquetFile.iter_batches``), Arrow IPC one record batch at a time.

A ``save_to_disk`` directory holds ``data-00000-of-0000N.arrow`` files (Arrow IPC *stream*
format), ``dataset_info.json`` and ``state.json``; the files are read in the order of
``state.json``'s ``_data_files`` (sorted ``*.arrow`` names when it is missing). A single ``.arrow``
file may be in IPC stream or file format.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from chatflow.data.input_source import InputError

#: Rows per record batch read from Parquet (row groups are split into batches of this size).
BATCH_ROWS = 8192


def is_arrow_dataset_dir(path: str) -> bool:
    """True for a directory written by ``datasets.save_to_disk`` (or holding ``*.arrow`` files)."""
    if not os.path.isdir(path):
        return False
    return os.path.isfile(os.path.join(path, "state.json")) or bool(
        glob.glob(os.path.join(path, "*.arrow"))
    )


def arrow_files(path: str) -> list[str]:
    """The ``.arrow`` files of a ``save_to_disk`` directory, in dataset order."""
    state = os.path.join(path, "state.json")
    if os.path.isfile(state):
        with open(state, encoding="utf-8") as f:
            files = [d["filename"] for d in json.load(f).get("_data_files", [])]
        if files:
            return [os.path.join(path, n) for n in files]
    files = sorted(glob.glob(os.path.join(path, "*.arrow")))
    if not files:
        raise InputError(f"{path}: no .arrow files in this directory")
    return files


def _arrow_batches(path: str) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(path) as source:
        try:
            reader = ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
            return
        yield from reader


def _columns(path: str, schema: pa.Schema, fields: Sequence[str] | None) -> list[str] | None:
    """Top-level columns needed for ``fields`` (dotted paths; a literal column name wins)."""
    if fields is None:
        return None
    names = set(schema.names)
    out: list[str] = []
    for f in fields:
        col = f if f in names else f.split(".", 1)[0]
        if col not in names:
            raise InputError(f"{path}: no column {f!r} (columns: {', '.join(schema.names)})")
        if col not in out:
            out.append(col)
    return out


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def _rows_to_lines(path: str, batch: pa.RecordBatch, first_row: int) -> bytes:
    # Column-wise conversion and one encoder call per value: about twice as fast as
    # ``json.dumps`` of ``batch.to_pylist()`` row dicts, with the same text. A null is an absent
    # field (a table has every column in every row, a JSON record only the fields it has).
    names = [_ENCODE(n) + ": " for n in batch.schema.names]
    cols = [c.to_pylist() for c in batch.columns]
    try:
        if len(cols) == 1:
            head = "{" + names[0]
            text = "".join("{}\n" if v is None else head + _ENCODE(v) + "}\n" for v in cols[0])
        else:
            text = "".join(
                "{" + ", ".join(n + _ENCODE(v) for n, v in zip(names, row) if v is not None) + "}\n"
                for row in zip(*cols)
            )
    except (TypeError, ValueError) as e:
        row = _bad_row(batch, first_row)
        raise InputError(f"{path}: row {row}: a value is not JSON: {e}") from None
    return text.encode("utf-8", "surrogatepass")


def _bad_row(batch: pa.RecordBatch, first_row: int) -> int:
    """The first row of ``batch`` that JSON cannot encode (for the error message)."""
    for i, row in enumerate(batch.to_pylist()):
        try:
            _ENCODE(row)
        except (TypeError, ValueError):
            return first_row + i
    return first_row


def iter_columnar_blocks(
    path: str, fields: Sequence[str] | None, block_bytes: int
) -> Iterator[tuple[int, bytes]]:
    """``(first_row, blob)`` blocks of a Parquet file, ``.arrow`` file or Arrow directory."""
    if os.path.isdir(path):
        files = arrow_files(path)
    else:
        files = [path]
    row = 1
    parts: list[bytes] = []
    size = 0
    first = 1
    for f in files:
        where = f if f != path else path
        try:
            if f.endswith(".parquet") or (not os.path.isdir(path) and _is_parquet(f)):
                pf = pq.ParquetFile(f)
                cols = _columns(where, pf.schema_arrow, fields)
                batches: Iterator[pa.RecordBatch] = pf.iter_batches(BATCH_ROWS, columns=cols)
            else:
                batches = _select(where, _arrow_batches(f), fields)
            for batch in batches:
                # Convert in slices of about one block: a whole batch of long documents can be
                # tens of MB, and 2 x workers of those in flight would multiply the memory.
                step = max(1, int(block_bytes * batch.num_rows / max(batch.nbytes, 1)))
                for start in range(0, batch.num_rows, step):
                    piece = batch.slice(start, step)
                    blob = _rows_to_lines(where, piece, row)
                    row += piece.num_rows
                    parts.append(blob)
                    size += len(blob)
                    if size >= block_bytes:
                        yield first, b"".join(parts)
                        parts, size, first = [], 0, row
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{where}: unreadable after row {row - 1}: {e}") from None
    if parts:
        yield first, b"".join(parts)


def _is_parquet(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _select(
    path: str, batches: Iterator[pa.RecordBatch], fields: Sequence[str] | None
) -> Iterator[pa.RecordBatch]:
    cols = None
    for b in batches:
        if cols is None:
            cols = _columns(path, b.schema, fields) or b.schema.names
        yield b.select(cols)
