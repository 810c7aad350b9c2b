#!/usr/bin/env python3
"""Expand a LLaMA-style sentencepiece tokenizer with Chinese pieces (and resize an HF checkpoint).

New pieces come from a file (``--add-chars``, one character or word per line) or are mined from
JSONL corpora (``--mine-corpus``: the ``--top-n`` most frequent CJK characters and punctuation that
are not pieces yet). They are appended after the existing pieces, so old ids keep their meaning.
With ``--hf-model-dir`` the HF ``LlamaForCausalLM`` checkpoint is resized too: each new
``embed_tokens``/``lm_head`` row is the mean of the rows of the old tokenizer's pieces for it.

Example (the ChatFlow recipe: 8,076 characters)::

    python tools/expand_vocab.py --tokenizer-model llama2/tokenizer.model \\
        --mine-corpus 'data/zh/*.jsonl' --top-n 8076 --output zh/tokenizer.model \\
        --hf-model-dir llama2 --output-hf-dir llama2-zh
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from chatflow import vocab
from chatflow.data.jsonl_reader import JsonlError
from chatflow.vocab_expansion import VocabExpansionJob, expand_vocabulary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-expand-vocab`` and ``tools/expand_vocab.py``: the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer-model", required=True, help="the old sentencepiece model")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--add-chars", help="UTF-8 file: one piece (character or word) per line")
    src.add_argument("--mine-corpus", nargs="+", help="JSONL(.gz) files or globs to mine")
    parser.add_argument("--top-n", type=int, default=8076, help="pieces to mine (paper: 8076)")
    parser.add_argument("--min-count", type=int, default=1, help="ignore rarer mined characters")
    parser.add_argument("--output", required=True, help="path of the expanded .model to write")
    parser.add_argument(
        "--piece-type",
        choices=sorted(vocab.PIECE_TYPES),
        default="normal",
        help="normal (BPE pieces; keeps old tokenizations) or user_defined (always one token)",
    )
    parser.add_argument("--sample", nargs="+", help="JSONL for tokens/char (default: the corpus)")
    parser.add_argument("--sample-size", type=int, default=2000, help="texts in the sample")
    parser.add_argument("--hf-model-dir", help="HF LlamaForCausalLM checkpoint to resize")
    parser.add_argument("--output-hf-dir", help="where to write the resized checkpoint")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    args = parser.parse_args(argv)
    if bool(args.hf_model_dir) != bool(args.output_hf_dir):
        parser.error("--hf-model-dir and --output-hf-dir go together")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    try:
        summary = expand_vocabulary(
            VocabExpansionJob(
                tokenizer_model=args.tokenizer_model,
                output=args.output,
                add_chars=args.add_chars,
                mine_corpus=args.mine_corpus,
                top_n=args.top_n,
                min_count=args.min_count,
                piece_type=args.piece_type,
                sample=args.sample,
                sample_size=args.sample_size,
                hf_model_dir=args.hf_model_dir,
                output_hf_dir=args.output_hf_dir,
                skip_bad_records=args.on_error == "skip",
            )
        )
    except (JsonlError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = summary.result
    print(
        f"wrote {args.output}: added {len(result.added)} {args.piece_type} pieces, vocab "
        f"{result.old_vocab_size} -> {result.new_vocab_size} "
        f"({len(result.skipped_existing)} already present, {result.skipped_duplicates} repeated)"
    )
    if result.not_single_token:
        print(
            f"warning: {len(result.not_single_token)} added pieces do not encode as one token "
            "(use --piece-type user_defined): " + " ".join(result.not_single_token[:20])
        )
    if summary.tokens_per_char:
        before, after = summary.tokens_per_char
        print(
            f"tokens per Chinese character on {summary.sample_texts} sample texts: {before:.3f} -> "
            f"{after:.3f} ({before / after:.2f}x fewer)"
        )
    if summary.hf_rows:
        old_rows, new_rows = summary.hf_rows
        print(f"wrote {args.output_hf_dir}: embeddings {old_rows} -> {new_rows} rows")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
