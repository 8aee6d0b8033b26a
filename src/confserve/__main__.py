"""`python -m confserve` runs the command line (the same as the `confserve` script)."""

from confserve.cli import main

main()
