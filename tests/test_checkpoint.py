"""Checkpoints: exact resume, crash safety (SIGKILL in training and mid-save), keep-last-K,
resharding TP1/DP2 -> TP2 and PP2, weights-only --finetune. 2 CPU processes, gloo, real
megatron-core dist_checkpointing and distributed optimizer.

The oracle is an uninterrupted run with the same flags: on CPU in fp32 with the same layout a
resumed run must reproduce its losses bit for bit; in another layout to fp32 rounding.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from _trainer_helpers import (
    fault_env,
    run_phases,
    torchrun,
    train_losses,
    trainer_argv,
    write_corpus,
)

from chatflow.checkpointing import TRACKER_FILE, complete_checkpoints, read_tracker

# Distributed optimizer on, so its sharded state is what gets saved and resharded.
COMMON = ["--use-distributed-optimizer", "--save-interval", "3"]


def _losses(records) -> dict:
    return {r["iteration"]: r["loss"] for r in records if r["kind"] == "train"}


CRASH_ARGS = ["--use-distributed-optimizer", "--save-interval", "2", "--keep-last-checkpoints", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two crashing torchrun launches, then one spawned 2-process job running seven trainer
    invocations in turn (one process start-up instead of seven)."""
    root = tmp_path_factory.mktemp("ckpt")
    schedule = write_corpus(str(root / "data"))
    d = lambda name: str(root / name)  # noqa: E731
    crash = trainer_argv(schedule, d("crash"), *CRASH_ARGS)
    changed = os.path.join(os.path.dirname(schedule), "changed.yaml")
    with open(schedule) as fh, open(changed, "w") as out:
        doc = yaml.safe_load(fh)
        doc["knots"] = [{"at": 0, "weights": {"en": 0.1, "zh": 0.1, "instruct": 0.8}}]
        yaml.safe_dump(doc, out)
    # Killed mid-save of iteration 4 (shards written, not yet renamed) ...
    _, out1, left1 = torchrun(crash, env=fault_env("kill_in_save:4"))
    after_save_kill = (read_tracker(d("crash")), complete_checkpoints(d("crash")),
                       os.path.isdir(os.path.join(d("crash"), "iter_0000004.tmp")))  # fmt: skip
    # ... then resumed from 2, saving 4, and killed in training at iteration 5.
    _, out2, left2 = torchrun(crash, env=fault_env("kill_at_iter:5"))
    after_train_kill = (read_tracker(d("crash")), complete_checkpoints(d("crash")),
                        os.path.isdir(os.path.join(d("crash"), "iter_0000004.tmp")))  # fmt: skip
    # A preemption notice: SIGTERM to rank 0 at step 3 of 6; the job saves 3 and exits cleanly.
    term = trainer_argv(schedule, d("term"), "--exit-signal-handler", "--save-interval", "0")
    term_code, term_out, left3 = torchrun(term, env=fault_env("sigterm_at_iter:3"))
    phases = [
        # 0: the oracle, 6 uninterrupted steps (DP=2).
        trainer_argv(schedule, d("full"), *COMMON),
        # 1: the same run stopped at step 3 (saves iteration 3) ...
        trainer_argv(schedule, d("part"), *COMMON, "--exit-interval", "3"),
        # 2: ... and resumed from it to the end, saving elsewhere so iteration 3 stays the latest.
        trainer_argv(schedule, d("resumed"), *COMMON, "--load", d("part")),
        # 3, 4: the DP=2 checkpoint of iteration 3 loaded into TP=2 and into PP=2, one step each.
        trainer_argv(schedule, d("tp2"), *COMMON, "--load", d("part"),
                     "--tensor-model-parallel-size", "2", "--exit-interval", "4"),
        trainer_argv(schedule, d("pp2"), *COMMON, "--load", d("part"),
                     "--pipeline-model-parallel-size", "2", "--exit-interval", "4"),
        # 5: weights only from iteration 3: a new run (iteration 1 again, fresh optimizer).
        trainer_argv(schedule, d("ft"), *COMMON, "--load", d("part"), "--finetune",
                     "--exit-interval", "1"),
        # 6: the crashed run, resumed to the end.
        crash,
        # 7: iteration 3 resumed with a CHANGED schedule (instruction-heavy from sample 24 on).
        trainer_argv(changed, d("changed"), *COMMON, "--load", d("part")),
    ]  # fmt: skip
    records = run_phases(phases, str(root / "phases.json"))
    return {
        "root": root, "records": records, "crash_outputs": (out1, out2),
        "after_save_kill": after_save_kill, "after_train_kill": after_train_kill,
        "term": (term_code, term_out), "leftovers": left1 + left2 + left3,
    }  # fmt: skip


@pytest.mark.dist
@pytest.mark.slow
def test_resume_is_bit_identical_to_uninterrupted(runs):
    full, part, resumed = (_losses(r) for r in runs["records"][:3])
    assert sorted(full) == [1, 2, 3, 4, 5, 6]
    assert full[6] < full[1]  # it trains
    assert sorted(part) == [1, 2, 3] and all(part[i] == full[i] for i in part)
    assert sorted(resumed) == [4, 5, 6]
    for i in (4, 5, 6):
        assert resumed[i] == full[i], f"iteration {i}: resumed {resumed[i]!r} != {full[i]!r}"
    # The resumed run's metrics file holds only its own steps; lr/grad norm continue too.
    full_rec = {r["iteration"]: r for r in runs["records"][0] if r["kind"] == "train"}
    res_rec = {r["iteration"]: r for r in runs["records"][2] if r["kind"] == "train"}
    for key in ("lr", "grad_norm"):
        assert res_rec[4][key] == full_rec[4][key], key
    assert res_rec[6]["realized_mix"] == full_rec[6]["realized_mix"]


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("phase, layout", [(3, "TP=2"), (4, "PP=2")])
def test_dp2_checkpoint_reshards_into_other_layouts(runs, phase, layout):
    full = _losses(runs["records"][0])
    other = _losses(runs["records"][phase])
    assert sorted(other) == [4], f"{layout}: expected to resume at iteration 4, got {other}"
    # Same weights, optimizer moments and data; only the reduction order differs.
    assert other[4] == pytest.approx(full[4], abs=2e-5), layout


@pytest.mark.dist
@pytest.mark.slow
def test_finetune_loads_weights_only(runs):
    full = _losses(runs["records"][0])
    ft = _losses(runs["records"][5])
    assert sorted(ft) == [1]  # iteration counter and data restart
    # Trained weights from iteration 3: far better than the fresh model's first loss.
    assert ft[1] < full[1] - 0.05


@pytest.mark.dist
@pytest.mark.slow
def test_keep_last_and_tracker(runs):
    full_dir = os.path.join(runs["root"], "full")
    assert complete_checkpoints(full_dir) == [3, 6] and read_tracker(full_dir) == 6
    assert os.path.isfile(os.path.join(full_dir, "metrics.jsonl"))
    assert os.path.isfile(os.path.join(full_dir, "config.yaml"))


@pytest.mark.dist
@pytest.mark.slow
def test_sigkill_in_training_and_mid_save_resume_from_last_complete(runs):
    """Killed mid-save of iteration 4, then killed in training at iteration 5, then run to the
    end: each restart resumes from the newest complete checkpoint and the losses match the
    uninterrupted run bit for bit."""
    save = os.path.join(runs["root"], "crash")
    out1, out2 = runs["crash_outputs"]
    # Iteration 4's shards were written but never renamed: the tracker still names 2.
    assert runs["after_save_kill"] == (2, [2], True), out1[-3000:]
    # The restart resumed from 2, saved 4 (cleaning the stale .tmp) and died at 5.
    assert runs["after_train_kill"] == (4, [2, 4], False), out2[-3000:]
    assert "loaded checkpoint" not in out1 and "loaded checkpoint" in out2
    assert complete_checkpoints(save) == [4, 6]  # keep-last-2 pruned iteration 2
    with open(os.path.join(save, TRACKER_FILE)) as fh:
        assert fh.read().strip() == "6"
    full = _losses(runs["records"][0])
    assert _losses(runs["records"][6]) == {5: full[5], 6: full[6]}
    # The metrics file holds one continuous curve: the crashed runs' later records were dropped.
    got = train_losses(os.path.join(save, "metrics.jsonl"))
    assert got == full, f"crashed-and-resumed losses {got} != uninterrupted {full}"


@pytest.mark.dist
@pytest.mark.slow
def test_killed_runs_leave_no_process(runs):
    """Nothing a job started outlives it, not even after a SIGKILLed rank (megatron-core's
    checkpoint-writer Manager did: megatron_patches.ckpt_results_queue)."""
    assert runs["leftovers"] == []


@pytest.mark.unit
def test_tracker_errors_name_the_file(tmp_path):
    assert read_tracker(str(tmp_path)) is None and complete_checkpoints(str(tmp_path)) == []
    (tmp_path / TRACKER_FILE).write_text("release\n")
    with pytest.raises(ValueError, match=f"{TRACKER_FILE}.*'release'"):
        read_tracker(str(tmp_path))
    (tmp_path / TRACKER_FILE).write_text("12\n")
    with pytest.raises(FileNotFoundError, match="iter_0000012/ is missing"):
        read_tracker(str(tmp_path))
    for name in ("iter_0000012", "iter_0000004", "iter_0000020.tmp", "notes"):
        (tmp_path / name).mkdir()
    assert read_tracker(str(tmp_path)) == 12
    assert complete_checkpoints(str(tmp_path)) == [4, 12]  # .tmp and others are never loaded


@pytest.mark.dist
@pytest.mark.slow
def test_resume_with_changed_schedule(runs):
    """The checkpoint's data state lets a run resume under a new schedule: the first three steps
    keep the old mix, the new steps follow the new one (no sample repeats)."""
    full = {r["iteration"]: r for r in runs["records"][0] if r["kind"] == "train"}
    changed = {r["iteration"]: r for r in runs["records"][7] if r["kind"] == "train"}
    assert sorted(changed) == [4, 5, 6]
    for i in (4, 5, 6):
        assert changed[i]["scheduled_mix"]["instruct"] == pytest.approx(0.8)
        assert full[i]["scheduled_mix"]["instruct"] < 0.5
    realized = sum(changed[i]["realized_mix"]["instruct"] for i in (4, 5, 6)) / 3
    assert realized > 0.6
    data_state = os.path.join(runs["root"], "part", "iter_0000003", "data_state.json")
    with open(data_state) as fh:
        assert json.load(fh)["consumed_samples"] == 24


@pytest.mark.dist
@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(runs):
    code, out = runs["term"]
    save = os.path.join(runs["root"], "term")
    assert code == 0, out[-3000:]
    assert "SIGTERM received: saving iteration 3" in out
    assert complete_checkpoints(save) == [3] and read_tracker(save) == 3
    assert sorted(train_losses(os.path.join(save, "metrics.jsonl"))) == [1, 2, 3]
