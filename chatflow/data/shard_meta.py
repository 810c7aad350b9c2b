"""Tokenizer identity of token shards: the ``<prefix>.meta.json`` sidecar.

Megatron's ``.bin``/``.idx`` format records only the token dtype, so shards of two tokenizers with
vocabularies under 65,536 look alike and mix without a word. ChatFlow writes a small JSON sidecar
next to each shard it makes (preprocessing and merging)::

    {"sidecar_version": 1, "kind": "tokens", "tokenizer": {"sha256": ..., "vocab_size": ...,
     "bos_id": 1, "eos_id": 2}, "format": "text", "bos": true, "append_eod": false,
     "settings": {...templates...}, "chatflow_version": "0.1.0"}

megatron-core never reads it; ChatFlow uses it to refuse merging shards of different tokenizers
(:func:`merged_meta`) and training on a shard made with another tokenizer than the run's
``--tokenizer-model`` (:func:`check_training_shards`). Shards without a sidecar (made by
Megatron-LM, or before sidecars existed) are accepted with one warning per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from importlib import metadata
from typing import Any

from chatflow.data.segment_encoding import SEGMENT_ENCODING_VERSION

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".meta.json"
SIDECAR_VERSION = 1

_warned_missing = False  # "no sidecar" is said once per process, not once per shard


class ShardMetaError(ValueError):
    """Shards whose tokenizers differ (or an unreadable sidecar)."""


def meta_path(prefix: str) -> str:
    """The sidecar file of a shard prefix."""
    return prefix + SIDECAR_SUFFIX


def chatflow_version() -> str:
    """The installed ChatFlow version (``unknown`` when run from a plain checkout)."""
    try:
        return metadata.version("chatflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (the tokenizer model's identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """The ``tokenizer`` entry of a sidecar for a :class:`chatflow.tokenizer.Tokenizer`."""
    return {
        "sha256": file_sha256(tokenizer.model_path),
        "model": os.path.basename(tokenizer.model_path),
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
    }


def build_meta(tokenizer_entry: dict[str, Any], kind: str = "tokens", **fields: Any) -> dict:
    """A sidecar dict: version, ``kind`` (``tokens`` or ``loss_mask``), tokenizer, then ``fields``
    (format, bos, append_eod, settings, ...)."""
    return {
        "sidecar_version": SIDECAR_VERSION,
        "kind": kind,
        "tokenizer": tokenizer_entry,
        **fields,
        "chatflow_version": chatflow_version(),
    }


def sidecars(tokenizer: Any, cfg: Any, prefixes: list[str], mask_prefix: str | None) -> dict:
    """Write the temporary sidecars of a preprocessing run's shards; ``{prefix: temp path}``.

    ``cfg`` is the run's :class:`chatflow.data.preprocess.PreprocessConfig` (all of it is kept
    under ``settings``).
    """
    ident = tokenizer_identity(tokenizer)
    fields = {
        "format": cfg.format,
        "bos": getattr(cfg, "bos", True),
        "append_eod": cfg.append_eod,
        "settings": dataclasses.asdict(cfg),
    }
    if cfg.format == "instruction":  # how template segments became tokens (the shard's meaning)
        fields["segment_encoding"] = SEGMENT_ENCODING_VERSION
    out = {p: write_meta_tmp(p, build_meta(ident, "tokens", **fields)) for p in prefixes}
    if mask_prefix is not None:
        out[mask_prefix] = write_meta_tmp(mask_prefix, build_meta(ident, "loss_mask", **fields))
    return out


def write_meta_tmp(prefix: str, meta: dict) -> str:
    """Write ``meta`` under a temporary name beside the shard; returns it (publish with
    ``os.replace(tmp, meta_path(prefix))`` together with the shard)."""
    tmp = f"{meta_path(prefix)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return tmp


def read_meta(prefix: str) -> dict | None:
    """The sidecar of ``prefix``, or None when it has none.

    Raises:
        ShardMetaError: the sidecar exists but is not a JSON object with a tokenizer sha256.
    """
    path = meta_path(prefix)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ShardMetaError(f"{path}: unreadable shard sidecar: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer", {}).get("sha256"), str):
        raise ShardMetaError(f"{path}: not a ChatFlow shard sidecar (no tokenizer.sha256)")
    return meta


def _warn_missing(prefixes: list[str]) -> None:
    global _warned_missing
    if prefixes and not _warned_missing:
        _warned_missing = True
        logger.warning(
            "%d shard(s) have no %s sidecar (made by Megatron-LM or an older ChatFlow), so their "
            "tokenizer cannot be checked: %s",
            len(prefixes), SIDECAR_SUFFIX, ", ".join(prefixes),
        )  # fmt: skip


def merged_meta(prefixes: list[str], force: bool = False) -> dict | None:
    """The sidecar of a merge of ``prefixes``, or None when no input has one.

    All inputs with a sidecar must share the tokenizer sha256; the merged sidecar keeps the first
    input's fields that all inputs agree on, and lists its sources.

    Raises:
        ShardMetaError: tokenizers differ (unless ``force``: then a warning, and the merged
            sidecar records ``"mixed_tokenizers": true``).
    """
    metas = {p: read_meta(p) for p in prefixes}
    known = {p: m for p, m in metas.items() if m is not None}
    _warn_missing([p for p, m in metas.items() if m is None])
    if not known:
        return None
    first_prefix, first = next(iter(known.items()))
    sha = first["tokenizer"]["sha256"]
    differ = [p for p, m in known.items() if m["tokenizer"]["sha256"] != sha]
    if differ:
        msg = (
            f"shards made with different tokenizers: {first_prefix} has tokenizer sha256 "
            f"{sha[:12]}..., but {', '.join(differ)} "
            f"{'has' if len(differ) == 1 else 'have'} another"
        )
        if not force:
            raise ShardMetaError(msg + "; pass --force to merge them anyway")
        logger.warning("%s; merging anyway (--force)", msg)
    out = {
        k: v for k, v in first.items()
        if all(m.get(k) == v for m in known.values()) and k != "chatflow_version"
    }  # fmt: skip
    out.update(build_meta(first["tokenizer"], kind="tokens"))
    out["merged_from"] = [os.path.abspath(p) for p in prefixes]
    if differ:
        out["mixed_tokenizers"] = True
    return out


def check_training_shards(prefixes: list[str], tokenizer_model: str | None) -> None:
    """Refuse shards whose sidecar names another tokenizer than ``tokenizer_model``.

    Shards without a sidecar load, with one warning per process. Nothing is checked when the run
    has no ``--tokenizer-model``.

    Raises:
        ShardMetaError: names the first shard whose tokenizer differs.
    """
    if tokenizer_model is None:
        return
    sha = file_sha256(tokenizer_model)
    missing = []
    for p in prefixes:
        meta = read_meta(p)
        if meta is None:
            missing.append(p)
        elif meta["tokenizer"]["sha256"] != sha:
            raise ShardMetaError(
                f"{p}: shard made with another tokenizer (sha256 "
                f"{meta['tokenizer']['sha256'][:12]}..., model "
                f"{meta['tokenizer'].get('model', '?')}) than --tokenizer-model "
                f"{tokenizer_model} (sha256 {sha[:12]}...); re-tokenize it or use that tokenizer"
            )
    _warn_missing(missing)
