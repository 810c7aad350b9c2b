"""Atomic file output: every file ChatFlow writes appears whole or not at all.

Write to a temporary name in the same directory, flush and fsync, then ``os.replace`` onto the
final name (atomic on POSIX filesystems) and fsync the directory so the rename itself survives a
power loss. A crash at any point leaves either the previous file or none, never a half file that
looks complete; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO


def fsync_dir(path: str) -> None:
    """Flush a directory entry (a rename or a new file) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: str) -> str:
    """A temporary name beside ``path``, unique per process (``<path>.tmp<pid>``)."""
    return f"{path}.tmp{os.getpid()}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open ``path`` for writing through a temporary file that replaces it on success.

    Args:
        path: final file name; its directory is created if missing.
        mode: ``"w"`` or ``"wb"`` (plus open()'s keyword arguments, e.g. ``encoding``).
    """
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"{path}: atomic_open writes whole files, mode {mode!r} is not allowed")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def atomic_write(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    if isinstance(data, str):
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(data)
    else:
        with atomic_open(path, "wb") as f:
            f.write(data)
