#!/usr/bin/env python3
"""``python tools/convert_hf_checkpoint.py`` runs :func:`chatflow.cli.convert_hf_checkpoint.main` (see its module for usage)."""

import sys

from chatflow.cli.convert_hf_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
