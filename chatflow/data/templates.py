"""Rendering of parallel pairs and instruction records into training tokens.

Parallel pairs (``{"zh": ..., "en": ...}``) become one bilingual text per pair, in one of two
translation directions. The direction is drawn from a hash of ``(seed, source index, line number)``
rather than from a running RNG, so it depends only on the record's position in the input, never on
how the input was split among worker processes.

Instruction records are read into a normalized conversation by :mod:`chatflow.data.chat_schemas`
(Alpaca, ShareGPT, ``messages``, Firefly; repairs of imperfect chats) and rendered here with the
ChatFlow template of the paper's released models, ``### Instruction:{prompt} ### Response:{answer}``
(configurable), into token ids plus a loss mask (1 = train on this token). Token layout, with
``[...]`` the mask value::

    BOS[0] system[0] prompt_1[0] response_1 EOS[1] prompt_2[0] response_2 EOS[1] ...

Segments are encoded by :func:`chatflow.data.segment_encoding.encode_segments`: the tokens are
those of the whole rendered string (no stray ``▁`` at the start of a response), split exactly at
segment boundaries, so mask boundaries fall between prompt and response.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatflow.data.chat_schemas import ASSISTANT, ChatSchemaConfig, Conversation, parse_record
from chatflow.data.jsonl_reader import get_text
from chatflow.data.segment_encoding import encode_segments

ZH_TO_EN = "zh-en"
EN_TO_ZH = "en-zh"


def loss_mask_prefix(token_prefix: str) -> str:
    """Prefix of the loss-mask shard that belongs to the token shard ``token_prefix``.

    The mask shard is a Megatron-format ``uint8`` indexed dataset with exactly the sequence lengths
    of the token shard; 1 marks tokens that contribute to the loss.
    """
    return token_prefix + "_loss_mask"


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def _check_template(
    template: str, name: str, required: Sequence[str], allowed: Sequence[str]
) -> None:
    try:
        fields = _fields(template)
    except ValueError as e:
        raise ValueError(f"{name}: malformed template {template!r}: {e}") from None
    for f in fields:
        if f not in allowed:
            raise ValueError(
                f"{name}: unknown placeholder {{{f}}} in {template!r} "
                f"(allowed: {', '.join('{' + a + '}' for a in allowed)})"
            )
    for r in required:
        if r not in fields:
            raise ValueError(f"{name}: template {template!r} must contain {{{r}}}")


def keyed_uniform(seed: int, source: int, line: int) -> float:
    """A uniform number in [0, 1) determined by ``(seed, source, line)`` alone."""
    digest = hashlib.blake2b(f"{seed}:{source}:{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


@dataclass
class ParallelTemplate:
    """How a zh-en pair becomes bilingual training text."""

    zh_key: str = "zh"
    """JSON key of the Chinese side."""
    en_key: str = "en"
    """JSON key of the English side."""
    zh_to_en: str = "Translate into English: {zh}\n{en}"
    """Text for the zh->en direction; must contain ``{zh}`` and ``{en}``."""
    en_to_zh: str = "翻译成中文：{en}\n{zh}"
    """Text for the en->zh direction; must contain ``{zh}`` and ``{en}``."""
    zh_to_en_probability: float = 0.5
    """Probability of the zh->en direction (1.0 / 0.0 fix one direction)."""

    def __post_init__(self) -> None:
        if not self.zh_key or not self.en_key or self.zh_key == self.en_key:
            raise ValueError(
                f"parallel keys must be two different names, got {self.zh_key!r}, {self.en_key!r}"
            )
        for name in ("zh_to_en", "en_to_zh"):
            _check_template(getattr(self, name), name, ("zh", "en"), ("zh", "en"))
        if not 0.0 <= self.zh_to_en_probability <= 1.0:
            raise ValueError(
                f"zh_to_en_probability must be in [0, 1], got {self.zh_to_en_probability}"
            )

    def direction(self, seed: int, source: int, line: int) -> str:
        """:data:`ZH_TO_EN` or :data:`EN_TO_ZH` for the record at ``(source, line)``."""
        return (
            ZH_TO_EN if keyed_uniform(seed, source, line) < self.zh_to_en_probability else EN_TO_ZH
        )

    def render(self, record: dict[str, Any], seed: int, source: int, line: int) -> str:
        """The bilingual text of one record.

        Raises:
            RecordError: a side is missing, not a string, or empty.
        """
        zh = get_text(record, self.zh_key)
        en = get_text(record, self.en_key)
        fmt = self.zh_to_en if self.direction(seed, source, line) == ZH_TO_EN else self.en_to_zh
        return fmt.format(zh=zh, en=en)


@dataclass
class InstructionTemplate:
    """The ChatFlow instruction template (defaults: the paper's released models)."""

    prompt: str = "### Instruction:{instruction} ### Response:"
    """A human turn; must contain ``{instruction}``. Not trained on."""
    alpaca_input: str = "{instruction}\n{input}"
    """How a non-empty Alpaca ``input`` joins its ``instruction`` (fills ``{instruction}``)."""
    system: str = "{system}\n"
    """A leading system turn; must contain ``{system}``. Not trained on."""

    def __post_init__(self) -> None:
        _check_template(self.prompt, "prompt", ("instruction",), ("instruction",))
        _check_template(
            self.alpaca_input, "alpaca_input", ("instruction", "input"), ("instruction", "input")
        )
        _check_template(self.system, "system", ("system",), ("system",))

    def segments(
        self, record: dict[str, Any], chat: ChatSchemaConfig | None = None
    ) -> list[tuple[str, bool]]:
        """``(text, trained)`` segments of one record; each trained segment is followed by EOS.

        The record is read by :func:`chatflow.data.chat_schemas.parse_record` (``chat``: schema,
        maps and repair policy; default: auto-detected, repairs on) and rendered by
        :meth:`render`.

        Raises:
            RecordError: the record is not a valid instruction or chat record.
        """
        return self.render(parse_record(record, chat).conversation)

    def render(self, conversation: Conversation) -> list[tuple[str, bool]]:
        """``(text, trained)`` segments of a normalized conversation: the system text (if any),
        then per turn the prompt (user, not trained) or the response (assistant, trained)."""
        out: list[tuple[str, bool]] = []
        if conversation.system is not None:
            out.append((self.system.format(system=conversation.system), False))
        for turn in conversation.turns:
            if turn.role == ASSISTANT:
                out.append((turn.text, True))
                continue
            text = turn.text
            if turn.context is not None:
                text = self.alpaca_input.format(instruction=text, input=turn.context)
            out.append((self.prompt.format(instruction=text), False))
        return out


def assemble(
    segment_ids: Sequence[Sequence[int]], trained: Sequence[bool], bos_id: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate encoded segments into ``(token ids int32, loss mask uint8)``.

    BOS starts the sequence (mask 0); every trained segment is followed by EOS, both with mask 1.
    """
    sizes = [len(s) + (1 if t else 0) for s, t in zip(segment_ids, trained, strict=True)]
    ids = np.empty(1 + sum(sizes), dtype=np.int32)
    mask = np.zeros(len(ids), dtype=np.uint8)
    ids[0] = bos_id
    pos = 1
    for seg, t, n in zip(segment_ids, trained, sizes, strict=True):
        ids[pos : pos + len(seg)] = seg
        if t:
            ids[pos + n - 1] = eos_id
            mask[pos : pos + n] = 1
        pos += n
    return ids, mask


def render_instruction(
    record: dict[str, Any], tokenizer: Any, template: InstructionTemplate
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask of one instruction record (see the module docstring).

    Args:
        record: an Alpaca or chat record.
        tokenizer: a :class:`chatflow.tokenizer.Tokenizer`.
        template: the template.
    """
    segs = template.segments(record)
    ids = encode_segments(tokenizer, [[s for s, _ in segs]])[0]
    return assemble(ids, [t for _, t in segs], tokenizer.bos_id, tokenizer.eos_id)
