"""Command-line entry points: argument parsing, progress output and exit codes only.

Each module has ``main(argv: list[str] | None = None) -> int``; ``tools/<name>.py`` and the
``chatflow-*`` console scripts call it. The work itself lives in the library modules.
"""
