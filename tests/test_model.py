"""Model/parallel/optimizer configs: presets, validation, translation to TransformerConfig."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from chatflow.config import PRESETS, ModelConfig, OptimizerConfig, ParallelConfig

LLAMA_VOCAB = 32000


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, expected",
    # LLaMA2 papers/model cards: 6.74B, 13.0B, 69.0B parameters (HF safetensors counts).
    [("7b", 6_738_415_616), ("13b", 13_015_864_320), ("70b", 68_976_648_192)],
)
def test_preset_parameter_counts(name, expected):
    cfg = ModelConfig.from_preset(name, LLAMA_VOCAB)
    assert cfg.num_parameters() == expected


@pytest.mark.unit
def test_presets_shape():
    big = ModelConfig.from_preset("70b", LLAMA_VOCAB)
    assert big.num_query_groups == 8 and big.kv_channels == 128
    assert ModelConfig.from_preset("7b", LLAMA_VOCAB).num_query_groups == 32  # plain MHA
    tiny = ModelConfig.from_preset("tiny", 1000)
    assert tiny.num_layers <= 4 and 64 <= tiny.hidden_size <= 256
    assert tiny.num_attention_heads == 4 and tiny.num_query_groups == 2
    assert 2.6 < tiny.ffn_hidden_size / tiny.hidden_size < 2.8
    assert set(PRESETS) == {"7b", "13b", "70b", "tiny"}


@pytest.mark.unit
def test_vocab_padding():
    cfg = ModelConfig.from_preset("7b", LLAMA_VOCAB)
    assert cfg.padded_vocab_size(1) == 32000
    assert cfg.padded_vocab_size(8) == 32768  # multiple of 128 x 8
    chatflow_vocab = ModelConfig.from_preset("7b", 32000 + 8076)  # LLaMA + Chinese characters
    assert chatflow_vocab.padded_vocab_size(2) == 40192
    assert chatflow_vocab.num_parameters(
        tensor_parallel_size=2
    ) - chatflow_vocab.num_parameters() == (2 * (40192 - 40076) * 4096)


@pytest.mark.unit
def test_flops_per_token_dominated_by_6n():
    cfg = ModelConfig.from_preset("7b", LLAMA_VOCAB)
    six_n = 6 * (cfg.num_parameters() - LLAMA_VOCAB * cfg.hidden_size)
    assert six_n < cfg.flops_per_token() < 1.2 * six_n


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_attention_heads=6), "hidden_size"),  # 128 % 6
        (dict(num_query_groups=3), "num_query_groups"),  # 4 % 3
        (dict(vocab_size=0), "vocab_size"),
        (dict(recompute_granularity="full"), "recompute_method"),
        (dict(recompute_granularity="some"), "recompute_granularity"),
        (dict(max_position_embeddings=16), "max_position_embeddings"),
    ],
)
def test_model_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ModelConfig.from_preset("tiny", **{"vocab_size": 1000, **kwargs})


@pytest.mark.unit
def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown 'huge'"):
        ModelConfig.from_preset("huge", 1000)


@pytest.mark.unit
@pytest.mark.parametrize(
    "parallel, world, message",
    [
        (dict(tensor_model_parallel_size=8), None, "num_attention_heads=4 is not divisible"),
        # 4 heads split over TP=4 but only 2 KV groups
        (dict(tensor_model_parallel_size=4), None, "num_query_groups=2 is not divisible"),
        (dict(pipeline_model_parallel_size=3), None, "num_layers=4 is not divisible"),
        (
            dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=4),
            None,
            r"num_layers=4 is not divisible by .* \(2\) x .* \(4\)",
        ),
        (dict(tensor_model_parallel_size=2), 3, "3 processes are not divisible"),
    ],
)
def test_parallel_validation(parallel, world, message):
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**parallel).validate(ModelConfig.from_preset("tiny", 1000), world)


@pytest.mark.unit
def test_parallel_config_checks():
    with pytest.raises(ValueError, match="^virtual_pipeline_model_parallel_size:"):
        ParallelConfig(virtual_pipeline_model_parallel_size=2)
    with pytest.raises(ValueError, match="^sequence_parallel:"):
        ParallelConfig(sequence_parallel=True)
    with pytest.raises(ValueError, match="^overlap_param_gather:"):
        ParallelConfig(overlap_param_gather=True)
    p = ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    assert p.data_parallel_size(8) == 2
    assert ParallelConfig(virtual_pipeline_model_parallel_size=1).num_model_chunks == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(min_lr=1.0), "min_lr"),
        (dict(lr_decay_style="step"), "lr_decay_style"),
        (dict(lr_warmup_samples=10, lr_decay_samples=5), "lr_decay_samples"),
        (dict(adam_beta2=1.0), "adam_beta2"),
        (dict(clip_grad=-1.0), "clip_grad"),
    ],
)
def test_optimizer_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        OptimizerConfig(**kwargs)


@pytest.mark.unit
def test_every_field_has_a_unique_flag_and_help():
    flags = []
    for cls in (ModelConfig, ParallelConfig, OptimizerConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata["flag"].startswith("--"), f.name
            assert len(f.metadata["help"]) > 10, f.name
            flags.append(f.metadata["flag"])
    assert len(flags) == len(set(flags))
    assert "--tensor-model-parallel-size" in flags and "--lr-warmup-samples" in flags


@pytest.mark.unit
def test_transformer_config_translation():
    from chatflow.model import transformer_config

    tiny = ModelConfig.from_preset("tiny", 1000)
    tc = transformer_config(tiny, ParallelConfig(), use_te=False)
    assert tc.normalization == "RMSNorm" and tc.layernorm_epsilon == 1e-5
    assert tc.gated_linear_unit and tc.activation_func is torch.nn.functional.silu
    assert not tc.add_bias_linear and not tc.add_qkv_bias and not tc.rotary_interleaved
    assert tc.num_query_groups == 2 and tc.kv_channels == 32
    assert tc.ffn_hidden_size == tiny.ffn_hidden_size and tc.num_layers == tiny.num_layers
    assert tc.calculate_per_token_loss and tc.params_dtype == torch.float32
    assert tc.use_cpu_initialization == (not torch.cuda.is_available())
    for fusion in (
        "bias_activation_fusion",
        "masked_softmax_fusion",
        "apply_rope_fusion",
        "gradient_accumulation_fusion",
        "persist_layer_norm",
        "bias_dropout_fusion",
    ):
        assert getattr(tc, fusion) is False, fusion  # fmt: skip
    vpp = ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)
    tc = transformer_config(tiny, vpp, bf16=True, use_te=False)
    assert tc.params_dtype == tc.pipeline_dtype == torch.bfloat16 and tc.bf16
    assert tc.virtual_pipeline_model_parallel_size == 2
    assert tc.batch_p2p_comm is False  # wrong losses on gloo otherwise
    tc = transformer_config(
        tiny.replace(
            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
        ),
        ParallelConfig(),
        use_te=False,
    )
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == (
        "full", "uniform", 1,
    )  # fmt: skip


@pytest.mark.unit
def test_sequence_parallel_needs_transformer_engine():
    from chatflow.model import transformer_config

    with pytest.raises(ValueError, match="^sequence_parallel:"):
        transformer_config(
            ModelConfig.from_preset("tiny", 1000),
            ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True),
            use_te=False,
        )


@pytest.mark.dist
def test_built_model_matches_analytic_count(single_process):
    """Independent oracle: the parameters megatron-core actually allocates."""
    from chatflow.model import build_model_chunks

    cfg = ModelConfig.from_preset("tiny", 1000, num_layers=2)
    (chunk,) = build_model_chunks(cfg, ParallelConfig(), wrap_ddp=False)
    assert sum(p.numel() for p in chunk.parameters()) == cfg.num_parameters(tensor_parallel_size=1)
    assert chunk.output_layer.weight.shape == (1024, cfg.hidden_size)  # padded, untied
    assert chunk.embedding.word_embeddings.weight is not chunk.output_layer.weight


@pytest.mark.dist
@pytest.mark.parametrize(
    "recompute",
    [
        dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
        dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=1),
        dict(recompute_granularity="selective"),
    ],
    ids=["full-uniform", "full-block", "selective"],
)
def test_recompute_gives_same_gradients(single_process, recompute):
    """Recomputation replays RNG states through the patched tracker: same loss and grads."""
    from chatflow.model import build_model_chunks

    cfg = ModelConfig.from_preset("tiny", 1000, num_layers=2, seq_length=16)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1000, (2, 16), generator=g)
    position_ids = torch.arange(16).expand(2, 16)
    grads = []
    for settings in ({}, recompute):
        torch.manual_seed(5)
        (chunk,) = build_model_chunks(cfg.replace(**settings), ParallelConfig(), wrap_ddp=False)
        loss = chunk(tokens, position_ids, None, labels=tokens).sum()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in chunk.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.dist
def test_bf16_step_keeps_fp32_main_weights(single_process):
    """bf16 model (Float16Module) + fp32 main weights in the optimizer; loss close to fp32."""
    from chatflow import engine
    from chatflow.model import build_model_chunks, unwrap

    cfg = ModelConfig.from_preset("tiny", 1000, num_layers=2, seq_length=16)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (2, 17), generator=g)
    batch = {
        "tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(2, 16),
        "position_ids": torch.arange(16).expand(2, 16), "source_id": torch.tensor([0, 0]),
    }  # fmt: skip
    losses = {}
    for bf16 in (False, True):
        torch.manual_seed(11)
        optim = OptimizerConfig(lr=1e-3, min_lr=1e-4, bf16=bf16)
        chunks = build_model_chunks(cfg, ParallelConfig(), bf16=bf16)
        optimizer = engine.build_optimizer(chunks, optim, ParallelConfig())
        scheduler = engine.build_scheduler(optimizer, optim, train_samples=100)
        r = engine.train_step(chunks, optimizer, scheduler, iter([batch]), num_microbatches=1,
                              micro_batch_size=2, seq_length=16, num_sources=1)  # fmt: skip
        losses[bf16] = r.loss
        if bf16:
            assert next(unwrap(chunks[0]).parameters()).dtype == torch.bfloat16
            main = [p for g in optimizer.param_groups for p in g["params"]]
            assert main and all(p.dtype == torch.float32 for p in main)
            assert not r.skipped and r.grad_norm > 0
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transformer_engine_spec_on_gpu():
    from chatflow.model import layer_spec, transformer_config, transformer_engine_available

    if not transformer_engine_available():
        pytest.skip("TransformerEngine not importable")
    tc = transformer_config(ModelConfig.from_preset("tiny", 1000), ParallelConfig())
    assert tc.apply_rope_fusion and tc.masked_softmax_fusion and tc.bias_activation_fusion
    has_apex_ext = importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None
    assert tc.gradient_accumulation_fusion == has_apex_ext
    assert not tc.use_cpu_initialization
    spec = layer_spec(use_te=True)
    qkv = spec.submodules.self_attention.submodules.linear_qkv
    assert "LayerNormColumnParallelLinear" in qkv.__name__  # fused RMSNorm + QKV projection


@pytest.mark.unit
def test_bad_micro_batches_are_rejected_naming_the_field():
    from chatflow.engine import check_batch

    ids = torch.zeros(2, 8, dtype=torch.long)
    good = {
        "tokens": ids, "labels": ids, "loss_mask": torch.ones(2, 8), "position_ids": ids,
        "source_id": torch.tensor([0, 2]),
    }  # fmt: skip
    check_batch(good, 2, 8, 3)
    with pytest.raises(ValueError, match="missing field.*'loss_mask'"):
        check_batch({k: v for k, v in good.items() if k != "loss_mask"}, 2, 8, 3)
    with pytest.raises(ValueError, match=r"^labels: shape \(2, 7\)"):
        check_batch({**good, "labels": torch.zeros(2, 7, dtype=torch.long)}, 2, 8, 3)
    with pytest.raises(ValueError, match="^source_id: values must lie in"):
        check_batch(good, 2, 8, 2)


@pytest.mark.unit
def test_lr_schedule_warmup_then_cosine_in_samples():
    """megatron-core's scheduler as configured: linear warmup from 0, cosine to min_lr."""
    import math

    from chatflow.engine import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    optim = OptimizerConfig(lr=1e-3, min_lr=1e-4, lr_warmup_samples=100, lr_decay_samples=1100)
    scheduler = build_scheduler(optimizer, optim, train_samples=5000)

    def lr_at(samples):
        scheduler.num_steps = 0
        scheduler.step(increment=samples)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == 0.0
    assert lr_at(50) == pytest.approx(0.5e-3)
    assert lr_at(100) == pytest.approx(1e-3)
    for samples in (350, 600, 850):
        progress = (samples - 100) / 1000
        expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress))
        assert lr_at(samples) == pytest.approx(expected)
    assert lr_at(1100) == pytest.approx(1e-4) and lr_at(4000) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="^train_samples:"):
        build_scheduler(optimizer, optim, train_samples=50)
