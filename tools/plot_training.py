#!/usr/bin/env python3
"""``python tools/plot_training.py`` runs :func:`chatflow.cli.plot_training.main` (see its module for usage)."""

import sys

from chatflow.cli.plot_training import main

if __name__ == "__main__":
    sys.exit(main())
