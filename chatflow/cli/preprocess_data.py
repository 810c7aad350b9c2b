#!/usr/bin/env python3
"""Tokenize JSONL corpora into Megatron ``.bin``/``.idx`` token shards.

Formats (``--format``):

- ``text``: ``{"text": ...}``; one shard per ``--json-keys`` key, named
  ``<output-prefix>_<key>_document`` as Megatron does. Each document is BOS + tokens
  (+ EOS with ``--append-eod``).
- ``parallel``: ``{"zh": ..., "en": ...}`` (``--json-keys ZH EN`` renames the keys), rendered in
  one of two translation directions chosen by a hash of (seed, input index, line); shard
  ``<output-prefix>_parallel_document``.
- ``instruction``: Alpaca (with LLaMA-Factory's ``system``/``history``), ShareGPT
  ``conversations``, OpenAI/HF ``messages`` or Firefly ``conversation`` records (``--chat-schema``,
  ``--field-map``, ``--role-map``; imperfect chats are repaired, ``--chat-repair``), rendered with
  the ChatFlow template; shard ``<output-prefix>_instruction_document`` plus its
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
import sys
import time

from tqdm import tqdm

from chatflow.data.chat_schemas import SCHEMAS, ChatSchemaConfig, RepairPolicy, parse_map
from chatflow.data.jsonl_reader import DEFAULT_BLOCK_BYTES, JsonlError
from chatflow.data.preprocess import DEFAULT_MAX_DOCUMENT_BYTES, PreprocessConfig
from chatflow.data.preprocess_run import PreprocessJob, PreprocessSummary, preprocess
from chatflow.data.readers import INPUT_FORMATS
from chatflow.data.templates import InstructionTemplate, ParallelTemplate
from chatflow.data.text_reader import BOUNDARIES
from chatflow.data.worker_pool import WorkerError


def _unescape(s: str) -> str:
    """Let templates given on the command line spell newlines and tabs as ``\\n`` and ``\\t``."""
    return s.replace("\\n", "\n").replace("\\t", "\t")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout and show every default."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    g = p.add_argument_group("input/output")
    g.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="files, globs or dataset directories (JSON Lines, JSON arrays, Parquet, Arrow, "
        "TSV/CSV, text; .gz/.zst/.bz2/.xz); - reads standard input",
    )
    g.add_argument(
        "--input-aligned",
        nargs="+",
        default=[],
        help="parallel format: plain-text files aligned line by line with --input (EN side)",
    )
    g.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default="auto",
        help="input layout (auto: by directory/suffix, JSON Lines vs array by content)",
    )
    g.add_argument(
        "--text-document-boundary",
        choices=BOUNDARIES,
        default="line",
        help="plain-text inputs: what one document is",
    )
    g.add_argument("--output-prefix", required=True)
    g.add_argument("--format", choices=("text", "parallel", "instruction"), default="text")
    g.add_argument(
        "--json-keys",
        nargs="+",
        default=None,
        help="keys or columns (dotted paths allowed); text: keys to tokenize (default: text); "
        "parallel: ZH EN keys",
    )
    g.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad lines: stop (default) or skip into <output-prefix>.rejects.jsonl",
    )
    g.add_argument(
        "--max-reject-fraction",
        type=float,
        default=0.5,
        help="--on-error skip: fail (publishing nothing but the rejects file) when more than this "
        "share of records is rejected; 1 disables",
    )
    g.add_argument(
        "--max-document-bytes",
        type=int,
        default=DEFAULT_MAX_DOCUMENT_BYTES,
        help="reject a record (raw line) larger than this",
    )
    g = p.add_argument_group("tokenization")
    g.add_argument("--tokenizer-model", required=True, help="sentencepiece tokenizer.model")
    g.add_argument("--append-eod", action="store_true", help="end text/parallel documents with EOS")
    g.add_argument(
        "--no-bos",
        action="store_true",
        help="no BOS at the start of documents (Megatron-LM's current tokenizer wrapper); "
        "instruction format: no BOS before the first turn",
    )
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
    g = p.add_argument_group("instruction and chat schemas (see docs/data.md)")
    g.add_argument(
        "--chat-schema",
        choices=SCHEMAS,
        default="auto",
        help="record schema (auto: messages, conversations, conversation, then Alpaca)",
    )
    g.add_argument(
        "--field-map",
        default=None,
        help="rename top-level fields first, e.g. input=instruction,target=output",
    )
    g.add_argument(
        "--role-map", default=None, help="extra role names, e.g. bot=assistant,asker=user"
    )
    g.add_argument(
        "--chat-repair",
        choices=("repair", "strict"),
        default="repair",
        help="repair imperfect chats (drop empty/leading-assistant/trailing-user turns, merge "
        "same-role neighbours) or reject them",
    )
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
        bos=not args.no_bos,
        max_document_bytes=args.max_document_bytes,
        seed=args.seed,
        parallel=parallel,
        instruction=InstructionTemplate(
            prompt=_unescape(args.instruction_template),
            alpaca_input=_unescape(args.instruction_input_template),
            system=_unescape(args.system_template),
        ),
        chat=ChatSchemaConfig(
            schema=args.chat_schema,
            field_map=parse_map(args.field_map, "--field-map"),
            role_map=parse_map(args.role_map, "--role-map"),
            repair=RepairPolicy.named(args.chat_repair),
        ),
    )


class _Progress:
    """tqdm bar on a terminal, a line every ``log_interval`` documents otherwise."""

    def __init__(self, log_interval: int, enabled: bool) -> None:
        self.t0 = time.time()
        self.docs = self.tokens = self.bytes = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.log_interval = max(1, log_interval)
        self.next_log = self.log_interval
        self.bar: tqdm | None = None

    def start(self, total_bytes: int | None) -> None:
        """Open the bar (terminal only); called before the worker pool starts."""
        if not self.tty:
            return
        # No tqdm monitor thread: worker processes are forked after this, and forking a process
        # with extra threads running is fragile.
        tqdm.monitor_interval = 0
        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            file=sys.stderr,
            mininterval=0.5,
            desc="preprocess",
        )

    def rates(self) -> str:
        dt = max(time.time() - self.t0, 1e-9)
        return (
            f"{self.docs / dt:,.0f} docs/s, {self.tokens / dt:,.0f} tokens/s, "
            f"{self.bytes / dt / 1e6:.2f} MB/s"
        )

    def update(self, docs: int, tokens: int, nbytes: int) -> None:
        """Count one written block and show progress."""
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


def job_from_args(args: argparse.Namespace) -> PreprocessJob:
    """The preprocessing job of a command line."""
    encoding = config_from_args(args)
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    return PreprocessJob(
        inputs=args.input,
        output_prefix=args.output_prefix,
        tokenizer_model=args.tokenizer_model,
        encoding=encoding,
        on_error=args.on_error,
        workers=args.workers,
        block_bytes=args.block_bytes,
        input_format=args.input_format,
        text_boundary=args.text_document_boundary,
        aligned_inputs=list(args.input_aligned),
        max_reject_fraction=args.max_reject_fraction,
    )


def run(args: argparse.Namespace) -> PreprocessSummary:
    """Preprocess as ``args`` say, with progress output; returns the summary."""
    job = job_from_args(args)
    progress = _Progress(args.log_interval, not args.no_progress)
    try:
        return preprocess(job, progress)
    finally:
        progress.close()


def format_summary(s: PreprocessSummary) -> str:
    """The summary printed at the end of a run."""
    dt = max(s.seconds, 1e-9)
    lines = [
        f"inputs:    {len(s.inputs)} file(s), {s.bytes / 1e6:.2f} MB, {s.records:,} records",
        f"documents: {s.documents:,} written, {s.skipped:,} skipped"
        + (f" (rejects: {s.rejects_file})" if s.rejects_file else ""),
        f"tokens:    {s.tokens:,}",
        f"time:      {dt:.2f}s ({s.documents / dt:,.0f} docs/s, {s.tokens / dt:,.0f} "
        f"tokens/s, {s.bytes / dt / 1e6:.2f} MB/s)",
    ]
    lines += [
        f"damaged:   {d['file']} at byte {d['offset']} (after {d['unit']} {d['last_good']}); "
        "the rest of that file is lost"
        for d in s.damaged_files
    ]
    if s.repairs:
        kinds = ", ".join(f"{n:,} {k}" for k, n in s.repairs.items())
        lines.append(f"repairs:   {s.repaired_records:,} record(s) repaired and kept ({kinds})")
    for u in s.unused_fields:
        where = next(f"{k} {v}" for k, v in u.items() if k not in ("field", "file", "count"))
        lines.append(
            f"unused:    field {u['field']!r} in {u['count']:,} record(s), first {u['file']} "
            f"{where}"
        )
    lines += [f"output:    {p}.bin/.idx" for p in s.outputs]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-preprocess`` / ``tools/preprocess_data.py``."""
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (JsonlError, ValueError, FileNotFoundError, WorkerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
