"""Allow ``python -m edgefx``."""

from edgefx.cli import main

main()
