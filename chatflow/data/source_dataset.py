"""One source's dataset: fixed-length GPT samples packed from the documents of one token shard.

Each sample is a window of ``seq_length + 1`` tokens across document boundaries (see
:mod:`chatflow.data.sample_index`), returned as a dict of torch tensors, megatron-core's
GPTDataset layout:

- ``tokens`` int64[seq]: window[:-1]; ``labels`` int64[seq]: window[1:] (the next tokens).
- ``loss_mask`` float32[seq]: 1 where ``labels[t]`` is trained on. From the loss-mask shard
  (``<prefix>_loss_mask``, 1 = train on that token) when it exists, taken at the label's position,
  so an instruction sample learns only response tokens and their EOS. Else all ones: packing has
  no padding, so, as in Megatron, nothing is masked by default. ``eod_mask_loss`` also zeroes
  positions whose *input* is the EOD token (their label is the next document's BOS, a prediction
  across documents), Megatron's convention.
- ``position_ids`` int64[seq]: 0..seq-1, or restarting after every EOD input token with
  ``reset_position_ids``.
- ``attention_mask`` bool[1, seq, seq], only with ``reset_attention_mask``: True = masked
  (Megatron's convention); causal and blocked across EOD boundaries.

Documents are the shard's sequences, as in megatron-core's GPTDataset (ChatFlow writes one
sequence per document, BOS ... EOS).

With ``packing="conversations"`` (the default for a shard with a loss-mask shard) a sample is
instead one bin of whole documents (:mod:`chatflow.data.packing`), built by
:func:`chatflow.data.packed_sample.make_packed_sample`: padded, labels never crossing documents,
position ids restarting and a block-diagonal ``attention_mask`` always present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from chatflow.data.index_cache import IndexCache, pickle_array, shard_identity, unpickle_array
from chatflow.data.indexed_dataset import IndexedDataset, shard_exists
from chatflow.data.packed_sample import future_mask, make_packed_sample
from chatflow.data.packing import (
    PACKING_MODES,
    PackingIndex,
    bin_tokens,
    build_packing,
    no_split_points,
    turn_boundaries,
)
from chatflow.data.sample_index import (
    build_shuffle_index,
    build_source_indices,
    count_tokens,
    split_documents,
)
from chatflow.data.templates import loss_mask_prefix

logger = logging.getLogger(__name__)

#: Bump when the index build changes meaning; part of every cache key.
INDEX_VERSION = 1
#: Bump when the packing index changes meaning; part of the packed sources' cache keys.
PACKING_VERSION = 1
SPLITS = ("train", "valid")


@dataclass
class SampleOptions:
    """How a token window becomes a training sample (shared by every source of a run).

    Attributes:
        seq_length: tokens per sample (inputs); windows hold one more token (the last label).
        eod_id: end-of-document token id (LLaMA's EOS, 2); needed by the three options below.
        reset_position_ids: restart position ids after every EOD token.
        reset_attention_mask: block attention across EOD boundaries (adds ``attention_mask``).
        eod_mask_loss: no loss on positions whose input token is EOD.
        pad_id: token filling the unused end of a packed sample (never trained on). LLaMA2 has no
            pad piece, so the default is its EOS (2), the tokenizer's ``padding_id``.
        attention_mask: give every sample a dense ``attention_mask`` (causal, and blocked across
            documents where known), so that windowed and packed samples of one blend collate
            into the same batch fields. Packed samples always carry one.
    """

    seq_length: int
    eod_id: int | None = None
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    pad_id: int = 2
    attention_mask: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.seq_length, (int, np.integer)) or self.seq_length < 1:
            raise ValueError(f"seq_length must be a positive integer, got {self.seq_length!r}")
        uses_eod = self.reset_position_ids or self.reset_attention_mask or self.eod_mask_loss
        if uses_eod and self.eod_id is None:
            raise ValueError(
                "eod_id is required with reset_position_ids, reset_attention_mask or eod_mask_loss"
            )
        if self.eod_id is not None and self.eod_id < 0:
            raise ValueError(f"eod_id must be >= 0, got {self.eod_id}")


class SourceDataset(torch.utils.data.Dataset):
    """Exactly ``num_samples`` samples of one shard, over as many shuffled epochs as needed.

    Args:
        prefix: token shard prefix (``.bin``/``.idx``).
        num_samples: samples to provide; ``None`` for one pass over the split's tokens.
        options: sample layout options.
        seed: seed of the document split, document order and sample order.
        split: ``"train"`` or ``"valid"``: which side of the held-out document split to draw from.
        valid_fraction: fraction of the shard's documents held out for validation (the same
            documents for both splits given the seed; 0 = no validation split).
        shuffle_block: samples are shuffled within blocks of this many; ``None``: one epoch's
            worth of samples (like megatron-core). Part of the sample order: keep it across resumes.
        cache: where index arrays are cached (``None``: built in memory).
        name: label for logs and errors (defaults to the prefix).
        use_loss_mask: read ``<prefix>_loss_mask`` when it exists.
        packing: ``"windows"``, ``"conversations"`` or ``None`` (conversations when a loss-mask
            shard is read, else windows); see :mod:`chatflow.data.packing`.
    """

    def __init__(
        self,
        prefix: str,
        num_samples: int | None,
        options: SampleOptions,
        seed: int,
        *,
        split: str = "train",
        valid_fraction: float = 0.0,
        shuffle_block: int | None = None,
        cache: IndexCache | None = None,
        name: str | None = None,
        use_loss_mask: bool = True,
        packing: str | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split == "valid" and valid_fraction <= 0:
            raise ValueError(f"{prefix}: a 'valid' split needs valid_fraction > 0")
        self.prefix = prefix
        self.name = name or prefix
        self.options = options
        self.split = split
        self.data = IndexedDataset(prefix)
        self.mask = self._open_mask(prefix) if use_loss_mask else None

        sizes = self.data.sequence_lengths
        train_ids, valid_ids = split_documents(len(sizes), valid_fraction, seed)
        doc_ids = train_ids if split == "train" else valid_ids
        seq = options.seq_length
        tokens = count_tokens(sizes, doc_ids)
        if packing is None:
            packing = "conversations" if self.mask is not None else "windows"
        if packing not in PACKING_MODES:
            raise ValueError(f"{prefix}: packing must be one of {PACKING_MODES}, got {packing!r}")
        #: ``"windows"`` or ``"conversations"``.
        self.packing = packing
        self.packed: PackingIndex | None = None
        if packing == "conversations":
            self._init_packed(num_samples, seed, valid_fraction, shuffle_block, cache, doc_ids)
            return
        epoch_samples = max(1, (tokens - 1) // seq)
        if num_samples is None:
            if tokens <= seq:
                raise ValueError(
                    f"{prefix}: the {split} split holds {tokens} tokens, "
                    f"too few for one sample of {seq}"
                )
            num_samples = epoch_samples
        if num_samples < 0:
            raise ValueError(f"{prefix}: num_samples must be >= 0, got {num_samples}")
        if num_samples and tokens == 0:
            raise ValueError(
                f"{prefix}: the {split} split has no tokens ({len(doc_ids)} documents)"
            )
        self.num_samples = int(num_samples)
        #: Tokens of the documents this dataset draws from (one epoch).
        self.epoch_tokens = tokens
        self.shuffle_block = int(shuffle_block or epoch_samples)
        num_built = -(-self.num_samples // self.shuffle_block) * self.shuffle_block
        description = {
            "version": INDEX_VERSION,
            "shard": shard_identity(prefix),
            "seed": int(seed),
            "split": split,
            "valid_fraction": float(valid_fraction),
            "seq_length": seq,
            "add_extra_token": True,
            "shuffle_block": self.shuffle_block,
            "num_built": num_built,  # prefix-stable: any num_samples with this rounding shares it
        }

        def build() -> dict[str, np.ndarray]:
            return build_source_indices(
                sizes, doc_ids, seq, self.num_samples, seed, self.shuffle_block, tokens
            ).as_dict()

        arrays = (cache or IndexCache(None)).get_or_build("source", description, build)
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]
        logger.info(
            "%s (%s): %d samples of %d tokens from %d documents / %d tokens (%.2f epochs)",
            self.name,
            split,
            self.num_samples,
            seq,
            len(doc_ids),
            tokens,
            self.num_samples * seq / max(tokens, 1),
        )

    def _init_packed(self, num_samples, seed, valid_fraction, shuffle_block, cache, doc_ids):
        """Bins of whole documents (conversations packing); the indices are cached per source."""
        cache = cache or IndexCache(None)
        seq = self.options.seq_length
        description = {
            "version": PACKING_VERSION,
            "shard": shard_identity(self.prefix),
            "mask": shard_identity(loss_mask_prefix(self.prefix)) if self.mask else None,
            "seed": int(seed),
            "split": self.split,
            "valid_fraction": float(valid_fraction),
            "capacity": seq + 1,
        }
        sizes = self.data.sequence_lengths

        def pack(min_bins: int) -> PackingIndex:
            if self.mask is not None:
                return build_packing(sizes, doc_ids, *turn_boundaries(self.mask), seq + 1,
                                     min_bins, seed)  # fmt: skip
            offsets, points = no_split_points(len(sizes))
            return build_packing(sizes, doc_ids, offsets, points, seq + 1, min_bins, seed, True)

        epoch_samples = 1  # only read when no sample is asked for (nothing to pack)
        if num_samples is None or (shuffle_block is None and num_samples > 0):
            # One epoch's bin count: the default sample count and shuffle block.
            first = cache.get_or_build(
                "packing_epoch", description, lambda: {"epoch_bins": pack(1).epoch_bins[:2]}
            )
            epoch_samples = int(first["epoch_bins"][1])
        if num_samples is None:
            num_samples = epoch_samples
        if num_samples < 0:
            raise ValueError(f"{self.prefix}: num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.epoch_tokens = count_tokens(sizes, doc_ids)
        if self.num_samples and self.epoch_tokens == 0:
            raise ValueError(
                f"{self.prefix}: the {self.split} split has no tokens ({len(doc_ids)} documents)"
            )
        self.shuffle_block = int(shuffle_block or epoch_samples)
        num_built = -(-self.num_samples // self.shuffle_block) * self.shuffle_block

        def build() -> dict[str, np.ndarray]:
            arrays = pack(num_built).as_dict()
            arrays["shuffle_index"] = build_shuffle_index(num_built, self.shuffle_block, seed)
            return arrays

        full = {**description, "shuffle_block": self.shuffle_block, "num_built": num_built}
        arrays = cache.get_or_build("packing", full, build)
        self.packed = PackingIndex.from_dict(arrays)
        self.shuffle_index = arrays["shuffle_index"]
        logger.info(
            "%s (%s): %d packed samples of %d tokens from %d documents / %d tokens; %s",
            self.name, self.split, self.num_samples, seq, len(doc_ids), self.epoch_tokens,
            ", ".join(f"{k}={v:.4g}" for k, v in self.packing_stats().items()),
        )  # fmt: skip

    def packing_stats(self) -> dict[str, float]:
        """Padding and cutting counts of the samples this dataset provides (for the metrics).

        ``padding_share``: padded share of the input positions of its samples; ``splits``,
        ``truncations``, ``dropped_tokens``: summed over the packing epochs its samples come from
        (all zero for windows, which have no padding and cut documents anywhere).
        """
        if self.packed is None:
            return {"padding_share": 0.0, "splits": 0, "truncations": 0, "dropped_tokens": 0}
        used = np.asarray(self.shuffle_index[: self.num_samples])
        if used.size == 0:
            return {"padding_share": 0.0, "splits": 0, "truncations": 0, "dropped_tokens": 0}
        seq = self.options.seq_length
        per_bin = np.minimum(bin_tokens(self.packed, int(used.max()) + 1)[used], seq)
        epochs = int(np.searchsorted(self.packed.epoch_bins, used.max(), side="right"))
        stats = np.asarray(self.packed.epoch_stats[:epochs]).sum(axis=0)
        return {
            "padding_share": float(1.0 - per_bin.sum() / (used.size * seq)),
            "splits": int(stats[0]),
            "truncations": int(stats[1]),
            "dropped_tokens": int(stats[2]),
        }

    def sample_padding(self) -> np.ndarray:
        """int64 ``[num_samples]``: padded input positions of each sample (all 0 for windows)."""
        if self.packed is None or self.num_samples == 0:
            return np.zeros(self.num_samples, dtype=np.int64)
        used = np.asarray(self.shuffle_index[: self.num_samples])
        placed = bin_tokens(self.packed, int(used.max()) + 1)[used]
        seq = self.options.seq_length
        return seq - np.minimum(placed, seq)

    def bin_pieces(self, idx: int) -> list[tuple[int, int, int]]:
        """The (document, start, length) pieces of packed sample ``idx``, in sample order."""
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"{self.name}: sample {idx} out of range [0, {self.num_samples})")
        j = int(self.shuffle_index[idx])
        lo, hi = int(self.packed.bin_offsets[j]), int(self.packed.bin_offsets[j + 1])
        p = self.packed
        return [(int(p.piece_doc[i]), int(p.piece_start[i]), int(p.piece_len[i])) for i in
                range(lo, hi)]  # fmt: skip

    def _open_mask(self, prefix: str) -> IndexedDataset | None:
        mask_prefix = loss_mask_prefix(prefix)
        if not shard_exists(mask_prefix):
            return None
        mask = IndexedDataset(mask_prefix)
        if not np.array_equal(mask.sequence_lengths, self.data.sequence_lengths):
            raise ValueError(
                f"{mask_prefix}.idx: loss-mask sequence lengths differ from those of "
                f"{prefix}.idx ({len(mask)} vs {len(self.data)} sequences)"
            )
        return mask

    def __len__(self) -> int:
        return self.num_samples

    _INDEX_ARRAYS = ("document_index", "sample_index", "shuffle_index")

    def __getstate__(self) -> dict:
        # Reopen shards and cached indices by path in the unpickling process (DataLoader workers
        # under spawn) instead of copying memory maps into the pickle.
        state = dict(self.__dict__)
        state["data"] = None
        state["mask"] = self.mask is not None
        for key in self._INDEX_ARRAYS:
            if key in state:  # packed sources have only the shuffle index
                state[key] = pickle_array(state[key])
        if self.packed is not None:
            state["packed"] = {k: pickle_array(v) for k, v in self.packed.as_dict().items()}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.data = IndexedDataset(self.prefix)
        self.mask = IndexedDataset(loss_mask_prefix(self.prefix)) if state["mask"] else None
        for key in self._INDEX_ARRAYS:
            if key in state:
                setattr(self, key, unpickle_array(state[key]))
        if state["packed"] is not None:
            arrays = {k: unpickle_array(v) for k, v in state["packed"].items()}
            self.packed = PackingIndex.from_dict(arrays)

    def window(self, idx: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``seq_length + 1`` raw tokens of sample ``idx`` (and its loss-mask bytes)."""
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"{self.name}: sample {idx} out of range [0, {self.num_samples})")
        j = int(self.shuffle_index[idx])
        p0, o0 = (int(v) for v in self.sample_index[j])
        p1, o1 = (int(v) for v in self.sample_index[j + 1])
        # Sample j runs from (p0, o0) to (p1, o1) inclusive: seq_length + 1 tokens.
        pieces = []
        for p in range(p0, p1 + 1):
            doc = int(self.document_index[p])
            start = o0 if p == p0 else 0
            stop = o1 + 1 if p == p1 else int(self.data.sequence_lengths[doc])
            pieces.append((doc, start, stop - start))
        tokens = self._gather(self.data, pieces)
        mask = self._gather(self.mask, pieces) if self.mask is not None else None
        return tokens, mask

    @staticmethod
    def _gather(data: IndexedDataset, pieces: list[tuple[int, int, int]]) -> np.ndarray:
        if len(pieces) == 1:
            doc, start, length = pieces[0]
            return data.get(doc, start, length)
        return np.concatenate([data.get(doc, start, length) for doc, start, length in pieces])

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if self.packed is not None:
            pieces = self.bin_pieces(int(idx))
            opts = self.options
            return make_packed_sample(
                [self.data.get(*p) for p in pieces],
                [self.mask.get(*p) for p in pieces] if self.mask is not None else None,
                opts.seq_length,
                opts.pad_id,
                opts.eod_id,
                opts.eod_mask_loss,
            )
        window, mask = self.window(int(idx))
        return make_sample(window, mask, self.options)


def make_sample(
    window: np.ndarray, mask: np.ndarray | None, options: SampleOptions
) -> dict[str, torch.Tensor]:
    """Turn a window of ``seq_length + 1`` tokens (and loss-mask bytes) into a training sample."""
    seq = options.seq_length
    window = window.astype(np.int64)
    tokens, labels = window[:-1], window[1:]
    if mask is not None:
        loss_mask = mask[1:].astype(np.float32)  # the mask of each label token
    else:
        loss_mask = np.ones(seq, dtype=np.float32)
    position_ids = np.arange(seq, dtype=np.int64)
    sample = {}
    if options.eod_id is not None and (
        options.eod_mask_loss or options.reset_position_ids or options.reset_attention_mask
    ):
        is_eod = tokens == options.eod_id
        if options.eod_mask_loss:
            loss_mask[is_eod] = 0.0
        # Document k of the window starts right after its k-th EOD input token.
        starts = np.zeros(seq, dtype=np.int64)
        after = np.flatnonzero(is_eod[:-1]) + 1
        starts[after] = after
        doc_start = np.maximum.accumulate(starts)
        if options.reset_position_ids:
            position_ids = position_ids - doc_start
        if options.reset_attention_mask:
            # Position i may attend to j iff j <= i and both lie in the same document, i.e.
            # j >= doc_start[i]. True = masked.
            j = np.arange(seq)
            allowed = (j[None, :] <= j[:, None]) & (j[None, :] >= doc_start[:, None])
            sample["attention_mask"] = torch.from_numpy(~allowed).unsqueeze(0)
    if options.attention_mask and "attention_mask" not in sample:
        causal = future_mask(seq).copy()  # True = masked: the future
        sample["attention_mask"] = torch.from_numpy(causal).unsqueeze(0)
    sample["tokens"] = torch.from_numpy(tokens)
    sample["labels"] = torch.from_numpy(labels)
    sample["loss_mask"] = torch.from_numpy(loss_mask)
    sample["position_ids"] = torch.from_numpy(position_ids)
    return sample
