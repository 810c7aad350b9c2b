"""Atomic output helpers: a failed write never replaces or truncates the previous file."""

import os

import pytest

from chatflow.fileio import atomic_open, atomic_write

pytestmark = pytest.mark.unit


def test_atomic_write_text_and_bytes(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write(str(path), "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    atomic_write(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["out.txt"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write(str(path), "old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "w") as f:
            f.write("half of the new")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_append_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(str(tmp_path / "x"), "a"):
            pass
