#!/usr/bin/env python3
"""Generate a large bilingual zh/en JSONL corpus for a LLaMA-style 32k-piece tokenizer.

The embedded sample corpus (``make_sample_corpus.py``) is too small and too repetitive to fill a
32,000-piece vocabulary, which is what LLaMA2 has and what speed and tokenization figures must be
measured with. This script writes ``{"text": ...}`` documents, half Chinese and half English, in
two kinds, alternating at random:

- paragraphs of the sample corpus's bilingual templates (real words, so the common characters
  and words of the sample corpus get their own pieces, as in a real tokenizer);
- instruction records of the sample corpus rendered with the ChatFlow template
  (``### Instruction:... ### Response:...``), so the template's characters are pieces too;
- Zipf-distributed synthetic text: English-like words made of syllables, and Chinese "words" of
  1-4 characters drawn from the sample corpus's characters plus the first 4,000 code points of
  the CJK block. This gives the long tail of distinct words that a 32k BPE vocabulary needs.

``python examples/data/make_bilingual_corpus.py --output corpus.jsonl --size-mb 30``; the same
seed and size always produce byte-identical files. The shipped 32k tokenizer
``examples/tokenizer/bilingual_32k.model`` that tests and benchmarks use is trained on it
(``make tokenizer-32k``; see docs/data.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONSONANTS = "b c d f g h j k l m n p r s t v w z ch sh th st tr pl br".split()
_VOWELS = "a e i o u ai ea ou io ee oo".split()
_ENDINGS = ["", "", "n", "s", "t", "r", "ng", "ed", "ing"]


def _sample_corpus():
    spec = importlib.util.spec_from_file_location(
        "make_sample_corpus", os.path.join(_HERE, "make_sample_corpus.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _zipf(rng: random.Random, words: list[str], n: int) -> list[str]:
    # u**3 puts most draws at the head of the list: a long-tailed, Zipf-like word frequency.
    return [words[int(len(words) * rng.random() ** 3)] for _ in range(n)]


def _vocabularies(rng: random.Random, sample_text: str) -> tuple[list[str], list[str]]:
    en: dict[str, None] = {}
    while len(en) < 60000:
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        w = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        en[w + rng.choice(_ENDINGS)] = None
    sample_chars = sorted({c for c in sample_text if "\u4e00" <= c <= "\u9fff"})
    chars = sample_chars + [chr(c) for c in range(0x4E00, 0x4E00 + 4000)]
    zh: dict[str, None] = {}
    while len(zh) < 50000:
        head = rng.choice((len(sample_chars), 1500, len(chars)))  # common characters recur more
        n = rng.choice((1, 2, 2, 2, 3, 4))
        zh["".join(rng.choice(chars[:head]) for _ in range(n))] = None
    return list(en), list(zh)


def _synthetic(rng: random.Random, words: list[str], zh: bool) -> str:
    sentences = []
    for _ in range(rng.randint(2, 8)):
        w = _zipf(rng, words, rng.randint(5, 20))
        if zh:
            sentences.append("".join(w) + rng.choice("。。。！？，"))
        else:
            s = " ".join(w)
            sentences.append(s[0].upper() + s[1:] + rng.choice(["."] * 3 + ["!", "?", ","]))
    return ("" if zh else " ").join(sentences)


def generate(path: str, size_mb: float, seed: int = 1234) -> tuple[int, int]:
    """Write the corpus to ``path`` (atomically); returns ``(documents, bytes)``."""
    gen = _sample_corpus()
    rng = random.Random(seed)
    pool = [gen.paragraph_pair(rng, 2, 6) for _ in range(5000)]
    en_words, zh_words = _vocabularies(rng, "".join(p[0] for p in pool))
    target = int(size_mb * 1e6)
    written = docs = 0
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            zh = rng.random() < 0.5
            kind = rng.random()
            if kind < 0.1:
                pick = rng.randrange(3)
                if pick == 0:
                    rec = gen.arithmetic(rng, zh)
                else:
                    rec = (gen.capital_question, gen.translation_request)[pick - 1](rng)
                prompt = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
                text = f"### Instruction:{prompt} ### Response:{rec['output']}"
            elif kind < 0.5:
                parts = [p[0] if zh else p[1] for p in rng.choices(pool, k=rng.randint(1, 8))]
                text = ("" if zh else " ").join(parts)
            else:
                text = _synthetic(rng, zh_words if zh else en_words, zh)
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            docs += 1
    os.replace(tmp, path)
    return docs, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--size-mb", type=float, default=30)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    docs, nbytes = generate(args.output, args.size_mb, args.seed)
    print(f"wrote {args.output}: {docs:,} documents, {nbytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
