#!/usr/bin/env python3
"""``python tools/expand_vocab.py`` runs :func:`chatflow.cli.expand_vocab.main` (see its module for usage)."""

import sys

from chatflow.cli.expand_vocab import main

if __name__ == "__main__":
    sys.exit(main())
