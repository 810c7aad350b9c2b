"""On-disk cache of index arrays (``.npy``), keyed by everything that changes them.

Layout: ``<cache_dir>/<kind>-<key>/`` holds one ``<name>.npy`` per array and ``complete.json``,
written last, that lists the arrays (shape, dtype) and the description that was hashed into
``<key>``. An entry without ``complete.json``, or whose arrays do not match it, never loads.

Writes are atomic (temporary file, fsync, ``os.replace``). Builders serialize on
``<cache_dir>/<kind>-<key>.lock`` (``fcntl.flock``, released by the kernel if the holder dies), so
any number of processes, with or without a process group, build an entry once and all load the
same files. With ``torch.distributed`` initialized, :meth:`IndexCache.get_or_build` is collective:
rank 0 builds first while the others wait on a barrier, then they load (or build, if the cache
directory is node-local and their node has not got it yet). For very large runs prebuild the
caches with ``tools/build_index.py`` so no rank waits on a build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from chatflow.fileio import atomic_open, atomic_write

logger = logging.getLogger(__name__)

#: Bump when the meaning of any cached array changes; it is part of every key.
CACHE_FORMAT_VERSION = 1
_MARKER = "complete.json"

# Test hook: called with each array's name right after it is written (crash tests kill here).
_after_array_written: Callable[[str], None] | None = None


def fingerprint(description: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a JSON-serializable description (keys sorted, so order never matters)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def shard_identity(prefix: str) -> dict[str, Any]:
    """What identifies a shard's content cheaply: absolute path, size and mtime of both files.

    Rewriting a shard (even with identical bytes) changes its mtime and so invalidates its caches;
    that errs on the side of rebuilding.
    """
    out: dict[str, Any] = {"path": os.path.abspath(prefix)}
    for suffix in (".idx", ".bin"):
        st = os.stat(prefix + suffix)
        out[suffix[1:]] = [st.st_size, st.st_mtime_ns]
    return out


def pickle_array(array: np.ndarray) -> Any:
    """A cheap picklable stand-in for a cached (memory-mapped ``.npy``) array; see
    :func:`unpickle_array`. In-memory arrays are returned as they are.

    DataLoader workers started with ``spawn`` pickle the dataset; without this, every memory map
    would be copied into the pickle.
    """
    filename = getattr(array, "filename", None)
    if isinstance(array, np.memmap) and filename and filename.endswith(".npy"):
        return ("npy-mmap", filename)
    return array


def unpickle_array(obj: Any) -> np.ndarray:
    """Inverse of :func:`pickle_array`: reopen a cached array read-only."""
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "npy-mmap":
        return np.load(obj[1], mmap_mode="r")
    return obj


def _dist_rank_and_size() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class IndexCache:
    """Cache of named array groups under ``cache_dir`` (``None``: build in memory every time).

    Args:
        cache_dir: directory of the cache; created on first write.
        distributed: when a ``torch.distributed`` group is initialized, let rank 0 build first
            and the other ranks wait on a barrier (every rank must then call
            :meth:`get_or_build` for the same entries in the same order).
    """

    def __init__(self, cache_dir: str | None, distributed: bool = True) -> None:
        self.cache_dir = os.path.abspath(cache_dir) if cache_dir else None
        self.distributed = distributed

    def entry_dir(self, kind: str, description: Mapping[str, Any]) -> str:
        """Directory of the entry for ``description`` (exists only once built)."""
        if self.cache_dir is None:
            raise ValueError("this IndexCache has no cache_dir")
        if not kind.isidentifier():
            raise ValueError(f"cache kind must be an identifier, got {kind!r}")
        desc = {"format": CACHE_FORMAT_VERSION, "kind": kind, **description}
        return os.path.join(self.cache_dir, f"{kind}-{fingerprint(desc)[:24]}")

    def get_or_build(
        self,
        kind: str,
        description: Mapping[str, Any],
        build: Callable[[], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Load the arrays of ``description`` or build, store and return them.

        Args:
            kind: short name of the entry type (part of the directory name), e.g. ``"source"``.
            description: JSON-serializable dict of everything the arrays depend on.
            build: returns the arrays by name (names must be identifiers).

        Returns:
            The arrays by name, memory-mapped read-only when cached.
        """
        if self.cache_dir is None:
            return dict(build())
        path = self.entry_dir(kind, description)
        rank, world = _dist_rank_and_size() if self.distributed else (0, 1)
        if world > 1:
            import torch.distributed as dist

            result = self._get_or_build(path, description, build) if rank == 0 else None
            dist.barrier()
            return result if result is not None else self._get_or_build(path, description, build)
        return self._get_or_build(path, description, build)

    def load(self, kind: str, description: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The cached arrays of ``description``, or ``None`` when absent or incomplete."""
        if self.cache_dir is None:
            return None
        return self._load(self.entry_dir(kind, description))

    # -- internals ------------------------------------------------------------------------------

    def _get_or_build(self, path, description, build) -> dict[str, np.ndarray]:
        found = self._load(path)
        if found is not None:
            return found
        os.makedirs(self.cache_dir, exist_ok=True)
        with open(path + ".lock", "a+b") as lock:
            start = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                waited = time.monotonic() - start
                found = self._load(path)  # another process may have built it meanwhile
                if found is not None:
                    logger.info("index cache: loaded %s after waiting %.1fs", path, waited)
                    return found
                self._build(path, description, build)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        found = self._load(path)
        if found is None:  # pragma: no cover - only on a broken file system
            raise RuntimeError(f"{path}: cache entry did not load right after it was built")
        return found

    def _build(self, path, description, build) -> None:
        # An incomplete directory is the remains of a crashed build: start from scratch.
        if os.path.isdir(path):
            shutil.rmtree(path)
        start = time.monotonic()
        arrays = build()
        os.makedirs(path)
        listing = {}
        for name, array in arrays.items():
            if not name.isidentifier():
                raise ValueError(f"array name must be an identifier, got {name!r}")
            array = np.ascontiguousarray(array)
            with atomic_open(os.path.join(path, name + ".npy"), "wb") as f:
                np.save(f, array)
            listing[name] = {"shape": list(array.shape), "dtype": array.dtype.str}
            if _after_array_written is not None:
                _after_array_written(name)
        marker = {"arrays": listing, "description": description, "format": CACHE_FORMAT_VERSION}
        text = json.dumps(marker, sort_keys=True, indent=1, default=str).encode()
        atomic_write(os.path.join(path, _MARKER), text)
        logger.info("index cache: built %s in %.2fs", path, time.monotonic() - start)

    @staticmethod
    def _load(path: str) -> dict[str, np.ndarray] | None:
        marker = os.path.join(path, _MARKER)
        if not os.path.isfile(marker):
            return None
        try:
            with open(marker) as f:
                listing = json.load(f)["arrays"]
            out = {}
            for name, meta in listing.items():
                arr = np.load(os.path.join(path, name + ".npy"), mmap_mode="r")
                if list(arr.shape) != meta["shape"] or arr.dtype.str != meta["dtype"]:
                    raise ValueError(f"{name}.npy is {arr.dtype}{arr.shape}, marker says {meta}")
                out[name] = arr
            return out
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("index cache: %s is damaged (%s); rebuilding", path, exc)
            return None
