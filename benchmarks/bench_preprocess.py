#!/usr/bin/env python3
"""Benchmark ``tools/preprocess_data.py`` against plain sentencepiece encoding.

1. Generates a JSONL corpus of ``--size-mb`` MB (default 200) mixing Chinese and English documents,
   built from the sample corpus generator's bilingual templates (seeded, so reruns are identical).
2. Baseline, the limit for this stage: ``--workers`` processes each encode their share of the same
   texts with ``SentencePieceProcessor.encode`` on batches of in-memory strings (texts are loaded
   and parsed before the clock starts). Throughput = all tokens / slowest process's time.
3. End to end: runs ``preprocess_data.py --workers N --append-eod`` in a subprocess on the same
   documents in each input layout of ``--layouts`` (JSON Lines, zstandard-compressed JSON Lines,
   Parquet), timing it from launch to exit and sampling the resident memory of its process tree.

Reports tokens/s and MB/s of both, their ratio (wall clock and CPU time), and peak memory, and
checks both produced the same number of tokens. Memory is the peak PSS summed over the tool's
process tree (shared pages counted once) and the peak RSS of its largest process.
Run: ``python benchmarks/bench_preprocess.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

from chatflow.data.indexed_dataset import IndexedDataset
from chatflow.fileio import atomic_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_generator():
    path = os.path.join(ROOT, "examples", "data", "make_sample_corpus.py")
    spec = importlib.util.spec_from_file_location("make_sample_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def generate_corpus(path: str, size_mb: float, seed: int) -> tuple[int, int]:
    """Write ``{"text": ...}`` documents (half zh, half en) until ``size_mb`` MB; (docs, bytes)."""
    gen = _load_generator()
    rng = random.Random(seed)
    # A pool of paragraphs, then documents as random runs of them: fast, and realistic lengths
    # (0.3 to 6 KB per document).
    pool = [gen.paragraph_pair(rng, 2, 6) for _ in range(20000)]
    target = int(size_mb * 1e6)
    written = docs = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        while written < target:
            side = rng.random() < 0.5  # True: Chinese
            sep = "" if side else " "
            parts = [p[0] if side else p[1] for p in rng.choices(pool, k=rng.randint(1, 12))]
            line = json.dumps({"text": sep.join(parts)}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            docs += 1
    return docs, written


def _sp_worker(args) -> tuple[int, float, float]:
    model, path, rank, nproc, barrier = args
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    texts = []
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i % nproc == rank:
                texts.append(json.loads(line)["text"])
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    tokens = 0
    for s in range(0, len(texts), 512):
        # One thread per process, as in the pipeline's workers (sentencepiece's default: all cores).
        tokens += sum(map(len, sp.encode(texts[s : s + 512], num_threads=1)))
    return tokens, time.perf_counter() - t0, time.process_time() - c0


def bench_sentencepiece(model: str, path: str, nproc: int) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds) of ``nproc`` processes encoding the preloaded texts."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(nproc)
        with ctx.Pool(nproc) as pool:
            out = pool.map(_sp_worker, [(model, path, r, nproc, barrier) for r in range(nproc)])
    return sum(o[0] for o in out), max(o[1] for o in out), sum(o[2] for o in out)


LAYOUTS = ("jsonl", "zst", "parquet")


def convert_corpus(jsonl: str, layout: str) -> str:
    """The corpus ``jsonl`` rewritten in ``layout``; returns the new file's path."""
    if layout == "jsonl":
        return jsonl
    if layout == "zst":
        import zstandard

        path = jsonl + ".zst"
        with open(jsonl, "rb") as src, atomic_open(path, "wb") as dst:
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
        return path
    if layout == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = jsonl[: -len(".jsonl")] + ".parquet"
        with open(jsonl, "rb") as f:
            texts = [json.loads(line)["text"] for line in f]
        # Row groups of 16k documents (~40 MB): the reader streams them one at a time.
        pq.write_table(pa.table({"text": texts}), path + ".tmp", row_group_size=16384)
        os.replace(path + ".tmp", path)
        return path
    raise ValueError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")


def bench_end_to_end(model: str, path: str, workers: int, out_prefix: str) -> dict:
    """Run preprocess_data.py in a subprocess; time it and sample its process tree's RSS."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "preprocess_data.py"),
        "--input",
        path,
        "--output-prefix",
        out_prefix,
        "--tokenizer-model",
        model,
        "--workers",
        str(workers),
        "--append-eod",
        "--no-progress",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak_tree = peak_one = 0
    while proc.poll() is None:
        try:
            procs = [ps] + ps.children(recursive=True)
            # PSS splits pages shared by forked workers among them, so the sum is not inflated
            # by counting the parent's pages once per worker (as a sum of RSS would).
            mem = [p.memory_full_info() for p in procs]
            peak_tree = max(peak_tree, sum(m.pss for m in mem))
            peak_one = max(peak_one, max(m.rss for m in mem))
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the tool and its reaped workers
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    output = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"preprocess_data.py failed:\n{output}")
    ds = IndexedDataset(out_prefix + "_text_document")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens": ds.num_tokens,
        "documents": ds.num_documents,
        "peak_rss_tree": peak_tree,
        "peak_rss_process": peak_one,
        "output": output,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--tokenizer-model",
        default=os.path.join(ROOT, "examples", "tokenizer", "chatflow_demo.model"),
    )
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}"
    )
    parser.add_argument("--work-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="alternate the measurements this often and keep each one's best "
        "(shared machines are noisy)",
    )
    parser.add_argument("--json-out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    layouts = [x for x in args.layouts.split(",") if x]

    work = args.work_dir or tempfile.mkdtemp(prefix="chatflow_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        corpus = os.path.join(work, "corpus.jsonl")
        t = time.perf_counter()
        docs, nbytes = generate_corpus(corpus, args.size_mb, args.seed)
        print(
            f"corpus: {docs:,} documents, {nbytes / 1e6:.1f} MB "
            f"(generated in {time.perf_counter() - t:.1f}s) at {corpus}"
        )
        files = {layout: convert_corpus(corpus, layout) for layout in layouts}
        for layout, path in files.items():
            print(f"  {layout}: {os.path.getsize(path) / 1e6:.1f} MB on disk")
        sp_runs: list[tuple[int, float, float]] = []
        e2e_runs: dict[str, list[dict]] = {layout: [] for layout in layouts}
        for r in range(args.repeat):
            sp_runs.append(bench_sentencepiece(args.tokenizer_model, corpus, args.workers))
            line = f"run {r + 1}: sentencepiece {sp_runs[-1][1]:.1f}s"
            for layout, path in files.items():
                out = os.path.join(work, f"out_{layout}")
                e2e_runs[layout].append(
                    bench_end_to_end(args.tokenizer_model, path, args.workers, out)
                )
                line += f", {layout} {e2e_runs[layout][-1]['seconds']:.1f}s"
            print(line)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    sp_tokens, sp_s, sp_cpu = min(sp_runs, key=lambda x: x[1])
    mb = nbytes / 1e6
    sp_tps = sp_tokens / sp_s
    res = {
        "corpus_mb": mb,
        "documents": docs,
        "workers": args.workers,
        "repeat": args.repeat,
        "tokenizer": os.path.basename(args.tokenizer_model),
        "sp_only_seconds": sp_s,
        "sp_only_cpu_seconds": sp_cpu,
        "sp_only_tokens_per_s": sp_tps,
        "sp_only_mb_per_s": mb / sp_s,
        "cpu_count": os.cpu_count(),
        "layouts": {},
    }
    print(
        f"\n| stage ({args.workers} processes, best of {args.repeat}) | wall s | CPU s | "
        "tokens/s | MB/s | x sentencepiece (wall) | x sentencepiece (CPU) | peak memory |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| sentencepiece only (texts in memory) | {sp_s:.1f} | {sp_cpu:.1f} | {sp_tps:,.0f} | "
        f"{mb / sp_s:.2f} | 1 | 1 | - |"
    )
    for layout in layouts:
        e2e = min(e2e_runs[layout], key=lambda x: x["seconds"])
        content_tokens = e2e["tokens"] - 2 * e2e["documents"]  # minus BOS and EOS per document
        if content_tokens != sp_tokens:
            print(f"WARNING: {layout}: token counts differ: {sp_tokens} vs {content_tokens}")
        fig = {
            "seconds": e2e["seconds"],
            "cpu_seconds": e2e["cpu_seconds"],
            "tokens_per_s": e2e["tokens"] / e2e["seconds"],
            "mb_per_s": mb / e2e["seconds"],
            "ratio_wall": (content_tokens / e2e["seconds"]) / sp_tps,
            "ratio_cpu": sp_cpu / e2e["cpu_seconds"],
            "peak_pss_tree_mb": e2e["peak_rss_tree"] / 2**20,
            "peak_rss_process_mb": e2e["peak_rss_process"] / 2**20,
        }
        res["layouts"][layout] = fig
        print(
            f"| preprocess_data.py, {layout} | {fig['seconds']:.1f} | {fig['cpu_seconds']:.1f} | "
            f"{fig['tokens_per_s']:,.0f} | {fig['mb_per_s']:.2f} | {fig['ratio_wall']:.2f} | "
            f"{fig['ratio_cpu']:.2f} | {fig['peak_pss_tree_mb']:.0f} MB |"
        )
    print(
        "\nx sentencepiece: end-to-end throughput over sentencepiece-only throughput of the same "
        "content tokens (target >= 0.8); peak memory: PSS summed over the tool's process tree "
        "(target < 1 GB)"
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
