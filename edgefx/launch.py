"""Entry point of the ``edgefx`` console script.

The command line imports typer and rich before any command runs. Ctrl-C in that first
fraction of a second would otherwise end in a KeyboardInterrupt traceback, and Ctrl-C
while typer parses the command line in a silent exit. This module, which imports
nothing heavy itself, turns both into the one-line message and the exit status 130
that an interrupted command gives. It also drops a terminal size that rich would take
literally and render nothing with.
"""

from __future__ import annotations

import os
import sys

INTERRUPTED = 130


def drop_unusable_terminal_size() -> None:
    """Remove COLUMNS or LINES when it is set but not a positive whole number.

    rich ignores text such as "abc" but takes 0 as a width of zero columns, which
    prints no table, no error line and no summary.
    """
    for name in ("COLUMNS", "LINES"):
        value = os.environ.get(name)
        if value is not None and not (value.strip().isdigit() and int(value) > 0):
            del os.environ[name]


def main() -> None:
    """Run the command line; an interrupt before a command starts exits with 130."""
    drop_unusable_terminal_size()
    try:
        from edgefx.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(INTERRUPTED)
    except SystemExit as exit_:
        common = sys.modules.get("edgefx.cli._common")
        reported = common is not None and common.stop_reported()
        if exit_.code == INTERRUPTED and not reported:
            sys.stderr.write("interrupted\n")
        raise
