"""One vocabulary-expansion run: pieces in, expanded tokenizer (and resized HF checkpoint) out.

The steps of :mod:`chatflow.vocab` in the order a user runs them: read or mine the new pieces,
append them to the model, write ``.model`` and ``.vocab`` atomically, measure tokens per Chinese
character before and after on a sample, and optionally resize an HF ``LlamaForCausalLM``
checkpoint (:mod:`chatflow.vocab_resize`). ``tools/expand_vocab.py`` parses flags into a
:class:`VocabExpansionJob` and prints the :class:`VocabExpansionSummary`.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatflow import vocab
from chatflow.data.jsonl_reader import expand_inputs
from chatflow.fileio import atomic_write
from chatflow.tokenizer import write_vocab_file
from chatflow.vocab_resize import resize_hf_model


@dataclass
class VocabExpansionJob:
    """What to add to which tokenizer, and where to write the results."""

    tokenizer_model: str
    """The old sentencepiece model."""
    output: str
    """Path of the expanded ``.model`` (a ``.vocab`` is written beside it)."""
    add_chars: str | None = None
    """UTF-8 file, one piece per line; exclusive with ``mine_corpus``."""
    mine_corpus: list[str] | None = None
    """JSONL files or globs whose most frequent new CJK characters are added."""
    top_n: int = 8076
    """Pieces to mine (the paper's 8,076)."""
    min_count: int = 1
    """Ignore mined characters rarer than this."""
    piece_type: str = "normal"
    """``normal`` (BPE pieces) or ``user_defined`` (always one token)."""
    sample: list[str] | None = None
    """JSONL for the tokens-per-character figure (default: the mined corpus)."""
    sample_size: int = 2000
    """Texts in the sample."""
    hf_model_dir: str | None = None
    """HF checkpoint to resize (with ``output_hf_dir``)."""
    output_hf_dir: str | None = None
    """Where the resized HF checkpoint goes."""
    skip_bad_records: bool = False
    """Mining: skip bad JSONL lines instead of failing."""

    def __post_init__(self) -> None:
        if (self.add_chars is None) == (self.mine_corpus is None):
            raise ValueError("give exactly one of add_chars and mine_corpus")
        if bool(self.hf_model_dir) != bool(self.output_hf_dir):
            raise ValueError("hf_model_dir and output_hf_dir go together")


@dataclass
class VocabExpansionSummary:
    """What a finished run added and measured."""

    result: vocab.ExpansionResult
    """The expansion itself (added, skipped, sizes)."""
    sample_texts: int = 0
    """Texts the tokens-per-character figure was measured on (0: not measured)."""
    tokens_per_char: tuple[float, float] | None = None
    """Tokens per Chinese character with the old and the new model."""
    hf_rows: tuple[int, int] | None = None
    """Embedding rows of the HF checkpoint before and after the resize."""


def expand_vocabulary(job: VocabExpansionJob) -> VocabExpansionSummary:
    """Run ``job``; see the module docstring.

    Raises:
        ValueError: bad pieces or models, or nothing to add.
        JsonlError: a bad corpus line (unless ``skip_bad_records``).
        FileNotFoundError: a missing input.
    """
    old = vocab.load_proto(job.tokenizer_model)
    if job.add_chars is not None:
        pieces = vocab.read_piece_file(job.add_chars)
    else:
        corpus = expand_inputs(job.mine_corpus)
        mined = vocab.mine_corpus(corpus, old, job.top_n, job.min_count, job.skip_bad_records)
        if not mined:
            raise ValueError("nothing to add: every CJK character of the corpus is a piece")
        pieces = [c for c, _ in mined]
    result = vocab.expand_model(old, pieces, job.piece_type)
    atomic_write(job.output, result.model_proto)
    write_vocab_file(job.output, result.model_proto)
    summary = VocabExpansionSummary(result)
    sample_files = job.sample or job.mine_corpus
    if sample_files:
        texts = vocab.sample_chinese_texts(expand_inputs(sample_files), job.sample_size)
        if texts:
            summary.sample_texts = len(texts)
            summary.tokens_per_char = (
                vocab.tokens_per_char(old, texts),
                vocab.tokens_per_char(result.model_proto, texts),
            )
    if job.hf_model_dir:
        hf = resize_hf_model(job.hf_model_dir, job.output_hf_dir, old, result.model_proto)
        summary.hf_rows = (hf["old_rows"], hf["new_rows"])
    return summary
