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
import dataclasses
import glob
import os
import shutil
import sys
from collections.abc import Iterator, Mapping

import torch
import yaml

from chatflow import hf_convert
from chatflow.config.model import ModelConfig
from chatflow.fileio import atomic_write, fsync_dir

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODEL_CONFIG_FILE = "config.yaml"  # {"model": {...}}: the trainer's config.yaml format
HF_CONFIG_FILE = "hf_config.json"  # the source config.json, template for the way back
_PATCHED_HERE = False


class HFCheckpoint(Mapping):
    """Lazy name -> tensor view of an HF checkpoint directory (safetensors or torch .bin files,
    sharded or not): a tensor is read from its memory-mapped file only when accessed."""

    def __init__(self, hf_dir: str) -> None:
        from safetensors import safe_open

        self._files: dict[str, object] = {}
        self._where: dict[str, str] = {}
        paths = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
        if not paths:
            paths = sorted(glob.glob(os.path.join(hf_dir, "pytorch_model*.bin")))
        if not paths:
            raise FileNotFoundError(f"{hf_dir}: no *.safetensors or pytorch_model*.bin files")
        for path in paths:
            if path.endswith(".safetensors"):
                handle = safe_open(path, framework="pt")
                names = list(handle.keys())
            else:  # mmap: the zip format's storages stay on disk until touched
                handle = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                names = list(handle.keys())
            self._files[path] = handle
            self._where.update({name: path for name in names})

    def __getitem__(self, name: str) -> torch.Tensor:
        handle = self._files[self._where[name]]
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _single_process_model(cfg: ModelConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The whole GPTModel in this process (TP=PP=1, local spec, CPU): the conversion target."""
    import megatron_patches
    from chatflow import parallel
    from chatflow.config.parallel import ParallelConfig
    from chatflow.model import build_model_chunks, unwrap

    global _PATCHED_HERE
    _PATCHED_HERE = not megatron_patches.applied()
    megatron_patches.apply(cuda_available=False)  # CPU + gloo, also on a GPU node
    layout = ParallelConfig()
    parallel.initialize(layout)
    chunks = build_model_chunks(
        cfg, layout, bf16=dtype == torch.bfloat16, use_te=False, wrap_ddp=False
    )
    return unwrap(chunks[0])


def _teardown() -> None:
    import megatron_patches
    from chatflow import parallel

    parallel.destroy()
    if _PATCHED_HERE:  # leave a caller's (e.g. a test's) own patches in place
        megatron_patches.revert()


def _publish(tmp: str, output: str, overwrite: bool) -> None:
    """Rename the finished ``tmp`` directory to ``output`` (replacing it with --overwrite)."""
    old = None
    if os.path.exists(output):
        old = f"{output}.old-{os.getpid()}"
        os.replace(output, old)
    os.replace(tmp, output)
    fsync_dir(os.path.dirname(os.path.abspath(output)))  # make the rename itself durable
    if old:
        shutil.rmtree(old)


def hf_to_mcore(args: argparse.Namespace) -> None:
    from megatron.core import dist_checkpointing
    from transformers import LlamaConfig

    from chatflow.checkpointing import TRACKER_FILE, checkpoint_dir_name

    hf_config = LlamaConfig.from_pretrained(args.hf_dir, local_files_only=True)
    cfg = hf_convert.hf_config_to_model_config(hf_config)
    tp = args.target_tensor_parallel_size
    # Build the model with the padded vocabulary of the target TP size (TP=1 here).
    build_cfg = cfg.replace(make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by * tp)
    dtype = DTYPES[args.dtype]
    print(f"building the {cfg.num_parameters() / 1e6:,.1f}M-parameter model ({args.dtype}, CPU)")
    gpt = _single_process_model(build_cfg, dtype)
    try:
        params = gpt.state_dict()
        hf_state = HFCheckpoint(args.hf_dir)
        hf_convert.check_hf_names(hf_state.keys(), cfg)
        converted = set()
        with torch.no_grad():
            for name, tensor in hf_convert.iter_hf_to_mcore(hf_state, cfg, tp, args.padding):
                params[name].copy_(tensor)  # casts to the model dtype, one tensor at a time
                converted.add(name)
        left = [k for k in params if k not in converted and not k.endswith("_extra_state")]
        assert not left, f"not converted: {left}"

        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        tmp = f"{os.path.abspath(args.output)}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        ckpt = os.path.join(tmp, checkpoint_dir_name(0))
        os.makedirs(ckpt)
        state = {
            "model": gpt.sharded_state_dict(),
            "iteration": 0,
            "precision": str(dtype).replace("torch.", ""),
            "layout": {"tp": 1, "pp": 1, "dp": 1, "world": 1},  # what the trainer records too
            # Marks a weights-only checkpoint: there is no optimizer/scheduler/data state, so the
            # trainer can only load it with --finetune.
            "weights_only": True,
            "vocab_size": cfg.vocab_size,  # the unpadded vocabulary, for load-time checks
            "converted_from": os.path.abspath(args.hf_dir),
        }
        print(f"writing dist-checkpoint {ckpt}")
        try:
            dist_checkpointing.save(state, ckpt)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written checkpoint
            raise
        # Small files are fsynced (atomic_write) so that the renamed directory is complete on disk.
        model_yaml = yaml.safe_dump({"model": dataclasses.asdict(cfg)}, sort_keys=False)
        atomic_write(os.path.join(tmp, MODEL_CONFIG_FILE), model_yaml)
        atomic_write(os.path.join(tmp, HF_CONFIG_FILE), hf_config.to_json_string())
        tokenizer = os.path.join(args.hf_dir, "tokenizer.model")
        if os.path.isfile(tokenizer):
            shutil.copy(tokenizer, tmp)
        atomic_write(os.path.join(tmp, TRACKER_FILE), "0\n")
        _publish(tmp, args.output, args.overwrite)
    finally:
        _teardown()
    print(f"done: train from it with --load {args.output} --finetune")


def _read_model_config(load: str, hf_template) -> ModelConfig:
    """The architecture of a ChatFlow checkpoint directory: its config.yaml (written by the
    trainer and by this tool), else the HF template given with --hf-config."""
    path = os.path.join(load, MODEL_CONFIG_FILE)
    if os.path.isfile(path):
        with open(path) as fh:
            fields = (yaml.safe_load(fh) or {}).get("model") or {}
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in fields.items() if k in known})
    if hf_template is None:
        raise FileNotFoundError(f"{path} is missing: pass --hf-config with the model's config.json")
    return hf_convert.hf_config_to_model_config(hf_template)


def mcore_to_hf(args: argparse.Namespace) -> None:
    from megatron.core import dist_checkpointing
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatflow.checkpointing import checkpoint_dir_name, read_tracker

    iteration = read_tracker(args.load)
    if iteration is None:
        raise FileNotFoundError(f"{args.load}: no latest_checkpointed_iteration.txt")
    ckpt = os.path.join(args.load, checkpoint_dir_name(iteration))
    template_path = args.hf_config or os.path.join(args.load, HF_CONFIG_FILE)
    template = LlamaConfig.from_json_file(template_path) if os.path.isfile(template_path) else None
    cfg = _read_model_config(args.load, template)
    # Build with exactly the stored vocabulary rows (they depend on the TP size of the run that
    # saved it): padded_vocab_size() equals `rows` when the multiple is `rows` itself.
    rows = dist_checkpointing.load_tensors_metadata(ckpt)["embedding.word_embeddings.weight"]
    build_cfg = cfg.replace(make_vocab_size_divisible_by=rows.global_shape[0])
    dtype = DTYPES[args.dtype]
    gpt = _single_process_model(build_cfg, dtype)
    try:
        loaded = dist_checkpointing.load({"model": gpt.sharded_state_dict()}, ckpt)
        result = gpt.load_state_dict(loaded["model"], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise KeyError(f"{ckpt}: missing {missing}, unexpected {result.unexpected_keys}")
        del loaded
        hf_state = hf_convert.mcore_to_hf_state_dict(gpt.state_dict(), cfg)
    finally:
        _teardown()
    hf_config = hf_convert.model_config_to_hf_config(cfg, template)
    hf_config.dtype = dtype
    with torch.device("meta"):  # no second copy of the weights: the converted tensors are used
        model = LlamaForCausalLM(hf_config)
    model.load_state_dict(hf_state, strict=True, assign=True)
    tmp = f"{os.path.abspath(args.output)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size=args.max_shard_size)
    if args.tokenizer_model:
        shutil.copy(args.tokenizer_model, os.path.join(tmp, "tokenizer.model"))
    _publish(tmp, args.output, args.overwrite)
    print(f"wrote HF LlamaForCausalLM ({args.dtype}, iteration {iteration}) to {args.output}")


def build_parser() -> argparse.ArgumentParser:
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
    args = build_parser().parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output} exists (use --overwrite)", file=sys.stderr)
        return 2
    if args.direction == "hf-to-mcore":
        if not args.hf_dir:
            print("error: --hf-dir is required for hf-to-mcore", file=sys.stderr)
            return 2
        hf_to_mcore(args)
    else:
        if not args.load:
            print("error: --load is required for mcore-to-hf", file=sys.stderr)
            return 2
        mcore_to_hf(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
