#!/usr/bin/env python3
"""Train a LLaMA2-style sentencepiece BPE tokenizer on JSONL corpora.

The model matches LLaMA2's tokenizer settings (see :mod:`chatflow.tokenizer_training`, which does
the training): BPE, byte fallback, digits split, identity normalization, UNK=0 / BOS=1 / EOS=2
and no pad piece. Training is deterministic for a given input, seed and thread count.

Text is taken from every text field of every known layout: ``text`` (monolingual), ``zh``/``en``
(parallel), Alpaca (with ``system``/``history``), pCLUE / Firefly ``input``/``target``,
``messages``, ShareGPT ``conversations`` (and ``system``), Firefly ``conversation``
(``--field-map`` renames fields first); ``--json-keys`` restricts it to named string fields. Lines
over sentencepiece's sentence limit are split at sentence or character boundaries, never dropped.
Bad lines stop the run with ``file:line`` unless ``--on-error skip``.

Example::

    python tools/train_tokenizer.py --input examples/data/*.jsonl --vocab-size 6000 \\
        --output examples/tokenizer/chatflow_demo.model
"""

from __future__ import annotations

import argparse
import logging
import sys

from chatflow.data.chat_schemas import parse_map
from chatflow.data.jsonl_reader import JsonlError, expand_inputs
from chatflow.tokenizer_training import TokenizerTrainingConfig, train_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``chatflow-train-tokenizer``."""
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
    parser.add_argument(
        "--field-map",
        default=None,
        help="rename top-level fields before reading, e.g. query=instruction,answer=output",
    )
    parser.add_argument(
        "--max-sentence-length",
        type=int,
        default=16384,
        help="sentencepiece's sentence limit in bytes; longer lines are split to fit",
    )
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-train-tokenizer`` / ``tools/train_tokenizer.py``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = TokenizerTrainingConfig(
            inputs=expand_inputs(args.input),
            output=args.output,
            vocab_size=args.vocab_size,
            keys=args.json_keys,
            character_coverage=args.character_coverage,
            seed=args.seed,
            num_threads=args.threads,
            skip_bad=args.on_error == "skip",
            input_sentence_size=args.input_sentence_size,
            max_sentence_length=args.max_sentence_length,
            field_map=parse_map(args.field_map, "--field-map") or None,
        )
        summary = train_tokenizer(config)
    except (JsonlError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # sentencepiece's own errors (e.g. vocab size too high)
        print(f"error: sentencepiece training failed: {e}", file=sys.stderr)
        return 1
    print(
        f"trained {summary.output}: vocab {summary.vocab_size}, {summary.records} records, "
        f"{summary.sentences} sentences, {summary.skipped} skipped, {summary.seconds:.1f}s"
    )
    print(
        f"long paragraphs split to fit {args.max_sentence_length} bytes: "
        f"{summary.split_paragraphs}; blank or non-string text fields skipped: "
        f"{summary.skipped_texts}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
