"""JSON Lines and top-level JSON array inputs, streamed into blocks of one record per line.

The layout is decided by the content, not the suffix: if the first non-whitespace byte is ``[``
the input is one JSON array (Alpaca's ``alpaca_data.json``, many HF ``*.json`` dumps), otherwise
JSON Lines. Arrays are never loaded whole: elements are cut from a sliding buffer with
``json.JSONDecoder.raw_decode`` and each goes into the block on a line of its own, so the workers
see the same one-record-per-line blocks as for JSON Lines.

Locators: JSON Lines records are numbered by ``line`` (blank lines count, as in an editor), array
elements by ``element`` (1-based). An element is put on one line by replacing its raw newlines
with spaces, which is lossless: valid JSON has no raw newline inside a string.
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Iterator
from typing import BinaryIO

from chatflow.data.input_source import (
    CHUNK_BYTES,
    CompressedDataError,
    DamagedInputError,
    InputError,
    iter_chunks,
)
from chatflow.data.json_extent import SCANNER, deep_value_end
from chatflow.data.oversized import drop_oversized_lines

_WS = re.compile(r"[ \t\n\r]*")


def first_byte(head: bytes) -> bytes:
    """The first non-whitespace byte of ``head`` (after a UTF-8 BOM), or ``b""``."""
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return head[:1]


def iter_jsonl_blocks(
    path: str, chunks: Iterator[bytes], block_bytes: int, first: bytes = b""
) -> Iterator[tuple[int, bytes]]:
    """``(first_line, blob)`` blocks of whole lines, about ``block_bytes`` each.

    ``first`` is data already read from the stream (prepended). On damage, the complete lines
    before it are yielded, then :class:`DamagedInputError` is raised.
    """
    line = 1
    parts: list[bytes] = [first] if first else []
    size = len(first)
    try:
        for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size < block_bytes or chunk.rfind(b"\n") < 0:
                continue
            data = b"".join(parts)
            cut = data.rfind(b"\n") + 1
            yield line, data[:cut]
            line += data.count(b"\n", 0, cut)
            parts = [data[cut:]] if cut < len(data) else []
            size = len(data) - cut
    except CompressedDataError as e:
        data = b"".join(parts)
        cut = data.rfind(b"\n") + 1
        if cut:
            yield line, data[:cut]
            line += data.count(b"\n", 0, cut)
        raise DamagedInputError(path, e.offset - (len(data) - cut), "line", line - 1, e.reason)
    if parts:
        yield line, b"".join(parts)


def iter_array_blocks(
    path: str, chunks: Iterator[bytes], block_bytes: int, first: bytes = b""
) -> Iterator[tuple[int, bytes]]:
    """``(first_element, blob)`` blocks of a top-level JSON array, one element per line.

    Raises:
        InputError: the data is not a well-formed array (names the element and byte offset).
        DamagedInputError: decompression failed (elements before it are yielded first).
    """
    # surrogateescape: invalid UTF-8 survives the round trip, so the worker rejects just that
    # element (by byte position) instead of the whole file failing here.
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    buf = decoder.decode(first)
    pos = 0
    base = 0  # bytes of the input before buf[0]
    eof = False
    element = 1  # the next element's number
    block: list[bytes] = []
    block_first = 1
    size = 0
    expect_open = True

    def fill(at_least: int = 1) -> bool:
        """Append at least ``at_least`` more characters (fewer at the end); False at the end."""
        nonlocal buf, pos, base, eof
        if eof:
            return False
        if pos > (1 << 20):  # drop what is consumed, so memory stays bounded
            base += len(buf[:pos].encode("utf-8", "surrogateescape"))
            buf, pos = buf[pos:], 0
        # Pieces are joined once per call: growing a str chunk by chunk would copy a huge
        # element over and over (quadratic).
        parts: list[str] = []
        got = 0
        while got < at_least:
            try:
                chunk = next(chunks)
            except StopIteration:
                eof = True
                parts.append(decoder.decode(b"", final=True))
                break
            except CompressedDataError as e:
                raise DamagedInputError(path, e.offset, "element", element - 1, e.reason) from None
            parts.append(decoder.decode(chunk))
            got += len(parts[-1])
        buf += "".join(parts)
        return got > 0

    def offset() -> int:
        return base + len(buf[:pos].encode("utf-8", "surrogateescape"))

    def skip_ws() -> str:
        """The next non-whitespace character (reading more as needed), or "" at the end."""
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()
            if pos < len(buf):
                return buf[pos]
            if not fill():
                return ""

    def bad(what: str) -> InputError:
        return InputError(f"{path}: element {element}: {what} at byte offset {offset()}")

    try:
        ch = skip_ws()
        if ch.startswith("\ufeff"):
            pos += 1
            ch = skip_ws()
        if ch != "[":
            raise bad("expected '[' (a top-level JSON array)")
        pos += 1
        while True:
            ch = skip_ws()
            if ch == "]" and (element == 1 or not expect_open):
                pos += 1
                break
            if ch == "":
                raise bad("the array ends without ']'")
            if not expect_open:
                if ch != ",":
                    raise bad("expected ',' or ']'")
                pos += 1
                ch = skip_ws()
            # Parse the element; retry after reading more while it may run past the buffer. The
            # unparsed span doubles between retries, so a huge element is parsed O(log n) times.
            while True:
                end = -1
                try:
                    _, end = SCANNER.raw_decode(buf, pos)
                except RecursionError:  # the worker rejects it; here only its end matters
                    end = deep_value_end(buf, pos) if buf[pos] in "[{" else -1
                    if end < 0 and eof:
                        raise bad("invalid JSON: nested too deeply, never closed") from None
                except json.JSONDecodeError as e:
                    # An error well before the buffer's end is not a cut-off element (those
                    # fail at the end, or as an unterminated string): stop here, without
                    # reading the rest of the file into the buffer first.
                    early = e.pos < len(buf) - 16 and not e.msg.startswith("Unterminated")
                    if eof or early:
                        raise bad(f"invalid JSON: {e.msg}") from None
                # A value that ends near the buffer's end may go on (a number such as "1."
                # cut before its fraction): read more.
                scalar = buf[pos] not in '{["'
                if end >= 0 and (eof or end < len(buf) - (64 if scalar else 0)):
                    break
                fill(max(len(buf) - pos, 1))
            raw = buf[pos:end].replace("\n", " ").replace("\r", " ")
            raw = raw.encode("utf-8", "surrogateescape")
            pos = end
            block.append(raw)
            size += len(raw) + 1
            element += 1
            expect_open = False
            if size >= block_bytes:
                yield block_first, b"\n".join(block) + b"\n"
                block, block_first, size = [], element, 0
        if skip_ws() != "":
            raise bad("data after the end of the array")
    except DamagedInputError:
        if block:
            yield block_first, b"\n".join(block) + b"\n"
        raise
    if block:
        yield block_first, b"\n".join(block) + b"\n"


def open_json_blocks(
    path: str, stream: BinaryIO, block_bytes: int, max_line_bytes: int | None = None
) -> tuple[str, Iterator[tuple[int, bytes]]]:
    """``(unit, blocks)`` of a JSON input: ``("element", ...)`` for an array, else ``"line"``.

    ``max_line_bytes``: JSON Lines lines longer than this are replaced by a marker while reading
    (:func:`chatflow.data.oversized.drop_oversized_lines`), never held whole.
    """
    chunks = iter_chunks(stream, min(CHUNK_BYTES, block_bytes))
    head = b""
    try:
        for chunk in chunks:  # read until the first non-whitespace byte (or the end)
            head += chunk
            if first_byte(head):
                break
    except CompressedDataError as e:
        raise DamagedInputError(path, e.offset, "line", 0, e.reason) from None
    if first_byte(head) == b"[":
        return "element", iter_array_blocks(path, chunks, block_bytes, head)
    if max_line_bytes is not None:
        chunks = drop_oversized_lines(itertools.chain([head], chunks), max_line_bytes)
        head = b""
    return "line", iter_jsonl_blocks(path, chunks, block_bytes, head)
