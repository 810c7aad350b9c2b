"""Encoding a record's template segments so that the tokens say what the rendered text says.

An instruction record is rendered as segments, alternately not trained on (the prompt, e.g.
``### Instruction:{q} ### Response:``) and trained on (the response); the loss mask changes at
segment boundaries, so no token may straddle one. Encoding every segment as its own text gets the
boundaries right but puts sentencepiece's dummy-prefix ``▁`` in front of every segment: with
LLaMA2's vocabulary each Chinese response would start with a lone, trained-on ``▁`` (id 29871)
that the rendered text ``### Response:答案`` does not have.

Here the first segment of a record is encoded as the start of a document (with the dummy prefix,
as encoding the whole rendered string does) and every later segment as a continuation, without
it. The result equals the encoding of the whole rendered string, token for token, whenever no
piece of that encoding would cross a segment boundary: sentencepiece's BPE merges only adjacent
symbols and never splits a merged one, so if no final piece crosses a boundary no merge ever did,
and each side's merges are those of encoding it alone. Where a piece would cross (``:`` and the
response's first character merged into one piece, say), the tokens are split at the boundary
instead: the mask boundary stays exact. Either way ``decode(tokens) == "".join(segments)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from chatflow.data.long_text import LONG_TEXT_CHARS, encode_long

if TYPE_CHECKING:
    from chatflow.tokenizer import Tokenizer

#: Recorded in the shard sidecar: how instruction segments become tokens.
#: 1 = every segment encoded alone (dummy prefix on each); 2 = first segment starts the document,
#: later segments continue it (this module).
SEGMENT_ENCODING_VERSION = 2


def encode_segments(
    tokenizer: Tokenizer, records: Sequence[Sequence[str]]
) -> list[list[Sequence[int]]]:
    """Token ids of every segment of every record, in two batched sentencepiece calls.

    Args:
        tokenizer: a :class:`chatflow.tokenizer.Tokenizer`.
        records: per record, its segment texts in order (the first one starts the document).

    Returns:
        ``ids[r][s]``: the ids of segment ``s`` of record ``r`` (no BOS/EOS; the caller adds them);
        a list, or an int32 array for a segment over ``LONG_TEXT_CHARS`` characters.
    """
    if any(len(t) > LONG_TEXT_CHARS for segs in records for t in segs):
        # Rare (a segment of over a million characters): one at a time, in bounded memory.
        return [[_encode_long(tokenizer, t, s > 0) for s, t in enumerate(segs)] for segs in records]
    firsts = [segs[0] for segs in records if segs]
    rest = [text for segs in records for text in segs[1:]]
    first_ids = iter(tokenizer.encode_batch(firsts))
    rest_ids = iter(tokenizer.encode_continuation_batch(rest))
    out: list[list[Sequence[int]]] = []
    for segs in records:
        if not segs:
            out.append([])
            continue
        out.append([next(first_ids)] + [next(rest_ids) for _ in segs[1:]])
    return out


def _encode_long(tokenizer: Tokenizer, text: str, continuation: bool) -> np.ndarray:
    """One segment's ids as an int32 array, in bounded memory (:mod:`chatflow.data.long_text`)."""
    return encode_long(tokenizer, text, False, False, np.int32, continuation=continuation)
