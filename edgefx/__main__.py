"""Allow ``python -m edgefx``."""

from edgefx.launch import main

main()
