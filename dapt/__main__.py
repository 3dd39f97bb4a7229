"""`python -m dapt ...` is the `dapt` command."""

from dapt.cli import main

main()
