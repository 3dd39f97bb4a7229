"""The `dapt` command's exit codes, in one place (documented in README.md, "Interfaces → CLI").

Cron jobs and CI read these: 0 means the command did what it was asked, anything else means it did not.
Imports nothing, so every CLI module can use it without an import cycle.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # The command ran and the outcome is a failure: a data contract failed, a registry lookup found nothing,
    # the flow or a stage raised at run time.
    FAILURE = 1
    # The command line or its input is wrong: unknown option, missing argument, a value of the wrong type,
    # a recipe that does not parse, a folder that cannot be used. Fix the command and run it again.
    USAGE = 2
    # `dapt run` registered the candidate but the promotion gate refused it (or `dapt models promote` was
    # refused): the alias did not move. Inspect it, or force it with a reason.
    GATE_REFUSED = 3
    # Interrupted with Ctrl-C (128 + SIGINT), as shells report it.
    INTERRUPTED = 130
