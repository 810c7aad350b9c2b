#!/usr/bin/env python3
"""``python tools/train_tokenizer.py`` runs :func:`chatflow.cli.train_tokenizer.main` (see its module for usage)."""

import sys

from chatflow.cli.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
