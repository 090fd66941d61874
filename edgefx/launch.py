"""Entry point of the ``edgefx`` console script.

The command line imports typer and rich before any command runs. Ctrl-C in that first
fraction of a second would otherwise end in a KeyboardInterrupt traceback, and Ctrl-C
while typer parses the command line in a silent exit. This module, which imports
nothing heavy itself, turns both into the one-line message and the exit status 130
that an interrupted command gives.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130


def main() -> None:
    """Run the command line; an interrupt before a command starts exits with 130."""
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
