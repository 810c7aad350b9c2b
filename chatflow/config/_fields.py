"""Helpers shared by the config dataclasses: command-line flag metadata and field docstrings."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
from typing import Any, TypeVar

T = TypeVar("T")


def flag(name: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field carrying its command-line flag (Megatron's name where one exists).

    The ``help`` metadata is filled from the field's docstring by :func:`documented`.
    """
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"flag": name}, **kwargs)


def field_docs(cls: type) -> dict[str, str]:
    """Returns ``{field name: docstring}`` from the string literals under each annotated field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def documented(cls: T) -> T:
    """Class decorator: copies each field's docstring into its ``metadata["help"]``.

    So the trainer's argparse and a reader of the source see the same text, written once.
    """
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring")
        f.metadata = types.MappingProxyType({**f.metadata, "help": docs[f.name]})
    return cls


def require(condition: bool, field_name: str, message: str) -> None:
    """Raises ``ValueError("<field>: <message>")`` when ``condition`` is false."""
    if not condition:
        raise ValueError(f"{field_name}: {message}")
