"""HF LLaMA2 checkpoint directories <-> ChatFlow (megatron-core dist-checkpoint) directories.

The tensor mapping itself is :mod:`chatflow.hf_convert`; this module reads and writes the
directories: a lazy view of HF weight files, a single-process megatron-core model (TP=PP=1, CPU,
gloo) as the conversion target, and atomic publication of the output directory.

Memory: the model is held once in CPU RAM in the chosen dtype (7B: 13.5 GB bf16, 27 GB fp32),
plus one HF tensor at a time (safetensors and torch zip files are memory-mapped), plus the
dist-checkpoint writer's buffers. Outputs are written into ``OUT.tmp-<pid>`` and renamed when
complete.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
from collections.abc import Iterator, Mapping

import torch
import yaml

from chatflow import hf_convert
from chatflow.config.model import ModelConfig
from chatflow.fileio import atomic_write, fsync_dir

logger = logging.getLogger(__name__)

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
    # Imported here, not at the top: megatron-core takes seconds to import, and reading an HF
    # checkpoint (HFCheckpoint) or the CLI's --help does not need it.
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


def import_hf(
    hf_dir: str,
    output: str,
    *,
    dtype: str = "bf16",
    target_tensor_parallel_size: int = 1,
    padding: str = "zeros",
    overwrite: bool = False,
) -> ModelConfig:
    """Convert the HF ``LlamaForCausalLM`` directory ``hf_dir`` into a weights-only ChatFlow
    dist-checkpoint directory ``output`` (tracker at iteration 0, ``config.yaml``, the HF config
    kept as the template of the way back, the tokenizer copied when present).

    ``output`` appears atomically; with ``overwrite`` an existing one is replaced.

    Returns:
        The model configuration read from the HF config.
    """
    from megatron.core import dist_checkpointing
    from transformers import LlamaConfig

    from chatflow.checkpointing import TRACKER_FILE, checkpoint_dir_name

    hf_config = LlamaConfig.from_pretrained(hf_dir, local_files_only=True)
    cfg = hf_convert.hf_config_to_model_config(hf_config)
    tp = target_tensor_parallel_size
    # Build the model with the padded vocabulary of the target TP size (TP=1 here).
    build_cfg = cfg.replace(make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by * tp)
    torch_dtype = DTYPES[dtype]
    logger.info("building the %.1fM-parameter model (%s, CPU)", cfg.num_parameters() / 1e6, dtype)
    gpt = _single_process_model(build_cfg, torch_dtype)
    try:
        params = gpt.state_dict()
        hf_state = HFCheckpoint(hf_dir)
        hf_convert.check_hf_names(hf_state.keys(), cfg)
        converted = set()
        with torch.no_grad():
            for name, tensor in hf_convert.iter_hf_to_mcore(hf_state, cfg, tp, padding):
                params[name].copy_(tensor)  # casts to the model dtype, one tensor at a time
                converted.add(name)
        left = [k for k in params if k not in converted and not k.endswith("_extra_state")]
        assert not left, f"not converted: {left}"

        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        tmp = f"{os.path.abspath(output)}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        ckpt = os.path.join(tmp, checkpoint_dir_name(0))
        os.makedirs(ckpt)
        state = {
            "model": gpt.sharded_state_dict(),
            "iteration": 0,
            "precision": str(torch_dtype).replace("torch.", ""),
            "layout": {"tp": 1, "pp": 1, "dp": 1, "world": 1},  # what the trainer records too
            # Marks a weights-only checkpoint: there is no optimizer/scheduler/data state, so the
            # trainer can only load it with --finetune.
            "weights_only": True,
            "vocab_size": cfg.vocab_size,  # the unpadded vocabulary, for load-time checks
            "converted_from": os.path.abspath(hf_dir),
        }
        logger.info("writing dist-checkpoint %s", ckpt)
        try:
            dist_checkpointing.save(state, ckpt)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written checkpoint
            raise
        # Small files are fsynced (atomic_write) so that the renamed directory is complete on disk.
        model_yaml = yaml.safe_dump({"model": dataclasses.asdict(cfg)}, sort_keys=False)
        atomic_write(os.path.join(tmp, MODEL_CONFIG_FILE), model_yaml)
        atomic_write(os.path.join(tmp, HF_CONFIG_FILE), hf_config.to_json_string())
        tokenizer = os.path.join(hf_dir, "tokenizer.model")
        if os.path.isfile(tokenizer):
            shutil.copy(tokenizer, tmp)
        atomic_write(os.path.join(tmp, TRACKER_FILE), "0\n")
        _publish(tmp, output, overwrite)
    finally:
        _teardown()
    return cfg


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
        raise FileNotFoundError(f"{path} is missing: give the model's config.json (--hf-config)")
    return hf_convert.hf_config_to_model_config(hf_template)


def export_hf(
    load: str,
    output: str,
    *,
    dtype: str = "bf16",
    hf_config_path: str | None = None,
    tokenizer_model: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> int:
    """Write the newest checkpoint of the ChatFlow directory ``load`` (any TP/PP layout) as an HF
    ``LlamaForCausalLM`` directory ``output`` in ``dtype``, atomically.

    ``hf_config_path`` is a ``config.json`` template (default: the one :func:`import_hf` stored);
    ``tokenizer_model`` is copied into ``output`` when given.

    Returns:
        The iteration that was exported.
    """
    from megatron.core import dist_checkpointing
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatflow.checkpointing import checkpoint_dir_name, read_tracker

    iteration = read_tracker(load)
    if iteration is None:
        raise FileNotFoundError(f"{load}: no latest_checkpointed_iteration.txt")
    ckpt = os.path.join(load, checkpoint_dir_name(iteration))
    template_path = hf_config_path or os.path.join(load, HF_CONFIG_FILE)
    template = LlamaConfig.from_json_file(template_path) if os.path.isfile(template_path) else None
    cfg = _read_model_config(load, template)
    # Build with exactly the stored vocabulary rows (they depend on the TP size of the run that
    # saved it): padded_vocab_size() equals `rows` when the multiple is `rows` itself.
    rows = dist_checkpointing.load_tensors_metadata(ckpt)["embedding.word_embeddings.weight"]
    build_cfg = cfg.replace(make_vocab_size_divisible_by=rows.global_shape[0])
    torch_dtype = DTYPES[dtype]
    gpt = _single_process_model(build_cfg, torch_dtype)
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
    hf_config.dtype = torch_dtype
    with torch.device("meta"):  # no second copy of the weights: the converted tensors are used
        model = LlamaForCausalLM(hf_config)
    model.load_state_dict(hf_state, strict=True, assign=True)
    tmp = f"{os.path.abspath(output)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size=max_shard_size)
    if tokenizer_model:
        shutil.copy(tokenizer_model, os.path.join(tmp, "tokenizer.model"))
    _publish(tmp, output, overwrite)
    return iteration
