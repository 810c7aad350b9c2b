"""Mechanical test tiers: every test is ``unit``, ``dist`` or ``gpu``, and only ``dist`` spawns.

``unit`` tests must stay fast and self-contained, so outside ``dist`` tests the ways of starting
another process (``subprocess``, ``multiprocessing``, ``os.fork``) and of forming a
``torch.distributed`` process group are replaced, for the test's setup, call and teardown, by a
function that fails the test with the test's name. conftest.py wires these hooks into pytest.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import subprocess
from collections.abc import Iterator

import pytest

TIERS = ("unit", "dist", "gpu")


class SpawnInNonDistTest(AssertionError):
    """Raised when a test not marked ``dist`` starts a process or a process group."""


def tier_problem(marker_names: set[str]) -> str | None:
    """Why a test with these markers breaks the tier rule, or None when it has exactly one tier."""
    tiers = sorted(marker_names.intersection(TIERS))
    if not tiers:
        return "has none of the tier markers unit/dist/gpu"
    if len(tiers) > 1:
        return f"has several tier markers ({', '.join(tiers)}); give it exactly one"
    if "slow" in marker_names and tiers == ["unit"]:
        return "is marked unit and slow; slow tests belong to dist or gpu"
    return None


def _targets() -> list[tuple[object, str]]:
    """(owner, attribute) of every entry point that starts a process or a process group."""
    targets: list[tuple[object, str]] = [
        (subprocess.Popen, "__init__"),
        (multiprocessing.process.BaseProcess, "start"),
    ]
    os_calls = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system")
    targets += [(os, name) for name in os_calls if hasattr(os, name)]
    try:
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d
    except ImportError:  # torch without distributed support: nothing to guard
        return targets
    if dist.is_available():
        targets += [(dist, "init_process_group"), (c10d, "init_process_group")]
    return targets


@contextlib.contextmanager
def spawn_guard(test_name: str) -> Iterator[list[str]]:
    """Within the block, starting a process or a process group raises :class:`SpawnInNonDistTest`.

    Yields the list of refusals so far: a library that swallows the exception is still caught.
    """
    saved = [(owner, name, getattr(owner, name)) for owner, name in _targets()]
    refusals: list[str] = []

    def refuse(*args, **kwargs):
        refusals.append(
            f"test {test_name} spawns a process but is not marked dist "
            "(or initialises a torch.distributed process group); mark it @pytest.mark.dist"
        )
        raise SpawnInNonDistTest(refusals[-1])

    for owner, name, _ in saved:
        setattr(owner, name, refuse)
    try:
        yield refusals
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the session if a collected test breaks the tier rule (before ``-m`` deselects)."""
    problems = []
    for item in items:
        problem = tier_problem({m.name for m in item.iter_markers()})
        if problem:
            problems.append(f"  {item.nodeid} {problem}")
    if problems:
        raise pytest.UsageError("test tier markers are wrong:\n" + "\n".join(problems))


def _run_guarded(item: pytest.Item):
    """Run one phase of ``item`` (the hook's ``yield``), guarded unless it is a dist test."""
    if item.get_closest_marker("dist") is not None:
        return (yield)
    with spawn_guard(item.nodeid) as refusals:
        result = yield
    if refusals:  # raised inside code that caught the exception and carried on
        raise SpawnInNonDistTest(refusals[0])
    return result


# Hook wrappers rather than an autouse fixture: module- and session-scoped fixtures are set up
# before any function-scoped fixture, so only a wrapper around the whole phase also covers them.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    """Guard fixture setup of non-dist tests."""
    return (yield from _run_guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Guard the body of non-dist tests."""
    return (yield from _run_guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    """Guard fixture teardown of non-dist tests."""
    return (yield from _run_guarded(item))
