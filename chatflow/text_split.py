"""Splitting over-long lines into pieces that fit a byte limit, at sentence or character bounds.

Sentencepiece's trainer silently ignores every sentence longer than ``max_sentence_length`` bytes
(16,384 by default), so a corpus of long paragraphs would contribute nothing to the vocabulary.
:func:`split_to_limit` cuts such a line instead: first after sentence ends (``。！？`` anywhere,
since Chinese puts no space after them; ``.!?`` only when followed by whitespace, so ``3.14`` and
``e.g.x`` stay whole), packing consecutive sentences greedily into pieces of at most ``max_bytes``;
a single sentence that is still too long is cut at character boundaries (never inside a UTF-8
character). Nothing is dropped: the pieces, concatenated, give the line back up to the whitespace
stripped at piece ends.
"""

from __future__ import annotations

import re

# Zero-width cut points: after a CJK sentence end, or after ".!?" plus one whitespace character.
_SENTENCE_END = re.compile(r"(?<=[。！？])|(?<=[.!?]\s)")


def split_to_limit(line: str, max_bytes: int) -> list[str]:
    """``line`` as pieces of at most ``max_bytes`` UTF-8 bytes each (``[line]``, the same object,
    if it fits).

    Blank pieces are left out; pieces are stripped of surrounding whitespace.

    Raises:
        ValueError: ``max_bytes`` is below 4 (one UTF-8 character may need 4 bytes).
    """
    if max_bytes < 4:
        raise ValueError(f"max_bytes must be >= 4, got {max_bytes}")
    if len(line.encode("utf-8")) <= max_bytes:
        return [line]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in _SENTENCE_END.split(line):
        n = len(sentence.encode("utf-8"))
        if size + n > max_bytes and current:
            pieces.append("".join(current))
            current, size = [], 0
        if n > max_bytes:
            pieces.extend(_split_chars(sentence, max_bytes))
            continue
        current.append(sentence)
        size += n
    if current:
        pieces.append("".join(current))
    return [p.strip() for p in pieces if p.strip()]


def _split_chars(text: str, max_bytes: int) -> list[str]:
    """``text`` cut into pieces of at most ``max_bytes`` bytes at UTF-8 character boundaries."""
    data = text.encode("utf-8")
    out = []
    start = 0
    while start < len(data):
        cut = min(start + max_bytes, len(data))
        # Back off from continuation bytes (10xxxxxx) so no character is cut in two.
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        out.append(data[start:cut].decode("utf-8"))
        start = cut
    return out
