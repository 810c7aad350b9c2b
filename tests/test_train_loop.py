"""The training loop's bookkeeping as pure logic: the logging-interval timer, the checkpoint
cadence (interval, last saved step, exit interval, SIGTERM) and the hook registry. No process
group, no model."""

from __future__ import annotations

import pytest

from chatflow import hooks
from chatflow.checkpointing import SaveCadence
from chatflow.metrics import IntervalTimer

pytestmark = pytest.mark.unit


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeSigterm:
    """Stands for SigtermFlag: 'received' from a given check on, counting the checks."""

    def __init__(self, from_check: int | None = None) -> None:
        self.from_check, self.checks = from_check, 0

    def received(self) -> bool:
        self.checks += 1
        return self.from_check is not None and self.checks >= self.from_check


def test_timer_excludes_paused_time():
    clock = FakeClock()
    timer = IntervalTimer(clock)
    clock.now += 2.0  # training
    with timer.paused():
        clock.now += 30.0  # evaluation
    clock.now += 1.0  # training
    with timer.paused():
        clock.now += 5.0  # a checkpoint save
    assert timer.elapsed() == pytest.approx(3.0)
    clock.now += 0.5
    assert timer.elapsed() == pytest.approx(3.5)


def test_timer_restart_forgets_previous_interval_and_pauses():
    clock = FakeClock()
    timer = IntervalTimer(clock)
    with timer.paused():
        clock.now += 10.0
    clock.now += 4.0
    assert timer.elapsed() == pytest.approx(4.0)
    timer.restart()
    assert timer.elapsed() == 0.0
    clock.now += 1.5
    assert timer.elapsed() == pytest.approx(1.5)


def test_timer_counts_pause_even_if_block_raises():
    clock = FakeClock()
    timer = IntervalTimer(clock)
    with pytest.raises(RuntimeError), timer.paused():
        clock.now += 7.0
        raise RuntimeError("eval failed")
    assert timer.elapsed() == 0.0


def _run(cadence: SaveCadence, iters: int) -> tuple[list[int], int | None]:
    """Drive ``cadence`` like train.py's loop; returns (saved iterations, stop iteration)."""
    saved: list[int] = []
    stopped = None
    iteration = 0
    while iteration < iters:
        iteration += 1
        if cadence.maybe_save(iteration, lambda it=iteration: saved.append(it)):
            stopped = iteration
            break
    cadence.maybe_save(iteration, lambda: saved.append(iteration), final=True)
    return saved, stopped


def test_cadence_saves_every_interval_and_at_the_end_once():
    cadence = SaveCadence(enabled=True, interval=3)
    assert _run(cadence, 7) == ([3, 6, 7], None)
    assert cadence.last_saved == 7
    # The end falling on an interval is saved once, not twice.
    assert _run(SaveCadence(enabled=True, interval=3), 6) == ([3, 6], None)


@pytest.mark.parametrize("interval", [None, 0])
def test_cadence_without_interval_saves_only_at_the_end(interval):
    assert _run(SaveCadence(enabled=True, interval=interval), 5) == ([5], None)


def test_cadence_exit_interval_stops_and_saves():
    assert _run(SaveCadence(enabled=True, interval=3, exit_interval=4), 10) == ([3, 4], 4)
    # Stopping on an interval step saves it once.
    assert _run(SaveCadence(enabled=True, interval=2, exit_interval=4), 10) == ([2, 4], 4)


def test_cadence_sigterm_stops_and_saves(caplog):
    sigterm = FakeSigterm(from_check=3)
    cadence = SaveCadence(enabled=True, interval=0, sigterm=sigterm)
    assert _run(cadence, 10) == ([3], 3)
    assert "SIGTERM received: saving iteration 3" in caplog.text
    # Every step asks (a collective on all ranks), the final call does not.
    assert sigterm.checks == 3


def test_cadence_asks_about_sigterm_every_step_without_stopping():
    sigterm = FakeSigterm(from_check=None)
    assert _run(SaveCadence(enabled=True, interval=2, sigterm=sigterm), 5) == ([2, 4, 5], None)
    assert sigterm.checks == 5


def test_cadence_without_save_dir_never_saves_but_still_stops():
    assert _run(SaveCadence(enabled=False, interval=1, exit_interval=2), 5) == ([], 2)
    sigterm = FakeSigterm(from_check=1)
    assert _run(SaveCadence(enabled=False, sigterm=sigterm), 5) == ([], 1)


def test_cadence_skips_iteration_already_saved():
    # Resumed from the checkpoint of iteration 4: the final call does not rewrite it.
    cadence = SaveCadence(enabled=True, interval=2, last_saved=4)
    saved: list[int] = []
    assert not cadence.maybe_save(4, lambda: saved.append(4), final=True)
    assert saved == []


@pytest.fixture
def clean_hooks():
    hooks.clear()
    yield
    hooks.clear()


def test_hooks_are_no_ops_by_default(clean_hooks):
    hooks.on_iteration_end(1)
    hooks.on_checkpoint_written(1)


def test_hooks_run_registered_callbacks_in_order(clean_hooks):
    calls = []
    hooks.register(hooks.ITERATION_END, lambda i: calls.append(("a", i)))
    hooks.register(hooks.ITERATION_END, lambda i: calls.append(("b", i)))
    hooks.register(hooks.CHECKPOINT_WRITTEN, lambda i: calls.append(("save", i)))
    hooks.on_iteration_end(3)
    hooks.on_checkpoint_written(4)
    assert calls == [("a", 3), ("b", 3), ("save", 4)]
    with pytest.raises(ValueError, match="unknown hook point"):
        hooks.register("on_kill", print)


def test_install_from_env_reads_once(clean_hooks, tmp_path, monkeypatch):
    (tmp_path / "_demo_hooks.py").write_text(
        "from chatflow import hooks\n"
        "seen = []\n"
        "def install():\n"
        "    hooks.register(hooks.ITERATION_END, seen.append)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hooks.install_from_env({}) == []  # unset: nothing installed, and never again
    assert hooks.install_from_env({hooks.HOOKS_ENV: "_demo_hooks"}) == []
    hooks.clear()
    assert hooks.install_from_env({hooks.HOOKS_ENV: "_demo_hooks"}) == ["_demo_hooks"]
    assert hooks.install_from_env({hooks.HOOKS_ENV: "_demo_hooks"}) == []  # once only
    hooks.on_iteration_end(2)
    import _demo_hooks

    assert _demo_hooks.seen == [2]


def test_document_masks_refused_on_transformer_engine():
    from chatflow.train import check_document_masks

    packed = {"zh": "windows", "instruct": "conversations"}
    check_document_masks(False, packed, True)  # the local spec applies the masks
    check_document_masks(True, {"zh": "windows"}, False)  # no masks asked for
    with pytest.raises(ValueError, match="packing: conversations for instruct"):
        check_document_masks(True, packed, False)
    with pytest.raises(ValueError, match="--reset-attention-mask"):
        check_document_masks(True, {"zh": "windows"}, True)
