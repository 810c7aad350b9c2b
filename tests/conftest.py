"""Shared fixtures: the shipped demo tokenizer, the embedded sample corpus, tool runners.

Also the test tiers (``_tier_guard``): each test is marked unit, dist or gpu, and only dist tests
may start processes or process groups.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType

import pytest

# The tier hooks: pytest picks up hook functions found in a conftest module's namespace.
from _tier_guard import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)

pytest_plugins = ["pytester"]  # tests/test_tier_guard.py runs the hooks in an inner session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_TOKENIZER = os.path.join(ROOT, "examples", "tokenizer", "chatflow_demo.model")
BILINGUAL_32K = os.path.join(ROOT, "examples", "tokenizer", "bilingual_32k.model")
SAMPLE_DATA = os.path.join(ROOT, "examples", "data")


@pytest.fixture(scope="session")
def demo_tokenizer_path() -> str:
    """Path of the shipped LLaMA-style demo sentencepiece model."""
    assert os.path.isfile(DEMO_TOKENIZER), f"{DEMO_TOKENIZER} is missing"
    return DEMO_TOKENIZER


@pytest.fixture(scope="session")
def bilingual_32k_path() -> str:
    """Path of the shipped LLaMA-style 32k-piece bilingual model (``make tokenizer-32k``)."""
    assert os.path.isfile(BILINGUAL_32K), f"{BILINGUAL_32K} is missing"
    return BILINGUAL_32K


@pytest.fixture
def single_process():
    """megatron-core parallel state over a 1-process gloo group, with the CPU patches (``dist``)."""
    import megatron_patches
    from chatflow import parallel
    from chatflow.config import ParallelConfig

    megatron_patches.apply(cuda_available=False)
    try:
        yield parallel.initialize(ParallelConfig(), seed=3)
    finally:
        parallel.destroy()
        megatron_patches.revert()


@pytest.fixture(scope="session")
def demo_tokenizer(demo_tokenizer_path):
    """The demo model wrapped in :class:`chatflow.tokenizer.Tokenizer`."""
    from chatflow.tokenizer import Tokenizer

    return Tokenizer(demo_tokenizer_path)


@pytest.fixture(scope="session")
def sample_data_dir() -> str:
    """Directory of the embedded sample corpus (zh_text, en_text, parallel, instruct .jsonl)."""
    return SAMPLE_DATA


def run_tool(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tools/<name>.py`` in a subprocess with this interpreter; returns the result."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
    return res


def load_tool(name: str) -> ModuleType:
    """The entry point module ``chatflow.cli.<name>`` of ``tools/<name>.py``, to call its
    ``main(argv)`` in-process (fast)."""
    return importlib.import_module(f"chatflow.cli.{name}")


def call_tool(name: str, *args, capsys) -> tuple[int, str, str]:
    """Run a tool's ``main`` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = load_tool(name).main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def encode_segments_oracle(model_path: str, texts: list[str]) -> list[list[int]]:
    """Reference ids of a record's segments, from sentencepiece directly: the first segment as
    the start of a document (dummy prefix), each later one as its continuation (the same model
    with ``add_dummy_prefix`` off), as the instruction template's text is one string."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with open(model_path, "rb") as f:
        proto = sentencepiece_model_pb2.ModelProto.FromString(f.read())
    start = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    proto.normalizer_spec.add_dummy_prefix = False
    cont = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    return [(start if i == 0 else cont).encode(t) for i, t in enumerate(texts)]
