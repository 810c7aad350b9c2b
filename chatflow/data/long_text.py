"""Encoding very long texts piece by piece, with exactly the ids of one whole-text encode.

sentencepiece's Python binding returns a list of Python ints: about 40 bytes per token, so one
100 MB document (60 M tokens) would cost gigabytes. :func:`encode_long` cuts such a text at
single spaces between two non-space characters and encodes the pieces one after another into one
numpy array. For the models it accepts (:func:`can_split`) this gives the same ids as encoding the
whole text: with ``split_by_whitespace`` no piece crosses a word boundary, and the space removed at
a cut comes back as the dummy prefix (``▁``) that sentencepiece puts before every input.

A text with no such space (e.g. Chinese without spaces) is encoded whole, as before.
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
    piece_chars = piece_chars or LONG_TEXT_CHARS
    cuts = []
    pos = piece_chars
    while pos < len(text):
        m = _CUT.search(text, pos)
        if m is None:
            break
        i = m.start()
        if unicodedata.combining(text[i + 1]) == 0:  # never detach a combining mark
            cuts.append(i)
        pos = i + piece_chars
    return cuts


def encode_long(
    tokenizer: Any,
    text: str,
    bos: bool,
    eos: bool,
    dtype: np.dtype,
    piece_chars: int | None = None,
) -> np.ndarray:
    """Ids of ``text`` (with BOS/EOS as asked) as a ``dtype`` array, encoded piece by piece."""
    cuts = cut_points(text, piece_chars) if can_split(tokenizer) else []
    starts = [0] + [c + 1 for c in cuts]
    ends = cuts + [len(text)]
    parts: list[np.ndarray] = []
    for k, (a, b) in enumerate(zip(starts, ends)):
        (ids,) = tokenizer.encode_batch(
            [text[a:b]], bos=bos and k == 0, eos=eos and k == len(ends) - 1
        )
        parts.append(np.array(ids, dtype=dtype))
        del ids
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
