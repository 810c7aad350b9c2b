"""The tier check of tests/_tier_guard.py: non-dist tests cannot start processes or groups."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest
import torch.distributed as dist
from _tier_guard import SpawnInNonDistTest, spawn_guard, tier_problem

pytestmark = pytest.mark.unit


def _noop() -> None:
    """Target of a child process that must never start."""


@pytest.mark.parametrize(
    "spawn",
    [
        lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
        lambda: subprocess.Popen([sys.executable, "-c", "pass"]),
        lambda: multiprocessing.get_context("spawn").Process(target=_noop).start(),
        lambda: multiprocessing.get_context("fork").Process(target=_noop).start(),
        lambda: os.fork(),
        lambda: os.system("true"),
        lambda: dist.init_process_group(
            "gloo", init_method="tcp://127.0.0.1:1", rank=0, world_size=1
        ),  # fmt: skip
    ],
    ids=["subprocess.run", "Popen", "mp-spawn", "mp-fork", "os.fork", "os.system", "init_pg"],
)
def test_guard_refuses_each_way_of_spawning(spawn):
    with spawn_guard("tests/x.py::test_y") as refusals:
        with pytest.raises(SpawnInNonDistTest, match="test tests/x.py::test_y spawns a process "
                                                     "but is not marked dist"):  # fmt: skip
            spawn()
    assert len(refusals) == 1  # recorded too, in case library code swallows the exception


HOOKS = """
from _tier_guard import (
    pytest_collection_modifyitems, pytest_runtest_call, pytest_runtest_setup,
    pytest_runtest_teardown,
)
"""


def test_hooks_fail_spawning_unit_tests_and_untiered_ones(pytester):
    # In-process inner session: nothing here really spawns, the inner guard refuses first.
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(
        test_inner="""
        import subprocess
        import pytest

        @pytest.fixture(scope="module")
        def server():
            subprocess.Popen(["true"])

        @pytest.mark.unit
        def test_spawns():
            subprocess.run(["true"])

        @pytest.mark.unit
        def test_swallows():
            try:
                subprocess.run(["true"])
            except Exception:
                pass

        @pytest.mark.unit
        def test_module_fixture_spawns(server):
            pass

        @pytest.mark.unit
        def test_clean():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2, errors=1)
    result.stdout.fnmatch_lines(["*test test_inner.py::test_spawns spawns a process but is not "
                                 "marked dist*"])  # fmt: skip

    pytester.makepyfile(test_inner="def test_untiered():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_untiered has none of the tier markers unit/dist/gpu*"])


def test_guard_restores_the_originals():
    before = (subprocess.Popen.__init__, os.fork, dist.init_process_group)
    with spawn_guard("t"):
        assert subprocess.Popen.__init__ is not before[0]
    assert (subprocess.Popen.__init__, os.fork, dist.init_process_group) == before


@pytest.mark.parametrize(
    "markers, problem",
    [
        ({"unit"}, None),
        ({"dist", "slow"}, None),
        ({"gpu", "slow", "parametrize"}, None),
        (set(), "none of the tier markers"),
        ({"slow"}, "none of the tier markers"),
        ({"unit", "dist"}, "several tier markers"),
        ({"unit", "slow"}, "unit and slow"),
    ],
)
def test_tier_rule(markers, problem):
    got = tier_problem(markers)
    assert got is None if problem is None else problem in got
