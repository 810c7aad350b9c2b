#!/usr/bin/env python3
"""Train a LLaMA2-style sentencepiece BPE tokenizer on JSONL corpora.

The model matches LLaMA2's tokenizer settings: BPE, byte fallback (no text ever maps to UNK),
digits split into single pieces, identity normalization (text is kept as is), a dummy prefix
space, whitespace not collapsed, UNK=0 / BOS=1 / EOS=2 and no pad piece. Training is
deterministic for a given input, seed and thread count.

Text is taken from every known layout of ChatFlow's corpora: ``text`` (monolingual), ``zh``/``en``
(parallel), ``instruction``/``input``/``output`` (Alpaca) and ``conversations[*].value`` (chat);
``--json-keys`` restricts it to named string fields. Bad lines stop the run with ``file:line``
unless ``--on-error skip``.

Example::

    python tools/train_tokenizer.py --input examples/data/*.jsonl --vocab-size 6000 \\
        --output examples/tokenizer/chatflow_demo.model
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import sentencepiece as spm

from chatflow.data.jsonl_reader import (
    JsonlError,
    RecordError,
    check_string,
    expand_inputs,
    iter_lines,
    parse_line,
)
from chatflow.fileio import atomic_write

logger = logging.getLogger("train_tokenizer")

AUTO_KEYS = ("text", "zh", "en", "instruction", "input", "output")


def record_texts(record: dict[str, Any], keys: list[str] | None = None) -> list[str]:
    """The texts of one record: the named string fields, or every known field if ``keys`` is None.

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
    out = [v for k in AUTO_KEYS if isinstance(v := record.get(k), str) and v.strip()]
    conv = record.get("conversations")
    if isinstance(conv, list):
        out += [t["value"] for t in conv if isinstance(t, dict) and isinstance(t.get("value"), str)]
    if not out:
        raise RecordError(f"no text field found (looked for {', '.join(AUTO_KEYS)}, conversations)")
    for i, t in enumerate(out):
        check_string(t, f"text #{i}")
    return out


def iter_sentences(
    paths: list[str], keys: list[str] | None, skip_bad: bool, stats: dict[str, int]
) -> Iterator[str]:
    """Every line of text of every record; sentencepiece trains on newline-free sentences."""
    for path in paths:
        for n, raw in iter_lines(path):
            try:
                texts = record_texts(parse_line(raw), keys)
            except RecordError as e:
                if not skip_bad:
                    raise JsonlError(path, n, str(e)) from None
                stats["skipped"] += 1
                logger.warning("%s:%d: skipped: %s", path, n, e)
                continue
            stats["records"] += 1
            for t in texts:
                for line in t.splitlines():
                    if line.strip():
                        stats["sentences"] += 1
                        yield line


def train(
    inputs: list[str],
    output: str,
    vocab_size: int,
    keys: list[str] | None = None,
    character_coverage: float = 0.9995,
    seed: int = 1234,
    num_threads: int = 1,
    skip_bad: bool = False,
    input_sentence_size: int = 0,
    max_sentence_length: int = 16384,
    write_vocab: bool = True,
) -> dict[str, int]:
    """Train a model and write it atomically to ``output`` (and ``<output minus .model>.vocab``).

    Returns:
        Counts: ``records``, ``sentences``, ``skipped``.
    """
    if vocab_size < 260 + 3:
        raise ValueError(f"--vocab-size {vocab_size} is too small: byte fallback alone needs 259")
    stats = {"records": 0, "sentences": 0, "skipped": 0}
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter_sentences(inputs, keys, skip_bad, stats),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=character_coverage,
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
        max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=input_sentence_size > 0,
        num_threads=num_threads,
        train_extremely_large_corpus=False,
        minloglevel=2,
    )
    if stats["sentences"] == 0:
        raise ValueError("no text found in the inputs")
    atomic_write(output, model.getvalue())
    if write_vocab:
        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        lines = [f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())]
        base = output[: -len(".model")] if output.endswith(".model") else output
        atomic_write(base + ".vocab", "".join(lines).encode("utf-8"))
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="JSONL(.gz) files or globs")
    parser.add_argument("--output", required=True, help="path of the .model file to write")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument(
        "--json-keys",
        nargs="+",
        default=None,
        help="string fields to train on (default: every known layout's fields)",
    )
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="sentencepiece trainer threads (1 is reproducible everywhere)",
    )
    parser.add_argument(
        "--input-sentence-size",
        type=int,
        default=0,
        help="sample this many sentences (0: all) for very large corpora",
    )
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        inputs = expand_inputs(args.input)
        t0 = time.time()
        stats = train(
            inputs,
            args.output,
            args.vocab_size,
            args.json_keys,
            args.character_coverage,
            args.seed,
            args.threads,
            args.on_error == "skip",
            args.input_sentence_size,
        )
    except (JsonlError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # sentencepiece's own errors (e.g. vocab size too high)
        print(f"error: sentencepiece training failed: {e}", file=sys.stderr)
        return 1
    print(
        f"trained {args.output}: vocab {args.vocab_size}, {stats['records']} records, "
        f"{stats['sentences']} sentences, {stats['skipped']} skipped, "
        f"{time.time() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
