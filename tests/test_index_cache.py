"""IndexCache: keys change with every input, one build under concurrency, crashes never load."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from chatflow.data import index_cache
from chatflow.data.index_cache import IndexCache
from chatflow.data.indexed_dataset import IndexedDatasetWriter
from chatflow.data.source_dataset import SampleOptions, SourceDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arrays():
    return {"a": np.arange(10, dtype=np.int32), "b": np.ones((3, 2), dtype=np.int64)}


def run_script(body: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body), *args], env=env)


@pytest.mark.unit
def test_roundtrip_and_no_cache_dir(tmp_path):
    calls = []
    cache = IndexCache(str(tmp_path))
    first = cache.get_or_build("x", {"k": 1}, lambda: calls.append(1) or arrays())
    second = cache.get_or_build("x", {"k": 1}, lambda: calls.append(1) or arrays())
    assert calls == [1]
    assert isinstance(second["a"], np.memmap) and second["a"].tolist() == list(range(10))
    assert first["b"].shape == (3, 2)
    assert IndexCache(None).get_or_build("x", {}, arrays)["a"].tolist() == list(range(10))
    assert cache.load("x", {"k": 2}) is None
    with pytest.raises(ValueError, match="identifier"):
        cache.get_or_build("bad kind", {}, arrays)


def _source_entries(tmp_path, prefix, **overrides):
    kw = dict(num_samples=20, options=SampleOptions(seq_length=4), seed=1)
    kw.update(overrides)
    cache_dir = str(tmp_path / "cache")
    SourceDataset(
        prefix,
        kw.pop("num_samples"),
        kw.pop("options"),
        kw.pop("seed"),
        cache=IndexCache(cache_dir),
        **kw,
    )
    return {d for d in os.listdir(cache_dir) if not d.endswith(".lock")}


@pytest.mark.unit
def test_source_cache_invalidation(tmp_path):
    prefix = str(tmp_path / "src")
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_documents([[1, 5, 5, 2]] * 30)
    seen = _source_entries(tmp_path, prefix)
    assert len(seen) == 1
    variants = [
        dict(seed=2),
        dict(options=SampleOptions(seq_length=5)),
        dict(num_samples=200),
        dict(valid_fraction=0.1),
        dict(shuffle_block=3),
    ]
    for v in variants:
        now = _source_entries(tmp_path, prefix, **v)
        assert len(now) == len(seen) + 1, f"variant {v} did not get its own entry"
        seen = now
    # Same rounding to whole shuffle blocks: prefix-stable indices are shared, no new entry.
    assert _source_entries(tmp_path, prefix, shuffle_block=3, num_samples=19) == seen
    # Rewriting the shard (new mtime) invalidates.
    os.utime(prefix + ".bin", ns=(1, 1))
    assert len(_source_entries(tmp_path, prefix)) == len(seen) + 1


BUILD_SCRIPT = """
    import os, sys, time, numpy as np
    from chatflow.data.index_cache import IndexCache
    cache_dir, log = sys.argv[1], sys.argv[2]
    def build():
        with open(log, "a") as f:
            f.write("built\\n")
        time.sleep(0.5)  # a slow build, so the other process surely waits on the lock
        return {"x": np.arange(1000, dtype=np.int64) * 3, "y": np.full(7, 9, np.int16)}
    # Start together: each announces itself, then waits for the other.
    open(f"{log}.ready{sys.argv[3]}", "w").close()
    while not all(os.path.exists(f"{log}.ready{i}") for i in range(2)):
        time.sleep(0.01)
    out = IndexCache(cache_dir).get_or_build("demo", {"k": 1}, build)
    assert out["x"][5] == 15 and out["y"].sum() == 63
"""


@pytest.mark.dist
def test_concurrent_builders_build_once(tmp_path):
    log = str(tmp_path / "log")
    procs = [run_script(BUILD_SCRIPT, str(tmp_path / "cache"), log, str(i)) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with open(log) as f:
        assert f.read().count("built") == 1
    entry = IndexCache(str(tmp_path / "cache")).load("demo", {"k": 1})
    assert entry is not None and entry["x"].tolist() == list(range(0, 3000, 3))


CRASH_SCRIPT = """
    import os, signal, sys, numpy as np
    from chatflow.data import index_cache
    index_cache._after_array_written = lambda name: os.kill(os.getpid(), signal.SIGKILL)
    index_cache.IndexCache(sys.argv[1]).get_or_build(
        "demo", {"k": 1}, lambda: {"x": np.arange(5), "y": np.arange(3)})
"""


@pytest.mark.dist
def test_crash_mid_build_never_loads_and_is_rebuilt(tmp_path):
    cache_dir = str(tmp_path / "cache")
    proc = run_script(CRASH_SCRIPT, cache_dir)
    assert proc.wait(timeout=120) == -9
    cache = IndexCache(cache_dir)
    entry = cache.entry_dir("demo", {"k": 1})
    assert os.path.isfile(os.path.join(entry, "x.npy"))  # an array was written before the kill
    assert cache.load("demo", {"k": 1}) is None
    calls = []
    out = cache.get_or_build(
        "demo", {"k": 1}, lambda: calls.append(1) or {"x": np.arange(5), "y": np.arange(3)}
    )
    assert calls == [1] and out["y"].tolist() == [0, 1, 2]
    assert cache.load("demo", {"k": 1}) is not None


@pytest.mark.unit
def test_damaged_entry_is_rebuilt(tmp_path):
    cache = IndexCache(str(tmp_path))
    cache.get_or_build("x", {}, arrays)
    path = os.path.join(cache.entry_dir("x", {}), "a.npy")
    np.save(path, np.arange(3, dtype=np.int32))  # wrong shape for the marker
    assert cache.load("x", {}) is None
    assert cache.get_or_build("x", {}, arrays)["a"].tolist() == list(range(10))


@pytest.mark.unit
def test_crash_hook_fires_per_array(tmp_path, monkeypatch):
    names = []
    monkeypatch.setattr(index_cache, "_after_array_written", names.append)
    IndexCache(str(tmp_path)).get_or_build("x", {}, arrays)
    assert sorted(names) == ["a", "b"]


DIST_SCRIPT = """
    import os, sys, numpy as np, torch.distributed as dist
    from chatflow.data.index_cache import IndexCache
    rank, cache_dir, log, init = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
    def build():
        with open(log, "a") as f:
            f.write(f"rank{rank}\\n")
        return {"x": np.arange(4)}
    out = IndexCache(cache_dir).get_or_build("demo", {"k": 1}, build)
    assert out["x"].tolist() == [0, 1, 2, 3]
    dist.destroy_process_group()
"""


@pytest.mark.dist
@pytest.mark.slow
def test_distributed_rank0_builds(tmp_path):
    log, init = str(tmp_path / "log"), str(tmp_path / "init")
    procs = [run_script(DIST_SCRIPT, str(r), str(tmp_path / "c"), log, init) for r in range(2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    with open(log) as f:
        assert f.read().split() == ["rank0"]
