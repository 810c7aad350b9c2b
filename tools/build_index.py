#!/usr/bin/env python3
"""``python tools/build_index.py`` runs :func:`chatflow.cli.build_index.main` (see its module for usage)."""

import sys

from chatflow.cli.build_index import main

if __name__ == "__main__":
    sys.exit(main())
