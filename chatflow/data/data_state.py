"""The data state of a checkpoint: what resuming the data exactly needs.

:class:`DataState` holds the consumed-sample count, the run's schedule segments and each source's
consumed count. Resuming with a changed schedule appends a segment at the consumed count (see
:mod:`chatflow.data.blended_dataset`); :meth:`DataState.verify` checks that the rebuilt blend
reproduces what was trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from chatflow.data.blended_dataset import DynamicBlendedDataset, Segment
from chatflow.data.schedule import Schedule

logger = logging.getLogger(__name__)

DATA_STATE_VERSION = 1


@dataclass
class DataState:
    """The data part of a checkpoint (JSON-serializable through :meth:`to_dict`).

    Attributes:
        consumed_samples: global samples trained on.
        segments: the run's schedule segments, as dicts ``{start, num_samples, schedule}`` with
            ``schedule`` in :meth:`Schedule.to_dict` form.
        source_counts: samples consumed from each source, by name (a check on resume).
        invariants: the config fields that fix every source's sample order; changing one of them
            on resume would silently change which samples were already seen.
    """

    consumed_samples: int
    segments: list[dict[str, Any]]
    source_counts: dict[str, int] = field(default_factory=dict)
    invariants: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {self.consumed_samples}")
        if not self.segments:
            raise ValueError("data state: no schedule segments")

    @classmethod
    def capture(cls, dataset: DynamicBlendedDataset, consumed_samples: int) -> DataState:
        """The state of ``dataset`` after ``consumed_samples`` global samples."""
        segments = [
            {
                "start": s.start,
                "num_samples": s.num_samples,
                "schedule": s.schedule.to_dict(),
                "fingerprint": s.schedule.fingerprint(),
            }
            for s in dataset.segments
        ]
        return cls(
            consumed_samples,
            segments,
            dataset.source_counts(consumed_samples),
            _invariants(dataset),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the checkpoint."""
        return {
            "version": DATA_STATE_VERSION,
            "consumed_samples": self.consumed_samples,
            "segments": self.segments,
            "source_counts": dict(self.source_counts),
            "invariants": dict(self.invariants),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataState:
        """Inverse of :meth:`to_dict`; errors name the missing field."""
        if d.get("version") != DATA_STATE_VERSION:
            raise ValueError(
                f"data state: version {d.get('version')!r}, expected {DATA_STATE_VERSION}"
            )
        for key in ("consumed_samples", "segments", "source_counts"):
            if key not in d:
                raise ValueError(f"data state: missing field {key!r}")
        return cls(
            int(d["consumed_samples"]),
            list(d["segments"]),
            {str(k): int(v) for k, v in d["source_counts"].items()},
            dict(d.get("invariants", {})),
        )

    def saved_segments(self) -> list[Segment]:
        """The segments of the saved run."""
        return [
            Segment(int(s["start"]), schedule_from_state(s), int(s["num_samples"]))
            for s in self.segments
        ]

    def segments_for(self, schedule: Schedule | None, num_samples: int) -> list[Segment]:
        """The run plan to resume with ``schedule`` (``None``: keep the saved one) for a run of
        ``num_samples``.

        Segments that started before ``consumed_samples`` are kept (they produced what was
        trained); if the schedule or the run length changed, a new segment starts at
        ``consumed_samples``. A schedule that differs only in shard prefixes (moved data) replaces
        the last one without a new segment.
        """
        saved = self.saved_segments()
        m = self.consumed_samples
        kept = [s for s in saved if s.start < m] if m > 0 else []
        if not kept:
            return [Segment(0, schedule or saved[0].schedule, num_samples)]
        last = kept[-1]
        new = schedule or last.schedule
        if m > last.num_samples:
            raise ValueError(
                f"data state: {m} samples consumed but the saved run had {last.num_samples}"
            )
        if new.fingerprint() == last.schedule.fingerprint() and num_samples == last.num_samples:
            kept[-1] = Segment(last.start, new, last.num_samples)
            return kept
        logger.info("data: new schedule segment from sample %d (run of %d samples)", m, num_samples)
        return kept + [Segment(m, new, num_samples)]

    def verify(self, dataset: DynamicBlendedDataset) -> None:
        """Raise RuntimeError unless ``dataset`` drew the saved per-source counts up to the
        consumed position (i.e. the rebuilt blend reproduces what was trained)."""
        now = _invariants(dataset)
        changed = {
            k: (v, now.get(k))
            for k, v in self.invariants.items()
            if k != "packing" and now.get(k) != v
        }
        if changed:
            raise RuntimeError(
                "data state: settings that fix the sample order changed since the checkpoint "
                f"(setting: (saved, now)) {changed}; keep them to resume"
            )
        # A source's packing fixes what its sample j is; sources added or dropped are fine.
        current = set(dataset.segments[-1].schedule.names)
        saved_packing, now_packing = self.invariants.get("packing", {}), now["packing"]
        repacked = {
            n: (p, now_packing[n])
            for n, p in saved_packing.items()
            if n in current and n in now_packing and now_packing[n] != p
        }
        if repacked:
            raise RuntimeError(
                f"data state: source packing changed since the checkpoint (source: (saved, now)) "
                f"{repacked}; keep it to resume, or rename the source to start its order afresh"
            )
        got = dataset.source_counts(self.consumed_samples)
        names = set(got) | set(self.source_counts)
        diff = {
            n: (self.source_counts.get(n, 0), got.get(n, 0))
            for n in sorted(names)
            if self.source_counts.get(n, 0) != got.get(n, 0)
        }
        if diff:
            raise RuntimeError(
                "data state: the rebuilt blend does not reproduce the trained samples "
                f"(source: (saved, rebuilt) counts) {diff}"
            )


def schedule_from_state(segment: dict[str, Any]) -> Schedule:
    """Rebuild a segment's schedule from its checkpoint form.

    ``Schedule.to_dict`` keeps the weights as given, so ``from_dict`` rebuilds the same
    normalized floats; a fingerprint mismatch means another ChatFlow version wrote the state.
    """
    schedule = Schedule.from_dict(segment["schedule"], origin="checkpoint")
    saved_fp = segment.get("fingerprint")
    if saved_fp is not None and saved_fp != schedule.fingerprint():
        logger.warning(
            "data state: the schedule of the segment starting at %s does not rebuild to the "
            "same fingerprint (saved by another ChatFlow version?); verify() checks the blend",
            segment.get("start"),
        )
    return schedule


def _invariants(dataset: DynamicBlendedDataset) -> dict[str, Any]:
    c = dataset.config
    return {
        "seed": c.seed,
        "seq_length": c.seq_length,
        "valid_fraction": c.valid_fraction,
        "shuffle_block": c.shuffle_block,
        "exact_blend": c.exact_blend,
        "packing": dict(zip(dataset.names, dataset.packings)),
    }
