"""Metrics of packed sources: real-token throughput with padding beside it, padding fields."""

from __future__ import annotations

import pytest

from chatflow.metrics import packed_throughput, padding_metrics

pytestmark = pytest.mark.unit


def test_packed_throughput_counts_real_tokens():
    t = packed_throughput(4096, 1024, 2.0, flops_per_token=1e9, world_size=2, peak_tflops=1.0)
    assert t.tokens_per_s == 1536 and t.padding_tokens_per_s == 512
    # The device computes every position: TFLOP/s and MFU count the padding too.
    assert t.tflops_per_device == pytest.approx(1.024) and t.mfu == pytest.approx(1.024)


def test_padding_metrics():
    packing = {
        "text": {"padding_share": 0.0, "splits": 0, "truncations": 0, "packed": False},
        "chat": {"padding_share": 0.2, "splits": 5, "truncations": 2, "packed": True},
    }
    got = padding_metrics({"text": 0, "chat": 30}, {"text": 6, "chat": 4, "gone": 0}, 10, packing)
    assert got["padding_share"] == pytest.approx(30 / 100)
    assert got["source_padding_share"] == {"text": 0.0, "chat": 0.75, "gone": None}
    assert got["source_splits"] == {"chat": 5} and got["source_truncations"] == {"chat": 2}
