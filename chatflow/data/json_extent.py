"""Finding where a JSON value ends without building it, whatever it holds.

The array reader (:mod:`chatflow.data.json_reader`) only needs each element's extent; its value is
parsed later, in a worker, by :func:`chatflow.data.jsonl_reader.parse_line`, which rejects what
is wrong with it (deep nesting, huge integers, duplicate keys...) as one bad record. So the
extent must be found even for such elements: :data:`SCANNER` is a decoder whose hooks discard
numbers and objects (no int-conversion limit, no dict building), and :func:`deep_value_end` is an
iterative fallback for nesting too deep for the recursive parser.
"""

from __future__ import annotations

import json


def _discard(_value) -> None:
    return None


#: ``SCANNER.raw_decode(s, pos)[1]`` is where the value at ``pos`` ends.
SCANNER = json.JSONDecoder(
    parse_int=_discard, parse_float=_discard, parse_constant=_discard, object_pairs_hook=_discard
)


def deep_value_end(s: str, pos: int) -> int:
    """End of the array/object starting at ``s[pos]`` by bracket counting (strings honoured), or
    -1 when it runs past the end of ``s``. Not a validator: the worker parses the element."""
    depth = 0
    i, n = pos, len(s)
    while i < n:
        c = s[i]
        if c == '"':
            i += 1
            while i < n and s[i] != '"':
                i += 2 if s[i] == "\\" else 1
            if i >= n:
                return -1
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1
