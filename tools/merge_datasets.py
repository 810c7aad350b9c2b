#!/usr/bin/env python3
"""Shim: ``python tools/merge_datasets.py`` runs :func:`chatflow.cli.merge_datasets.main`.

The tool lives in ``chatflow.cli.merge_datasets``,
also installed as a console script; see that module for usage.
"""

import sys

from chatflow.cli.merge_datasets import main

if __name__ == "__main__":
    sys.exit(main())
