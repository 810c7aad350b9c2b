#!/usr/bin/env python3
"""Merge Megatron ``.bin``/``.idx`` token shards into one, loss-mask shards included.

Inputs are shard prefixes or directories (every shard in a directory, sorted by name, as Megatron's
``tools/merge_datasets.py`` does). Documents keep their input order. A token shard whose loss-mask
shard (``<prefix>_loss_mask``, see :func:`chatflow.data.templates.loss_mask_prefix`) exists
carries it along: the merged output then gets a merged mask shard with the same document order.
Mixing inputs with and without masks is an error unless ``--fill-missing-masks`` is given, which
writes an all-ones mask (train on every token) for maskless inputs, e.g. to merge plain text into an
instruction shard.

Example::

    python tools/merge_datasets.py --input shards/ --output-prefix merged/all_text_document
"""

from __future__ import annotations

import argparse
import os
import sys

from chatflow.data.indexed_dataset import IndexedDatasetError
from chatflow.data.merge import MASK_SUFFIX, find_shards, merge


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-merge`` / ``tools/merge_datasets.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--input", nargs="+", required=True, help="shard prefixes and/or directories of shards"
    )
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument(
        "--fill-missing-masks",
        action="store_true",
        help="give maskless inputs an all-ones mask when others have masks",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="merge shards whose .meta.json sidecars name different tokenizers (a warning)",
    )
    args = parser.parse_args(argv)
    try:
        out = os.path.abspath(args.output_prefix)
        prefixes = find_shards(args.input, exclude=(out, out + MASK_SUFFIX))
        stats = merge(prefixes, args.output_prefix, args.fill_missing_masks, args.force)
    except (IndexedDatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"merged {stats.inputs} shard(s): {stats.documents:,} documents, "
        f"{stats.tokens:,} tokens -> {args.output_prefix}"
        + (f" (+ mask {stats.mask})" if stats.mask else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
