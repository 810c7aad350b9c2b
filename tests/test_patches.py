"""megatron_patches: version pin, apply/revert semantics, and each patch's effect on CPU."""

from __future__ import annotations

import pytest
import torch

import megatron_patches
from megatron_patches import _torch_mode

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks CUDA calls fail without")


def _torch_adam() -> bool:
    from megatron_patches.distrib_optim_load import uses_torch_adam

    return uses_torch_adam()


@pytest.fixture
def patched():
    """All patches applied for the test, reverted afterwards (the pytest process stays clean)."""
    names = megatron_patches.apply(cuda_available=False)  # CPU mode, also on GPU machines
    try:
        yield names
    finally:
        megatron_patches.revert()


@pytest.mark.unit
def test_check_version():
    assert megatron_patches.check_version() == "0.16.1"
    with pytest.raises(
        RuntimeError, match=r"0\.15\.0 is installed .* pinned to megatron-core==0\.16\.1"
    ):
        megatron_patches.check_version("0.15.0")


@pytest.mark.unit
def test_cuda_machines_get_no_cpu_patches():
    try:
        names = megatron_patches.apply(cuda_available=True)
        assert not set(names) & set(megatron_patches.CPU_PATCHES)
        assert "ckpt_results_queue" in names  # not a CPU patch: GPU runs need it too
        assert not _torch_mode.is_installed()
        assert megatron_patches.applied() == names
    finally:
        megatron_patches.revert()


@pytest.mark.unit
@cpu_only
def test_apply_is_idempotent_and_revertible():
    depth = torch._C._len_torch_function_stack()
    current_device = torch.cuda.current_device
    try:
        first = megatron_patches.apply(cuda_available=False)
        patched_fn = torch.cuda.current_device
        assert megatron_patches.apply(cuda_available=False) == first
        assert torch.cuda.current_device is patched_fn  # not wrapped twice
        assert torch._C._len_torch_function_stack() == depth + 1  # one mode, pushed once
        assert set(megatron_patches.applied()) == set(first)
    finally:
        megatron_patches.revert()
    assert megatron_patches.applied() == []
    assert torch._C._len_torch_function_stack() == depth
    assert torch.cuda.current_device is current_device
    with pytest.raises((RuntimeError, AssertionError)):
        torch.empty(1, device="cuda")


@pytest.mark.unit
def test_device_redirect(patched):
    assert torch.empty(2, device="cuda").device.type == "cpu"
    assert torch.zeros(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.ones(2, device=torch.device("cuda", 0)).device.type == "cpu"
    x = torch.arange(3.0)
    assert x.cuda() is x
    assert x.to("cuda").device.type == "cpu"
    assert x.to(0, torch.float64).dtype == torch.float64
    assert x.new_zeros(2, device="cuda:0").device.type == "cpu"
    # Autograd through the mode is unaffected.
    w = torch.ones(3, requires_grad=True)
    (w * x).sum().backward()
    torch.testing.assert_close(w.grad, x)


@pytest.mark.unit
def test_param_type(patched):
    assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.zeros(1).type("torch.cuda.HalfTensor").dtype == torch.float16
    assert torch.zeros(1).type(torch.float64).dtype == torch.float64


@pytest.mark.unit
def test_synchronize(patched):
    assert torch.cuda.synchronize() is None


@pytest.mark.unit
def test_causal_mask(patched):
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    mask = utils.get_default_causal_mask(5)
    expected = torch.tensor([[j > i for j in range(5)] for i in range(5)])
    assert mask.device.type == "cpu" and torch.equal(mask, expected)
    assert fused_softmax.get_default_causal_mask(5) is mask  # cached, and both names patched


@pytest.mark.unit
def test_rng_tracker_streams(patched):
    from megatron.core.tensor_parallel import random as mrandom

    def draws(tp_rank):
        mrandom.model_parallel_cuda_manual_seed(11, tp_rank=tp_rank, ep_rank=0, etp_rank=0)
        torch.manual_seed(99)
        before = torch.rand(2)
        with mrandom.get_cuda_rng_tracker().fork():
            inside = torch.rand(3)
        after = torch.rand(2)
        return before, inside, after

    before, inside, after = draws(tp_rank=0)
    # The model-parallel stream is the CPU generator seeded with seed + 2718 + tp_rank ...
    torch.testing.assert_close(inside, torch.rand(3, generator=torch.Generator().manual_seed(2729)))
    # ... and forking it leaves the default stream exactly where it was.
    default = torch.Generator().manual_seed(99)
    torch.testing.assert_close(torch.cat([before, after]), torch.rand(4, generator=default))
    _, inside_tp1, _ = draws(tp_rank=1)
    assert not torch.equal(inside, inside_tp1)
    # A second fork continues the stream instead of restarting it.
    with mrandom.get_cuda_rng_tracker().fork():
        again = torch.rand(3)
    assert not torch.equal(again, inside_tp1)


def _tiny_run(tmp_path, sharding, steps_before: int = 2):
    """Train k steps, save, restore into a fresh model+optimizer, one more step on both.

    ``sharding`` is the distributed optimizer's checkpoint format, None for the plain optimizer.

    Returns (loss of the continued original, loss of the restored copy, max param difference).
    """
    from megatron.core import dist_checkpointing

    from chatflow import engine
    from chatflow.config import ModelConfig, OptimizerConfig, ParallelConfig
    from chatflow.model import build_model_chunks, load_model_state_dict, model_sharded_state_dict

    cfg = ModelConfig.from_preset("tiny", 300, num_layers=2, hidden_size=64, ffn_hidden_size=176,
                                  seq_length=16)  # fmt: skip
    par = ParallelConfig(use_distributed_optimizer=sharding is not None)
    optim = OptimizerConfig(lr=1e-2, min_lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps_before + 1):
        t = torch.randint(0, 300, (2, 17), generator=g)
        batches.append({
            "tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(2, 16),
            "position_ids": torch.arange(16).expand(2, 16), "source_id": torch.tensor([0, 1]),
        })  # fmt: skip
    kwargs = dict(num_microbatches=1, micro_batch_size=2, seq_length=16, num_sources=2)
    metadata = {"distrib_optim_sharding_type": sharding} if sharding else None

    def build():
        chunks = build_model_chunks(cfg, par)
        optimizer = engine.build_optimizer(chunks, optim, par)
        return chunks, optimizer, engine.build_scheduler(optimizer, optim, train_samples=100)

    def state(chunks, optimizer, loading):
        model_sd = model_sharded_state_dict(chunks)
        opt_sd = optimizer.sharded_state_dict(model_sd, is_loading=loading, metadata=metadata)
        return {**model_sd, "optimizer": opt_sd}

    chunks, optimizer, scheduler = build()
    for batch in batches[:-1]:
        engine.train_step(chunks, optimizer, scheduler, iter([batch]), **kwargs)
    dist_checkpointing.save(state(chunks, optimizer, False), str(tmp_path))
    scheduler_state = scheduler.state_dict()  # the trainer stores it in the common state
    original = engine.train_step(chunks, optimizer, scheduler, iter(batches[-1:]), **kwargs)

    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    chunks2, optimizer2, scheduler2 = build()
    loaded = dist_checkpointing.load(state(chunks2, optimizer2, True), str(tmp_path))
    load_model_state_dict(chunks2, loaded)
    optimizer2.load_state_dict(loaded["optimizer"])
    scheduler2.load_state_dict(scheduler_state)
    restored = engine.train_step(chunks2, optimizer2, scheduler2, iter(batches[-1:]), **kwargs)
    pairs = zip(chunks[0].parameters(), chunks2[0].parameters(), strict=True)
    diff = max((a - b).abs().max().item() for a, b in pairs)
    return original, restored, diff


@pytest.fixture
def one_process(patched):
    from chatflow import parallel
    from chatflow.config import ParallelConfig

    parallel.initialize(ParallelConfig(use_distributed_optimizer=True), seed=5)
    try:
        yield
    finally:
        parallel.destroy()


needs_torch_adam = pytest.mark.skipif(
    "not _torch_adam()", reason="TE/apex installed: megatron-core uses their Adam, not torch's"
)


@pytest.mark.dist
@needs_torch_adam
@pytest.mark.parametrize("sharding", ["fully_reshardable", "dp_reshardable", None])
def test_distributed_optimizer_checkpoint_round_trip(one_process, tmp_path, sharding):
    original, restored, diff = _tiny_run(tmp_path, sharding)
    assert restored.loss == original.loss  # same weights before the step: bit-identical loss
    assert restored.grad_norm == pytest.approx(original.grad_norm, rel=1e-12)
    assert diff == 0.0  # Adam moments and step restored: identical update


@pytest.mark.dist
@needs_torch_adam
def test_distributed_optimizer_load_fails_without_the_patch(one_process, tmp_path):
    from megatron_patches import distrib_optim_load

    distrib_optim_load.revert()
    try:
        # upstream: AssertionError in state_dict() (no "step" yet), KeyError 'step' when copying
        with pytest.raises((AssertionError, KeyError)):
            _tiny_run(tmp_path, "fully_reshardable", steps_before=1)
    finally:
        distrib_optim_load.apply()


def _checkpoint_round_trip(path, **save_kwargs):
    """Saves a small sharded state dict with dist_checkpointing, loads it into a differently
    initialised one and checks they are equal; returns the child processes the save left alive.
    """
    import psutil
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    def state(seed):
        g = torch.Generator().manual_seed(seed)
        return {
            "w": ShardedTensor.from_rank_offsets("w", torch.randn(4, 8, generator=g)),
            "b": ShardedTensor.from_rank_offsets("b", torch.randn(8, generator=g)),
            "iteration": 3,
        }

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    request = dist_checkpointing.save(state(0), str(path), **save_kwargs)
    if request is not None:  # async_sharded_save: the caller runs the request (here, in-process)
        request.execute_sync()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    loaded = dist_checkpointing.load(state(1), str(path))
    expected = state(0)
    assert loaded["iteration"] == 3
    for key in ("w", "b"):
        assert torch.equal(loaded[key], expected[key].data), key
    return left


@pytest.fixture
def no_upstream_queue():
    """The test starts and ends without upstream's cached results queue and its Manager."""

    def stop():
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        results_queue, filesystem_async._results_queue = filesystem_async._results_queue, None
        if results_queue is not None:
            results_queue._manager.shutdown()

    stop()
    yield
    stop()


@pytest.mark.dist
def test_ckpt_results_queue_sync_save_leaves_no_process(one_process, tmp_path):
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    assert "ckpt_results_queue" in megatron_patches.applied()
    cached = filesystem_async._results_queue  # None unless an unpatched save ran in this process
    assert _checkpoint_round_trip(tmp_path) == []  # the forked shard writers were joined
    assert filesystem_async._results_queue is cached  # the save neither used nor set it


@pytest.mark.dist
def test_ckpt_results_queue_leaves_async_saves_alone(one_process, no_upstream_queue, tmp_path):
    """An async save may hand its queue to another process: it keeps upstream's Manager queue."""
    left = _checkpoint_round_trip(tmp_path, async_sharded_save=True)
    assert left, "expected upstream's Manager process for an async save"


@pytest.mark.dist
def test_ckpt_results_queue_revert_restores_upstream(one_process, no_upstream_queue, tmp_path):
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.dist_checkpointing.strategies.base import AsyncSaveShardedStrategy

    from megatron_patches import ckpt_results_queue

    ckpt_results_queue.apply()  # idempotent
    ckpt_results_queue.revert()
    try:
        assert not ckpt_results_queue.is_applied()
        assert AsyncSaveShardedStrategy.save.__module__.startswith("megatron.core")
        left = _checkpoint_round_trip(tmp_path)
        # upstream: a spawn Manager serving the results queue outlives the save
        assert left and filesystem_async._results_queue is not None
    finally:
        ckpt_results_queue.apply()
