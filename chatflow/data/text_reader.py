"""Plain-text inputs, and the line-placed block packing shared by the line-based readers.

Every line-based reader (plain text, TSV/CSV, aligned files) turns what it reads into JSON objects
and places each on the block line of its *first input line*; the lines in between stay empty
(workers skip empty lines but count them). So a rejected record is reported with the line where
it starts in the user's file, and locators never depend on block size or worker count.

Document boundaries of plain text (``--text-document-boundary``), the text going to the first
``--json-keys`` key:

- ``line``: each non-blank line is a document (its line ending removed).
- ``blank-line``: paragraphs: maximal runs of non-blank lines (a line of only whitespace is
  blank), joined with ``\\n``; located at the paragraph's first line.
- ``file``: the whole input is one document: its lines joined with ``\\n`` (so ``\\r\\n`` becomes
  ``\\n`` and the final line ending is dropped), leading and trailing blank lines included as
  they are; located at line 1.

A line that is not valid UTF-8 is handed on as its raw bytes, so the worker rejects it with the
byte position (and the rejects file keeps it base64-encoded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from chatflow.data.input_source import CompressedDataError, DamagedInputError, iter_chunks

BOUNDARIES = ("line", "blank-line", "file")


def iter_raw_lines(path: str, stream) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` of every line of ``stream``, without ``\\n`` / ``\\r\\n``.

    Raises:
        DamagedInputError: decompression failed; the lines before it were yielded.
    """
    n = 0
    carry: list[bytes] = []  # pieces of a line not yet ended (a list: no quadratic re-copying)
    delivered = 0  # bytes of the lines yielded so far
    try:
        for chunk in iter_chunks(stream):
            if b"\n" not in chunk:
                carry.append(chunk)
                continue
            data = b"".join(carry) + chunk if carry else chunk
            start = 0
            while True:
                end = data.find(b"\n", start)
                if end < 0:
                    break
                n += 1
                yield n, data[start:end].removesuffix(b"\r")
                delivered += end + 1 - start
                start = end + 1
            carry = [data[start:]] if start < len(data) else []
    except CompressedDataError as e:
        raise DamagedInputError(path, delivered, "line", n, e.reason) from None
    if carry:
        yield n + 1, b"".join(carry).removesuffix(b"\r")


def json_line(obj: dict, raw: bytes | None = None) -> bytes:
    """One record line: ``obj`` as JSON (``raw`` instead when given: undecodable input)."""
    if raw is not None:
        return raw
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def pack_records(
    records: Iterator[tuple[int, bytes]], block_bytes: int
) -> Iterator[tuple[int, bytes]]:
    """Blocks with each ``(line, record)`` placed on its line (see the module docstring).

    ``records`` must come in increasing line order. On :class:`DamagedInputError` the records
    read so far are yielded before it propagates.
    """
    parts: list[bytes] = []
    first = 0
    nxt = 0  # the block line the next record would land on
    size = 0
    try:
        for line, rec in records:
            if not parts:
                first, nxt = line, line
            parts.append(b"\n" * (line - nxt) + rec + b"\n")
            size += len(rec) + 1 + line - nxt
            nxt = line + 1
            if size >= block_bytes:
                yield first, b"".join(parts)
                parts, size = [], 0
    except DamagedInputError:
        if parts:
            yield first, b"".join(parts)
        raise
    if parts:
        yield first, b"".join(parts)


def _decoded(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def iter_text_records(path: str, stream, key: str, boundary: str) -> Iterator[tuple[int, bytes]]:
    """``(line, record)`` of a plain-text input: ``{key: document}`` per document."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"text document boundary must be one of {BOUNDARIES}, got {boundary!r}")
    lines = iter_raw_lines(path, stream)
    if boundary == "line":
        for n, raw in lines:
            if raw.strip():
                text = _decoded(raw)
                yield n, json_line({key: text}, None if text is not None else raw)
        return
    para: list[bytes] = []
    start = 1
    for n, raw in lines:
        if boundary == "blank-line" and not raw.strip():
            if para:
                yield start, _document(key, para)
                para = []
            continue
        if not para:
            start = n
        para.append(raw)
    if para:
        yield start, _document(key, para)


def _document(key: str, lines: list[bytes]) -> bytes:
    raw = b"\n".join(lines)
    text = _decoded(raw)
    # Undecodable: hand the raw bytes on, on one line (the worker rejects them by byte position).
    return json_line({key: text}, None if text is not None else raw.replace(b"\n", b" "))
