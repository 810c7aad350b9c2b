"""HF LLaMA2 <-> megatron-core conversion (chatflow/hf_convert.py, chatflow/hf_checkpoint.py).

The oracle is transformers' own ``LlamaForCausalLM``: a tiny random GQA model (4 heads in 2 KV
groups, 2 layers, vocabulary 300, not a multiple of 128) is converted, loaded through the
trainer's checkpoint code into TP=2 (and TP=1 x DP=2) in 2 spawned gloo processes, and must give
HF's logits and loss. Pure state-dict tests need no process group.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _trainer_helpers import free_port
from conftest import load_tool

from chatflow import hf_convert
from chatflow.hf_checkpoint import DTYPES, export_hf, import_hf

VOCAB, SEQ, BATCH = 300, 16, 2
HF_ARGS = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
)  # fmt: skip


def _hf_model(**changes):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**HF_ARGS, **changes})).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise so a misplaced norm shows
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name else 0.02))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    _hf_model().save_pretrained(path)
    return path


def _cfg():
    from transformers import LlamaConfig

    return hf_convert.hf_config_to_model_config(LlamaConfig(**HF_ARGS))


# --- pure logic -------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "change, field",
    [
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(mlp_bias=True), "mlp_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_theta=10000.5), "rope_theta"),
    ],
)
def test_unsupported_config_names_the_field(change, field):
    from transformers import LlamaConfig

    with pytest.raises(ValueError, match=f"HF config {field}:"):
        hf_convert.hf_config_to_model_config(LlamaConfig(**{**HF_ARGS, **change}))


@pytest.mark.unit
def test_config_translation():
    cfg = _cfg()
    assert (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size) == (2, 64, 160)
    assert (cfg.num_attention_heads, cfg.num_query_groups, cfg.vocab_size) == (4, 2, VOCAB)
    assert (cfg.rotary_base, cfg.norm_epsilon, cfg.seq_length) == (10000, 1e-5, 64)
    back = hf_convert.model_config_to_hf_config(cfg)
    assert hf_convert.hf_config_to_model_config(back) == cfg


@pytest.mark.unit
def test_qkv_rows_are_grouped_per_kv_group():
    """Independent of _fuse_qkv: group g's rows are its 2 query heads, its k head, its v head."""
    cfg, d = _cfg(), 16
    hf = _hf_model().state_dict()
    qkv = hf_convert.hf_to_mcore_state_dict(hf, cfg)[
        "decoder.layers.1.self_attention.linear_qkv.weight"
    ]
    q, k, v = (hf[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    for g in range(2):
        rows = qkv[g * 4 * d : (g + 1) * 4 * d]
        assert torch.equal(rows[: 2 * d], q[g * 2 * d : (g + 1) * 2 * d])
        assert torch.equal(rows[2 * d : 3 * d], k[g * d : (g + 1) * d])
        assert torch.equal(rows[3 * d :], v[g * d : (g + 1) * d])


@pytest.mark.unit
@pytest.mark.parametrize("tp, padding", [(1, "zeros"), (2, "mean")])
def test_state_dict_round_trip_is_exact(tp, padding):
    cfg, hf = _cfg(), _hf_model().state_dict()
    mcore = hf_convert.hf_to_mcore_state_dict(hf, cfg, tensor_parallel_size=tp, padding=padding)
    emb = mcore["embedding.word_embeddings.weight"]
    assert emb.shape[0] == cfg.padded_vocab_size(tp) == (384 if tp == 1 else 512)
    want = torch.zeros(64) if padding == "zeros" else hf["model.embed_tokens.weight"].mean(0)
    torch.testing.assert_close(emb[VOCAB:], want.expand(emb.shape[0] - VOCAB, -1))
    back = hf_convert.mcore_to_hf_state_dict(mcore, cfg)
    assert sorted(back) == sorted(hf)
    for name in hf:
        assert torch.equal(back[name], hf[name]), name


@pytest.mark.unit
def test_unknown_or_missing_hf_tensors_fail():
    cfg, hf = _cfg(), _hf_model().state_dict()
    with pytest.raises(ValueError, match="does not"):
        hf_convert.hf_to_mcore_state_dict(
            {**hf, "model.layers.0.self_attn.q_norm.weight": hf["model.norm.weight"]}, cfg
        )
    del hf["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match="up_proj"):
        hf_convert.hf_to_mcore_state_dict(hf, cfg)


# --- the tool + the trainer's loading code ----------------------------------------------------


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory) -> Path:
    """hf-to-mcore in fp32 (padded for TP=1: 384 rows; the TP=2 model has 512)."""
    out = tmp_path_factory.mktemp("mcore") / "ckpt"
    tool = load_tool("convert_hf_checkpoint")
    assert tool.main(["--direction", "hf-to-mcore", "--hf-dir", str(hf_dir),
                      "--output", str(out), "--dtype", "fp32"]) == 0  # fmt: skip
    return out


@pytest.mark.dist
def test_checkpoint_layout(converted):
    from chatflow.checkpointing import read_tracker

    assert read_tracker(str(converted)) == 0
    assert sorted(os.listdir(converted)) == [
        "config.yaml", "hf_config.json", "iter_0000000", "latest_checkpointed_iteration.txt"
    ]  # fmt: skip
    assert not list(converted.parent.glob("*.tmp-*"))


@pytest.mark.dist
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_round_trip_is_exact(hf_dir, tmp_path, dtype):
    """HF -> dist-checkpoint -> HF through the library functions the tool calls; bf16 also pads
    for TP=2 (512 stored rows, exported from a model built with exactly that padding)."""
    from transformers import LlamaForCausalLM

    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    extra = {"target_tensor_parallel_size": 2, "padding": "mean"} if dtype == "bf16" else {}
    cfg = import_hf(str(hf_dir), str(ckpt), dtype=dtype, **extra)
    assert cfg.vocab_size == VOCAB
    assert export_hf(str(ckpt), str(out), dtype=dtype) == 0  # the iteration exported
    original = LlamaForCausalLM.from_pretrained(hf_dir).state_dict()
    exported = LlamaForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor.to(exported[name].dtype)), name
        assert exported[name].dtype == DTYPES[dtype]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["num_key_value_heads"] == 2


def _forward(ckpt: str, tp: int, tokens: torch.Tensor) -> dict:
    """Loads ``ckpt`` like ``chatflow.train --load ckpt --finetune`` and runs one forward."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from chatflow import checkpointing, engine, parallel
    from chatflow.config import OptimizerConfig, ParallelConfig
    from chatflow.config.checkpoint import CheckpointConfig
    from chatflow.model import build_model_chunks, unwrap

    cfg = _cfg().replace(seq_length=SEQ)  # what the trainer builds: tokenizer vocab, its seq
    par = ParallelConfig(tensor_model_parallel_size=tp)
    parallel.initialize(par, seed=11)
    try:
        chunks = build_model_chunks(cfg, par)
        optim = OptimizerConfig(lr=1e-3, min_lr=1e-4)
        optimizer = engine.build_optimizer(chunks, optim, par)
        scheduler = engine.build_scheduler(optimizer, optim, train_samples=10)
        # A converted checkpoint holds weights only, and its vocabulary must match the run's.
        with pytest.raises(ValueError, match="weights-only checkpoint"):
            checkpointing.load_checkpoint(CheckpointConfig(load=ckpt), chunks, optimizer, scheduler)
        with pytest.raises(ValueError, match=f"vocabulary of {VOCAB} tokens"):
            checkpointing.load_checkpoint(
                CheckpointConfig(load=ckpt, finetune=True),
                chunks,
                optimizer,
                scheduler,
                vocab_size=VOCAB + 1,
            )
        result = checkpointing.load_checkpoint(
            CheckpointConfig(load=ckpt, finetune=True),
            chunks,
            optimizer,
            scheduler,
            vocab_size=VOCAB,
        )
        assert result == {"iteration": 0, "train_state": None}
        model = unwrap(chunks[0]).eval()
        pos = torch.arange(SEQ).expand(BATCH, -1)
        with torch.no_grad():
            logits = gather_from_tensor_model_parallel_region(model(tokens, pos, None))
            loss = model(tokens[:, :-1], pos[:, :-1], None, labels=tokens[:, 1:])
        assert parallel_state.get_tensor_model_parallel_world_size() == tp
        return {"logits": logits, "loss": loss}
    finally:
        parallel.destroy(process_group=False)


def _worker(rank: int, port: int, ckpt: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    import megatron_patches

    megatron_patches.apply(cuda_available=False)
    tokens = torch.load(os.path.join(out, "tokens.pt"))
    results = {f"tp{tp}": _forward(ckpt, tp, tokens) for tp in (2, 1)}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def trainer_loaded(converted, tmp_path_factory):
    """(tokens, {rank: {layout: outputs}}) of the converted checkpoint loaded by the trainer."""
    out = tmp_path_factory.mktemp("loaded")
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    torch.save(tokens, out / "tokens.pt")
    mp.spawn(_worker, args=(free_port(), str(converted), str(out)), nprocs=2, join=True)
    return tokens, {r: torch.load(out / f"rank{r}.pt") for r in range(2)}


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "tp1"])
def test_trainer_loaded_model_matches_hf(hf_dir, trainer_loaded, layout):
    from transformers import LlamaForCausalLM

    tokens, ranks = trainer_loaded
    hf = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        want = hf(tokens).logits
        want_loss = hf(tokens[:, :-1]).logits.log_softmax(-1)
    want_loss = -want_loss.gather(-1, tokens[:, 1:, None])[..., 0]
    for rank in range(2):
        got = ranks[rank][layout]
        padded = 512 if layout == "tp2" else 384  # the TP=2 model pads further: zero rows
        assert got["logits"].shape == (BATCH, SEQ, padded)
        torch.testing.assert_close(got["logits"][..., :VOCAB], want, atol=1e-5, rtol=1e-5)
        assert torch.count_nonzero(got["logits"][..., VOCAB:]) == 0
        # megatron-core's loss normalises over the padded vocabulary too (padded logits = 0):
        # the same as HF's loss with those extra zero logits appended
        full = torch.cat([hf(tokens[:, :-1]).logits.detach(),
                          torch.zeros(BATCH, SEQ - 1, padded - VOCAB)], dim=-1)  # fmt: skip
        ref = -full.log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
        torch.testing.assert_close(got["loss"], ref, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ref, want_loss)  # the padding is visible in the loss
