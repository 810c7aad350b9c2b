"""The schedule file format: a parsed YAML mapping -> the sources and knots of a schedule.

:meth:`chatflow.data.schedule.Schedule.from_dict` and ``from_yaml`` call this parser and
construct the schedule from its result, so this module needs only the schedule's parts.

Every error names the file (``origin``) and the field, e.g.
``s.yaml: knots[1].weights: unknown source name 'zh'``. The format is documented in
docs/schedule.md ("Schedule files").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from chatflow.data.schedule_parts import PACKING_MODES, Knot, ScheduleError, Source, is_number

_TOP_KEYS = {"data_root", "interpolation", "sources", "knots"}
_KNOT_KEYS = {"at", "at_fraction", "weights", "interpolation"}
_SOURCE_KEYS = {"name", "prefix", "packing"}


def parse_schedule_mapping(
    doc: Any, *, base_dir: str, data_root: str | None, origin: str
) -> tuple[tuple[Source, ...], tuple[Knot, ...]]:
    """Parse the YAML document structure into ``(sources, knots)``, naming fields in errors.

    The schedule-level checks (unique names, increasing knots) run when the caller builds the
    :class:`~chatflow.data.schedule.Schedule` from the result.
    """
    where = f"{origin}: " if origin else ""

    def fail(msg: str) -> ScheduleError:
        return ScheduleError(where + msg)

    if not isinstance(doc, Mapping):
        raise fail("expected a mapping with 'sources' and 'knots'")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown field(s) {sorted(unknown)}; expected {sorted(_TOP_KEYS)}")
    if data_root is not None:
        root = os.path.abspath(data_root)
    elif doc.get("data_root") is not None:
        if not isinstance(doc["data_root"], str):
            raise fail("field 'data_root' must be a string")
        root = os.path.normpath(os.path.join(base_dir, doc["data_root"]))
    else:
        root = base_dir
    default_interp = doc.get("interpolation", "linear")

    raw_sources = doc.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise fail("field 'sources' must be a non-empty list of {name, prefix}")
    sources = []
    for i, s in enumerate(raw_sources):
        if not isinstance(s, Mapping) or not {"name", "prefix"} <= set(s) <= _SOURCE_KEYS:
            raise fail(
                f"sources[{i}] must have the fields 'name' and 'prefix' (and optionally 'packing')"
            )
        if not isinstance(s["prefix"], str) or not s["prefix"]:
            raise fail(f"sources[{i}].prefix must be a non-empty string")
        packing = s.get("packing")
        if packing is not None and packing not in PACKING_MODES:
            raise fail(f"sources[{i}].packing must be one of {PACKING_MODES}, got {packing!r}")
        try:
            sources.append(Source(str(s["name"]), os.path.join(root, s["prefix"]), packing))
        except ScheduleError as e:
            raise fail(f"sources[{i}]: {e}") from None
    names = [s.name for s in sources]

    raw_knots = doc.get("knots")
    if not isinstance(raw_knots, list) or not raw_knots:
        raise fail("field 'knots' must be a non-empty list")
    knots = []
    for j, k in enumerate(raw_knots):
        if not isinstance(k, Mapping):
            raise fail(f"knots[{j}] must be a mapping")
        unknown = set(k) - _KNOT_KEYS
        if unknown:
            raise fail(
                f"knots[{j}]: unknown field(s) {sorted(unknown)}; expected {sorted(_KNOT_KEYS)}"
            )
        w = k.get("weights")
        if not isinstance(w, Mapping) or not w:
            raise fail(f"knots[{j}].weights must be a mapping {{source name: weight}}")
        for name, v in w.items():
            if name not in names:
                raise fail(f"knots[{j}].weights: unknown source name {name!r}; known: {names}")
            if not is_number(v):
                raise fail(f"knots[{j}].weights.{name}: expected a number, got {v!r}")
        # Sources a knot leaves out weigh 0 there: knots list only the sources that matter.
        weights = tuple(float(w.get(n, 0.0)) for n in names)
        try:
            knots.append(
                Knot(
                    weights=weights,
                    at=k.get("at"),
                    at_fraction=k.get("at_fraction"),
                    interpolation=k.get("interpolation", default_interp),
                )
            )
        except ScheduleError as e:
            raise fail(f"knots[{j}]: {e}") from None
    return tuple(sources), tuple(knots)
