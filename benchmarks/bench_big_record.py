#!/usr/bin/env python3
"""Peak memory of preprocessing one huge record (a single 100 MB JSON line).

Writes a JSONL file holding one ``{"text": ...}`` record of ``--size-mb`` MB (mixed Chinese and
English words, seeded), then runs ``tools/preprocess_data.py`` on it in a child process with
``--max-document-bytes`` raised above the record's size, and prints the child's peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the largest of the tool and its workers).
Run: ``python benchmarks/bench_big_record.py [--size-mb 100] [--workers 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["数据", "模型", "训练", "语言", "中文", "the", "model", "data", "language", "of", "and"]


ZH_WORDS = ["数据", "模型", "训练", "语言", "中文", "我的朋友", "学校", "。", "，"]


def write_record(path: str, size_mb: float, seed: int = 0, chinese: bool = False) -> int:
    """One JSONL line of about ``size_mb`` MB; returns its size in bytes.

    ``chinese``: Chinese words and punctuation without any space (the text cannot be cut at
    spaces), instead of mixed words separated by spaces.
    """
    rng = random.Random(seed)
    words, sep = (ZH_WORDS, "") if chinese else (WORDS, " ")
    piece = sep.join(rng.choice(words) for _ in range(100_000))
    target = int(size_mb * 1e6)
    reps = max(1, target // len(piece.encode()))
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"text": ' + json.dumps(sep.join([piece] * reps), ensure_ascii=False) + "}\n")
    return os.path.getsize(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=float, default=100)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--chinese", action="store_true", help="Chinese text without spaces")
    p.add_argument(
        "--tokenizer-model", default=os.path.join(ROOT, "examples/tokenizer/chatflow_demo.model")
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "big.jsonl")
        size = write_record(src, args.size_mb, chinese=args.chinese)
        cmd = [
            sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", src,
            "--output-prefix", os.path.join(d, "out"), "--tokenizer-model", args.tokenizer_model,
            "--workers", str(args.workers), "--max-document-bytes", str(size + 1),
            "--no-progress",
        ]  # fmt: skip
        t0 = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.time() - t0
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return 1
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        tokens = [ln for ln in res.stdout.splitlines() if ln.startswith("tokens:")]
        kind = "Chinese, no spaces" if args.chinese else "mixed words and spaces"
        print(f"record:    {size / 1e6:.1f} MB in one line ({kind}), --workers {args.workers}")
        print(tokens[0] if tokens else res.stdout)
        print(f"time:      {dt:.1f} s")
        print(f"peak RSS:  {peak_mb:,.0f} MB (largest process of the tool's tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
