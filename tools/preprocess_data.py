#!/usr/bin/env python3
"""``python tools/preprocess_data.py`` runs :func:`chatflow.cli.preprocess_data.main` (see its module for usage)."""

import sys

from chatflow.cli.preprocess_data import main

if __name__ == "__main__":
    sys.exit(main())
