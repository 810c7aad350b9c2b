"""Running a preprocessing job: JSONL inputs in, published ``.bin``/``.idx`` token shards out.

:func:`preprocess` reads the inputs in blocks of whole lines, encodes them in a pool of worker
processes (:mod:`chatflow.data.preprocess`), at most ``2 * workers`` blocks in flight, and writes
the results in input order, so the output is byte-identical for any worker count.

Outputs are written under temporary names and published at the end, in an order that never
leaves an ``.idx`` that looks complete and never pairs a new loss mask with an old token shard.
Bad lines stop the run (:class:`~chatflow.data.jsonl_reader.JsonlError`), or with
``on_error="skip"`` go to ``<output_prefix>.rejects.jsonl`` with their exact bytes.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from chatflow.data.chat_audit import ChatRunAudit, repaired_entry
from chatflow.data.indexed_dataset import IndexedDatasetWriter, idx_path
from chatflow.data.input_source import DamagedInputError
from chatflow.data.jsonl_reader import DEFAULT_BLOCK_BYTES, JsonlError
from chatflow.data.output_guard import (
    RejectLimitError,
    check_outputs_not_inputs,
    shard_files,
    skip_mode_refusal,
)
from chatflow.data.preprocess import (
    BlockEncoder,
    BlockResult,
    PreprocessConfig,
    encode_block,
    init_worker,
)
from chatflow.data.readers import (
    ReaderOptions,
    expand_inputs,
    known_size,
    needed_fields,
    open_reader,
)
from chatflow.data.shard_meta import meta_path, sidecars
from chatflow.data.worker_pool import OrderedPool
from chatflow.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")


@dataclass
class PreprocessJob:
    """One preprocessing run: what to read, how to encode it, where to write it."""

    inputs: list[str]
    """Files, globs, dataset directories or ``-`` (see :mod:`chatflow.data.readers`), in order
    (each glob sorted; duplicates read once)."""
    output_prefix: str
    """Shards are named ``<output_prefix>_<name>`` (see :class:`PreprocessConfig`)."""
    tokenizer_model: str
    """Path of the sentencepiece ``tokenizer.model``."""
    encoding: PreprocessConfig = field(default_factory=PreprocessConfig)
    """Format, keys and templates."""
    on_error: str = "fail"
    """Bad lines: ``fail`` (raise) or ``skip`` (into ``<output_prefix>.rejects.jsonl``)."""
    workers: int = 1
    """Encoding processes; 0 encodes in the calling process."""
    block_bytes: int = DEFAULT_BLOCK_BYTES
    """Input bytes per worker task."""
    input_format: str = "auto"
    """Input layout (:data:`chatflow.data.readers.INPUT_FORMATS`); ``auto`` detects it."""
    text_boundary: str = "line"
    """Plain-text inputs: ``line``, ``blank-line`` or ``file`` documents."""
    aligned_inputs: list[str] = field(default_factory=list)
    """Parallel format: the second file aligned with each input (same count, same order)."""
    max_reject_fraction: float = 0.5
    """Skip mode: fail (publishing nothing) when more than this share of records is rejected."""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.block_bytes < 1:
            raise ValueError(f"block_bytes must be >= 1, got {self.block_bytes}")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(
                f"max_reject_fraction must be in [0, 1], got {self.max_reject_fraction}"
            )

    @property
    def rejects_path(self) -> str:
        """Where skipped lines go (``on_error="skip"``)."""
        return self.output_prefix + ".rejects.jsonl"


@dataclass
class PreprocessSummary:
    """What a finished run read and wrote."""

    inputs: list[str]
    """The input files, globs expanded."""
    outputs: list[str]
    """Published shard prefixes: token shards, then the loss-mask shard if any."""
    rejects_file: str | None
    """The rejects file (skip mode), else None."""
    records: int = 0
    """Input records read, valid or not."""
    documents: int = 0
    """Documents written (per output shard)."""
    tokens: int = 0
    """Tokens written, all token shards together."""
    skipped: int = 0
    """Bad lines skipped."""
    bytes: int = 0
    """Input bytes read (uncompressed)."""
    seconds: float = 0.0
    """Wall time of the run."""
    damaged_files: list[dict] = field(default_factory=list)
    """Skip mode: inputs that end in damage, each ``{"file", "offset", "unit", "last_good",
    "lost", "error"}`` (``lost``: records lost, None when unknown)."""
    repairs: dict[str, int] = field(default_factory=dict)
    """Instruction format: chat repairs applied, per kind (records kept, see
    :mod:`chatflow.data.chat_schemas`)."""
    repaired_records: int = 0
    """Instruction format: records with at least one repair (kept, not skipped)."""
    unused_fields: list[dict] = field(default_factory=list)
    """Instruction format: fields present but not read by the schema, each ``{"field", "file",
    "line" (or "element"/"row"), "count"}`` with its first occurrence."""


class Progress(Protocol):
    """Receives progress of a run; the calling tool decides how to show it."""

    def start(self, total_bytes: int | None) -> None:
        """Called once before any worker starts; ``total_bytes`` is None for gzip inputs."""

    def update(self, docs: int, tokens: int, nbytes: int) -> None:
        """Called after each block is written, with that block's counts."""


def preprocess(job: PreprocessJob, progress: Progress | None = None) -> PreprocessSummary:
    """Run ``job`` and publish its shards; returns the summary.

    Raises:
        JsonlError: a bad line in fail mode (nothing is published then).
        FileNotFoundError: an input pattern matches no file.
        OutputOverlapError: an output file is an input (checked before anything is written).
        RejectLimitError: skip mode wrote no document or rejected more than
            ``max_reject_fraction``; nothing is published but the rejects file.
    """
    t0 = time.time()
    cfg = job.encoding
    inputs = expand_inputs(job.inputs)
    reading = _reader_options(job, inputs)
    tokenizer = Tokenizer(job.tokenizer_model)
    prefixes = cfg.output_prefixes(job.output_prefix)
    mask_prefix = cfg.mask_prefix(job.output_prefix)
    skip = job.on_error == "skip"
    all_prefixes = prefixes + ([mask_prefix] if mask_prefix else [])
    check_outputs_not_inputs(
        [f for p in all_prefixes for f in shard_files(p)] + [job.rejects_path],
        inputs + list(job.aligned_inputs),
        "--output-prefix",
    )
    summary = PreprocessSummary(
        inputs=inputs,
        outputs=prefixes + ([mask_prefix] if mask_prefix else []),
        rejects_file=job.rejects_path if skip else None,
    )
    if progress is not None:
        # Before the pool forks: the callback may set up whatever it needs (e.g. a bar).
        progress.start(known_size(inputs))

    dtype = BlockEncoder(tokenizer, cfg).dtype
    writers = [IndexedDatasetWriter(p, dtype) for p in prefixes]
    mask_writer = IndexedDatasetWriter(mask_prefix, np.uint8) if mask_prefix else None
    all_writers = writers + ([mask_writer] if mask_writer else [])
    rejects_tmp = f"{job.rejects_path}.tmp{os.getpid()}"
    rejects_file = open(rejects_tmp, "w", encoding="utf-8") if skip else None
    results = None
    metas: dict[str, str] = {}  # prefix -> its temporary sidecar
    try:
        metas.update(sidecars(tokenizer, cfg, prefixes, mask_prefix))
        units: list[str] = []  # per input: what its locators count
        damages: list[tuple[int, DamagedInputError]] = []  # (tasks before it, damage)
        tasks = _tasks(inputs, job, reading, units, damages)
        chat = ChatRunAudit()
        results = _results(tasks, tokenizer, cfg, job.workers)
        for n, (source, res) in enumerate(results):
            _take_damages(damages, n, skip, summary, rejects_file)
            if res.rejects:
                if not skip:
                    line, reason, _ = res.rejects[0]
                    raise JsonlError(inputs[source], line, reason, units[source])
            if skip:
                rejects_file.writelines(_block_entries(inputs[source], units[source], res))
            if res.chat is not None:
                chat.take(inputs[source], units[source], res.chat)
            for w, tokens, lengths in zip(writers, res.tokens, res.lengths, strict=True):
                _write_documents(w, tokens, lengths)
            if mask_writer is not None:
                _write_documents(mask_writer, res.mask, res.lengths[0])
            ndocs = len(res.lengths[0])
            ntok = int(sum(len(t) for t in res.tokens))
            summary.records += res.num_records
            summary.documents += ndocs
            summary.tokens += ntok
            summary.skipped += len(res.rejects)
            summary.bytes += res.num_bytes
            if progress is not None:
                progress.update(ndocs, ntok, res.num_bytes)
        _take_damages(damages, None, skip, summary, rejects_file)
        summary.repairs = dict(sorted(chat.repairs.items()))
        summary.repaired_records = chat.repaired_records
        summary.unused_fields = chat.report()
        refusal = None
        if skip:
            refusal = skip_mode_refusal(
                summary.records, summary.documents, summary.skipped, job.max_reject_fraction
            )
        if refusal is not None:
            # The rejects file is still published: it is what the user needs to inspect.
            rejects_file.close()
            os.replace(rejects_tmp, job.rejects_path)
            rejects_file = None
            raise RejectLimitError(
                f"--on-error skip: {refusal}; nothing published, see {job.rejects_path}"
            )
        _publish(prefixes, writers, mask_writer, metas)
        if rejects_file is not None:
            rejects_file.close()
            os.replace(rejects_tmp, job.rejects_path)
    except BaseException:
        if results is not None:
            results.close()  # stops the workers now, not when the traceback is freed
        for w in all_writers:
            w.abort()
        for tmp in metas.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        if rejects_file is not None:
            rejects_file.close()
            os.unlink(rejects_tmp)
        raise
    summary.seconds = time.time() - t0
    logger.info(
        "preprocessed %d documents, %d tokens (%d skipped) into %s in %.2fs",
        summary.documents, summary.tokens, summary.skipped, job.output_prefix, summary.seconds,
    )  # fmt: skip
    return summary


def _publish(
    prefixes: list[str],
    writers: list[IndexedDatasetWriter],
    mask_writer: IndexedDatasetWriter | None,
    metas: dict[str, str],
) -> None:
    # First remove the old token indices, so that no moment exists where an old token shard
    # looks complete beside a new mask; then masks, then tokens (.idx last each). Each sidecar
    # goes just before its shard, so a complete-looking shard never has a stale sidecar.
    for p in prefixes:
        if os.path.exists(idx_path(p)):
            os.unlink(idx_path(p))
    for w in ([mask_writer] if mask_writer is not None else []) + writers:
        os.replace(metas[w.prefix], meta_path(w.prefix))
        w.finalize()


def _reader_options(job: PreprocessJob, inputs: list[str]) -> ReaderOptions:
    cfg = job.encoding
    aligned = list(job.aligned_inputs)
    if aligned and len(aligned) != len(inputs):
        raise ValueError(
            f"--input-aligned: {len(aligned)} file(s) for {len(inputs)} input(s); give one each"
        )
    if aligned and cfg.format != "parallel":
        raise ValueError("--input-aligned needs --format parallel")
    p = cfg.parallel
    return ReaderOptions(
        input_format=job.input_format,
        text_boundary=job.text_boundary,
        fields=needed_fields(cfg.format, cfg.json_keys, p.zh_key, p.en_key),
        aligned=aligned,
        max_record_bytes=cfg.max_document_bytes,
    )


def _tasks(
    inputs: list[str],
    job: PreprocessJob,
    reading: ReaderOptions,
    units: list[str],
    damages: list[tuple[int, DamagedInputError]],
) -> Iterator[tuple[int, int, bytes]]:
    """Blocks of every input in order; damage ends an input and is queued in ``damages``.

    Damage is not raised here: the tasks before it may still be in the pool, and it must be
    reported after their results, in the same place for any worker count (:func:`_take_damages`).
    """
    n = 0
    for source, path in enumerate(inputs):
        aligned = reading.aligned[source] if reading.aligned else None
        try:
            reader = open_reader(path, reading, job.block_bytes, aligned)
            units.append(reader.unit)
            for first_line, blob in reader.blocks:
                yield source, first_line, blob
                n += 1
        except DamagedInputError as e:
            if len(units) == source:
                units.append(e.unit)
            damages.append((n, e))
            if job.on_error != "skip":
                return  # the damage is raised in order; reading on would be wasted


def _take_damages(
    damages: list[tuple[int, DamagedInputError]],
    done: int | None,
    skip: bool,
    summary: PreprocessSummary,
    rejects_file,
) -> None:
    """Report the damage queued before task ``done`` (None: all): raise, or record and go on."""
    while damages and (done is None or damages[0][0] <= done):
        _, e = damages.pop(0)
        if not skip:
            raise e
        logger.warning("%s; the records before it are kept", e)
        entry = {
            "file": e.path, "offset": e.offset, "unit": e.unit, "last_good": e.last_good,
            "lost": None, "error": e.reason,
        }  # fmt: skip
        summary.damaged_files.append(entry)
        rejects_file.write(
            json.dumps(
                {"file": e.path, e.unit: e.last_good + 1, "offset": e.offset,
                 "error": f"damaged input, the rest of the file is lost: {e.reason}"},
                ensure_ascii=False,
            ) + "\n"
        )  # fmt: skip


def _results(
    tasks: Iterable[tuple[int, int, bytes]],
    tokenizer: Tokenizer,
    cfg: PreprocessConfig,
    workers: int,
) -> Iterator[tuple[int, BlockResult]]:
    """``(source, result)`` in task order, at most ``2 * workers`` blocks in flight.

    ``Pool.imap`` would read ahead without limit; :class:`OrderedPool` bounds it.
    """
    if workers == 0:
        encoder = BlockEncoder(tokenizer, cfg)
        for t in tasks:
            yield t[0], encoder.encode(*t)
        return
    # Not multiprocessing.Pool: its shutdown can hang (see chatflow.data.worker_pool).
    sources: collections.deque[int] = collections.deque()  # of tasks sent, in order

    def sent(tasks: Iterable[tuple[int, int, bytes]]) -> Iterator[tuple[int, int, bytes]]:
        for t in tasks:
            sources.append(t[0])
            yield t

    with OrderedPool(workers, init_worker, (tokenizer, cfg), encode_block) as pool:
        for res in pool.imap(sent(tasks)):
            yield sources.popleft(), res


def _block_entries(path: str, unit: str, res: BlockResult) -> list[str]:
    """Rejects-file lines of a block: rejected and repaired records, in input order."""
    entries = [
        (line, _reject_line(path, line, reason, raw, unit)) for line, reason, raw in res.rejects
    ]
    if res.chat is not None:
        entries += [(line, repaired_entry(path, unit, line, kinds, details, raw))
                    for line, kinds, details, raw in res.chat.repaired]  # fmt: skip
        entries.sort(key=lambda e: e[0])  # stable: a line is either rejected or repaired
    return [e for _, e in entries]


def _reject_line(path: str, line: int, reason: str, raw: bytes, unit: str = "line") -> str:
    entry = {"file": path, unit: line, "error": reason}
    try:
        entry["text"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["raw_base64"] = base64.b64encode(raw).decode("ascii")  # keep undecodable bytes intact
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _write_documents(writer: IndexedDatasetWriter, tokens: np.ndarray, lengths: np.ndarray) -> None:
    pos = 0
    for n in lengths.tolist():
        writer.add_document(tokens[pos : pos + n])
        pos += n
