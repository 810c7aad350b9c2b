#!/usr/bin/env python3
"""Shim: ``python tools/expand_vocab.py`` runs :func:`chatflow.cli.expand_vocab.main`.

The tool lives in ``chatflow.cli.expand_vocab``,
also installed as a console script; see that module for usage.
"""

import sys

from chatflow.cli.expand_vocab import main

if __name__ == "__main__":
    sys.exit(main())
