#!/usr/bin/env python3
"""Shim: ``python tools/plot_schedule.py`` runs :func:`chatflow.cli.plot_schedule.main`.

The tool lives in ``chatflow.cli.plot_schedule``,
also installed as a console script; see that module for usage.
"""

import sys

from chatflow.cli.plot_schedule import main

if __name__ == "__main__":
    sys.exit(main())
