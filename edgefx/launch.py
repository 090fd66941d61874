"""Entry point of the ``edgefx`` console script.

The command line imports typer and rich before any command runs. Ctrl-C in that first
fraction of a second would otherwise end in a KeyboardInterrupt traceback, so this
module, which imports nothing heavy itself, turns it into the one-line message and the
exit status 130 that an interrupted command gives.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line; an interrupt before a command starts exits with 130."""
    try:
        from edgefx.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
