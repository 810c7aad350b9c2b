"""Train a LLaMA2-style sentencepiece BPE tokenizer on JSONL corpora.

The model matches LLaMA2's tokenizer settings: BPE, byte fallback (no text ever maps to UNK),
digits split into single pieces, identity normalization (text is kept as is), a dummy prefix
space, whitespace not collapsed, UNK=0 / BOS=1 / EOS=2 and no pad piece. Training is
deterministic for a given input, seed and thread count.

Text is taken from every text field of every known layout (:func:`chatflow.data.chat_schemas.
schema_values`: plain ``text``, parallel ``zh``/``en``, Alpaca with ``system``/``history``, pCLUE /
Firefly ``input``/``target``, ``messages``, ShareGPT ``conversations`` and ``system``, Firefly
``conversation``; ``field_map`` renames fields first); ``keys`` restricts it to named string
fields. Lines longer than ``max_sentence_length`` bytes, which sentencepiece would silently ignore,
are split at sentence or character boundaries (:mod:`chatflow.text_split`) and counted.
``tools/train_tokenizer.py`` is the command line.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sentencepiece as spm

from chatflow.data.chat_schemas import schema_values
from chatflow.data.jsonl_reader import (
    JsonlError,
    RecordError,
    check_string,
    iter_lines,
    parse_line,
)
from chatflow.fileio import atomic_write
from chatflow.text_split import split_to_limit
from chatflow.tokenizer import write_vocab_file

logger = logging.getLogger(__name__)

# Byte fallback alone needs 256 byte pieces plus UNK/BOS/EOS; a few merges on top of that.
MIN_VOCAB_SIZE = 260 + 3


@dataclass(frozen=True)
class TokenizerTrainingConfig:
    """What to train on and how; the defaults are LLaMA2's.

    Attributes:
        inputs: JSONL(.gz) files (already expanded, see ``jsonl_reader.expand_inputs``).
        output: path of the ``.model`` file to write.
        vocab_size: pieces in the model, control and byte pieces included.
        keys: string fields to train on; None takes every known layout's fields.
        character_coverage: share of characters covered by character pieces.
        seed: sentencepiece's random seed.
        num_threads: trainer threads (1 is reproducible everywhere).
        skip_bad: skip (and log) bad records instead of failing on the first.
        input_sentence_size: sample this many sentences (0: all) for very large corpora.
        max_sentence_length: sentencepiece's limit (bytes); longer lines are split to fit.
        field_map: renames of top-level fields before reading (``{"query": "instruction"}``).
        write_vocab: also write ``<output minus .model>.vocab`` (piece and score per line).
    """

    inputs: list[str]
    output: str
    vocab_size: int = 32000
    keys: list[str] | None = None
    character_coverage: float = 0.9995
    seed: int = 1234
    num_threads: int = 1
    skip_bad: bool = False
    input_sentence_size: int = 0
    max_sentence_length: int = 16384
    write_vocab: bool = True
    field_map: dict[str, str] | None = None


@dataclass
class TrainingCounts:
    """What a training run read: records used, sentences fed, bad records skipped, lines split
    to fit the sentence limit, blank or non-string text fields left out."""

    records: int = 0
    sentences: int = 0
    skipped: int = 0
    split_paragraphs: int = 0
    skipped_texts: int = 0


@dataclass(frozen=True)
class TokenizerTrainingSummary:
    """Result of :func:`train_tokenizer`: where the model went and what it was trained on."""

    output: str
    vocab_size: int
    records: int
    sentences: int
    skipped: int
    seconds: float
    split_paragraphs: int = 0
    """Lines longer than ``max_sentence_length`` bytes, split into fitting pieces (none dropped)."""
    skipped_texts: int = 0
    """Text fields that were present but blank or not strings (nothing to train on)."""


def record_texts(
    record: dict[str, Any],
    keys: list[str] | None = None,
    field_map: dict[str, str] | None = None,
    counts: TrainingCounts | None = None,
) -> list[str]:
    """The texts of one record: the named string fields, or every text field of every known
    schema if ``keys`` is None (blank and non-string ones are counted in
    ``counts.skipped_texts``).

    Raises:
        RecordError: a named key is missing/not a string, or no text is found at all.
    """
    if keys:
        out = []
        for k in keys:
            if k not in record:
                raise RecordError(f"missing key {k!r}")
            out.append(check_string(record[k], k))
        return out
    values = schema_values(record, field_map)
    out = [v for v in values if isinstance(v, str) and v.strip()]
    if not out:
        raise RecordError(
            "no text field found (looked for text, zh, en, Alpaca, pCLUE input/target, messages, "
            "conversations, conversation)"
        )
    if counts is not None:
        counts.skipped_texts += len(values) - len(out)
    for i, t in enumerate(out):
        check_string(t, f"text #{i}")
    return out


def iter_sentences(
    paths: list[str],
    keys: list[str] | None,
    skip_bad: bool,
    counts: TrainingCounts,
    field_map: dict[str, str] | None = None,
    max_sentence_length: int = 16384,
) -> Iterator[str]:
    """Every non-blank line of text of every record, counting into ``counts``.

    Sentencepiece trains on newline-free sentences, hence the split into lines; a line longer
    than ``max_sentence_length`` bytes is split further (:func:`chatflow.text_split.split_to_limit`)
    rather than left for sentencepiece to drop.

    Raises:
        JsonlError: a bad record (``file:line``), unless ``skip_bad``.
    """
    for path in paths:
        for n, raw in iter_lines(path):
            try:
                texts = record_texts(parse_line(raw), keys, field_map, counts)
            except RecordError as e:
                if not skip_bad:
                    raise JsonlError(path, n, str(e)) from None
                counts.skipped += 1
                logger.warning("%s:%d: skipped: %s", path, n, e)
                continue
            counts.records += 1
            for t in texts:
                for line in t.splitlines():
                    if not line.strip():
                        continue
                    pieces = split_to_limit(line, max_sentence_length)
                    if len(pieces) > 1 or pieces[0] is not line:  # [line] itself: it fits
                        counts.split_paragraphs += 1
                    counts.sentences += len(pieces)
                    yield from pieces


def train_tokenizer(config: TokenizerTrainingConfig) -> TokenizerTrainingSummary:
    """Train a model and write it atomically to ``config.output`` (and its ``.vocab``).

    Raises:
        ValueError: the vocabulary is too small for byte fallback, or the inputs hold no text.
        JsonlError: a bad record, unless ``config.skip_bad``.
        RuntimeError: sentencepiece's own errors (e.g. a vocabulary too large for the corpus).
    """
    if config.vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"--vocab-size {config.vocab_size} is too small: byte fallback alone needs 259"
        )
    t0 = time.time()
    counts = TrainingCounts()
    spm.set_random_generator_seed(config.seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter_sentences(
            config.inputs,
            config.keys,
            config.skip_bad,
            counts,
            config.field_map,
            config.max_sentence_length,
        ),
        model_writer=model,
        model_type="bpe",
        vocab_size=config.vocab_size,
        character_coverage=config.character_coverage,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        max_sentence_length=config.max_sentence_length,
        input_sentence_size=config.input_sentence_size,
        shuffle_input_sentence=config.input_sentence_size > 0,
        num_threads=config.num_threads,
        train_extremely_large_corpus=False,
        minloglevel=2,
    )
    if counts.sentences == 0:
        raise ValueError("no text found in the inputs")
    atomic_write(config.output, model.getvalue())
    if config.write_vocab:
        write_vocab_file(config.output, model.getvalue())
    return TokenizerTrainingSummary(
        output=config.output,
        vocab_size=config.vocab_size,
        records=counts.records,
        sentences=counts.sentences,
        skipped=counts.skipped,
        seconds=time.time() - t0,
        split_paragraphs=counts.split_paragraphs,
        skipped_texts=counts.skipped_texts,
    )


def train(
    inputs: list[str], output: str, vocab_size: int, **options: Any
) -> TokenizerTrainingSummary:
    """Shorthand for :func:`train_tokenizer`; ``options`` are the other config fields."""
    return train_tokenizer(TokenizerTrainingConfig(inputs, output, vocab_size, **options))
