"""Slow pure-Python reference of csrc/packing.cpp (the contract in csrc/packing.h).

Written one element at a time with Python lists; first-fit scans the open bins linearly instead of
the C++ segment tree, so the two agree only if both implement the same rule.
"""

from __future__ import annotations

import reference_sample_index as ref

STREAM_PACKING = 4


def cut_document(size, points, capacity, chunk_long_turns, stats):
    """The pieces (start, len) of one sequence; stats = [splits, truncations, dropped, tokens]."""
    pieces = []
    s = 0
    while s < size:
        if size - s <= capacity:
            pieces.append((s, size - s))
            break
        inside = [p for p in points if s < p <= s + capacity]
        if inside:
            pieces.append((s, inside[-1] - s))
            stats[0] += 1
            s = inside[-1]
            continue
        pieces.append((s, capacity))
        if chunk_long_turns:
            stats[0] += 1
            s += capacity
        else:
            later = [p for p in points if p > s]
            end = later[0] if later else size
            stats[1] += 1
            stats[2] += end - (s + capacity)
            s = end
    return pieces


def build_packing(sizes, doc_ids, points_of, capacity, min_bins, seed, chunk_long_turns):
    """Returns (bins, epoch_bins, epoch_stats): bins = list of [(doc, start, len), ...]."""
    bins: list[list[tuple[int, int, int]]] = []
    epoch_bins = [0]
    epoch_stats = []
    e = 0
    while len(bins) < min_bins:
        order = ref.shuffled(list(doc_ids), seed, STREAM_PACKING, e)
        stats = [0, 0, 0, 0]
        epoch: list[list[tuple[int, int, int]]] = []
        room: list[int] = []
        for d in order:
            for start, length in cut_document(
                sizes[d], points_of[d], capacity, chunk_long_turns, stats
            ):
                for b in range(len(epoch)):
                    if room[b] >= length:
                        break
                else:
                    epoch.append([])
                    room.append(capacity)
                    b = len(epoch) - 1
                epoch[b].append((d, start, length))
                room[b] -= length
                stats[3] += length
        if not epoch:
            raise ValueError("no tokens")
        bins += epoch
        epoch_bins.append(len(bins))
        epoch_stats.append(stats)
        e += 1
    return bins, epoch_bins, epoch_stats
