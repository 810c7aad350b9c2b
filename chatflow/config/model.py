"""LLaMA2 architecture settings: presets 7b/13b/70b and a tiny debug model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from chatflow.config._fields import documented, flag, require

#: Published LLaMA2 shapes (Touvron et al. 2023, table 1 and the released configs).
PRESETS: dict[str, dict[str, Any]] = {
    "7b": dict(
        num_layers=32, hidden_size=4096, ffn_hidden_size=11008, num_attention_heads=32,
        num_query_groups=32, seq_length=4096,
    ),
    "13b": dict(
        num_layers=40, hidden_size=5120, ffn_hidden_size=13824, num_attention_heads=40,
        num_query_groups=40, seq_length=4096,
    ),
    "70b": dict(
        num_layers=80, hidden_size=8192, ffn_hidden_size=28672, num_attention_heads=64,
        num_query_groups=8, seq_length=4096,
    ),
    # Debug model: same architecture, small enough for a CPU laptop. ffn = 2.75 x hidden, the
    # LLaMA ratio 8/3 rounded up to a multiple of 32.
    "tiny": dict(
        num_layers=4, hidden_size=128, ffn_hidden_size=352, num_attention_heads=4,
        num_query_groups=2, seq_length=256,
    ),
}  # fmt: skip

RECOMPUTE_GRANULARITIES = (None, "full", "selective")
RECOMPUTE_METHODS = (None, "uniform", "block")


@documented
@dataclass
class ModelConfig:
    """A LLaMA2 decoder: RMSNorm, SwiGLU, RoPE, no biases, untied embeddings, optional GQA."""

    num_layers: int = flag("--num-layers")
    """Number of transformer layers."""
    hidden_size: int = flag("--hidden-size")
    """Model width."""
    ffn_hidden_size: int = flag("--ffn-hidden-size")
    """Width of the SwiGLU MLP (each of the gate and up projections)."""
    num_attention_heads: int = flag("--num-attention-heads")
    """Number of query heads."""
    vocab_size: int = flag("--vocab-size")
    """Tokenizer vocabulary size (unpadded); the model pads it, see make_vocab_size_divisible_by."""
    num_query_groups: int | None = flag("--num-query-groups", None)
    """Number of key/value heads (GQA); None means one per query head (plain multi-head)."""
    seq_length: int = flag("--seq-length", 4096)
    """Training sequence length in tokens."""
    max_position_embeddings: int | None = flag("--max-position-embeddings", None)
    """Longest sequence the RoPE tables cover; None means seq_length."""
    make_vocab_size_divisible_by: int = flag("--make-vocab-size-divisible-by", 128)
    """Pad the vocabulary to a multiple of this times the tensor-parallel size."""
    norm_epsilon: float = flag("--norm-epsilon", 1e-5)
    """RMSNorm epsilon."""
    rotary_base: int = flag("--rotary-base", 10000)
    """RoPE base period (rotate-half layout, not interleaved, as in HF LLaMA)."""
    init_method_std: float = flag("--init-method-std", 0.02)
    """Standard deviation of the normal weight initialisation."""
    attention_dropout: float = flag("--attention-dropout", 0.0)
    """Dropout on attention probabilities (LLaMA2: 0)."""
    hidden_dropout: float = flag("--hidden-dropout", 0.0)
    """Dropout on the residual branches (LLaMA2: 0)."""
    recompute_granularity: str | None = flag("--recompute-granularity", None)
    """Activation recomputation: None, 'full' (whole layers) or 'selective' (attention core)."""
    recompute_method: str | None = flag("--recompute-method", None)
    """For 'full' recomputation: 'uniform' (chunks of layers) or 'block' (first N layers)."""
    recompute_num_layers: int | None = flag("--recompute-num-layers", None)
    """For 'full' recomputation: layers per chunk ('uniform') or recomputed layers ('block')."""

    def __post_init__(self) -> None:
        positive = (
            "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size",
            "seq_length", "make_vocab_size_divisible_by", "rotary_base",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            require(
                isinstance(value, int) and value > 0, name, f"must be a positive int, got {value!r}"
            )
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        require(self.num_query_groups > 0, "num_query_groups", "must be positive")
        require(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            f"{self.hidden_size} is not divisible by "
            f"num_attention_heads={self.num_attention_heads}",
        )
        require(
            self.num_attention_heads % self.num_query_groups == 0,
            "num_query_groups",
            f"num_attention_heads={self.num_attention_heads} is not divisible by "
            f"num_query_groups={self.num_query_groups}",
        )
        require(
            self.max_position_embeddings >= self.seq_length,
            "max_position_embeddings",
            f"{self.max_position_embeddings} is shorter than seq_length={self.seq_length}",
        )
        require(self.norm_epsilon > 0, "norm_epsilon", "must be positive")
        require(self.init_method_std > 0, "init_method_std", "must be positive")
        for name in ("attention_dropout", "hidden_dropout"):
            require(0.0 <= getattr(self, name) < 1.0, name, "must be in [0, 1)")
        require(
            self.recompute_granularity in RECOMPUTE_GRANULARITIES,
            "recompute_granularity",
            f"must be one of {RECOMPUTE_GRANULARITIES}, got {self.recompute_granularity!r}",
        )
        require(
            self.recompute_method in RECOMPUTE_METHODS,
            "recompute_method",
            f"must be one of {RECOMPUTE_METHODS}, got {self.recompute_method!r}",
        )
        if self.recompute_granularity == "full":
            require(
                self.recompute_method is not None and (self.recompute_num_layers or 0) > 0,
                "recompute_method",
                "full recomputation needs recompute_method and a positive recompute_num_layers",
            )
        else:
            require(
                self.recompute_method is None,
                "recompute_method",
                "is only used with recompute_granularity='full'",
            )

    @classmethod
    def from_preset(cls, name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
        """Builds a preset ('7b', '13b', '70b', 'tiny') with the tokenizer's vocabulary size.

        Args:
            name: preset name.
            vocab_size: the tokenizer's vocabulary size (LLaMA2's own is 32000).
            **overrides: any other field, e.g. ``seq_length=2048``.
        """
        if name not in PRESETS:
            raise ValueError(f"model preset: unknown {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "vocab_size": vocab_size, **overrides})

    @property
    def kv_channels(self) -> int:
        """Per-head width."""
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        """Vocabulary rounded up to a multiple of ``make_vocab_size_divisible_by`` x TP."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel_size
        return -(-self.vocab_size // multiple) * multiple

    def num_parameters(self, tensor_parallel_size: int | None = None) -> int:
        """Exact parameter count, computed analytically (no model is built).

        Args:
            tensor_parallel_size: count the vocabulary padded for this TP size; None counts the
                unpadded tokenizer vocabulary (the number LLaMA2's papers report).
        """
        h, f = self.hidden_size, self.ffn_hidden_size
        vocab = (
            self.vocab_size if tensor_parallel_size is None
            else self.padded_vocab_size(tensor_parallel_size)
        )  # fmt: skip
        kv = self.num_query_groups * self.kv_channels
        attention = h * (h + 2 * kv) + h * h  # fused QKV, output projection
        mlp = h * 2 * f + f * h  # gate+up (fused), down
        norms = 2 * h
        return self.num_layers * (attention + mlp + norms) + h + 2 * vocab * h  # untied

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward, no recomputation), for MFU.

        ``6 x`` the matmul parameters (input embedding excluded: a lookup) plus the attention
        score/value matmuls ``12 x layers x hidden x seq`` (PaLM, appendix B).
        """
        matmul_params = self.num_parameters() - self.vocab_size * self.hidden_size
        return 6.0 * matmul_params + 12.0 * self.num_layers * self.hidden_size * self.seq_length

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)
