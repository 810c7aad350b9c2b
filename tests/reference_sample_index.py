"""Slow pure-Python references of csrc/sample_index.cpp, for differential tests.

Everything here is written from the contract in csrc/sample_index.h, one element at a time with
Python integers (no numpy arithmetic that could hide an overflow), so it also checks int64 sizes.
"""

from __future__ import annotations

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def derive_state(seed: int, stream: int, index: int) -> int:
    return mix64(mix64(seed + stream * GOLDEN) + index * GOLDEN)


class SplitMix64:
    def __init__(self, seed: int, stream: int, index: int) -> None:
        self.state = derive_state(seed, stream, index)

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK
        return mix64(self.state)

    def below(self, bound: int) -> int:
        threshold = (1 << 64) % bound
        r = self.next()
        while r < threshold:
            r = self.next()
        return r % bound


def shuffled(values: list[int], seed: int, stream: int, index: int) -> list[int]:
    out = list(values)
    rng = SplitMix64(seed, stream, index)
    for i in range(len(out) - 1, 0, -1):
        j = rng.below(i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def build_document_index(doc_ids: list[int], num_epochs: int, seed: int) -> list[int]:
    out: list[int] = []
    for e in range(num_epochs):
        out += shuffled(list(doc_ids), seed, 1, e)
    return out


def build_sample_index(
    sizes: list[int], doc_index: list[int], seq_length: int, num_samples: int, extra: int = 1
) -> list[tuple[int, int]]:
    """Walk the concatenated token stream; sample s starts at token s * seq_length."""
    rows = [(0, 0)]
    pos, offset = 0, 0  # where the previous sample started
    for _ in range(num_samples):
        # The next sample starts seq_length tokens later. A start that falls exactly on the end of
        # a document stays there (offset == size) only when it is also the last token read, i.e.
        # the window's extra token is that document's last; otherwise it moves to the next doc.
        need = seq_length + extra  # tokens this window covers from its start
        while True:
            left = sizes[doc_index[pos]] - offset
            if need <= left:
                offset += need - extra
                break
            need -= left
            pos += 1
            offset = 0
        rows.append((pos, offset))
    return rows


def build_shuffle_index(num_samples: int, block: int, seed: int) -> list[int]:
    num_blocks = -(-num_samples // block)
    out: list[int] = []
    for b in range(num_blocks):
        out += shuffled(list(range(b * block, (b + 1) * block)), seed, 2, b)
    return out


def split_documents(num_documents: int, valid_fraction: float, seed: int):
    n_valid = round(valid_fraction * num_documents)
    if valid_fraction > 0 and n_valid == 0 and num_documents >= 2:
        n_valid = 1
    order = shuffled(list(range(num_documents)), seed, 3, 0)
    return sorted(order[n_valid:]), sorted(order[:n_valid])
