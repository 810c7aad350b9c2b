"""Chinese vocabulary expansion of a LLaMA-style sentencepiece model, and embedding initialization.

LLaMA2's 32,000-piece tokenizer holds fewer than a thousand CJK characters; every other one falls
back to its three UTF-8 byte pieces, so Chinese text costs up to three tokens per character. The
ChatFlow authors' related models append 8,076 common Chinese characters and punctuation to the
vocabulary and start each new embedding/output row as the mean of the rows of the pieces the *old*
tokenizer splits it into. This module does both halves:

* :func:`expand_model` appends pieces to a sentencepiece ``ModelProto``. New pieces go strictly
  *after* the existing ones, so every old id (control, byte-fallback and normal pieces) keeps its
  row in the old embedding matrix. NORMAL pieces get scores below every existing score: BPE
  applies its merges best-score first, so the old merges keep their priority and text made only
  of old pieces tokenizes exactly as before.
* :func:`mine_corpus` finds the most frequent CJK characters/punctuation that are not yet pieces.
* :func:`expand_embedding` builds the ``[V_new, h]`` matrix: old rows copied bit for bit, each
  new row the mean of the old rows of the piece's old tokenization (see :func:`new_piece_sources`
  for how the "▁" word-boundary marker is handled).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sentencepiece as spm
import torch
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from chatflow.data.jsonl_reader import JsonlError, RecordError, iter_lines, parse_line

logger = logging.getLogger(__name__)

#: sentencepiece's word-boundary marker (U+2581); a space in the text becomes this in pieces.
SPACE = "\u2581"

#: Piece types from sentencepiece_model.proto that :func:`expand_model` may add.
PIECE_TYPES = {
    "normal": sp_pb2.ModelProto.SentencePiece.NORMAL,
    "user_defined": sp_pb2.ModelProto.SentencePiece.USER_DEFINED,
}

# Whitespace sentencepiece's identity normalizer turns into "▁" (so a piece can never hold it).
_ASCII_SPACE = " \t\n\r\v\f"

# Ideograph blocks: URO, Extension A, compatibility ideographs, Extensions B-H (supplementary).
_IDEOGRAPH_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x323AF))
# Blocks whose punctuation/symbols Chinese text uses: general punctuation (“”…—), CJK symbols and
# punctuation (、。《》「」), vertical and compatibility forms, and full-width forms (，！？：（）).
_PUNCT_RANGES = ((0x2010, 0x205E), (0x3000, 0x303F), (0xFE10, 0xFE4F), (0xFF00, 0xFFEF))


def is_cjk_char(ch: str) -> bool:
    """True for a CJK ideograph or a punctuation/symbol character of Chinese text.

    Whitespace (the ideographic space U+3000) and full-width letters/digits are excluded: they
    are not Chinese characters or punctuation, and NFKC-normalizing models map them to ASCII.
    """
    cp = ord(ch)
    if any(lo <= cp <= hi for lo, hi in _IDEOGRAPH_RANGES):
        return True
    if any(lo <= cp <= hi for lo, hi in _PUNCT_RANGES):
        return unicodedata.category(ch)[0] in "PS"
    return False


@dataclasses.dataclass
class ExpansionResult:
    """What :func:`expand_model` did.

    Attributes:
        model_proto: the serialized expanded model.
        old_vocab_size: pieces before.
        new_vocab_size: pieces after (``old_vocab_size + len(added)``).
        added: the new pieces, in id order (the first has id ``old_vocab_size``).
        skipped_existing: requested pieces that were already in the vocabulary.
        skipped_duplicates: how many requested pieces repeated an earlier one.
        not_single_token: added pieces the expanded model still does not produce as one token for
            their own text (a NORMAL multi-character word without a BPE merge path, or a piece the
            normalizer rewrites); use ``piece_type="user_defined"`` for those.
    """

    model_proto: bytes
    old_vocab_size: int
    new_vocab_size: int
    added: list[str]
    skipped_existing: list[str]
    skipped_duplicates: int
    not_single_token: list[str]


def load_proto(path: str) -> bytes:
    """Bytes of a sentencepiece model file, checked to parse.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a sentencepiece model.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: tokenizer model not found")
    with open(path, "rb") as f:
        data = f.read()
    _parse(data, path)
    return data


def _parse(data: bytes, name: str = "model") -> sp_pb2.ModelProto:
    model = sp_pb2.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as e:  # protobuf's message does not name the file
        raise ValueError(f"{name}: not a sentencepiece model ({e})") from None
    if not model.pieces:
        raise ValueError(f"{name}: not a sentencepiece model (no pieces)")
    return model


def read_piece_file(path: str) -> list[str]:
    """Pieces to add from a UTF-8 text file, one per line; blank lines are ignored.

    Lines are taken verbatim (only the line ending is removed), so a word-initial piece can be
    written with its ``▁`` marker. Spaces inside a piece are rejected: sentencepiece stores them
    as ``▁``, and a silently rewritten piece would surprise the user.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid UTF-8, a piece with whitespace, or no pieces at all.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: piece list not found")
    pieces = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid UTF-8 at byte {e.start}") from None
            if n == 1:
                line = line.lstrip("\ufeff")  # editors on Windows write a BOM
            if not line.strip():
                continue
            if any(c in _ASCII_SPACE for c in line):
                raise ValueError(f"{path}:{n}: piece {line!r} contains whitespace; write '▁'")
            pieces.append(line)
    if not pieces:
        raise ValueError(f"{path}: no pieces to add (the file is empty)")
    return pieces


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (any corpus layout: text, zh/en, Alpaca, conversations)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def corpus_strings(paths: Sequence[str], skip_bad: bool = False) -> Iterator[str]:
    """Every string field of every record of JSONL(.gz) files, streamed.

    Raises:
        JsonlError: a bad line (``file:line: reason``), unless ``skip_bad``.
    """
    for path in paths:
        for n, raw in iter_lines(path):
            try:
                record = parse_line(raw)
            except RecordError as e:
                if not skip_bad:
                    raise JsonlError(path, n, str(e)) from None
                logger.warning("%s:%d: skipped: %s", path, n, e)
                continue
            yield from _strings(record)


def mine_corpus(
    paths: Sequence[str],
    model_proto: bytes,
    top_n: int,
    min_count: int = 1,
    skip_bad: bool = False,
) -> list[tuple[str, int]]:
    """The ``top_n`` most frequent CJK characters/punctuation that are not yet single pieces.

    Ties are broken by code point, so the result is deterministic for a given corpus.

    Returns:
        ``(character, count)`` pairs, most frequent first.
    """
    if top_n <= 0:
        raise ValueError(f"top_n must be positive, got {top_n}")
    vocab = {p.piece for p in _parse(model_proto).pieces}
    counts: Counter = Counter()
    for text in corpus_strings(paths, skip_bad):
        counts.update(c for c in text if is_cjk_char(c))
    ranked = sorted(
        ((c, k) for c, k in counts.items() if c not in vocab and k >= min_count),
        key=lambda ck: (-ck[1], ord(ck[0])),
    )
    logger.info(
        "mined %d CJK characters (%d occurrences); %d are not pieces yet, keeping %d",
        len(counts),
        sum(counts.values()),
        len(ranked),
        min(top_n, len(ranked)),
    )
    return ranked[:top_n]


def expand_model(
    model_proto: bytes, pieces: Sequence[str], piece_type: str = "normal"
) -> ExpansionResult:
    """Append ``pieces`` to a sentencepiece model; existing pieces and ids are left untouched.

    Pieces already in the vocabulary and repeats are skipped (and logged). NORMAL pieces are
    scored below every existing piece, in list order, so earlier (more frequent) pieces win ties
    between new merges and no old merge loses priority. USER_DEFINED pieces are always cut out of
    the text as one token before BPE runs, even where old pieces would have spanned them.

    Args:
        model_proto: serialized sentencepiece model (BPE for NORMAL pieces).
        pieces: the pieces to add, in the order their ids should follow.
        piece_type: ``"normal"`` or ``"user_defined"``.

    Raises:
        ValueError: empty list, unknown type, NORMAL pieces for a non-BPE model, or nothing new.
    """
    if piece_type not in PIECE_TYPES:
        raise ValueError(f"piece_type must be one of {sorted(PIECE_TYPES)}, got {piece_type!r}")
    if not pieces:
        raise ValueError("no pieces to add (the list is empty)")
    model = _parse(model_proto)
    if piece_type == "normal" and model.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        # A unigram model would need real log-probabilities for new NORMAL pieces to be chosen.
        raise ValueError("NORMAL pieces need a BPE model; use piece_type='user_defined'")
    existing = {p.piece for p in model.pieces}
    old_size = len(model.pieces)
    min_score = min((p.score for p in model.pieces if p.type == PIECE_TYPES["normal"]), default=0.0)
    added: list[str] = []
    skipped_existing: list[str] = []
    duplicates = 0
    seen: set[str] = set()
    for piece in pieces:
        if not piece or any(c in _ASCII_SPACE for c in piece):
            raise ValueError(f"invalid piece {piece!r}: empty or contains whitespace")
        if piece in seen:
            duplicates += 1
            continue
        seen.add(piece)
        if piece in existing:
            skipped_existing.append(piece)
            continue
        new = model.pieces.add()
        new.piece = piece
        new.type = PIECE_TYPES[piece_type]
        # USER_DEFINED scores are ignored by the encoder; 0 is what sentencepiece's trainer writes.
        new.score = min_score - 1.0 - len(added) if piece_type == "normal" else 0.0
        added.append(piece)
    if skipped_existing:
        n, shown = len(skipped_existing), _preview(skipped_existing)
        logger.warning("skipped %d piece(s) already in the vocabulary: %s", n, shown)
    if duplicates:
        logger.warning("skipped %d repeated piece(s) in the list", duplicates)
    if not added:
        raise ValueError(
            f"nothing to add: all {len(seen)} distinct piece(s) are already in the vocabulary"
        )
    # trainer_spec.vocab_size is informational for encoding, but keep it truthful.
    model.trainer_spec.vocab_size = len(model.pieces)
    data = model.SerializeToString()
    sp = in_word_processor(data)
    not_single = [
        p for i, p in enumerate(added, old_size) if sp.encode(p.replace(SPACE, " ")) != [i]
    ]
    if not_single:
        n, shown = len(not_single), _preview(not_single)
        logger.warning("%d added piece(s) are not one token (no BPE merge path?): %s", n, shown)
    logger.info("added %d pieces: vocab %d -> %d", len(added), old_size, len(model.pieces))
    return ExpansionResult(
        data, old_size, len(model.pieces), added, skipped_existing, duplicates, not_single
    )


def _preview(items: Sequence[str], n: int = 10) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(repr, items[:n])) + more


def in_word_processor(model_proto: bytes) -> spm.SentencePieceProcessor:
    """A processor that encodes text as it appears *inside* a word.

    sentencepiece prepends "▁" to every input (``add_dummy_prefix``), so encoding ``"的"``
    yields ``["▁", "<0xE7>", ...]`` or even ``["▁的"]``: the tokenization of a word-initial
    occurrence, with a spurious boundary token. Switching the dummy prefix off (and whitespace
    trimming, so a piece's own leading "▁" survives) gives the tokenization of the surface text
    alone: ``"的"`` -> bytes, ``"▁北京"`` (surface ``" 北京"``) -> the word-initial pieces.
    """
    model = _parse(model_proto)
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    return spm.SentencePieceProcessor(model_proto=model.SerializeToString())


def new_piece_sources(old_proto: bytes, new_proto: bytes) -> list[list[int]]:
    """For each id the new model adds, the old ids its surface text encodes to (no BOS).

    Raises:
        ValueError: the new model does not start with exactly the old model's pieces, i.e. old
            ids would point at different rows.
    """
    old, new = _parse(old_proto, "old model"), _parse(new_proto, "new model")
    if len(new.pieces) < len(old.pieces):
        raise ValueError(f"new model has fewer pieces ({len(new.pieces)}) than the old one")
    for i, (a, b) in enumerate(zip(old.pieces, new.pieces)):
        if a.piece != b.piece or a.type != b.type:
            raise ValueError(
                f"id {i} changed from {a.piece!r} to {b.piece!r}: not an expansion of the old model"
            )
    sp = in_word_processor(old_proto)
    sources = []
    for p in new.pieces[len(old.pieces) :]:
        ids = sp.encode(p.piece.replace(SPACE, " "))
        if not ids:
            raise ValueError(f"new piece {p.piece!r} encodes to nothing with the old model")
        if sp.unk_id() in ids:
            logger.warning("new piece %r contains <unk> under the old model", p.piece)
        sources.append(ids)
    return sources


def expand_embedding(weight: torch.Tensor, sources: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[V_old + len(sources), h]``: ``weight`` followed by one mean row per source list.

    The mean is taken in float32 (bf16 sums of 2-4 rows lose bits) and cast back to the
    weight's dtype; the old rows are copied unchanged.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a [vocab, hidden] matrix, got shape {tuple(weight.shape)}")
    v_old = weight.shape[0]
    flat = [i for ids in sources for i in ids]
    if flat and not 0 <= min(flat) <= max(flat) < v_old:
        raise ValueError(f"source ids must lie in [0, {v_old})")
    out = weight.new_empty((v_old + len(sources), weight.shape[1]))
    out[:v_old] = weight
    if sources:
        # One gather + segment mean instead of a Python loop over 8k rows of a 4096-wide matrix.
        index = torch.tensor(flat, dtype=torch.long, device=weight.device)
        lengths = torch.tensor([len(s) for s in sources], device=weight.device)
        seg = torch.repeat_interleave(torch.arange(len(sources), device=weight.device), lengths)
        sums = torch.zeros(len(sources), weight.shape[1], dtype=torch.float32, device=weight.device)
        sums.index_add_(0, seg, weight.detach()[index].float())
        out[v_old:] = (sums / lengths[:, None].float()).to(weight.dtype)
    return out


def chinese_runs(text: str) -> list[str]:
    """The maximal runs of CJK characters/punctuation in ``text``."""
    runs, cur = [], []
    for c in text:
        if is_cjk_char(c):
            cur.append(c)
        elif cur:
            runs.append("".join(cur))
            cur = []
    if cur:
        runs.append("".join(cur))
    return runs


def tokens_per_char(model_proto: bytes, texts: Iterable[str]) -> float:
    """Mean tokens per Chinese character: tokens of the Chinese runs of ``texts`` / their length.

    Only the runs of CJK characters/punctuation are encoded (in-word, no BOS), so English words,
    digits and spaces in mixed text do not blur the figure.
    """
    sp = in_word_processor(model_proto)
    tokens = chars = 0
    for t in texts:
        for run in chinese_runs(t):
            tokens += len(sp.encode(run))
            chars += len(run)
    if chars == 0:
        raise ValueError("no Chinese characters in the sample")
    return tokens / chars


def sample_chinese_texts(paths: Sequence[str], limit: int | None = None) -> list[str]:
    """The first ``limit`` strings with Chinese in JSONL files (bad lines skipped), for figures."""
    texts = (t for t in corpus_strings(paths, skip_bad=True) if any(map(is_cjk_char, t)))
    return list(itertools.islice(texts, limit))
