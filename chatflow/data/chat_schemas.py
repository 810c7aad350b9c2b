"""Instruction and chat schemas: one JSON record in, one normalized conversation out.

Public corpora ship chats in a handful of layouts. Each is read into the same
:class:`Conversation` (an optional system text and turns that alternate user/assistant, starting
with a user turn and ending with an assistant turn), which :mod:`chatflow.data.templates` renders.
This module knows nothing about templates or tokens, so a change in how segments are tokenized
never touches it; the same schemas feed tokenizer training (:func:`schema_texts`).

Schemas (``ChatSchemaConfig.schema``; ``auto`` picks the first whose field is present, in this
order, :data:`DETECTION_ORDER`):

1. ``messages`` (OpenAI / HF chat): ``{"messages": [{"role": "system|user|assistant",
   "content": ...}]}``.
2. ``sharegpt``: ``{"conversations": [{"from": "human|gpt|...", "value": ...}], "system": ...}``
   (the top-level ``system`` is optional).
3. ``firefly``: ``{"conversation": [{"human": ..., "assistant": ...}, ...]}``.
4. ``alpaca`` (has ``instruction`` or ``output``): ``{"instruction", "input", "output"}`` plus
   LLaMA-Factory's optional ``system`` and ``history`` (``[[prompt, response], ...]``, the turns
   before the instruction).

Role names (case-insensitive): ``user``/``human`` -> user, ``assistant``/``gpt``/``chatgpt``/
``bing``/``bard`` -> assistant, ``system``; ``role_map`` adds or overrides names
(``bot=assistant``). Any other role is a record error naming it. ``field_map`` renames top-level
fields before detection (``input=instruction,target=output`` reads pCLUE-like records as Alpaca).

Imperfect chats are repaired, not rejected whole (:class:`RepairPolicy`), in this order:

1. ``empty_turn``: a turn whose text is empty or only whitespace is dropped. This happens first,
   so the turns on either side of it may become neighbours of one role and be merged by rule 3.
2. ``leading_assistant``: assistant turns before the first user turn are dropped.
3. ``merged_turns``: consecutive turns of one role (system texts included) are joined with
   ``merge_separator`` (``"\\n"``); counted once per turn merged into its predecessor.
4. ``trailing_user``: a final user turn without a response is dropped.

A record is rejected only when no assistant turn remains. With a rule switched off, the flaw it
would repair is a record error instead. Alpaca's ``instruction`` and ``output`` must be non-empty
(an empty one is an error, not a repair: it is the record's only exchange). Empty optional
top-level fields (``system: ""``, ``input: ""``) mean "absent" and are not repairs. A system turn
anywhere but at the start is an error.

Fields present in a record that its schema does not read are returned in
:attr:`ParsedRecord.unused` (``id``, ``category``, ``messages[].name``...) so the caller can
report them: nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatflow.data.jsonl_reader import RecordError, check_string

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
SCHEMAS = ("auto", "messages", "sharegpt", "firefly", "alpaca")
REPAIR_MODES = ("repair", "strict")
#: ``auto`` detection: the first schema whose field the record has (Alpaca: either field).
DETECTION_ORDER = (
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("firefly", ("conversation",)),
    ("alpaca", ("instruction", "output")),
)
#: Built-in role names (matched case-insensitively) and the role each stands for.
ROLE_ALIASES = {
    "user": USER,
    "human": USER,
    "assistant": ASSISTANT,
    "gpt": ASSISTANT,
    "chatgpt": ASSISTANT,
    "bing": ASSISTANT,
    "bard": ASSISTANT,
    "system": SYSTEM,
}
#: Repair kinds, as counted in ``PreprocessSummary.repairs`` and named in rejects entries.
REPAIR_KINDS = ("empty_turn", "leading_assistant", "merged_turns", "trailing_user")
#: The top-level fields each schema reads; any other field present is reported as unused.
SCHEMA_FIELDS = {
    "messages": ("messages",),
    "sharegpt": ("conversations", "system"),
    "firefly": ("conversation",),
    "alpaca": ("instruction", "input", "output", "system", "history"),
}
# (list field, role key, text key) of the schemas whose turns are objects with a role.
_ROLE_TURNS = {
    "messages": ("messages", "role", "content"),
    "sharegpt": ("conversations", "from", "value"),
}


@dataclass(frozen=True)
class RepairPolicy:
    """Which flaws of a chat are repaired (and counted) instead of rejecting the record.

    A rule that is off turns its flaw into a record error. See the module docstring for the order.
    """

    drop_empty_turns: bool = True
    """Drop turns with an empty text (``empty_turn``)."""
    drop_leading_assistant: bool = True
    """Drop assistant turns before the first user turn (``leading_assistant``)."""
    merge_consecutive: bool = True
    """Join consecutive turns of one role (``merged_turns``)."""
    drop_trailing_user: bool = True
    """Drop a final user turn that has no response (``trailing_user``)."""
    merge_separator: str = "\n"
    """What joins merged turns."""

    @classmethod
    def named(cls, mode: str) -> RepairPolicy:
        """``repair`` (every rule on, the default) or ``strict`` (every rule off)."""
        if mode == "repair":
            return cls()
        if mode == "strict":
            return cls(False, False, False, False)
        raise ValueError(f"chat repair mode must be one of {REPAIR_MODES}, got {mode!r}")


@dataclass(frozen=True)
class ChatSchemaConfig:
    """How records are read as conversations."""

    schema: str = "auto"
    """One of :data:`SCHEMAS`; ``auto`` detects per record (:data:`DETECTION_ORDER`)."""
    field_map: dict[str, str] = field(default_factory=dict)
    """Top-level field renames applied first, ``{source name: schema name}``."""
    role_map: dict[str, str] = field(default_factory=dict)
    """Extra role names, ``{name: user|assistant|system}`` (overrides the built-in aliases)."""
    repair: RepairPolicy = field(default_factory=RepairPolicy)
    """Repair policy."""

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise ValueError(f"chat schema must be one of {SCHEMAS}, got {self.schema!r}")
        for name, role in self.role_map.items():
            if role not in (USER, ASSISTANT, SYSTEM):
                raise ValueError(
                    f"role map {name}={role}: the target must be user, assistant or system"
                )
        targets = list(self.field_map.values())
        if len(set(targets)) != len(targets):
            raise ValueError(f"field map: two fields map to one name ({self.field_map})")

    def role(self, name: Any, where: str) -> str:
        """The normalized role of a role name.

        Raises:
            RecordError: not a string, or an unknown name (the message names it).
        """
        if not isinstance(name, str):
            raise RecordError(f"{where}: role must be a string, got {type(name).__name__}")
        role = self._roles.get(name.lower())
        if role is None:
            known = ", ".join(sorted(self._roles))
            raise RecordError(
                f"{where}: unknown role: got {name!r} (known: {known}; add one with "
                f"--role-map {name}=assistant|user|system)"
            )
        return role

    @property
    def _roles(self) -> dict[str, str]:
        # Built once per config (the config is frozen, so the cache cannot go stale).
        table = self.__dict__.get("_role_table")
        if table is None:
            table = dict(ROLE_ALIASES) | {k.lower(): v for k, v in self.role_map.items()}
            object.__setattr__(self, "_role_table", table)
        return table


@dataclass(frozen=True)
class Turn:
    """One user or assistant turn."""

    role: str
    """:data:`USER` or :data:`ASSISTANT`."""
    text: str
    """The turn's text."""
    context: str | None = None
    """Alpaca's non-empty ``input`` of a user turn (the template decides how it joins the text)."""


@dataclass(frozen=True)
class Conversation:
    """A normalized chat: an optional system text, then turns alternating user/assistant, user
    first and assistant last (so there is at least one trainable response)."""

    system: str | None
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class ParsedRecord:
    """A record read as a conversation, with what was repaired and what was not read."""

    conversation: Conversation
    schema: str
    """The schema the record was read with."""
    repairs: tuple[str, ...] = ()
    """Repair kinds applied (:data:`REPAIR_KINDS`), one entry per repair, in order."""
    details: tuple[str, ...] = ()
    """One human-readable note per repair (where, what), aligned with :attr:`repairs`."""
    unused: tuple[str, ...] = ()
    """Fields present but not read (``id``, ``messages[].name``), sorted."""


@dataclass
class _Raw:
    """A turn before repairs: normalized role, text, where it came from, its source role name."""

    role: str
    text: str
    where: str
    label: str
    context: str | None = None


def apply_field_map(record: dict[str, Any], field_map: dict[str, str]) -> dict[str, Any]:
    """``record`` with its top-level fields renamed by ``field_map`` (all at once, so a swap
    works).

    Raises:
        RecordError: a renamed field would replace a field the record already has.
    """
    if not field_map:
        return record
    out = {k: v for k, v in record.items() if k not in field_map}
    for src, dst in field_map.items():
        if src in record:
            if dst in out:
                raise RecordError(f"field map {src}={dst}: the record has both {src!r} and {dst!r}")
            out[dst] = record[src]
    return out


def detect_schema(record: dict[str, Any]) -> str:
    """The schema ``auto`` picks for ``record`` (see :data:`DETECTION_ORDER`).

    Raises:
        RecordError: no schema's field is present.
    """
    for name, fields in DETECTION_ORDER:
        if any(f in record for f in fields):
            return name
    raise RecordError(
        "expected 'instruction'/'output' (Alpaca), 'messages', 'conversations' (ShareGPT) or "
        "'conversation' (Firefly); map other fields with --field-map"
    )


def _turn_list(record: dict[str, Any], key: str) -> list[Any]:
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"field {key!r} must be a non-empty list")
    return turns


def _text(value: Any, where: str) -> str:
    """A turn's text: a string, possibly empty (dropping it is a repair), encodable."""
    if not isinstance(value, str):
        raise RecordError(f"field {where!r} must be a string, got {type(value).__name__}")
    if value.strip():
        check_string(value, where)
    return value


def _optional_text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    return check_string(value, key) if value.strip() else None


def _role_turns(
    record: dict[str, Any], schema: str, cfg: ChatSchemaConfig
) -> tuple[list[_Raw], set[str]]:
    key, role_key, text_key = _ROLE_TURNS[schema]
    raws, unused = [], set()
    for i, turn in enumerate(_turn_list(record, key)):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object")
        if role_key not in turn:
            raise RecordError(f"{where}: missing {role_key!r}")
        label = turn[role_key]
        role = cfg.role(label, f"{where}.{role_key}")
        if text_key not in turn:
            raise RecordError(f"{where}: missing {text_key!r}")
        raws.append(_Raw(role, _text(turn[text_key], f"{where}.{text_key}"), where, str(label)))
        unused.update(f"{key}[].{k}" for k in turn if k not in (role_key, text_key))
    return raws, unused


def _firefly_turns(record: dict[str, Any]) -> tuple[list[_Raw], set[str]]:
    raws, unused = [], set()
    for i, pair in enumerate(_turn_list(record, "conversation")):
        where = f"conversation[{i}]"
        if not isinstance(pair, dict):
            raise RecordError(f"{where} must be an object")
        for key, role in (("human", USER), ("assistant", ASSISTANT)):
            if key not in pair:
                raise RecordError(f"{where}: missing {key!r}")
            raws.append(_Raw(role, _text(pair[key], f"{where}.{key}"), f"{where}.{key}", key))
        unused.update(f"conversation[].{k}" for k in pair if k not in ("human", "assistant"))
    return raws, unused


def _alpaca_turns(record: dict[str, Any]) -> list[_Raw]:
    raws = []
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise RecordError(f"field 'history' must be a list, got {type(history).__name__}")
        for i, pair in enumerate(history):
            where = f"history[{i}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise RecordError(f"{where} must be a [prompt, response] pair")
            raws.append(_Raw(USER, _text(pair[0], f"{where}[0]"), f"{where}[0]", "prompt"))
            raws.append(_Raw(ASSISTANT, _text(pair[1], f"{where}[1]"), f"{where}[1]", "response"))
    for key in ("instruction", "output"):
        if key not in record:
            raise RecordError(f"missing key {key!r}")
    instruction = check_string(record["instruction"], "instruction")
    output = check_string(record["output"], "output")
    context = record.get("input", "")
    if not isinstance(context, str):
        raise RecordError(f"field 'input' must be a string, got {type(context).__name__}")
    context = check_string(context, "input") if context.strip() else None
    raws.append(_Raw(USER, instruction, "instruction", "instruction", context))
    raws.append(_Raw(ASSISTANT, output, "output", "output"))
    return raws


class _Repairs:
    """Applies a :class:`RepairPolicy` and notes every repair."""

    def __init__(self, policy: RepairPolicy) -> None:
        self.policy = policy
        self.kinds: list[str] = []
        self.details: list[str] = []

    def note(self, kind: str, flaw: str, action: str, allowed: bool) -> None:
        """A flaw: repaired and noted (``"<flaw>: <action>"``) if allowed, else a record error."""
        if not allowed:
            raise RecordError(f"{flaw} (not repaired: the {kind} repair is off)")
        self.kinds.append(kind)
        self.details.append(f"{flaw}: {action}")

    def run(self, raws: list[_Raw]) -> Conversation:
        p = self.policy
        kept = []
        for r in raws:
            if r.text.strip():
                kept.append(r)
            else:
                self.note("empty_turn", f"{r.where}: an empty {r.label} turn", "dropped",
                          p.drop_empty_turns)  # fmt: skip
        # System texts may only open the chat (a top-level system, then system turns).
        lead = 0
        while lead < len(kept) and kept[lead].role == SYSTEM:
            lead += 1
        system_parts, turns = kept[:lead], kept[lead:]
        for r in turns:
            if r.role == SYSTEM:
                raise RecordError(f"{r.where}: expected 'system' as the first turn only")
        while turns and turns[0].role == ASSISTANT:
            r = turns.pop(0)
            self.note("leading_assistant", f"{r.where}: a leading {r.label} turn (before any "
                      "user turn)", "dropped", p.drop_leading_assistant)  # fmt: skip
        sep = p.merge_separator
        for r in system_parts[1:]:
            self.note("merged_turns", f"{r.where}: a second system text", "merged into the first",
                      p.merge_consecutive)  # fmt: skip
        merged: list[_Raw] = []
        for r in turns:
            if merged and merged[-1].role == r.role:
                self.note("merged_turns", f"{r.where}: a second {r.role} turn in a row",
                          "merged into the one before", p.merge_consecutive)  # fmt: skip
                prev = merged[-1]
                prev.text = prev.text + sep + r.text
                if r.context is not None:  # only Alpaca's last user turn has one
                    prev.context = r.context
            else:
                merged.append(_Raw(r.role, r.text, r.where, r.label, r.context))
        if merged and merged[-1].role == USER:
            r = merged.pop()
            self.note("trailing_user", f"{r.where}: a trailing {r.label} turn without a response",
                      "dropped", p.drop_trailing_user)  # fmt: skip
        if not merged:
            why = "; ".join(self.details) if self.details else "the chat has no turns"
            raise RecordError(f"no trainable response remains after repairs ({why})")
        system_text = sep.join(r.text for r in system_parts) if system_parts else None
        return Conversation(system_text, tuple(Turn(r.role, r.text, r.context) for r in merged))


def parse_record(record: dict[str, Any], config: ChatSchemaConfig | None = None) -> ParsedRecord:
    """Read one JSON object as a conversation (see the module docstring).

    Raises:
        RecordError: no schema matches, a field has the wrong type, a role is unknown, a flaw the
            policy does not repair, or no trainable response remains.
    """
    cfg = config or ChatSchemaConfig()
    rec = apply_field_map(record, cfg.field_map)
    schema = detect_schema(rec) if cfg.schema == "auto" else cfg.schema
    turn_unused: set[str] = set()
    if schema == "alpaca":
        raws = _alpaca_turns(rec)
    elif schema == "firefly":
        raws, turn_unused = _firefly_turns(rec)
    else:
        raws, turn_unused = _role_turns(rec, schema, cfg)
    if "system" in SCHEMA_FIELDS[schema]:
        top = _optional_text(rec, "system")
        if top is not None:
            raws.insert(0, _Raw(SYSTEM, top, "system", "system"))
    repairs = _Repairs(cfg.repair)
    conv = repairs.run(raws)
    unused = {k for k in rec if k not in SCHEMA_FIELDS[schema]} | turn_unused
    return ParsedRecord(conv, schema, tuple(repairs.kinds), tuple(repairs.details),
                        tuple(sorted(unused)))  # fmt: skip


#: Top-level string fields :func:`schema_texts` reads (besides the chat lists and ``history``).
TEXT_FIELDS = ("text", "zh", "en", "system", "instruction", "input", "output", "target")


def schema_values(record: dict[str, Any], field_map: dict[str, str] | None = None) -> list[Any]:
    """The values at every text position of every known schema, as found (any type, maybe blank).

    Reads :data:`TEXT_FIELDS` (plain ``text``, parallel ``zh``/``en``, Alpaca, ShareGPT's top-level
    ``system``, pCLUE / Firefly-1.1M ``input``/``target``), ``messages[].content``,
    ``conversations[].value``, ``conversation[].human/assistant`` and Alpaca ``history``, after
    ``field_map`` renames. Absent fields give nothing.
    """
    rec = apply_field_map(record, field_map or {})
    out: list[Any] = [rec[k] for k in TEXT_FIELDS if k in rec]
    for key, text_keys in (
        ("messages", ("content",)),
        ("conversations", ("value",)),
        ("conversation", ("human", "assistant")),
    ):
        turns = rec.get(key)
        if isinstance(turns, list):
            for t in turns:
                if isinstance(t, dict):
                    out += [t[k] for k in text_keys if k in t]
    history = rec.get("history")
    if isinstance(history, list):
        for pair in history:
            if isinstance(pair, list):
                out += pair
    return out


def schema_texts(record: dict[str, Any], field_map: dict[str, str] | None = None) -> list[str]:
    """The non-blank strings of :func:`schema_values`: every text a record holds in any known
    schema (for tokenizer training; no repairs, no validation)."""
    return [v for v in schema_values(record, field_map) if isinstance(v, str) and v.strip()]


def parse_map(spec: str | None, what: str) -> dict[str, str]:
    """``"a=b,c=d"`` (a command-line map) as ``{"a": "b", "c": "d"}``; ``what`` names the flag.

    Raises:
        ValueError: an item is not ``NAME=NAME`` or a name is mapped twice.
    """
    out: dict[str, str] = {}
    if not spec:
        return out
    for item in spec.split(","):
        src, eq, dst = (x.strip() for x in item.partition("="))
        if not eq or not src or not dst:
            raise ValueError(f"{what}: expected NAME=NAME[,NAME=NAME...], got {item!r}")
        if src in out:
            raise ValueError(f"{what}: {src!r} is mapped twice")
        out[src] = dst
    return out
