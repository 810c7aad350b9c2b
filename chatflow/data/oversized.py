"""Dropping oversized JSON Lines records while reading, before they are ever held in memory whole.

:func:`drop_oversized_lines` filters the decompressed byte stream of a JSON Lines input: a line
longer than the limit is not kept but replaced by a one-line marker carrying its size, so it
still occupies its line number and the worker rejects it (``--max-document-bytes``) with that
size. At most ``limit`` bytes of a line are buffered, never the whole line.
"""

from __future__ import annotations

from collections.abc import Iterator

from chatflow.data.input_source import CompressedDataError

#: Start of the marker line that stands for a dropped record (not valid JSON, so it can never be
#: mistaken for a record; a real line starting with it would be rejected anyway).
OVERSIZED_MARK = b"\x00chatflow:oversized-record:"


def marker(size: int) -> bytes:
    """The marker line (without newline) of a dropped record of ``size`` bytes."""
    return OVERSIZED_MARK + str(size).encode()


def oversized_size(raw: bytes) -> int | None:
    """The size of the dropped record a marker line stands for, or None for a real line."""
    if not raw.startswith(OVERSIZED_MARK):
        return None
    digits = raw[len(OVERSIZED_MARK) :]
    return int(digits) if digits.isdigit() else None


def drop_oversized_lines(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """``chunks`` with every line longer than ``limit`` bytes replaced by its :func:`marker`.

    Lines are otherwise passed through unchanged (byte for byte, newlines included).
    """
    buf: list[bytes] = []  # the current line's bytes so far (at most ``limit``)
    cur = 0
    skipping = False  # inside a line already known to be too long
    skipped = 0
    try:
        for chunk in chunks:
            if not skipping and cur + len(chunk) <= limit:
                # Fast path: no line in this chunk can be too long.
                nl = chunk.rfind(b"\n")
                if nl < 0:
                    buf.append(chunk)
                    cur += len(chunk)
                    continue
                yield b"".join(buf) + chunk[: nl + 1] if buf else chunk[: nl + 1]
                rest = chunk[nl + 1 :]
                buf, cur = ([rest], len(rest)) if rest else ([], 0)
                continue
            pos = 0
            while pos < len(chunk):
                nl = chunk.find(b"\n", pos)
                end = len(chunk) if nl < 0 else nl
                if not skipping and cur + end - pos > limit:
                    skipping, skipped, buf, cur = True, cur, [], 0
                if skipping:
                    skipped += end - pos
                    if nl < 0:
                        break
                    yield marker(skipped) + b"\n"
                    skipping = False
                elif nl < 0:
                    buf.append(chunk[pos:])
                    cur += len(chunk) - pos
                    break
                else:
                    yield b"".join(buf) + chunk[pos : nl + 1]
                    buf, cur = [], 0
                pos = nl + 1
    except CompressedDataError as e:
        if buf:  # hand over what was read, so the reader's offsets stay exact
            yield b"".join(buf)
        raise CompressedDataError(e.reason, e.offset - (skipped if skipping else 0)) from None
    if skipping:
        yield marker(skipped)
    elif buf:
        yield b"".join(buf)
