#!/usr/bin/env python3
"""Shim: ``python tools/build_index.py`` runs :func:`chatflow.cli.build_index.main`.

The tool lives in ``chatflow.cli.build_index``,
also installed as a console script; see that module for usage.
"""

import sys

from chatflow.cli.build_index import main

if __name__ == "__main__":
    sys.exit(main())
