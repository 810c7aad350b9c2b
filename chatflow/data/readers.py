"""Choosing the reader of each input and turning it into blocks for the worker pipeline.

Every reader yields ``(first_locator, blob)`` blocks of JSON objects, one per line, the same kind
of block that JSON Lines gives, so :class:`~chatflow.data.preprocess.BlockEncoder` and the output
are the same for every layout and any worker count. What a locator counts (``line``, ``element``
or ``row``) is the reader's :attr:`Reader.unit`; it names the rejects-file field.

Layouts (``--input-format``, default ``auto``):

- ``auto``: a directory is an Arrow / ``save_to_disk`` dataset; otherwise the name without its
  compression suffix decides: ``.parquet`` Parquet, ``.arrow`` Arrow IPC, ``.tsv``/``.csv``
  tabular, ``.txt`` plain text; everything else (and ``-``) is JSON, whose content decides
  between JSON Lines and a JSON array.
- ``json``, ``parquet``, ``arrow``, ``tsv``, ``csv``, ``text``: that layout whatever the name.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from chatflow.data.columnar_reader import is_arrow_dataset_dir, iter_columnar_blocks
from chatflow.data.input_source import InputError, open_input, strip_compression_suffix
from chatflow.data.json_reader import open_json_blocks
from chatflow.data.tabular_reader import iter_aligned_records, iter_tabular_records
from chatflow.data.text_reader import BOUNDARIES, iter_text_records, pack_records

INPUT_FORMATS = ("auto", "json", "parquet", "arrow", "tsv", "csv", "text")
_BY_SUFFIX = {
    ".parquet": "parquet", ".arrow": "arrow", ".tsv": "tsv", ".csv": "csv", ".txt": "text",
}  # fmt: skip


@dataclass
class ReaderOptions:
    """How inputs are read (the parts of a job that are not encoding)."""

    input_format: str = "auto"
    """One of :data:`INPUT_FORMATS`."""
    text_boundary: str = "line"
    """Plain text: ``line``, ``blank-line`` or ``file`` (see :mod:`chatflow.data.text_reader`)."""
    fields: tuple[str, ...] | None = None
    """Record fields the encoder needs (columnar/tabular inputs keep only these); None: all."""
    aligned: list[str] = field(default_factory=list)
    """Aligned second files, one per input (``--input-aligned``); empty when not used."""
    max_record_bytes: int | None = None
    """JSON Lines: lines longer than this are dropped while reading (see
    :mod:`chatflow.data.oversized`); None keeps every line."""

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input format: one of {INPUT_FORMATS}, not {self.input_format!r}")
        if self.text_boundary not in BOUNDARIES:
            raise ValueError(f"text boundary: one of {BOUNDARIES}, not {self.text_boundary!r}")


def detect_format(path: str, requested: str = "auto") -> str:
    """The layout of ``path`` (see the module docstring)."""
    if requested != "auto":
        return requested
    if path != "-" and os.path.isdir(path):
        return "arrow"
    _, ext = os.path.splitext(strip_compression_suffix(path))
    return _BY_SUFFIX.get(ext.lower(), "json")


@dataclass
class Reader:
    """The blocks of one input and what their locators count."""

    unit: str
    blocks: Iterator[tuple[int, bytes]]


def open_reader(
    path: str, options: ReaderOptions, block_bytes: int, aligned: str | None = None
) -> Reader:
    """A :class:`Reader` for ``path`` (``aligned``: its aligned second file, if any)."""
    fields = options.fields
    if aligned is not None:
        if not fields or len(fields) != 2:
            raise InputError("aligned inputs need the two keys of the parallel format")
        sa, _ = open_input(path)
        sb, _ = open_input(aligned)
        recs = iter_aligned_records(path, sa, aligned, sb, fields[0], fields[1])
        return Reader("line", _closing(pack_records(recs, block_bytes), sa, sb))
    kind = detect_format(path, options.input_format)
    if kind in ("parquet", "arrow"):
        return Reader("row", iter_columnar_blocks(path, fields, block_bytes))
    stream, _ = open_input(path)
    if kind == "json":
        unit, blocks = open_json_blocks(path, stream, block_bytes, options.max_record_bytes)
        return Reader(unit, _closing(blocks, stream))
    if kind == "text":
        key = fields[0] if fields else "text"
        recs = iter_text_records(path, stream, key, options.text_boundary)
    else:
        recs = iter_tabular_records(path, stream, kind, fields)
    return Reader("line", _closing(pack_records(recs, block_bytes), stream))


def _closing(blocks: Iterator[tuple[int, bytes]], *streams) -> Iterator[tuple[int, bytes]]:
    try:
        yield from blocks
    finally:
        for s in streams:
            if s is not None and getattr(s, "name", None) != "<stdin>":
                s.close()


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Inputs named by ``patterns`` (each glob sorted), in order, without duplicates.

    ``-`` (standard input) and Arrow dataset directories are inputs too.

    Raises:
        FileNotFoundError: a pattern matches nothing, or names neither a file nor a dataset
            directory.
    """
    out: list[str] = []
    for pat in patterns:
        if pat == "-":
            matches = ["-"]
        else:
            matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        if not matches:
            raise FileNotFoundError(f"--input {pat}: no file matches")
        for m in matches:
            if m != "-" and not os.path.isfile(m) and not is_arrow_dataset_dir(m):
                raise FileNotFoundError(f"--input {m}: not a file or an Arrow dataset directory")
            if m not in out:
                out.append(m)
    return out


def known_size(inputs: Sequence[str]) -> int | None:
    """Total bytes of ``inputs`` when that is what will be read (uncompressed files), else None."""
    total = 0
    for p in inputs:
        if p == "-" or os.path.isdir(p) or strip_compression_suffix(p) != p:
            return None
        total += os.path.getsize(p)
    return total


def needed_fields(fmt: str, json_keys: Sequence[str], zh_key: str, en_key: str):
    """The record fields an encoding format uses (None: the whole record, for instructions)."""
    if fmt == "text":
        return tuple(json_keys)
    if fmt == "parallel":
        return (zh_key, en_key)
    return None
