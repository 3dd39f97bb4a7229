"""`python -m dapt.cli ...` is the `dapt` command."""

from dapt.cli.app import main

main()
