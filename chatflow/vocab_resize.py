"""Resize an HF LLaMA checkpoint to an expanded sentencepiece vocabulary.

The pieces and the row initialisation come from :mod:`chatflow.vocab`; this module reads the HF
directory and writes the resized one atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from chatflow import vocab
from chatflow.fileio import atomic_write

logger = logging.getLogger(__name__)

# HF tokenizer files that stay valid for the expanded model; tokenizer.json (the "fast" tokenizer)
# embeds the old vocabulary and merges, so it is NOT copied: HF rebuilds it from tokenizer.model.
_HF_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


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
