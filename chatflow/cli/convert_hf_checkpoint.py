"""Convert HF LLaMA2 checkpoints to ChatFlow (megatron-core dist-checkpoint) and back.

HF -> ChatFlow (then train with ``--load OUT --finetune``, in any TP/PP layout)::

    python tools/convert_hf_checkpoint.py --direction hf-to-mcore \
        --hf-dir /models/Llama-2-7b-hf --output /ckpt/llama2-7b-mcore

ChatFlow -> HF (the newest checkpoint named by the tracker file)::

    python tools/convert_hf_checkpoint.py --direction mcore-to-hf \
        --load /ckpt/chatflow-7b --output /models/chatflow-7b-hf \
        --tokenizer-model /models/Llama-2-7b-hf/tokenizer.model

Memory: the model is held once in CPU RAM in the chosen dtype (7B: 13.5 GB bf16, 27 GB fp32),
plus one HF tensor at a time (safetensors and torch zip files are memory-mapped), plus the
dist-checkpoint writer's buffers. One process, gloo; works on a login node or a GPU node (CPU).
The output appears atomically: it is written into ``OUT.tmp-<pid>`` and renamed when complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from chatflow import hf_convert
from chatflow.hf_checkpoint import DTYPES, export_hf, import_hf


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``chatflow-convert-hf`` / ``tools/convert_hf_checkpoint.py``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--direction", required=True, choices=["hf-to-mcore", "mcore-to-hf"])
    p.add_argument("--hf-dir", help="hf-to-mcore: HF model directory (config.json + weights)")
    p.add_argument("--load", help="mcore-to-hf: ChatFlow checkpoint directory (with tracker)")
    p.add_argument("--output", required=True, help="directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bf16",
        help="dtype of the written weights (default bf16, what the 7B recipe trains)",
    )
    p.add_argument(
        "--target-tensor-parallel-size",
        type=int,
        default=1,
        help="pad the vocabulary for this TP size (any TP loads the checkpoint; a "
        "larger padding is filled with zeros on load)",
    )
    p.add_argument(
        "--padding",
        choices=hf_convert.PADDING_MODES,
        default="zeros",
        help="fill of the vocabulary padding rows (see chatflow/hf_convert.py)",
    )
    p.add_argument(
        "--hf-config",
        help="mcore-to-hf: config.json to use as template "
        "(default: the hf_config.json this tool stored)",
    )
    p.add_argument("--tokenizer-model", help="mcore-to-hf: tokenizer.model to copy into --output")
    p.add_argument("--max-shard-size", default="5GB", help="mcore-to-hf: safetensors shard size")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-convert-hf``: converts, prints a summary, returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output} exists (use --overwrite)", file=sys.stderr)
        return 2
    if args.direction == "hf-to-mcore":
        if not args.hf_dir:
            print("error: --hf-dir is required for hf-to-mcore", file=sys.stderr)
            return 2
        import_hf(
            args.hf_dir,
            args.output,
            dtype=args.dtype,
            target_tensor_parallel_size=args.target_tensor_parallel_size,
            padding=args.padding,
            overwrite=args.overwrite,
        )
        print(f"done: train from it with --load {args.output} --finetune")
    else:
        if not args.load:
            print("error: --load is required for mcore-to-hf", file=sys.stderr)
            return 2
        iteration = export_hf(
            args.load,
            args.output,
            dtype=args.dtype,
            hf_config_path=args.hf_config,
            tokenizer_model=args.tokenizer_model,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
        print(f"wrote HF LlamaForCausalLM ({args.dtype}, iteration {iteration}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
