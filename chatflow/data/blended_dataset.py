"""The dynamic blended dataset: many sources mixed by a weight schedule, resumable across changes.

A run is a list of :class:`Segment`: ``(start, schedule, num_samples)``. A fresh run has one
segment starting at 0; resuming with a changed schedule (or a longer run) appends a segment that
starts at the consumed-sample count. Building the dataset:

1. **Blend first.** Each segment's blending index is built for its global positions
   ``[start, end)`` (``build_blending_indices`` with ``start``/``initial_counts``), continuing
   every source's sample numbering, by name, from the counts of the segments before it, and its
   deficit from theirs (so the realized mix stays within the prefix bound across a change). A
   source removed by a later segment keeps its count; one added starts at 0.
2. **Exact counts.** Source ``k`` then needs exactly ``max(dataset_sample_index[k]) + 1`` samples,
   read off the blend; there is no surplus guess as in megatron-core's BlendedDataset.
3. **Sources.** One :class:`~chatflow.data.source_dataset.SourceDataset` per source with exactly
   that many samples. Their sample orders are prefix-stable, so sample ``j`` of a source is the
   same whichever segment asks for it: each source's samples seen over a resumed run are exactly a
   prefix of its order, none repeated or skipped.

Index arrays are cached under ``cache_dir`` (see :mod:`chatflow.data.index_cache`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from chatflow.data.blending import blending_deficits, build_blending_indices
from chatflow.data.index_cache import IndexCache, pickle_array, unpickle_array
from chatflow.data.indexed_dataset import shard_exists
from chatflow.data.sample_index import count_tokens, split_documents
from chatflow.data.schedule import Schedule
from chatflow.data.source_dataset import SampleOptions, SourceDataset
from chatflow.data.templates import loss_mask_prefix

logger = logging.getLogger(__name__)

#: Bump when the blend layout changes meaning; part of the cache key.
BLEND_VERSION = 2


@dataclass
class BlendedDatasetConfig:
    """Everything besides the schedule that determines a blended dataset.

    Attributes:
        seq_length: tokens per sample.
        num_samples: training samples of the run (``train_iters * global_batch_size``); exactly
            this many are built. Fractional schedule knots refer to it.
        seed: seed of every source's document split, document order and sample order.
        cache_dir: cache directory for index arrays; ``None`` builds them in memory each time.
        valid_fraction: fraction of each shard's documents held out for validation (0 = none).
        eod_id: end-of-document token (LLaMA EOS = 2), needed by the three options below.
        reset_position_ids: restart position ids after every EOD.
        reset_attention_mask: block attention across EOD (adds ``attention_mask`` to samples).
        eod_mask_loss: no loss where the input token is EOD.
        exact_blend: exact deficit blending (O(N K)); ``False`` uses the fast O(N) mode (for many
            sources).
        shuffle_block: per-source sample shuffle block (``None``: one epoch of that source).
        use_loss_mask: read ``<prefix>_loss_mask`` shards where they exist.
        pad_id: padding token of packed (``conversations``) samples; LLaMA2's EOS by default.
    """

    seq_length: int
    num_samples: int
    seed: int = 1234
    cache_dir: str | None = None
    valid_fraction: float = 0.0
    eod_id: int | None = None
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    exact_blend: bool = True
    shuffle_block: int | None = None
    use_loss_mask: bool = True
    pad_id: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.num_samples, (int, np.integer)) or self.num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {self.num_samples!r}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in [0, 1), got {self.valid_fraction}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.shuffle_block is not None and self.shuffle_block < 1:
            raise ValueError(f"shuffle_block must be >= 1, got {self.shuffle_block}")
        self.sample_options()  # validates seq_length and the EOD options

    def sample_options(self) -> SampleOptions:
        """The per-sample options shared by every source."""
        return SampleOptions(
            seq_length=self.seq_length,
            eod_id=self.eod_id,
            reset_position_ids=self.reset_position_ids,
            reset_attention_mask=self.reset_attention_mask,
            eod_mask_loss=self.eod_mask_loss,
            pad_id=self.pad_id,
        )


@dataclass(frozen=True)
class Segment:
    """A stretch of a run under one schedule.

    Attributes:
        start: first global sample position of the segment.
        schedule: the weight schedule in force from ``start``.
        num_samples: run length the schedule's fractional knots refer to; the segment runs up to
            the next segment's start, or to ``num_samples`` if it is the last.
    """

    start: int
    schedule: Schedule
    num_samples: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.num_samples < self.start:
            raise ValueError(
                f"segment: need 0 <= start <= num_samples, got start={self.start}, "
                f"num_samples={self.num_samples}"
            )


def check_segments(segments: Sequence[Segment]) -> None:
    """Raise ValueError unless the segments form a valid run plan."""
    if not segments:
        raise ValueError("a run needs at least one segment")
    if segments[0].start != 0:
        raise ValueError(f"the first segment must start at 0, got {segments[0].start}")
    for i in range(1, len(segments)):
        prev, seg = segments[i - 1], segments[i]
        if not prev.start < seg.start <= prev.num_samples:
            raise ValueError(
                f"segment {i} starts at {seg.start}: segments must start strictly after the "
                f"previous one ({prev.start}) and no later than its end ({prev.num_samples})"
            )


def segment_names(segments: Sequence[Segment]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every source of a run plan and each one's latest prefix.

    The current (last) schedule's sources come first, in its order, so that a sample's
    ``source_id`` is also its index in the current ``schedule.names`` (every sample read after
    a resume is drawn by the current schedule); sources only earlier segments used follow, in
    order of first appearance.
    """
    prefixes: dict[str, str] = {}
    for seg in segments:
        for name, prefix in zip(seg.schedule.names, seg.schedule.prefixes):
            if name in prefixes and prefixes[name] != prefix:
                logger.warning("source %s moved from %s to %s", name, prefixes[name], prefix)
            prefixes[name] = prefix
    owners: dict[str, str] = {}
    for name, prefix in prefixes.items():
        if prefix in owners:
            # Sources continue by name: a renamed source starts its order again from sample 0.
            logger.warning(
                "sources %s and %s read the same shard %s; each has its own sample numbering, so "
                "samples one has consumed can repeat in the other (rename to continue a source)",
                owners[prefix],
                name,
                prefix,
            )
        owners.setdefault(prefix, name)
    current = segments[-1].schedule.names
    names = tuple(current) + tuple(n for n in prefixes if n not in current)
    return names, tuple(prefixes[n] for n in names)


def build_segment_blend(
    segments: Sequence[Segment], exact: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The blend of a whole run plan: global source ids (into :func:`segment_names`) and samples.

    Returns:
        ``(dataset_index int16[N], dataset_sample_index int64[N])`` with ``N`` the last
        segment's ``num_samples``.
    """
    check_segments(segments)
    names, _ = segment_names(segments)
    gid = {n: i for i, n in enumerate(names)}
    total = segments[-1].num_samples
    dataset_index = np.empty(total, dtype=np.int16)
    sample_index = np.empty(total, dtype=np.int64)
    counts = np.zeros(len(names), dtype=np.int64)
    carry = np.zeros(len(names), dtype=np.float64)  # deficit W_k - count_k where a segment ends
    for i, seg in enumerate(segments):
        end = segments[i + 1].start if i + 1 < len(segments) else seg.num_samples
        if end == seg.start:
            continue
        sched, n = seg.schedule, seg.num_samples
        local = np.array([gid[name] for name in sched.names], dtype=np.int64)
        if seg.start == 0:
            di, dsi = build_blending_indices(sched, n, exact)
            start_deficit = np.zeros(len(local))
        else:
            di, dsi = build_blending_indices(
                sched,
                n,
                exact,
                start=seg.start,
                initial_counts=counts[local],
                initial_deficits=carry[local],
            )
            start_deficit = blending_deficits(sched, n, seg.start, counts[local])
        di, dsi = di[: end - seg.start], dsi[: end - seg.start]
        dataset_index[seg.start : end] = local[di]
        sample_index[seg.start : end] = dsi
        counts[local] += np.bincount(di, minlength=len(local))
        # Deficit where the segment ends = deficit at its start + weight accrued - samples drawn.
        carry[local] += blending_deficits(sched, n, end, counts[local]) - start_deficit
        removed = np.setdiff1d(np.arange(len(names)), local)
        carry[removed] = 0.0  # a source that comes back later starts without a debt
    return dataset_index, sample_index


SourceSpec = Schedule | Sequence[Segment]


class RetiredSource:
    """Stands in for a source that the current schedule dropped and whose shard is gone.

    It keeps the source's sample count (the blend needs it) and refuses reads; a resumed run never
    reads positions before its consumed count, where all of this source's samples lie.
    """

    def __init__(self, name: str, prefix: str, num_samples: int) -> None:
        self.name, self.prefix, self.num_samples = name, prefix, num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        raise RuntimeError(
            f"source {self.name!r} was dropped from the schedule and its shard {self.prefix} is "
            f"gone; sample {idx} of it lies before the resume point and cannot be read"
        )


class DynamicBlendedDataset(torch.utils.data.Dataset):
    """Samples of several sources mixed by a (piecewise) weight schedule; see the module docstring.

    Args:
        config: dataset configuration.
        schedule: a :class:`Schedule` (a fresh run of ``config.num_samples``) or the run's
            segments (resume; see :class:`chatflow.data.data_state.DataState`). The last segment's
            ``num_samples`` must equal ``config.num_samples``.
        cache: index cache; defaults to ``IndexCache(config.cache_dir)``.
    """

    def __init__(
        self,
        config: BlendedDatasetConfig,
        schedule: SourceSpec,
        cache: IndexCache | None = None,
    ) -> None:
        if isinstance(schedule, Schedule):
            segments: tuple[Segment, ...] = (Segment(0, schedule, config.num_samples),)
        else:
            segments = tuple(schedule)
        check_segments(segments)
        if segments[-1].num_samples != config.num_samples:
            raise ValueError(
                f"the last segment runs to {segments[-1].num_samples} samples but "
                f"config.num_samples is {config.num_samples}"
            )
        self.config = config
        self.segments = segments
        self.cache = cache or IndexCache(config.cache_dir)
        self.names, self.prefixes = segment_names(segments)
        # Sources of the current schedule must be readable; a source an earlier segment used and
        # the current one dropped may have had its shard deleted: it is never read again.
        current = segments[-1].schedule
        current.check_shards()

        description = {
            "version": BLEND_VERSION,
            "exact": config.exact_blend,
            "segments": [
                {
                    "start": s.start,
                    "num_samples": s.num_samples,
                    "schedule": s.schedule.fingerprint(),
                }
                for s in segments
            ],
        }

        def build() -> dict[str, np.ndarray]:
            di, dsi = build_segment_blend(segments, config.exact_blend)
            return {
                "dataset_index": di,
                "dataset_sample_index": dsi,
                "source_samples": np.bincount(di, minlength=len(self.names)).astype(np.int64),
            }

        arrays = self.cache.get_or_build("blend", description, build)
        self.dataset_index = arrays["dataset_index"]
        self.dataset_sample_index = arrays["dataset_sample_index"]
        #: Exact samples drawn from each source over the whole run (its dataset's length).
        self.source_samples = np.asarray(arrays["source_samples"])

        #: Each source's packing (windows / conversations), by position in ``names``.
        self.packings = resolve_packings(segments, self.names, self.prefixes, config.use_loss_mask)
        options = config.sample_options()
        if "conversations" in self.packings:
            # Packed samples carry a block-diagonal attention mask; every sample of a batch must
            # have the same fields, so windows get a dense (causal) one too.
            options = dataclasses.replace(options, attention_mask=True)
        self.sample_options = options
        self._padding: list[np.ndarray | None] | None = None  # per-sample padding, built lazily
        self.sources: list[SourceDataset | RetiredSource] = []
        for name, prefix, count, packing in zip(
            self.names, self.prefixes, self.source_samples, self.packings
        ):
            if name not in current.names and not shard_exists(prefix):
                logger.warning(
                    "source %s (dropped from the schedule) has no shard at %s any more; "
                    "its %d past samples cannot be read again",
                    name,
                    prefix,
                    count,
                )
                self.sources.append(RetiredSource(name, prefix, int(count)))
                continue
            self.sources.append(
                SourceDataset(
                    prefix,
                    int(count),
                    options,
                    config.seed,
                    valid_fraction=config.valid_fraction,
                    shuffle_block=config.shuffle_block,
                    cache=self.cache,
                    name=name,
                    use_loss_mask=config.use_loss_mask,
                    packing=packing,
                )
            )
        logger.info(
            "blended dataset: %d samples from %d sources in %d segment(s): %s",
            len(self),
            len(self.names),
            len(segments),
            ", ".join(f"{n}={c}" for n, c in zip(self.names, self.source_samples)),
        )

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # sources pickle themselves cheaply
        for key in ("dataset_index", "dataset_sample_index"):
            state[key] = pickle_array(state[key])
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for key in ("dataset_index", "dataset_sample_index"):
            setattr(self, key, unpickle_array(state[key]))

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        k = int(self.dataset_index[idx])
        sample = self.sources[k][int(self.dataset_sample_index[idx])]
        sample["source_id"] = torch.tensor(k, dtype=torch.int64)
        if "num_pad" not in sample:  # windows: no padding; the field keeps batches uniform
            sample["num_pad"] = torch.tensor(0, dtype=torch.int64)
        return sample

    def padding_between(self, start: int, end: int) -> dict[str, int]:
        """Padded input positions among global samples ``[start, end)``, per source name.

        Exact and local (read off the indices), so the trainer can count real tokens without
        reducing anything across ranks.
        """
        if not 0 <= start <= end <= len(self):
            raise ValueError(f"[{start}, {end}) outside [0, {len(self)}]")
        if self._padding is None:
            self._padding = [
                s.sample_padding() if isinstance(s, SourceDataset) else None for s in self.sources
            ]
        src = np.asarray(self.dataset_index[start:end])
        idx = np.asarray(self.dataset_sample_index[start:end])
        out = {}
        for k, name in enumerate(self.names):
            pad = self._padding[k]
            out[name] = int(pad[idx[src == k]].sum()) if pad is not None and pad.any() else 0
        return out

    def packing_stats(self) -> dict[str, dict[str, float]]:
        """Per source name: padding share and split/truncation counts of its samples (see
        :meth:`SourceDataset.packing_stats`; empty for a retired source)."""
        return {
            name: source.packing_stats() if isinstance(source, SourceDataset) else {}
            for name, source in zip(self.names, self.sources)
        }

    def source_counts(self, position: int) -> dict[str, int]:
        """Samples of each source among global positions ``[0, position)``, by name."""
        if not 0 <= position <= len(self):
            raise ValueError(f"position {position} outside [0, {len(self)}]")
        counts = np.bincount(np.asarray(self.dataset_index[:position]), minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, counts)}

    def validation_datasets(self, num_samples: int | None = None) -> dict[str, SourceDataset]:
        """Per-source validation datasets on held-out documents of the current schedule's sources.

        A source whose held-out documents are too few for a sample (a tiny shard) is left out,
        with a warning, rather than failing the run.

        Args:
            num_samples: samples per source; ``None`` for one pass over its held-out tokens.
        """
        cfg = self.config
        if cfg.valid_fraction <= 0:
            raise ValueError("validation needs BlendedDatasetConfig.valid_fraction > 0")
        out = {}
        for name in self.segments[-1].schedule.names:
            source = self.sources[self.names.index(name)]
            sizes = source.data.sequence_lengths
            _, held_out = split_documents(len(sizes), cfg.valid_fraction, cfg.seed)
            tokens = count_tokens(sizes, held_out)
            if tokens == 0 or (num_samples is None and tokens <= cfg.seq_length):
                logger.warning(
                    "%s: %d held-out documents hold %d tokens, too few for validation samples "
                    "of %d; no validation for this source",
                    name, len(held_out), tokens, cfg.seq_length,
                )  # fmt: skip
                continue
            out[name] = SourceDataset(
                source.prefix,
                num_samples,
                self.sample_options,
                cfg.seed,
                split="valid",
                valid_fraction=cfg.valid_fraction,
                cache=self.cache,
                name=name,
                use_loss_mask=cfg.use_loss_mask,
                packing=source.packing,
            )
        return out


def resolve_packings(
    segments: Sequence[Segment], names: Sequence[str], prefixes: Sequence[str], use_loss_mask: bool
) -> tuple[str, ...]:
    """Each source's packing: as its latest segment's schedule sets it, else ``conversations``
    for a shard with a loss-mask shard (when masks are read) and ``windows`` otherwise."""
    given: dict[str, list[str | None]] = {}
    for seg in segments:
        for src in seg.schedule.sources:
            given.setdefault(src.name, []).append(src.packing)
    out = []
    for name, prefix in zip(names, prefixes):
        has_mask = use_loss_mask and shard_exists(loss_mask_prefix(prefix))
        default = "conversations" if has_mask else "windows"
        modes = [m or default for m in given.get(name, [None])]
        if len(set(modes)) > 1:
            # Sample j of a source means another sample under another packing: a resume that
            # switches it neither continues nor repeats that source's order exactly.
            logger.warning(
                "source %s changes packing across the run's segments (%s); its samples after the "
                "change follow the %s order from the same count", name, " -> ".join(modes),
                modes[-1],
            )  # fmt: skip
        out.append(modes[-1])
    return tuple(out)
