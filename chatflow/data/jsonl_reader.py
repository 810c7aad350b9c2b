"""Streaming JSONL reading with line numbers and bad-input detection.

Input corpora are large (tens of GB), so nothing here loads a whole file: :func:`iter_lines` yields
one raw line at a time and :func:`iter_blocks` yields blocks of whole lines (about 1 MB) for worker
processes, each tagged with the line number of its first line. ``.jsonl.gz`` is read through
``gzip`` transparently.

Parsing is split from reading so that workers can parse: :func:`parse_line` turns raw bytes into a
JSON object and :func:`get_text` extracts one non-empty string field. Both raise
:class:`RecordError` with a short reason; :class:`JsonlError` adds the file and line number.

Completely blank lines (only whitespace) carry no data and are skipped, as JSONL readers commonly
do; every other line is either a valid record or reported.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

#: Default block size handed to one worker task: big enough to amortise inter-process overhead,
#: small enough to keep memory bounded and the last block (one idle worker) short.
DEFAULT_BLOCK_BYTES = 1 << 20


class RecordError(ValueError):
    """A line that is not a valid record; the message says what is wrong (no location)."""


class JsonlError(ValueError):
    """A bad record, located: ``<file>:<line>: <reason>`` (``<file>: row <n>: <reason>`` for other
    units).

    Attributes:
        path: input file.
        line: 1-based locator (line, array element or table row number).
        reason: what is wrong with the record.
        unit: what ``line`` counts: ``line``, ``element`` or ``row``.
    """

    def __init__(self, path: str, line: int, reason: str, unit: str = "line") -> None:
        where = f"{path}:{line}" if unit == "line" else f"{path}: {unit} {line}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason
        self.unit = unit


def open_binary(path: str) -> BinaryIO:
    """Open a ``.jsonl`` or ``.jsonl.gz`` file for binary reading (gzip decided by suffix)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=1 << 20)


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_line)`` for every non-blank line, without the line ending."""
    with open_binary(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield n, line


def iter_blocks(path: str, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """Yield ``(first_line_number, blob)``, ``blob`` being whole lines of about ``block_bytes``.

    Blocks are cut at newlines only, so line numbers are recovered by counting newlines. A final
    line without a trailing newline is included in the last block.
    """
    if block_bytes <= 0:
        raise ValueError(f"block_bytes must be positive, got {block_bytes}")
    line = 1
    carry: list[bytes] = []  # pieces of a line not yet ended (a list: no quadratic re-copying)
    with open_binary(path) as f:
        while True:
            chunk = f.read(block_bytes)
            if not chunk:
                break
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:  # no line ends in this chunk: keep reading
                carry.append(chunk)
                continue
            blob = b"".join(carry) + chunk[:cut] if carry else chunk[:cut]
            carry = [chunk[cut:]] if cut < len(chunk) else []
            yield line, blob
            line += blob.count(b"\n")
    if carry:
        yield line, b"".join(carry)


def split_block(first_line: int, blob: bytes) -> Iterator[tuple[int, bytes]]:
    """Split a block from :func:`iter_blocks` into ``(line_number, raw_line)``, skipping blanks."""
    for i, line in enumerate(blob.split(b"\n")):
        line = line.rstrip(b"\r")
        if line.strip():
            yield first_line + i, line


def oversized_reason(size: int, limit: int) -> str:
    """The rejection reason of a record of ``size`` bytes over ``--max-document-bytes``."""
    return f"record of {size:,} bytes is larger than --max-document-bytes {limit:,}"


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON (RFC 8259) and no text field can hold them; rejecting them keeps
    # records portable to strict readers.
    raise RecordError(f"invalid JSON: {name} is not a JSON value")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: find the culprit only then
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise RecordError(f"invalid JSON: duplicate key {k!r}")
            seen.add(k)
    return obj


# Duplicate keys are rejected (which value wins differs between JSON libraries), NaN/Infinity too;
# integers are parsed by int(), whose digit limit raises ValueError (caught in parse_line).
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object, parse_constant=_reject_constant
)


def parse_line(raw: bytes) -> dict[str, Any]:
    """Decode one raw line into a JSON object.

    Every failure of one record is a :class:`RecordError`, never another exception: besides
    syntax errors, duplicate keys, ``NaN``/``Infinity``, integers longer than Python's
    int-conversion limit and nesting too deep for the parser's recursion are all rejected.

    Raises:
        RecordError: invalid UTF-8, invalid JSON, or JSON that is not an object.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"invalid UTF-8 at byte {e.start}") from None
    try:
        obj = _STRICT_DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecordError:
        raise
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None
    except ValueError as e:  # int() digit limit ("Exceeds the limit (4300 digits) ...")
        if "digits" in str(e):
            limit = sys.get_int_max_str_digits()
            raise RecordError(f"invalid JSON: an integer of more than {limit:,} digits") from None
        raise RecordError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def check_string(value: Any, field: str) -> str:
    """Return ``value`` if it is a non-empty, encodable string; ``field`` names it in errors."""
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"field {field!r} is empty")
    try:
        # JSON escapes can smuggle lone surrogates ("\ud800") that no tokenizer can encode.
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"field {field!r} holds invalid Unicode at character {e.start}") from None
    return value


_MISSING = object()


def lookup(record: dict[str, Any], key: str) -> Any:
    """``record[key]``, where a dotted ``key`` is a path into nested objects (``translation.zh``).

    A literal key containing the dot wins when present (``{"a.b": 1}`` gives 1 for ``a.b``);
    otherwise the path is followed one dot at a time, again preferring the longest literal key at
    each level. Returns a private sentinel when missing (see :func:`get_text`).
    """
    if key in record:
        return record[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):  # longest literal head first
        head = ".".join(parts[:i])
        inner = record.get(head, _MISSING)
        if isinstance(inner, dict):
            value = lookup(inner, ".".join(parts[i:]))
            if value is not _MISSING:
                return value
    return _MISSING


def get_text(record: dict[str, Any], key: str) -> str:
    """The non-empty string ``record[key]`` (``key`` may be a dotted path, see :func:`lookup`).

    Raises:
        RecordError: the key is missing, not a string, empty, or not valid Unicode.
    """
    value = lookup(record, key)
    if value is _MISSING:
        raise RecordError(f"missing key {key!r}")
    return check_string(value, key)


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by ``patterns`` (each glob sorted), in argument order, without duplicates.

    Raises:
        FileNotFoundError: a pattern matches nothing, or names something that is not a file.
    """
    out: list[str] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        if not matches:
            raise FileNotFoundError(f"--input {pat}: no file matches")
        for m in matches:
            if not os.path.isfile(m):
                raise FileNotFoundError(f"--input {m}: not a file")
            if m not in out:
                out.append(m)
    return out
