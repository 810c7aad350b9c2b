#!/usr/bin/env python3
"""Shim: ``python tools/preprocess_data.py`` runs :func:`chatflow.cli.preprocess_data.main`.

The tool lives in ``chatflow.cli.preprocess_data``,
also installed as a console script; see that module for usage.
"""

import sys

from chatflow.cli.preprocess_data import main

if __name__ == "__main__":
    sys.exit(main())
