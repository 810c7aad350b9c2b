"""Encoding very long texts piece by piece, with exactly the ids of one whole-text encode.

sentencepiece's Python binding returns a list of Python ints: about 40 bytes per token, so one
100 MB document (60 M tokens) would cost gigabytes. :func:`encode_long` cuts such a text at
single spaces between two non-space characters and encodes the pieces one after another into one
numpy array. For the models it accepts (:func:`can_split`) this gives the same ids as encoding the
whole text: with ``split_by_whitespace`` no piece crosses a word boundary, and the space removed at
a cut comes back as the dummy prefix (``▁``) that sentencepiece puts before every input.

Chinese has no spaces, so where none is near the text is cut right after a "lonely" character
instead: one that is a piece of its own and part of no longer piece of the model (``。``, ``，``,
digits and many characters in LLaMA-style vocabularies). No merge can join such a character to a
neighbour, so no piece of the whole-text encoding crosses the cut, and encoding the part after it
as a continuation (without the dummy prefix) gives the same ids. A text with neither (rare) is
encoded in larger parts, whole at worst.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

#: Texts longer than this (characters) go through :func:`encode_long`; also its piece size.
LONG_TEXT_CHARS = 1 << 20

_CUT = re.compile(r"(?<=\S) (?=\S)")


@lru_cache(maxsize=8)
def _splittable(proto: bytes) -> bool:
    m = sp_pb2.ModelProto()
    m.ParseFromString(proto)
    n, t = m.normalizer_spec, m.trainer_spec
    user_pieces_with_space = any(
        p.type == sp_pb2.ModelProto.SentencePiece.USER_DEFINED
        and ("\u2581" in p.piece or " " in p.piece)
        for p in m.pieces
    )
    return (
        n.name in ("identity", "nmt_nfkc", "nfkc")
        and n.add_dummy_prefix
        and n.escape_whitespaces
        and t.split_by_whitespace
        and not t.treat_whitespace_as_suffix
        and not user_pieces_with_space
    )


def can_split(tokenizer: Any) -> bool:
    """True when cutting at single spaces keeps this tokenizer's ids (see the module docstring)."""
    return _splittable(tokenizer.model_proto)


def cut_points(text: str, piece_chars: int | None = None) -> list[int]:
    """Indices of the spaces to cut ``text`` at, about ``piece_chars`` (default
    :data:`LONG_TEXT_CHARS`) apart."""
    return [end for end, _, cont in cut_plan(text, piece_chars) if not cont]


@lru_cache(maxsize=8)
def _lonely_chars(proto: bytes) -> frozenset[str]:
    # Characters that are a piece of their own and part of no longer piece: no merge can ever
    # join them to a neighbour, so the text may be cut right after one.
    m = sp_pb2.ModelProto()
    m.ParseFromString(proto)
    single, social = set(), set()
    for p in m.pieces:
        if p.type in (
            sp_pb2.ModelProto.SentencePiece.NORMAL,
            sp_pb2.ModelProto.SentencePiece.USER_DEFINED,
        ):
            (single if len(p.piece) == 1 else social).update(p.piece)
    return frozenset(c for c in single - social if not c.isspace() and c != "\u2581")


def _safe_next(ch: str) -> bool:
    # What follows a cut must not combine with what precedes it under normalization.
    return not ch.isspace() and unicodedata.combining(ch) == 0 and not _is_hangul_jamo(ch)


def _is_hangul_jamo(ch: str) -> bool:
    o = ord(ch)
    return (
        0x1100 <= o <= 0x11FF
        or 0x3130 <= o <= 0x318F
        or 0xA960 <= o <= 0xA97F
        or 0xD7B0 <= o <= 0xD7FF
    )


def cut_plan(
    text: str, piece_chars: int | None = None, lonely: frozenset[str] = frozenset()
) -> list[tuple[int, int, bool]]:
    """Where to cut ``text``: ``(end, next_start, continuation)`` per cut, about ``piece_chars``
    (default :data:`LONG_TEXT_CHARS`) apart.

    A cut at a single space between two non-space characters drops the space (the next part's
    dummy prefix stands for it: ``continuation`` False). Where no such space is near (Chinese has
    none), a cut right after a character of ``lonely`` (see :func:`_lonely_chars`) keeps every
    character, and the next part is encoded as a continuation, without the dummy prefix.
    """
    piece_chars = piece_chars or LONG_TEXT_CHARS
    cuts: list[tuple[int, int, bool]] = []
    pos = piece_chars
    while pos < len(text):
        window_end = pos + piece_chars
        m = _CUT.search(text, pos, window_end + 1)
        if m is not None and unicodedata.combining(text[m.start() + 1]) == 0:
            i = m.start()
            cuts.append((i, i + 1, False))
            pos = i + piece_chars
            continue
        found = None
        if lonely:
            for i in range(pos, min(window_end, len(text) - 1)):
                if text[i] in lonely and _safe_next(text[i + 1]):
                    found = i + 1
                    break
        if found is None:
            pos = window_end  # nothing to cut at here: this part grows by a window
            continue
        cuts.append((found, found, True))
        pos = found + piece_chars
    return cuts


def encode_long(
    tokenizer: Any,
    text: str,
    bos: bool,
    eos: bool,
    dtype: np.dtype,
    piece_chars: int | None = None,
    continuation: bool = False,
) -> np.ndarray:
    """Ids of ``text`` (with BOS/EOS as asked) as a ``dtype`` array, encoded piece by piece.

    ``continuation``: ``text`` continues a line (see :mod:`chatflow.data.segment_encoding`), so its
    first part is encoded without the dummy prefix.
    """
    lonely = _lonely_chars(tokenizer.model_proto) if can_split(tokenizer) else frozenset()
    plan = cut_plan(text, piece_chars, lonely) if can_split(tokenizer) else []
    bounds = [(0, continuation)] + [(nxt, cont) for _, nxt, cont in plan]
    ends = [end for end, _, _ in plan] + [len(text)]
    parts: list[np.ndarray] = []
    for k, ((a, cont), b) in enumerate(zip(bounds, ends, strict=True)):
        piece = text[a:b]
        if cont:
            (ids,) = tokenizer.encode_continuation_batch([piece])
        else:
            (ids,) = tokenizer.encode_batch([piece])
        if bos and k == 0:
            parts.append(np.array([tokenizer.bos_id], dtype=dtype))
        parts.append(np.array(ids, dtype=dtype))
        del ids
    if eos:
        parts.append(np.array([tokenizer.eos_id], dtype=dtype))
    return np.concatenate(parts)
