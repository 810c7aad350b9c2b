#!/usr/bin/env python3
"""``python tools/merge_datasets.py`` runs :func:`chatflow.cli.merge_datasets.main` (see its module for usage)."""

import sys

from chatflow.cli.merge_datasets import main

if __name__ == "__main__":
    sys.exit(main())
