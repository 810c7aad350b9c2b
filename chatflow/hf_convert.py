"""HF ``LlamaForCausalLM`` <-> megatron-core ``GPTModel`` (ChatFlow's LLaMA2): one key table.

Everything here works on full, unsharded tensors in one process; tensor/pipeline sharding is
left to ``dist_checkpointing``, which reshards a checkpoint on load (written by
``tools/convert_hf_checkpoint.py``). The layout (``tests/test_hf_convert.py`` checks logits):

* ``linear_qkv`` rows are grouped per KV group: that group's query heads, then its key head,
  then its value head. megatron-core's TP splits the fused weight into contiguous row blocks, so
  this grouping is what keeps each rank's queries next to their own key/value heads.
* ``linear_fc1`` is ``[gate_proj; up_proj]`` stacked on dim 0 (megatron-core shards gate and up
  separately under TP, so no interleaving is needed here).
* RoPE needs no permutation: HF's ``rotate_half`` is megatron-core's ``rotary_interleaved=False``.
* The vocabulary is padded to ``ModelConfig.padded_vocab_size(tp)`` rows (:data:`PADDING_MODES`).

Module names are those of megatron-core's *local* layer spec (what ``GPTModel.state_dict()``
returns on CPU). In a dist-checkpoint the same tensors are stored under TransformerEngine-style
keys (``KEY_TABLE``'s last column), so checkpoints move between the local and the TE spec.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from chatflow.config.model import ModelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRule:
    """One row of the HF <-> megatron-core key table. ``{i}`` stands for the layer number."""

    hf: tuple[str, ...]
    """HF parameter name(s); several when megatron-core fuses them into one tensor."""
    mcore: str
    """megatron-core module parameter name (local spec)."""
    kind: str
    """How the tensors map: 'copy', 'qkv' (per-group fusion), 'gate_up' (stack), 'vocab' (pad)."""
    dist_ckpt_key: str
    """Key of the tensor in a dist-checkpoint (TE-style, layers stacked; for reference)."""


_L = "model.layers.{i}."
_D = "decoder.layers.{i}."
#: The whole mapping. Order follows the forward pass.
KEY_TABLE: tuple[KeyRule, ...] = (
    KeyRule(("model.embed_tokens.weight",), "embedding.word_embeddings.weight", "vocab",
            "embedding.word_embeddings.weight"),
    KeyRule((_L + "input_layernorm.weight",), _D + "input_layernorm.weight", "copy",
            "decoder.layers.self_attention.linear_qkv.layer_norm_weight"),
    KeyRule((_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight",
             _L + "self_attn.v_proj.weight"), _D + "self_attention.linear_qkv.weight", "qkv",
            "decoder.layers.self_attention.linear_qkv.weight"),
    KeyRule((_L + "self_attn.o_proj.weight",), _D + "self_attention.linear_proj.weight", "copy",
            "decoder.layers.self_attention.linear_proj.weight"),
    KeyRule((_L + "post_attention_layernorm.weight",), _D + "pre_mlp_layernorm.weight", "copy",
            "decoder.layers.mlp.linear_fc1.layer_norm_weight"),
    KeyRule((_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"), _D + "mlp.linear_fc1.weight",
            "gate_up", "decoder.layers.mlp.linear_fc1.weight"),
    KeyRule((_L + "mlp.down_proj.weight",), _D + "mlp.linear_fc2.weight", "copy",
            "decoder.layers.mlp.linear_fc2.weight"),
    KeyRule(("model.norm.weight",), "decoder.final_layernorm.weight", "copy",
            "decoder.final_layernorm.weight"),
    KeyRule(("lm_head.weight",), "output_layer.weight", "vocab", "output_layer.weight"),
)  # fmt: skip

#: HF buffers some older checkpoints carry; they are recomputed, never converted.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)

#: How the rows beyond the tokenizer's vocabulary are filled. 'zeros': what megatron-core itself
#: does when a checkpoint is loaded with a larger padding (another TP size), so the loss is the
#: same in every layout; padded logits are then exactly 0. 'mean': the mean of the real rows
#: (Hewitt 2021, "Initializing new word embeddings"), so padded logits equal the mean real logit,
#: which bounds the change of the softmax normaliser by a factor (1 + pad/vocab).
PADDING_MODES = ("zeros", "mean")


def _layered(rule: KeyRule) -> bool:
    return "{i}" in rule.mcore


def _names(rule: KeyRule, layer: int | None) -> tuple[tuple[str, ...], str]:
    fmt = {"i": layer} if layer is not None else {}
    return tuple(n.format(**fmt) for n in rule.hf), rule.mcore.format(**fmt)


def _iter_rules(num_layers: int) -> Iterator[tuple[KeyRule, tuple[str, ...], str]]:
    for rule in KEY_TABLE:
        for layer in range(num_layers) if _layered(rule) else [None]:
            yield (rule, *_names(rule, layer))


def _rope_type_and_theta(hf_config: Any) -> tuple[str, float]:
    # transformers >= 5 keeps RoPE settings in `rope_parameters` (rope_scaling folded in);
    # older versions have `rope_theta` and `rope_scaling` attributes.
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return rope_type or "default", float(theta)


def hf_config_to_model_config(hf_config: Any, **overrides: Any) -> ModelConfig:
    """Checks that an HF ``LlamaConfig`` is LLaMA2-compatible and translates it.

    Args:
        hf_config: a ``transformers.LlamaConfig`` (or anything with the same attributes).
        **overrides: ModelConfig fields to set as well (e.g. ``make_vocab_size_divisible_by``).

    Returns:
        The ChatFlow ModelConfig; ``seq_length`` and ``max_position_embeddings`` are the HF
        model's context length (the trainer's ``--seq-length`` may be shorter).

    Raises:
        ValueError: naming the HF config field that ChatFlow's LLaMA2 cannot represent.
    """

    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise ValueError(f"HF config {field}: {why} (ChatFlow trains the LLaMA2 architecture)")

    model_type = getattr(hf_config, "model_type", "llama")
    need(model_type == "llama", "model_type", f"{model_type!r} is not 'llama'")
    rope_type, theta = _rope_type_and_theta(hf_config)
    need(rope_type == "default", "rope_scaling", f"RoPE scaling {rope_type!r} is not supported")
    # ModelConfig.rotary_base is an int: LLaMA2's 10000 (and e.g. CodeLlama's 1e6) are integers.
    need(theta == int(theta), "rope_theta", f"{theta} must be an integer")
    need(not getattr(hf_config, "tie_word_embeddings", False), "tie_word_embeddings",
         "tied input/output embeddings are not supported; LLaMA2 unties them")  # fmt: skip
    for field in ("attention_bias", "mlp_bias"):
        need(not getattr(hf_config, field, False), field, "biases are not supported")
    act = getattr(hf_config, "hidden_act", "silu")
    need(act == "silu", "hidden_act", f"{act!r} is not 'silu' (SwiGLU)")
    heads, hidden = hf_config.num_attention_heads, hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    need(head_dim * heads == hidden, "head_dim",
         f"{head_dim} x {heads} heads != hidden_size {hidden}")  # fmt: skip
    context = hf_config.max_position_embeddings
    values = dict(
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hidden,
        ffn_hidden_size=hf_config.intermediate_size,
        num_attention_heads=heads,
        num_query_groups=getattr(hf_config, "num_key_value_heads", None) or heads,
        vocab_size=hf_config.vocab_size,
        seq_length=context,
        max_position_embeddings=context,
        norm_epsilon=float(hf_config.rms_norm_eps),
        rotary_base=int(theta),
        init_method_std=float(getattr(hf_config, "initializer_range", 0.02)),
        attention_dropout=float(getattr(hf_config, "attention_dropout", 0.0) or 0.0),
    )
    values.update(overrides)
    cfg = ModelConfig(**values)
    logger.info("HF LlamaConfig -> %s", cfg)
    return cfg


def model_config_to_hf_config(cfg: ModelConfig, template: Any = None) -> Any:
    """The ``LlamaConfig`` of ``cfg``; other fields (token ids, dtype) come from ``template``."""
    from transformers import LlamaConfig

    values = template.to_dict() if template is not None else {}
    values.update(
        architectures=["LlamaForCausalLM"],
        num_hidden_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.kv_channels,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.norm_epsilon,
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    if template is None:
        values.update(max_position_embeddings=cfg.max_position_embeddings,
                      initializer_range=cfg.init_method_std)  # fmt: skip
    values["rope_parameters"] = {"rope_type": "default", "rope_theta": float(cfg.rotary_base)}
    values.pop("rope_scaling", None)
    values.pop("rope_theta", None)
    values.pop("transformers_version", None)
    return LlamaConfig(**values)


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    groups, d, h = cfg.num_query_groups, cfg.kv_channels, cfg.hidden_size
    per_group = cfg.num_attention_heads // groups
    parts = (q.reshape(groups, per_group * d, h), k.reshape(groups, d, h), v.reshape(groups, d, h))
    return torch.cat(parts, dim=1).reshape(-1, h)


def _split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    groups, d, h = cfg.num_query_groups, cfg.kv_channels, cfg.hidden_size
    per_group = cfg.num_attention_heads // groups
    q, k, v = qkv.reshape(groups, (per_group + 2) * d, h).split([per_group * d, d, d], dim=1)
    return q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)


def _pad_vocab(weight: torch.Tensor, rows: int, mode: str) -> torch.Tensor:
    extra = rows - weight.shape[0]
    if extra < 0:
        raise ValueError(f"vocabulary: {weight.shape[0]} rows do not fit in {rows} padded rows")
    if extra == 0:
        return weight
    if mode == "zeros":
        fill = weight.new_zeros(extra, weight.shape[1])
    else:  # mean in fp32: a bf16 sum of 32k rows loses precision
        fill = weight.float().mean(dim=0, keepdim=True).to(weight.dtype).expand(extra, -1)
    return torch.cat([weight, fill], dim=0)


def _check(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: shape {tuple(tensor.shape)}, the config implies {shape}")


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, f, kv = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_query_groups * cfg.kv_channels
    return {
        "embed_tokens": (cfg.vocab_size, h), "lm_head": (cfg.vocab_size, h), "norm": (h,),
        "layernorm": (h,), "q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h),
        "o_proj": (h, h), "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f),
    }  # fmt: skip


def _expected(name: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    for part, shape in shapes.items():
        if part in name:
            return shape
    raise KeyError(name)


def iter_hf_to_mcore(
    hf_state: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    tensor_parallel_size: int = 1,
    padding: str = "zeros",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``(mcore name, tensor)`` one at a time, so a large model is converted tensor by
    tensor: ``hf_state`` may be a lazy mapping that reads each tensor from disk on access.

    Args:
        hf_state: HF ``LlamaForCausalLM`` state dict (names as in :data:`KEY_TABLE`).
        cfg: the model (from :func:`hf_config_to_model_config`).
        tensor_parallel_size: the vocabulary is padded to ``cfg.padded_vocab_size(this)``.
        padding: one of :data:`PADDING_MODES`.

    Raises:
        KeyError: a tensor is missing. ValueError: a shape does not match ``cfg``.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding: {padding!r} is not one of {PADDING_MODES}")
    shapes, rows = _hf_shapes(cfg), cfg.padded_vocab_size(tensor_parallel_size)
    for rule, hf_names, mcore_name in _iter_rules(cfg.num_layers):
        missing = [n for n in hf_names if n not in hf_state]
        if missing:
            raise KeyError(f"HF checkpoint has no {missing[0]!r} (needed for {mcore_name})")
        tensors = [hf_state[n] for n in hf_names]
        for n, t in zip(hf_names, tensors, strict=True):
            _check(n, t, _expected(n, shapes))
        if rule.kind == "qkv":
            out = _fuse_qkv(*tensors, cfg)
        elif rule.kind == "gate_up":
            out = torch.cat(tensors, dim=0)
        elif rule.kind == "vocab":
            out = _pad_vocab(tensors[0], rows, padding)
        else:
            out = tensors[0]
        yield mcore_name, out


def hf_parameter_names(cfg: ModelConfig) -> set:
    """Every HF tensor name the LLaMA2 model of ``cfg`` has."""
    return {n for _, hf_names, _ in _iter_rules(cfg.num_layers) for n in hf_names}


def check_hf_names(names: Any, cfg: ModelConfig) -> None:
    """Raises ValueError for HF tensors that ChatFlow's LLaMA2 does not have (a sign of another
    architecture); rotary buffers (:data:`IGNORED_HF_SUFFIXES`) are allowed."""
    known = hf_parameter_names(cfg)
    unknown = [k for k in names if k not in known and not k.endswith(IGNORED_HF_SUFFIXES)]
    if unknown:
        raise ValueError(f"HF checkpoint has tensors ChatFlow's LLaMA2 does not: {unknown[:5]}")


def hf_to_mcore_state_dict(
    hf_state: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    tensor_parallel_size: int = 1,
    padding: str = "zeros",
) -> dict[str, torch.Tensor]:
    """Full HF state dict -> full megatron-core ``GPTModel`` state dict (local-spec names).

    Unknown HF keys are an error (a sign of a non-LLaMA2 checkpoint), except the rotary buffers
    of :data:`IGNORED_HF_SUFFIXES`. See :func:`iter_hf_to_mcore` for the arguments.
    """
    check_hf_names(hf_state.keys(), cfg)
    return dict(iter_hf_to_mcore(hf_state, cfg, tensor_parallel_size, padding))


def mcore_to_hf_state_dict(
    mcore_state: Mapping[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """Full megatron-core ``GPTModel`` state dict -> HF ``LlamaForCausalLM`` state dict.

    The inverse of :func:`hf_to_mcore_state_dict`: splits QKV and gate/up and drops the vocabulary
    padding rows. ``_extra_state`` entries (TE/FP8 metadata) are ignored.
    """
    out: dict[str, torch.Tensor] = {}
    for rule, hf_names, mcore_name in _iter_rules(cfg.num_layers):
        if mcore_name not in mcore_state:
            raise KeyError(f"megatron-core state has no {mcore_name!r}")
        tensor = mcore_state[mcore_name]
        if rule.kind == "qkv":
            parts: tuple[torch.Tensor, ...] = _split_qkv(tensor, cfg)
        elif rule.kind == "gate_up":
            parts = tuple(tensor.chunk(2, dim=0))
        elif rule.kind == "vocab":
            if tensor.shape[0] < cfg.vocab_size:
                raise ValueError(f"{mcore_name}: {tensor.shape[0]} rows < vocab {cfg.vocab_size}")
            rows = tensor[: cfg.vocab_size]
            parts = (rows.clone() if tensor.shape[0] > cfg.vocab_size else rows,)
        else:
            parts = (tensor,)
        if len(parts) > 1:  # views into one fused tensor share storage: safetensors refuses them
            parts = tuple(p.clone() for p in parts)
        out.update({n: p.contiguous() for n, p in zip(hf_names, parts, strict=True)})
    return out
