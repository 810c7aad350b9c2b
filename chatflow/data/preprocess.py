"""Turning blocks of JSONL lines into token arrays: the work done by preprocessing workers.

:func:`chatflow.data.preprocess_run.preprocess` reads input files in blocks of whole lines (see
:func:`chatflow.data.jsonl_reader.iter_blocks`), hands each block to a worker process running
:meth:`BlockEncoder.encode`, and writes the results in input order. A block's result depends only
on its lines and their positions (file index, line number), never on which worker ran it, so the
output is byte-identical for any worker count.

Results are a few flat numpy arrays per block (tokens concatenated, one length per document), which
pickle as raw bytes: cheap to send between processes and written with one bulk copy each. Texts of a
block are encoded in one sentencepiece call to keep per-document Python overhead low.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from chatflow.data.chat_audit import ChatBlockAudit
from chatflow.data.chat_schemas import ChatSchemaConfig, parse_record
from chatflow.data.indexed_dataset import token_dtype
from chatflow.data.jsonl_reader import (
    RecordError,
    get_text,
    oversized_reason,
    parse_line,
    split_block,
)
from chatflow.data.long_text import LONG_TEXT_CHARS, encode_long
from chatflow.data.oversized import oversized_size
from chatflow.data.segment_encoding import encode_segments
from chatflow.data.templates import (
    InstructionTemplate,
    ParallelTemplate,
    assemble,
    loss_mask_prefix,
)

if TYPE_CHECKING:
    from chatflow.tokenizer import Tokenizer

FORMATS = ("text", "parallel", "instruction")

#: Records (raw lines) larger than this are rejected: far beyond any real document, and a bound on
#: what one record may cost in memory.
DEFAULT_MAX_DOCUMENT_BYTES = 64 << 20


@dataclass
class PreprocessConfig:
    """What to extract from each record and how to render it."""

    format: str = "text"
    """``text`` (one shard per JSON key), ``parallel`` (zh-en pairs) or ``instruction``."""
    json_keys: tuple[str, ...] = ("text",)
    """Text format: the keys to tokenize, one output shard each."""
    append_eod: bool = False
    """Text and parallel formats: end every document with EOS (instruction responses always do)."""
    bos: bool = True
    """Start every document with BOS (LLaMA2's convention); False matches Megatron-LM's current
    tokenizer wrapper, which encodes without BOS (instruction format: no BOS before the first
    turn; the loss mask loses that position too)."""
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    """Records (raw lines) larger than this are rejected."""
    seed: int = 1234
    """Seed of the parallel-direction choice."""
    parallel: ParallelTemplate = field(default_factory=ParallelTemplate)
    """Parallel template (its keys are the zh/en JSON keys)."""
    instruction: InstructionTemplate = field(default_factory=InstructionTemplate)
    """Instruction template."""
    chat: ChatSchemaConfig = field(default_factory=ChatSchemaConfig)
    """Instruction format: how records are read as chats (schema, maps, repair policy)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        self.json_keys = tuple(self.json_keys)
        if self.max_document_bytes < 1:
            raise ValueError(f"max_document_bytes must be >= 1, got {self.max_document_bytes}")
        if self.format == "text":
            if not self.json_keys:
                raise ValueError("text format needs at least one JSON key")
            if len(set(self.json_keys)) != len(self.json_keys):
                raise ValueError(f"duplicate JSON keys: {self.json_keys}")

    @property
    def output_names(self) -> list[str]:
        """Suffixes of the token shards, Megatron style: ``<key>_document`` per text key."""
        if self.format == "text":
            return [f"{k}_document" for k in self.json_keys]
        return [f"{self.format}_document"]

    def output_prefixes(self, output_prefix: str) -> list[str]:
        """Token shard prefixes: ``<output_prefix>_<name>``."""
        return [f"{output_prefix}_{n}" for n in self.output_names]

    def mask_prefix(self, output_prefix: str) -> str | None:
        """The loss-mask shard prefix (instruction format only)."""
        if self.format != "instruction":
            return None
        return loss_mask_prefix(self.output_prefixes(output_prefix)[0])


@dataclass
class BlockResult:
    """Encoded documents of one block, flat per output shard."""

    tokens: list[np.ndarray]
    """Per output shard: all documents' tokens concatenated."""
    lengths: list[np.ndarray]
    """Per output shard: int32 document lengths."""
    mask: np.ndarray | None
    """Instruction format: loss mask aligned with ``tokens[0]``."""
    rejects: list[tuple[int, str, bytes]]
    """``(line number, reason, raw line)`` of every bad line, in order."""
    num_records: int
    """Records read (valid or not)."""
    num_bytes: int
    """Input bytes of the block."""
    chat: ChatBlockAudit | None = None
    """Instruction format: repaired records and unused fields of the block."""


class BlockEncoder:
    """Encodes blocks of JSONL lines; one instance lives in each worker process.

    Args:
        tokenizer: a :class:`chatflow.tokenizer.Tokenizer`.
        config: the preprocessing configuration.
    """

    def __init__(self, tokenizer: Tokenizer, config: PreprocessConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.dtype = np.dtype(token_dtype(tokenizer.vocab_size))

    def encode(self, source: int, first_line: int, blob: bytes) -> BlockResult:
        """Encode the lines of ``blob``; ``source`` (input file index) keys the parallel RNG."""
        cfg = self.config
        rejects: list[tuple[int, str, bytes]] = []
        texts: list[list[str]] = [[] for _ in cfg.output_names]  # text/parallel
        instr: list[list[tuple[str, bool]]] = []
        n_records = 0
        chat = ChatBlockAudit() if cfg.format == "instruction" else None
        for line, raw in split_block(first_line, blob):
            n_records += 1
            try:
                dropped = oversized_size(raw)  # a line the reader did not keep (too long)
                if dropped is not None or len(raw) > cfg.max_document_bytes:
                    size = len(raw) if dropped is None else dropped
                    raise RecordError(oversized_reason(size, cfg.max_document_bytes))
                record = parse_line(raw)
                if cfg.format == "text":
                    values = [get_text(record, k) for k in cfg.json_keys]
                    for out, v in zip(texts, values, strict=True):
                        out.append(v)
                elif cfg.format == "parallel":
                    texts[0].append(cfg.parallel.render(record, cfg.seed, source, line))
                else:
                    parsed = parse_record(record, cfg.chat)
                    instr.append(cfg.instruction.render(parsed.conversation))
                    chat.add(line, parsed, raw)
            except RecordError as e:
                rejects.append((line, str(e), raw))
        if cfg.format == "instruction":
            tokens, lengths, mask = self._encode_instructions(instr)
            return BlockResult([tokens], [lengths], mask, rejects, n_records, len(blob), chat)
        tokens_out, lengths_out = [], []
        for group in texts:
            if any(len(t) > LONG_TEXT_CHARS for t in group):  # rare: see chatflow.data.long_text
                arrays = [self._encode_one(t) for t in group]
                tokens_out.append(np.concatenate(arrays) if arrays else np.empty(0, self.dtype))
                lengths_out.append(np.array([len(a) for a in arrays], np.int32))
                continue
            ids = self.tokenizer.encode_batch(group, bos=cfg.bos, eos=cfg.append_eod)
            tokens_out.append(self._flatten(ids))
            lengths_out.append(np.fromiter(map(len, ids), np.int32, len(ids)))
        return BlockResult(tokens_out, lengths_out, None, rejects, n_records, len(blob))

    def _encode_one(self, text: str) -> np.ndarray:
        # One document as an array, never as a (40 bytes a token) Python list when it is long.
        cfg = self.config
        return encode_long(self.tokenizer, text, cfg.bos, cfg.append_eod, self.dtype)

    def _flatten(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        total = sum(map(len, ids))
        return np.fromiter(itertools.chain.from_iterable(ids), self.dtype, total)

    def _encode_instructions(
        self, records: list[list[tuple[str, bool]]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = encode_segments(self.tokenizer, [[text for text, _ in segs] for segs in records])
        tokens, masks, lengths = [], [], np.empty(len(records), np.int32)
        for i, segs in enumerate(records):
            t, m = assemble(
                ids[i], [tr for _, tr in segs], self.tokenizer.bos_id, self.tokenizer.eos_id
            )
            if not self.config.bos:  # assemble() always starts with BOS (mask 0)
                t, m = t[1:], m[1:]
            tokens.append(t)
            masks.append(m)
            lengths[i] = len(t)
        if not records:
            return np.empty(0, self.dtype), lengths, np.empty(0, np.uint8)
        return np.concatenate(tokens).astype(self.dtype), lengths, np.concatenate(masks)


# Worker-process state, set once by the pool initializer so tasks only carry their block.
_ENCODER: BlockEncoder | None = None


def init_worker(tokenizer: Tokenizer, config: PreprocessConfig) -> None:
    """Pool initializer: build this process's encoder."""
    global _ENCODER
    _ENCODER = BlockEncoder(tokenizer, config)


def encode_block(task: tuple[int, int, bytes]) -> BlockResult:
    """Pool task: encode one ``(source, first_line, blob)`` block with this process's encoder."""
    assert _ENCODER is not None, "init_worker was not called in this process"
    return _ENCODER.encode(*task)
