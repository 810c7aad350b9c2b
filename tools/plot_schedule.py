#!/usr/bin/env python3
"""``python tools/plot_schedule.py`` runs :func:`chatflow.cli.plot_schedule.main` (see its module for usage)."""

import sys

from chatflow.cli.plot_schedule import main

if __name__ == "__main__":
    sys.exit(main())
