"""LLaMA2 on megatron-core: one translation ModelConfig -> TransformerConfig, the layer spec,
and the GPTModel chunks of this pipeline rank wrapped for training (Float16Module, DDP)."""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel, gpt_layer_specs
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import Float16Module

from chatflow.config.model import ModelConfig
from chatflow.config.parallel import ParallelConfig
from chatflow.parallel import uses_cuda

logger = logging.getLogger(__name__)


def transformer_engine_available() -> bool:
    """True when TransformerEngine can be used: CUDA present and the package importable."""
    if not uses_cuda() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        # Optional GPU-only dependency: imported only to probe it, on CUDA machines that have it.
        import transformer_engine.pytorch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - TE import fails many ways (cudnn, ABI): fall back
        logger.warning("TransformerEngine is installed but not importable (%s); local spec", exc)
        return False
    return True


def _grad_accum_fusion_available() -> bool:
    """megatron-core's non-TE linears (the output layer) need apex's CUDA extension for it."""
    if importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None:
        return True
    # Megatron-LM turns it off in the same situation instead of failing at model build.
    logger.warning(
        "apex fused_weight_gradient_mlp_cuda not found: gradient-accumulation fusion off"
    )
    return False


def transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    bf16: bool = False,
    use_te: bool | None = None,
):
    """Translates the ChatFlow configs into megatron-core's ``TransformerConfig``.

    This is the only place where LLaMA2's architecture meets megatron-core's knobs.

    Args:
        model: architecture.
        parallel: layout; validated against ``model`` here.
        bf16: bf16 parameters/activations (fp32 main weights live in the optimizer).
        use_te: use TransformerEngine fused kernels; None picks them when available.
    """
    parallel.validate(model)
    if use_te is None:
        use_te = transformer_engine_available()
    cuda = uses_cuda()
    if parallel.sequence_parallel and not use_te:
        raise ValueError(
            "sequence_parallel: needs TransformerEngine on CUDA (megatron-core's local spec uses "
            "torch norms, which do not support sequence parallelism)"
        )
    dtype = torch.bfloat16 if bf16 else torch.float32
    fused = bool(use_te)  # fused kernels exist only with TE/CUDA; on CPU everything is unfused
    return TransformerConfig(
        # LLaMA2 architecture
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,  # SwiGLU = silu(gate) * up
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        rotary_interleaved=False,  # HF rotate_half layout
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        attention_softmax_in_fp32=True,
        # parallelism
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        pipeline_dtype=dtype,
        # Separate sends/receives on CPU and with interleaving: the interleaved (virtual pipeline)
        # schedule on gloo with batch_p2p_comm=True silently produced wrong losses, gloo lacking
        # the batched isend/irecv semantics it relies on (see megatron_patches/README.md).
        batch_p2p_comm=cuda and parallel.virtual_pipeline_model_parallel_size is None,
        batch_p2p_sync=cuda,
        # precision
        params_dtype=dtype,
        bf16=bf16,
        # Loss is a sum over tokens; megatron-core divides the gradients by the global token
        # count, so any layout of the same global batch gives the same update.
        calculate_per_token_loss=True,
        # kernels
        use_cpu_initialization=not cuda,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        masked_softmax_fusion=fused,
        apply_rope_fusion=fused,
        persist_layer_norm=fused,
        gradient_accumulation_fusion=fused and _grad_accum_fusion_available(),
        # activation recomputation
        recompute_granularity=model.recompute_granularity,
        recompute_method=model.recompute_method,
        recompute_num_layers=model.recompute_num_layers,
    )


def layer_spec(use_te: bool):
    """TransformerEngine spec (fused norm+linear, fused attention) or megatron-core's local one."""
    if use_te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def build_model_chunks(
    model: ModelConfig,
    parallel: ParallelConfig,
    bf16: bool = False,
    use_te: bool | None = None,
    wrap_ddp: bool = True,
) -> list[torch.nn.Module]:
    """Builds this rank's GPTModel chunk(s), on its device, wrapped for training.

    One chunk per virtual pipeline stage (a single one without interleaving). Needs
    :func:`chatflow.parallel.initialize` first.

    Args:
        model: architecture.
        parallel: layout (must match the initialised parallel state).
        bf16: wrap in ``Float16Module`` with bf16 parameters.
        use_te: TransformerEngine spec; None picks it when available.
        wrap_ddp: wrap each chunk in megatron-core's ``DistributedDataParallel`` (needed by the
            optimizer and the training step; False gives bare modules, e.g. for export).

    Returns:
        The model chunks, in virtual-stage order.
    """
    if use_te is None:
        use_te = transformer_engine_available()
    config = transformer_config(model, parallel, bf16=bf16, use_te=use_te)
    spec = layer_spec(use_te)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp != parallel.tensor_model_parallel_size:
        raise ValueError(
            f"tensor_model_parallel_size: config says {parallel.tensor_model_parallel_size} but "
            f"the initialised parallel state has {tp}; call chatflow.parallel.initialize first"
        )
    vpp = parallel.virtual_pipeline_model_parallel_size
    chunks: list[torch.nn.Module] = []
    for vp_stage in range(parallel.num_model_chunks):
        stage = vp_stage if vpp is not None else None
        gpt = GPTModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=model.padded_vocab_size(tp),
            max_sequence_length=model.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(
                ignore_virtual=False, vp_stage=stage
            ),
            post_process=parallel_state.is_pipeline_last_stage(
                ignore_virtual=False, vp_stage=stage
            ),
            share_embeddings_and_output_weights=False,
            position_embedding_type="rope",
            rotary_base=model.rotary_base,
            vp_stage=stage,
        )
        if uses_cuda():
            gpt.cuda(torch.cuda.current_device())
        chunks.append(gpt)
    if bf16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    if wrap_ddp:
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,  # bf16 gradients are summed in fp32 across DP ranks
            overlap_grad_reduce=parallel.overlap_grad_reduce,
            overlap_param_gather=parallel.overlap_param_gather,
            use_distributed_optimizer=parallel.use_distributed_optimizer,
            check_for_nan_in_grad=True,
        )
        chunks = [
            # Like Megatron-LM: only the first chunk gets buckets, so the later chunks' gradients
            # (computed first in the backward pass) are reduced in one go at the end.
            DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=i > 0)
            for i, chunk in enumerate(chunks)
        ]
    n_params = sum(p.numel() for c in chunks for p in c.parameters())
    logger.info(
        "built %d model chunk(s), %s spec, %.2fM parameters on this rank",
        len(chunks), "TransformerEngine" if use_te else "local", n_params / 1e6,
    )  # fmt: skip
    return chunks


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers (they hold it as ``.module``)."""
    while isinstance(getattr(chunk, "module", None), torch.nn.Module):
        chunk = chunk.module
    return chunk


def _state_key(index: int, num_chunks: int) -> str:
    # Megatron-LM's convention: "model" for one chunk, "model0", "model1", ... with VPP.
    return "model" if num_chunks == 1 else f"model{index}"


def model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict:
    """Sharded state dict of all chunks for ``dist_checkpointing.save/load``.

    Keys are layout-independent (global layer numbers, TP/PP offsets recorded in the shards), so a
    checkpoint saved with one TP/PP/VPP layout loads into another.
    """
    return {
        _state_key(i, len(chunks)): unwrap(chunk).sharded_state_dict()
        for i, chunk in enumerate(chunks)
    }


def load_model_state_dict(chunks: list[torch.nn.Module], state: dict, strict: bool = True) -> None:
    """Loads what ``dist_checkpointing.load(model_sharded_state_dict(chunks), dir)`` returned."""
    for i, chunk in enumerate(chunks):
        unwrap(chunk).load_state_dict(state[_state_key(i, len(chunks))], strict=strict)
