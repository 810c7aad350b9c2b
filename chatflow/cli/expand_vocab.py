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
import os
import shutil
import sys
import tempfile
import time

from chatflow import vocab
from chatflow.data.jsonl_reader import JsonlError, expand_inputs
from chatflow.fileio import atomic_write

logger = logging.getLogger("expand_vocab")

# HF tokenizer files that stay valid for the expanded model; tokenizer.json (the "fast" tokenizer)
# embeds the old vocabulary and merges, so it is NOT copied: HF rebuilds it from tokenizer.model.
_HF_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _write_vocab(model_path: str, proto: bytes) -> None:
    """The human-readable ``<name>.vocab`` (piece, score) next to the model, as sentencepiece's
    trainer and tools/train_tokenizer.py write it."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    lines = [f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())]
    base = model_path.removesuffix(".model")
    atomic_write(base + ".vocab", "".join(lines).encode("utf-8"))


def resize_hf_model(
    hf_dir: str, out_dir: str, old_proto: bytes, new_proto: bytes
) -> dict[str, int]:
    """Resize a ``LlamaForCausalLM`` checkpoint's embeddings and LM head to the new vocabulary.

    Old rows are kept bit for bit; new rows are mean-initialized (:func:`vocab.expand_embedding`).
    The result is written to a temporary sibling directory and renamed, so ``out_dir`` is either
    complete or absent.

    Returns:
        ``old_rows`` and ``new_rows`` of the embedding matrix.

    Raises:
        FileNotFoundError: ``hf_dir`` has no ``config.json``.
        ValueError: ``out_dir`` exists and is not empty, or the checkpoint's vocabulary size is not
            the old tokenizer's.
    """
    import sentencepiece as spm
    import torch
    from transformers import LlamaForCausalLM

    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise FileNotFoundError(f"{hf_dir}: no config.json, not an HF model directory")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"{out_dir}: exists and is not empty; choose a new --output-hf-dir")
    sources = vocab.new_piece_sources(old_proto, new_proto)
    # dtype="auto" keeps the checkpoint's dtype (bf16 for LLaMA2) instead of upcasting to fp32.
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype="auto")
    old_rows = model.get_input_embeddings().weight.shape[0]
    v_old = spm.SentencePieceProcessor(model_proto=old_proto).get_piece_size()
    if old_rows != v_old:
        raise ValueError(
            f"{hf_dir}: embedding has {old_rows} rows but the old tokenizer has {v_old} pieces"
        )
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        emb = vocab.expand_embedding(model.get_input_embeddings().weight, sources)
        head = (
            None if tied else vocab.expand_embedding(model.get_output_embeddings().weight, sources)
        )
        # resize_token_embeddings keeps config.vocab_size and weight tying right; its own
        # (random, mean-centred) init is disabled and overwritten by ours.
        model.resize_token_embeddings(emb.shape[0], mean_resizing=False)
        model.get_input_embeddings().weight.copy_(emb)
        if head is not None:
            model.get_output_embeddings().weight.copy_(head)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".expand_vocab.", dir=parent)
    try:
        model.save_pretrained(tmp)
        atomic_write(os.path.join(tmp, "tokenizer.model"), new_proto)
        for name in _HF_TOKENIZER_FILES:
            if os.path.isfile(os.path.join(hf_dir, name)):
                shutil.copy2(os.path.join(hf_dir, name), os.path.join(tmp, name))
        if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
            logger.warning("tokenizer.json not copied: it holds the old vocabulary")
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); os.replace cannot replace a directory
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"old_rows": old_rows, "new_rows": emb.shape[0]}


def main(argv: list[str] | None = None) -> int:
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
        old = vocab.load_proto(args.tokenizer_model)
        if args.add_chars:
            pieces = vocab.read_piece_file(args.add_chars)
        else:
            corpus = expand_inputs(args.mine_corpus)
            mined = vocab.mine_corpus(
                corpus, old, args.top_n, args.min_count, args.on_error == "skip"
            )
            if not mined:
                raise ValueError("nothing to add: every CJK character of the corpus is a piece")
            pieces = [c for c, _ in mined]
        result = vocab.expand_model(old, pieces, args.piece_type)
        atomic_write(args.output, result.model_proto)
        _write_vocab(args.output, result.model_proto)
        sample_files = args.sample or args.mine_corpus
        texts = (
            vocab.sample_chinese_texts(expand_inputs(sample_files), args.sample_size)
            if sample_files
            else []
        )
        ratio = None
        if texts:
            ratio = (
                vocab.tokens_per_char(old, texts),
                vocab.tokens_per_char(result.model_proto, texts),
            )
        hf = None
        if args.hf_model_dir:
            hf = resize_hf_model(args.hf_model_dir, args.output_hf_dir, old, result.model_proto)
    except (JsonlError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
    if ratio:
        before, after = ratio
        print(
            f"tokens per Chinese character on {len(texts)} sample texts: {before:.3f} -> "
            f"{after:.3f} ({before / after:.2f}x fewer)"
        )
    if hf:
        print(f"wrote {args.output_hf_dir}: embeddings {hf['old_rows']} -> {hf['new_rows']} rows")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
