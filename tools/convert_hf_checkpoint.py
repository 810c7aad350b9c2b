#!/usr/bin/env python3
"""Shim: ``python tools/convert_hf_checkpoint.py`` runs
:func:`chatflow.cli.convert_hf_checkpoint.main`.

The tool lives in ``chatflow.cli.convert_hf_checkpoint``,
also installed as a console script; see that module for usage.
"""

import sys

from chatflow.cli.convert_hf_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
