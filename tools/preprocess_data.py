#!/usr/bin/env python3
"""Tokenize JSONL corpora into Megatron ``.bin``/``.idx`` token shards.

Formats (``--format``):

- ``text``: ``{"text": ...}``; one shard per ``--json-keys`` key, named
  ``<output-prefix>_<key>_document`` as Megatron does. Each document is BOS + tokens
  (+ EOS with ``--append-eod``).
- ``parallel``: ``{"zh": ..., "en": ...}`` (``--json-keys ZH EN`` renames the keys), rendered in
  one of two translation directions chosen by a hash of (seed, input index, line); shard
  ``<output-prefix>_parallel_document``.
- ``instruction``: Alpaca ``{"instruction","input","output"}`` or chat ``{"conversations": [...]}``,
  rendered with the ChatFlow template; shard ``<output-prefix>_instruction_document`` plus its
  loss-mask shard ``<output-prefix>_instruction_document_loss_mask`` (uint8, same lengths).

Output is byte-identical for any ``--workers``. Bad lines stop the run with ``file:line: reason``,
or with ``--on-error skip`` are counted and written to ``<output-prefix>.rejects.jsonl``. Outputs
are written under temporary names and renamed at the end, so an interrupted run never leaves an
``.idx`` that looks complete and never pairs a new mask with an old token shard.

Example::

    python tools/preprocess_data.py --input 'corpus/zh/*.jsonl.gz' --output-prefix shards/zh \\
        --tokenizer-model tokenizer.model --append-eod --workers 8
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Iterator, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from chatflow.data.indexed_dataset import IndexedDatasetWriter, idx_path  # noqa: E402
from chatflow.data.jsonl_reader import (  # noqa: E402
    DEFAULT_BLOCK_BYTES,
    JsonlError,
    expand_inputs,
    iter_blocks,
)
from chatflow.data.preprocess import (  # noqa: E402
    BlockEncoder,
    BlockResult,
    PreprocessConfig,
    encode_block,
    init_worker,
)
from chatflow.data.templates import InstructionTemplate, ParallelTemplate  # noqa: E402
from chatflow.tokenizer import Tokenizer  # noqa: E402


def _unescape(s: str) -> str:
    """Let templates given on the command line spell newlines and tabs as ``\\n`` and ``\\t``."""
    return s.replace("\\n", "\n").replace("\\t", "\t")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout and show every default."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    g = p.add_argument_group("input/output")
    g.add_argument("--input", nargs="+", required=True, help="JSONL(.gz) files or globs")
    g.add_argument("--output-prefix", required=True)
    g.add_argument("--format", choices=("text", "parallel", "instruction"), default="text")
    g.add_argument(
        "--json-keys",
        nargs="+",
        default=None,
        help="text: keys to tokenize (default: text); parallel: ZH EN keys",
    )
    g.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad lines: stop (default) or skip into <output-prefix>.rejects.jsonl",
    )
    g = p.add_argument_group("tokenization")
    g.add_argument("--tokenizer-model", required=True, help="sentencepiece tokenizer.model")
    g.add_argument("--append-eod", action="store_true", help="end text/parallel documents with EOS")
    g.add_argument("--seed", type=int, default=1234, help="seed of the parallel direction choice")
    g = p.add_argument_group("templates (\\n and \\t are unescaped)")
    d = ParallelTemplate()
    g.add_argument(
        "--parallel-template-zh-en", default=d.zh_to_en, help="zh->en text, with {zh} and {en}"
    )
    g.add_argument(
        "--parallel-template-en-zh", default=d.en_to_zh, help="en->zh text, with {zh} and {en}"
    )
    g.add_argument(
        "--parallel-zh-en-probability",
        type=float,
        default=d.zh_to_en_probability,
        help="share of pairs rendered zh->en",
    )
    i = InstructionTemplate()
    g.add_argument(
        "--instruction-template", default=i.prompt, help="human turn, with {instruction}"
    )
    g.add_argument(
        "--instruction-input-template",
        default=i.alpaca_input,
        help="joins Alpaca instruction and input",
    )
    g.add_argument("--system-template", default=i.system, help="leading system turn")
    g = p.add_argument_group("runtime")
    g.add_argument(
        "--workers", type=int, default=1, help="encoding processes (0: encode in the main process)"
    )
    g.add_argument(
        "--log-interval",
        type=int,
        default=100000,
        help="documents between progress lines when stderr is not a terminal",
    )
    g.add_argument(
        "--block-bytes", type=int, default=DEFAULT_BLOCK_BYTES, help="input bytes per worker task"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress output")
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """The typed configuration of a command line (templates validated here)."""
    keys = args.json_keys
    zh_key, en_key = "zh", "en"
    if args.format == "parallel" and keys is not None:
        if len(keys) != 2:
            raise ValueError(f"--json-keys: parallel format takes 2 keys (ZH EN), got {keys}")
        zh_key, en_key = keys
    if args.format == "instruction" and keys is not None:
        raise ValueError("--json-keys does not apply to the instruction format")
    parallel = ParallelTemplate(
        zh_key=zh_key,
        en_key=en_key,
        zh_to_en=_unescape(args.parallel_template_zh_en),
        en_to_zh=_unescape(args.parallel_template_en_zh),
        zh_to_en_probability=args.parallel_zh_en_probability,
    )
    return PreprocessConfig(
        format=args.format,
        json_keys=tuple(keys) if args.format == "text" and keys else ("text",),
        append_eod=args.append_eod,
        seed=args.seed,
        parallel=parallel,
        instruction=InstructionTemplate(
            prompt=_unescape(args.instruction_template),
            alpaca_input=_unescape(args.instruction_input_template),
            system=_unescape(args.system_template),
        ),
    )


def _tasks(inputs: list[str], block_bytes: int) -> Iterator[tuple[int, int, bytes]]:
    for source, path in enumerate(inputs):
        for first_line, blob in iter_blocks(path, block_bytes):
            yield source, first_line, blob


def _results(
    tasks, tokenizer: Tokenizer, cfg: PreprocessConfig, workers: int
) -> Iterator[tuple[tuple[int, int], BlockResult]]:
    """``((source, first_line), result)`` in task order, at most ``2 * workers`` blocks in flight.

    ``Pool.imap`` would read ahead without limit; submitting by hand bounds memory.
    """
    if workers == 0:
        encoder = BlockEncoder(tokenizer, cfg)
        for t in tasks:
            yield t[:2], encoder.encode(*t)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=init_worker, initargs=(tokenizer, cfg)) as pool:
        pending: collections.deque = collections.deque()
        for t in tasks:
            pending.append((t[:2], pool.apply_async(encode_block, (t,))))
            if len(pending) >= 2 * workers:
                key, res = pending.popleft()
                yield key, res.get()
        while pending:
            key, res = pending.popleft()
            yield key, res.get()


def _reject_line(path: str, line: int, reason: str, raw: bytes) -> str:
    entry = {"file": path, "line": line, "error": reason}
    try:
        entry["text"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["raw_base64"] = base64.b64encode(raw).decode("ascii")  # keep undecodable bytes intact
    return json.dumps(entry, ensure_ascii=False) + "\n"


class _Progress:
    """tqdm bar on a terminal, a line every ``log_interval`` documents otherwise."""

    def __init__(self, total_bytes: Optional[int], log_interval: int, enabled: bool) -> None:
        self.t0 = time.time()
        self.docs = self.tokens = self.bytes = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.log_interval = max(1, log_interval)
        self.next_log = self.log_interval
        # No tqdm monitor thread: worker processes are forked after this, and forking a process
        # with extra threads running is fragile.
        tqdm.monitor_interval = 0
        self.bar = (
            tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                file=sys.stderr,
                mininterval=0.5,
                desc="preprocess",
            )
            if self.tty
            else None
        )

    def rates(self) -> str:
        dt = max(time.time() - self.t0, 1e-9)
        return (
            f"{self.docs / dt:,.0f} docs/s, {self.tokens / dt:,.0f} tokens/s, "
            f"{self.bytes / dt / 1e6:.2f} MB/s"
        )

    def update(self, docs: int, tokens: int, nbytes: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self.bytes += nbytes
        if self.bar is not None:
            self.bar.update(nbytes)
            self.bar.set_postfix_str(self.rates(), refresh=False)
        elif self.enabled and self.docs >= self.next_log:
            print(
                f"processed {self.docs:,} documents ({self.rates()})", file=sys.stderr, flush=True
            )
            self.next_log = (self.docs // self.log_interval + 1) * self.log_interval

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> dict:
    """Preprocess as ``args`` say; returns the summary. Raises on bad input in fail mode."""
    cfg = config_from_args(args)
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    inputs = expand_inputs(args.input)
    tokenizer = Tokenizer(args.tokenizer_model)
    encoder_dtype = BlockEncoder(tokenizer, cfg).dtype
    prefixes = cfg.output_prefixes(args.output_prefix)
    mask_prefix = cfg.mask_prefix(args.output_prefix)
    skip = args.on_error == "skip"
    rejects_path = args.output_prefix + ".rejects.jsonl"
    total = None if any(p.endswith(".gz") for p in inputs) else sum(map(os.path.getsize, inputs))
    progress = _Progress(total, args.log_interval, not args.no_progress)

    writers = [IndexedDatasetWriter(p, encoder_dtype) for p in prefixes]
    mask_writer = IndexedDatasetWriter(mask_prefix, np.uint8) if mask_prefix else None
    all_writers = writers + ([mask_writer] if mask_writer else [])
    rejects_tmp = f"{rejects_path}.tmp{os.getpid()}"
    rejects_file = open(rejects_tmp, "w", encoding="utf-8") if skip else None
    stats = {"records": 0, "documents": 0, "tokens": 0, "skipped": 0, "bytes": 0}
    try:
        for (source, _), res in _results(
            _tasks(inputs, args.block_bytes), tokenizer, cfg, args.workers
        ):
            if res.rejects:
                if not skip:
                    line, reason, _ = res.rejects[0]
                    raise JsonlError(inputs[source], line, reason)
                for line, reason, raw in res.rejects:
                    rejects_file.write(_reject_line(inputs[source], line, reason, raw))
            for w, tokens, lengths in zip(writers, res.tokens, res.lengths, strict=True):
                _write_documents(w, tokens, lengths)
            if mask_writer is not None:
                _write_documents(mask_writer, res.mask, res.lengths[0])
            ndocs = len(res.lengths[0])
            ntok = int(sum(len(t) for t in res.tokens))
            stats["records"] += res.num_records
            stats["documents"] += ndocs
            stats["tokens"] += ntok
            stats["skipped"] += len(res.rejects)
            stats["bytes"] += res.num_bytes
            progress.update(ndocs, ntok, res.num_bytes)
        # Publish: first remove the old token indices, so that no moment exists where an old
        # token shard looks complete beside a new mask; then masks, then tokens (.idx last each).
        for p in prefixes:
            if os.path.exists(idx_path(p)):
                os.unlink(idx_path(p))
        if mask_writer is not None:
            mask_writer.finalize()
        for w in writers:
            w.finalize()
        if rejects_file is not None:
            rejects_file.close()
            os.replace(rejects_tmp, rejects_path)
    except BaseException:
        for w in all_writers:
            w.abort()
        if rejects_file is not None:
            rejects_file.close()
            os.unlink(rejects_tmp)
        raise
    finally:
        progress.close()
    stats["seconds"] = time.time() - progress.t0
    stats["outputs"] = prefixes + ([mask_prefix] if mask_prefix else [])
    stats["rejects_file"] = rejects_path if skip else None
    stats["inputs"] = inputs
    return stats


def _write_documents(writer: IndexedDatasetWriter, tokens: np.ndarray, lengths: np.ndarray) -> None:
    pos = 0
    for n in lengths.tolist():
        writer.add_document(tokens[pos : pos + n])
        pos += n


def format_summary(s: dict) -> str:
    dt = max(s["seconds"], 1e-9)
    lines = [
        f"inputs:    {len(s['inputs'])} file(s), {s['bytes'] / 1e6:.2f} MB, "
        f"{s['records']:,} records",
        f"documents: {s['documents']:,} written, {s['skipped']:,} skipped"
        + (f" (rejects: {s['rejects_file']})" if s["rejects_file"] else ""),
        f"tokens:    {s['tokens']:,}",
        f"time:      {dt:.2f}s ({s['documents'] / dt:,.0f} docs/s, {s['tokens'] / dt:,.0f} "
        f"tokens/s, {s['bytes'] / dt / 1e6:.2f} MB/s)",
    ]
    lines += [f"output:    {p}.bin/.idx" for p in s["outputs"]]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (JsonlError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
