"""The parts a data-mix schedule is made of: sources, knots, and the error they raise.

They sit below :mod:`chatflow.data.schedule` so that the schedule file parser
(:mod:`chatflow.data.schedule_file`) can build them without importing the schedule itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INTERPOLATIONS = ("linear", "cosine", "step")
#: Per-source sample layouts (see chatflow.data.packing); ``None`` on a source picks the default.
PACKING_MODES = ("windows", "conversations")


class ScheduleError(ValueError):
    """An invalid schedule; the message names the file (if any), the field and the problem."""


@dataclass(frozen=True)
class Source:
    """One data source of the blend.

    Attributes:
        name: unique identifier used in knots and logs (e.g. ``zh_text``).
        prefix: Megatron shard prefix (path without ``.bin``/``.idx``).
        packing: ``windows`` (fixed windows across documents, Megatron's) or ``conversations``
            (whole documents per sample, padded); ``None``: ``conversations`` when the shard has
            a loss-mask shard, else ``windows`` (decided when the dataset opens the shard).
    """

    name: str
    prefix: str
    packing: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ScheduleError(f"source name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ScheduleError(f"source {self.name!r}: prefix must be a non-empty string")
        if self.packing is not None and self.packing not in PACKING_MODES:
            raise ScheduleError(
                f"source {self.name!r}: packing must be one of {PACKING_MODES}, "
                f"got {self.packing!r}"
            )


@dataclass(frozen=True)
class Knot:
    """The source weights at one position of the run.

    Attributes:
        weights: one non-negative weight per source, in source order; normalized on construction.
        given_weights: the weights as given, before normalization. ``to_dict`` saves these, so
            ``Schedule.from_dict(to_dict())`` normalizes the same numbers and rebuilds the same
            floats (normalizing already-normalized weights can move one by an ulp).
        at: position in samples (exclusive with ``at_fraction``).
        at_fraction: position as a fraction of the run's sample count, in [0, 1].
        interpolation: how the weights move from this knot to the next one (``linear``,
            ``cosine`` or ``step``); ignored on the last knot.
    """

    weights: tuple[float, ...]
    at: float | None = None
    at_fraction: float | None = None
    interpolation: str = "linear"
    given_weights: tuple[float, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.at is None) == (self.at_fraction is None):
            raise ScheduleError("knot needs exactly one of 'at' (samples) or 'at_fraction'")
        if self.at is not None and not (is_number(self.at) and self.at >= 0):
            raise ScheduleError(f"knot 'at' must be a finite number >= 0, got {self.at!r}")
        if self.at_fraction is not None and not (
            is_number(self.at_fraction) and 0.0 <= self.at_fraction <= 1.0
        ):
            raise ScheduleError(f"knot 'at_fraction' must be in [0, 1], got {self.at_fraction!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ScheduleError(
                f"knot interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0:
            raise ScheduleError("knot weights must be a non-empty list")
        if not np.all(np.isfinite(w)):
            raise ScheduleError(f"knot weights must be finite, got {list(self.weights)}")
        if np.any(w < 0):
            raise ScheduleError(f"negative weight in knot at {self.position_text}: {list(w)}")
        total = np.sum(w)
        if not total > 0:
            raise ScheduleError(f"all weights are zero in knot at {self.position_text}")
        # Same arithmetic as megatron-core's utils.normalize, so a constant schedule hands the
        # C++ builder bit-identical weights to the ones megatron-core would use.
        object.__setattr__(self, "given_weights", tuple(w.tolist()))
        object.__setattr__(self, "weights", tuple((w / total).tolist()))

    @property
    def position_text(self) -> str:
        """Human-readable position for error messages."""
        return f"{self.at:g} samples" if self.at is not None else f"fraction {self.at_fraction:g}"

    def resolve(self, num_samples: int) -> float:
        """Position in samples for a run of ``num_samples`` samples."""
        return float(self.at) if self.at is not None else float(self.at_fraction) * num_samples


def is_number(v: Any) -> bool:
    """True for a finite int or float (numpy scalars included), not a bool."""
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, bool)
        and math.isfinite(v)
    )


def check_num_samples(num_samples: int) -> None:
    """Raise :class:`ScheduleError` unless ``num_samples`` is an integer >= 0."""
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, (int, np.integer))
        or num_samples < 0
    ):
        raise ScheduleError(f"num_samples must be an integer >= 0, got {num_samples!r}")
