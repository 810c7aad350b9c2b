"""Refusing runs that would destroy their own inputs or publish a useless result.

:func:`check_outputs_not_inputs` runs before anything is written: an output file that is an input
(the same path, a symlink or hard link to it) or lies inside an input dataset directory would be
overwritten or corrupt the input. :func:`skip_mode_refusal` decides, at the end of an
``on_error="skip"`` run, whether so much was rejected that publishing the shards would hide a
wrong setting (wrong ``--json-keys``, wrong format) behind a zero exit code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


class OutputOverlapError(ValueError):
    """An output file would overwrite (or sit inside) an input."""


class RejectLimitError(ValueError):
    """Skip mode rejected too much (or wrote nothing); nothing was published."""


def shard_files(prefix: str) -> list[str]:
    """The files a shard prefix owns: ``.bin``, ``.idx`` and the ``.meta.json`` sidecar."""
    return [prefix + ".bin", prefix + ".idx", prefix + ".meta.json"]


def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_outputs_not_inputs(outputs: Iterable[str], inputs: Iterable[str], what: str) -> None:
    """Raise :class:`OutputOverlapError` if an output file is, or lies inside, an input.

    Args:
        outputs: every file the run may write (temporary names excluded: they are new).
        inputs: input files and dataset directories (``-``, standard input, is ignored).
        what: the tool's name for the message (``--output-prefix``).
    """
    ins = [p for p in inputs if p != "-"]
    dirs = [os.path.realpath(p) + os.sep for p in ins if os.path.isdir(p)]
    for out in outputs:
        real = os.path.realpath(out)
        for d in dirs:
            if real.startswith(d):
                raise OutputOverlapError(
                    f"{what}: output {out} would be written inside input directory {d[:-1]}"
                )
        for p in ins:
            if not os.path.isdir(p) and _same(out, p):
                raise OutputOverlapError(
                    f"{what}: output {out} is the input {p}; it would be overwritten "
                    "(choose another output prefix)"
                )


def skip_mode_refusal(
    records: int, documents: int, skipped: int, max_fraction: float
) -> str | None:
    """Why a skip-mode run must fail (None: it may publish).

    A run fails when it wrote no document, or when the rejected share of the records read is
    above ``max_fraction`` (1.0 disables that check).
    """
    if documents == 0:
        return f"no document was written ({records:,} records read, {skipped:,} rejected)"
    if records and skipped / records > max_fraction:
        return (
            f"{skipped:,} of {records:,} records rejected ({skipped / records:.1%}), more than "
            f"--max-reject-fraction {max_fraction:g}"
        )
    return None
