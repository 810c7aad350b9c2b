"""SentencePiece tokenizer with LLaMA2 semantics.

LLaMA2's ``tokenizer.model`` is a sentencepiece BPE model with UNK=0, BOS=1, EOS=2, byte fallback
(``<0x00>``..``<0xFF>`` pieces, so no text ever maps to UNK) and **no pad piece**: sentencepiece
reports ``pad_id() == -1``. We keep that: :attr:`Tokenizer.pad_id` is -1 for such models, and
:attr:`Tokenizer.padding_id` is the documented fallback for filling padded positions (EOS, as
LLaMA2 fine-tuning recipes do); padded positions must be masked out of the loss anyway.

BOS/EOS are never added implicitly: callers say ``bos=True``/``eos=True``, because the data path
needs exact control (the instruction template puts EOS after every response, not after prompts).

Text that continues a line (a response right after ``### Response:``, the next turn of a
conversation) is encoded with :meth:`Tokenizer.encode_continuation_batch`: the same model without
sentencepiece's dummy prefix, so it does not start with a ``▁`` that the rendered text does not
have (see :mod:`chatflow.data.segment_encoding`).

The object pickles as the model's bytes, so it can be sent to worker processes without relying on
the model file still being at the same path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from chatflow.fileio import atomic_write

logger = logging.getLogger(__name__)

# LLaMA2's fixed control ids; models trained by tools/train_tokenizer.py use the same.
LLAMA_UNK_ID = 0
LLAMA_BOS_ID = 1
LLAMA_EOS_ID = 2


class Tokenizer:
    """A LLaMA2-style sentencepiece tokenizer.

    Args:
        model_path: path to a sentencepiece ``tokenizer.model``.
        strict: require LLaMA2's control ids (UNK=0, BOS=1, EOS=2); a model with other ids raises
            ``ValueError``. With ``strict=False`` the model's own ids are used and a warning logged.
    """

    def __init__(self, model_path: str, strict: bool = True) -> None:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: tokenizer model not found")
        with open(model_path, "rb") as f:
            proto = f.read()
        self.model_path = model_path
        self._strict = strict
        self._load(proto)

    def _load(self, proto: bytes) -> None:
        self._proto = proto
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except Exception as e:  # sentencepiece raises a bare RuntimeError/OSError on bad protos
            raise ValueError(f"{self.model_path}: not a sentencepiece model ({e})") from None
        self._sp = sp
        self._sp_continuation: spm.SentencePieceProcessor | None = None  # built on first use
        ids = (sp.unk_id(), sp.bos_id(), sp.eos_id())
        if ids != (LLAMA_UNK_ID, LLAMA_BOS_ID, LLAMA_EOS_ID):
            msg = (
                f"{self.model_path}: control ids unk/bos/eos = {ids}, LLaMA2 uses "
                f"{(LLAMA_UNK_ID, LLAMA_BOS_ID, LLAMA_EOS_ID)}"
            )
            if self._strict:
                raise ValueError(msg)
            logger.warning("%s; using the model's ids", msg)

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "strict": self._strict, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.model_path = state["model_path"]
        self._strict = state["strict"]
        self._load(state["proto"])

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece model (the bytes of ``tokenizer.model``)."""
        return self._proto

    # ----------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of pieces (embedding rows needed), control and byte pieces included."""
        return self._sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def unk_id(self) -> int:
        """Id of ``<unk>`` (0 for LLaMA2)."""
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        """Id of ``<s>`` (1 for LLaMA2)."""
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """Id of ``</s>`` (2 for LLaMA2)."""
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        """The model's pad id; -1 when it has none (LLaMA2 has none)."""
        return self._sp.pad_id()

    @property
    def padding_id(self) -> int:
        """Id to fill padded positions with: :attr:`pad_id` if the model has one, else EOS."""
        return self.pad_id if self.pad_id >= 0 else self.eos_id

    @property
    def byte_fallback(self) -> bool:
        """True when the model has the 256 ``<0xNN>`` byte pieces (LLaMA2 does)."""
        return self._sp.piece_to_id("<0x00>") != self.unk_id

    def id_to_piece(self, token_id: int) -> str:
        """The piece string of an id (``"▁the"``, ``"<0xE4>"``, ``"<s>"``)."""
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size})")
        return self._sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece; :attr:`unk_id` for unknown pieces."""
        return self._sp.piece_to_id(piece)

    # ------------------------------------------------------------------------------ encoding
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of one text, optionally with BOS before and EOS after."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = self._sp.encode(text)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(
        self, texts: Sequence[str], bos: bool = False, eos: bool = False, num_threads: int = 1
    ) -> list[list[int]]:
        """Token ids of many texts in one sentencepiece call (much less Python overhead).

        Args:
            texts: the texts.
            bos: prepend BOS to each.
            eos: append EOS to each.
            num_threads: sentencepiece threads; keep 1 inside worker processes.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of str, got a single str")
        # BOS/EOS are added on the C++ side: a Python pass over every list would cost ~3%.
        return self._sp.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=num_threads)

    def encode_continuation_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of texts that continue a line: encoded without the dummy-prefix ``▁``.

        sentencepiece prepends ``▁`` to every input (the model's ``add_dummy_prefix``), which is
        right at the start of a document and wrong in the middle of one: ``"答案"`` after
        ``"### Response:"`` would start with a lone ``▁`` piece that the rendered text lacks.
        """
        if isinstance(texts, str):
            raise TypeError("encode_continuation_batch expects a sequence of str, got a single str")
        if self._sp_continuation is None:
            self._sp_continuation = self._without_dummy_prefix()
        return self._sp_continuation.encode(list(texts), num_threads=1)

    def _without_dummy_prefix(self) -> spm.SentencePieceProcessor:
        # protobuf comes with sentencepiece's model module; only the normalizer flag changes.
        from sentencepiece import sentencepiece_model_pb2

        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(self._proto)
        model.normalizer_spec.add_dummy_prefix = False
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(model.SerializeToString())
        return sp

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; control ids (BOS/EOS/pad) are dropped, byte pieces merged."""
        return self._sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def write_vocab_file(model_path: str, proto: bytes) -> None:
    """Write the human-readable ``<name>.vocab`` (piece, score) next to ``model_path``, as
    sentencepiece's trainer and ``chatflow-train-tokenizer`` write it."""
    sp = spm.SentencePieceProcessor(model_proto=proto)
    lines = [f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())]
    base = model_path.removesuffix(".model")
    atomic_write(base + ".vocab", "".join(lines).encode("utf-8"))
