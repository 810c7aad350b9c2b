"""Accounting for chat repairs and unused fields during preprocessing.

Workers note, per block, which records were repaired (:class:`ChatBlockAudit`, carried back in
the block's result) and which present fields their schema did not read. The main process folds the
blocks in input order (:class:`ChatRunAudit`), so counts, "first seen at" locations and the
rejects-file entries are the same for any worker count.

In ``--on-error skip`` mode each repaired record is also written to the rejects file, with its
original bytes, so users can audit what was changed. Such an entry has ``"repaired"`` (the repair
kinds) and ``"details"`` instead of ``"error"``: the record was repaired and kept, not dropped.
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass, field

from chatflow.data.chat_schemas import ParsedRecord

logger = logging.getLogger(__name__)


@dataclass
class ChatBlockAudit:
    """What the instruction records of one block needed (built in a worker)."""

    repaired: list[tuple[int, tuple[str, ...], tuple[str, ...], bytes]] = field(
        default_factory=list
    )
    """``(line, repair kinds, details, raw record)`` of every repaired record, in order."""
    unused: dict[str, list[int]] = field(default_factory=dict)
    """Unused field -> ``[first line, records with it]``."""

    def add(self, line: int, parsed: ParsedRecord, raw: bytes) -> None:
        """Note one accepted record."""
        if parsed.repairs:
            self.repaired.append((line, parsed.repairs, parsed.details, raw))
        for name in parsed.unused:
            seen = self.unused.get(name)
            if seen is None:
                self.unused[name] = [line, 1]
            else:
                seen[1] += 1


@dataclass
class ChatRunAudit:
    """Block audits folded in input order (main process)."""

    repairs: collections.Counter = field(default_factory=collections.Counter)
    """Repair kind -> times applied."""
    repaired_records: int = 0
    """Records with at least one repair."""
    unused: dict[str, dict] = field(default_factory=dict)
    """Unused field -> ``{"field", "file", unit, "count"}`` (first occurrence in input order)."""

    def take(self, path: str, unit: str, block: ChatBlockAudit) -> None:
        """Fold one block's audit (blocks must come in input order)."""
        for _, kinds, _, _ in block.repaired:
            self.repairs.update(kinds)
        self.repaired_records += len(block.repaired)
        for name, (line, count) in block.unused.items():
            entry = self.unused.get(name)
            if entry is None:
                self.unused[name] = {"field": name, "file": path, unit: line, "count": count}
            else:
                entry["count"] += count

    def report(self) -> list[dict]:
        """Log each unused field once; returns the entries, sorted by field name."""
        entries = [self.unused[k] for k in sorted(self.unused)]
        for e in entries:
            where = next(f"{e['file']}:{v}" if k == "line" else f"{e['file']} {k} {v}"
                         for k, v in e.items() if k not in ("field", "file", "count"))  # fmt: skip
            logger.warning(
                "field %r is not used by its chat schema and was left out of %d record(s) "
                "(first at %s)", e["field"], e["count"], where,
            )  # fmt: skip
        return entries


def repaired_entry(
    path: str, unit: str, line: int, kinds: tuple[str, ...], details: tuple[str, ...], raw: bytes
) -> str:
    """A rejects-file line for a record that was repaired and kept (see the module docstring)."""
    entry = {"file": path, unit: line, "repaired": list(kinds), "details": list(details),
             "text": raw.decode("utf-8")}  # fmt: skip
    return json.dumps(entry, ensure_ascii=False) + "\n"
