#!/usr/bin/env python3
"""Shim: ``python tools/train_tokenizer.py`` runs :func:`chatflow.cli.train_tokenizer.main`.

The tool lives in ``chatflow.cli.train_tokenizer``,
also installed as a console script; see that module for usage.
"""

import sys

from chatflow.cli.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
