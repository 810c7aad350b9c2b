"""Data-mix schedules: per-source weights as functions of the global sample position.

A :class:`Schedule` names K sources (a name and a Megatron shard prefix each) and a list of knots.
Each knot sets every source's weight at one position of the run, given in samples (``at``) or as a
fraction of the run (``at_fraction``). Weights are normalized to sum to 1 at every knot, and the
interpolation between two knots (``linear``, ``cosine`` or ``step``) mixes the two normalized
vectors convexly, so the weights sum to 1 at every position, not only at the knots.

Outside the knots the weights are held constant: after the last knot at the last knot's weights,
and before the first knot (when it is not at 0) at the first knot's weights. The alternative for
the head, starting from zero weights, would leave the first positions with no source to draw from.

Constructing a schedule never touches the file system: shard files are checked only by
:meth:`Schedule.check_shards`, which the datasets call when they open the shards, so a schedule can
be built, validated, hashed and plotted on a machine that does not hold the data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatflow.data.indexed_dataset import missing_shard_files
from chatflow.data.schedule_file import parse_schedule_mapping
from chatflow.data.schedule_parts import (
    INTERPOLATIONS,
    PACKING_MODES,
    Knot,
    ScheduleError,
    Source,
    check_num_samples,
)
from chatflow.data.segment_table import SegmentTable, build_segment_table

__all__ = ["INTERPOLATIONS", "MAX_SOURCES", "Knot", "Schedule", "ScheduleError", "Source"]

MAX_SOURCES = 32767  # dataset_index is int16, as in megatron-core


@dataclass(frozen=True)
class Schedule:
    """Sources and knots of a data-mix schedule; validated on construction.

    Attributes:
        sources: the K sources, in the order of ``dataset_index`` values.
        knots: at least one knot; positions strictly increasing among knots of the same unit.
    """

    sources: tuple[Source, ...]
    knots: tuple[Knot, ...]
    origin: str = field(default="", compare=False)
    """Where the schedule came from (file name), for error messages only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "knots", tuple(self.knots))
        where = f"{self.origin}: " if self.origin else ""
        if not self.sources:
            raise ScheduleError(f"{where}schedule needs at least one source")
        if len(self.sources) > MAX_SOURCES:
            raise ScheduleError(
                f"{where}{len(self.sources)} sources; at most {MAX_SOURCES} fit the int16 "
                "dataset index"
            )
        seen: set[str] = set()
        for s in self.sources:
            if s.name in seen:
                raise ScheduleError(f"{where}duplicate source name {s.name!r}")
            seen.add(s.name)
        if not self.knots:
            raise ScheduleError(f"{where}schedule needs at least one knot")
        for j, k in enumerate(self.knots):
            if len(k.weights) != len(self.sources):
                raise ScheduleError(
                    f"{where}knots[{j}] has {len(k.weights)} weights for "
                    f"{len(self.sources)} sources"
                )
        for unit in ("at", "at_fraction"):
            pos = [
                (j, getattr(k, unit))
                for j, k in enumerate(self.knots)
                if getattr(k, unit) is not None
            ]
            for (j0, p0), (j1, p1) in itertools.pairwise(pos):
                if not p1 > p0:
                    raise ScheduleError(
                        f"{where}knots not increasing: knots[{j1}].{unit}={p1:g} <= "
                        f"knots[{j0}].{unit}={p0:g}"
                    )

    # ----------------------------------------------------------------------------- properties
    @property
    def names(self) -> tuple[str, ...]:
        """Source names in order."""
        return tuple(s.name for s in self.sources)

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Shard prefixes in source order."""
        return tuple(s.prefix for s in self.sources)

    @property
    def num_sources(self) -> int:
        """Number of sources K."""
        return len(self.sources)

    @property
    def is_constant(self) -> bool:
        """True when every knot has the same normalized weights (a static Megatron-style blend)."""
        return all(k.weights == self.knots[0].weights for k in self.knots)

    # ----------------------------------------------------------------------------- evaluation
    def knot_positions(self, num_samples: int) -> np.ndarray:
        """Knot positions in samples for a run of ``num_samples``; raises if not increasing."""
        check_num_samples(num_samples)
        t = np.array([k.resolve(num_samples) for k in self.knots], dtype=np.float64)
        bad = np.nonzero(np.diff(t) <= 0)[0]
        if len(bad):
            j = int(bad[0])
            raise ScheduleError(
                f"{self.origin + ': ' if self.origin else ''}knots not increasing for a run of "
                f"{num_samples} samples: knots[{j + 1}] ({self.knots[j + 1].position_text}) is "
                f"not after knots[{j}] ({self.knots[j].position_text})"
            )
        return t

    def weights_at(self, positions: Sequence[float] | np.ndarray, num_samples: int) -> np.ndarray:
        """Normalized weights at global sample positions.

        Args:
            positions: sample positions (may be fractional or beyond ``num_samples``).
            num_samples: length of the run, which places ``at_fraction`` knots.

        Returns:
            float64 array ``[len(positions), K]`` whose rows sum to 1.
        """
        x = np.asarray(positions, dtype=np.float64).reshape(-1)
        t = self.knot_positions(num_samples)
        w = np.array([k.weights for k in self.knots], dtype=np.float64)  # [J, K]
        out = np.empty((len(x), self.num_sources), dtype=np.float64)
        seg = np.searchsorted(t, x, side="right") - 1  # knot at or before x; -1 before the first
        head, tail = seg < 0, seg >= len(t) - 1
        out[head] = w[0]
        out[tail] = w[-1]
        for j in range(len(t) - 1):
            m = seg == j
            if not np.any(m):
                continue
            s = ((x[m] - t[j]) / (t[j + 1] - t[j]))[:, None]
            kind = self.knots[j].interpolation
            if kind == "step":
                out[m] = w[j]
            elif kind == "linear":
                out[m] = w[j] + (w[j + 1] - w[j]) * s
            else:
                out[m] = w[j] + (w[j + 1] - w[j]) * (0.5 - 0.5 * np.cos(np.pi * s))
        return out

    def segment_table(self, num_samples: int) -> SegmentTable:
        """The piecewise table of W_k for a run of ``num_samples`` (what the C++ builders take)."""
        return build_segment_table(
            self.knot_positions(num_samples),
            np.array([k.weights for k in self.knots], dtype=np.float64),
            [k.interpolation for k in self.knots],
        )

    def cumulative_weights(
        self, positions: Sequence[float] | np.ndarray, num_samples: int
    ) -> np.ndarray:
        """W_k(x): the integral of each source's normalized weight from 0 to x.

        This is the number of samples a source is owed after x positions; the blending builders
        compare the realized counts against it. Computed from the same segment table as the C++
        builders (see :meth:`segment_table`).
        """
        table = self.segment_table(num_samples)
        return table.cumulative(np.asarray(positions, dtype=np.float64))

    # ----------------------------------------------------------------------------- files
    def check_shards(self) -> None:
        """Raise :class:`ScheduleError` naming every source whose ``.bin``/``.idx`` is missing."""
        missing = [
            f"source {s.name!r}: {path} not found"
            for s in self.sources
            for path in missing_shard_files(s.prefix)
        ]
        if missing:
            where = f"{self.origin}: " if self.origin else ""
            raise ScheduleError(where + "missing shard files: " + "; ".join(missing))

    # ----------------------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form: the YAML format, resolved prefixes, weights as given."""
        knots = []
        for k in self.knots:
            d: dict[str, Any] = {"weights": dict(zip(self.names, k.given_weights))}
            d.update({"at": k.at} if k.at is not None else {"at_fraction": k.at_fraction})
            d["interpolation"] = k.interpolation
            knots.append(d)
        return {
            "sources": [
                {"name": s.name, "prefix": s.prefix}
                | ({"packing": s.packing} if s.packing is not None else {})
                for s in self.sources
            ],
            "knots": knots,
        }

    def fingerprint(self) -> str:
        """SHA-256 of everything that changes the blending indices.

        Covers source names and order, knot positions and units, normalized weights (exact float
        reprs) and interpolations. Shard prefixes are left out on purpose: moving the shards must
        not invalidate a cache; the datasets key shard identity separately.
        """
        d = self.to_dict()
        del d["sources"]
        d["names"] = list(self.names)
        for k, knot in zip(d["knots"], self.knots):
            k["weights"] = [repr(v) for v in knot.weights]
            for key in ("at", "at_fraction"):
                if key in k:
                    k[key] = repr(float(k[key]))
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    # ----------------------------------------------------------------------------- loaders
    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        base_dir: str = ".",
        data_root: str | None = None,
        origin: str = "",
    ) -> Schedule:
        """Build from the YAML structure (a mapping); see :meth:`from_yaml` for the format.

        Args:
            d: the parsed YAML document.
            base_dir: directory that a relative ``data_root`` in ``d`` resolves against.
            data_root: overrides ``d['data_root']``; relative to the current directory.
            origin: file name for error messages.
        """
        sources, knots = parse_schedule_mapping(
            d, base_dir=base_dir, data_root=data_root, origin=origin
        )
        return cls(sources, knots, origin=origin)

    @classmethod
    def from_yaml(cls, path: str, *, data_root: str | None = None) -> Schedule:
        """Load a schedule YAML file (format in docs/schedule.md); errors name the file and field.

        Relative shard prefixes resolve against ``data_root`` (this argument, else the file's
        ``data_root`` field taken relative to the file, else the file's directory).
        """
        import yaml  # local: only loading needs PyYAML

        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
        except OSError as e:
            raise ScheduleError(f"{path}: cannot read schedule: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ScheduleError(f"{path}: invalid YAML: {e}") from None
        base = os.path.dirname(os.path.abspath(path))
        sources, knots = parse_schedule_mapping(
            doc, base_dir=base, data_root=data_root, origin=path
        )
        return cls(sources, knots, origin=path)

    @classmethod
    def from_data_path(cls, data_path: Sequence[str]) -> Schedule:
        """A constant schedule from Megatron's ``--data-path [w1] p1 [w2 p2 ...]``.

        Accepts a single prefix without a weight, or alternating weight/prefix pairs. Source
        names are the prefixes' base names (made unique with ``#i`` suffixes when they repeat).
        A prefix may end in ``:packing=windows`` or ``:packing=conversations`` to set that
        source's packing (default: by whether it has a loss-mask shard).
        """
        items = [str(v) for v in data_path]
        if not items:
            raise ScheduleError("--data-path: empty")
        if len(items) == 1:
            weights, prefixes = [1.0], items
        else:
            if len(items) % 2:
                raise ScheduleError(
                    f"--data-path: expected weight/prefix pairs, got {len(items)} items"
                )
            weights, prefixes = [], []
            for i in range(0, len(items), 2):
                try:
                    weights.append(float(items[i]))
                except ValueError:
                    raise ScheduleError(
                        f"--data-path item {i}: expected a weight before prefix "
                        f"{items[i + 1]!r}, got {items[i]!r}"
                    ) from None
                prefixes.append(items[i + 1])
        prefixes, packings = _split_packing_suffixes(prefixes)
        names: list[str] = []
        for i, p in enumerate(prefixes):
            base = os.path.basename(p.rstrip("/")) or p
            names.append(base if base not in names else f"{base}#{i}")
        sources = tuple(Source(n, p, k) for n, p, k in zip(names, prefixes, packings))
        return cls(sources, (Knot(weights=tuple(weights), at=0),), origin="--data-path")


_PACKING_SUFFIX = ":packing="


def _split_packing_suffixes(prefixes: list[str]) -> tuple[list[str], list[str | None]]:
    """``prefix[:packing=MODE]`` items -> prefixes and packings (``None`` where not given)."""
    out, packings = [], []
    for p in prefixes:
        head, sep, mode = p.rpartition(_PACKING_SUFFIX)
        if not sep:
            out.append(p)
            packings.append(None)
            continue
        if mode not in PACKING_MODES or not head:
            raise ScheduleError(
                f"--data-path {p!r}: packing must be one of {PACKING_MODES} "
                f"(as {head or 'PREFIX'}{_PACKING_SUFFIX}conversations), got {mode!r}"
            )
        out.append(head)
        packings.append(mode)
    return out, packings
