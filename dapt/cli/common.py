"""What every CLI module shares: the consoles, the user-facing error, reading a recipe, a run folder.

The command modules import from here, never from each other, so the CLI has no import cycle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from dapt.exit_codes import ExitCode

if TYPE_CHECKING:
    from models.recipe import Recipe

console = Console()
err = Console(stderr=True)


class UserError(Exception):
    """A problem the user can act on, printed as one red line (no traceback).

    The exit code says which kind: ``ExitCode.USAGE`` (2, the default) for a wrong command or input,
    ``ExitCode.FAILURE`` (1) when the command ran and failed, ``ExitCode.GATE_REFUSED`` (3).
    """

    def __init__(self, message: str, exit_code: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)


def read_recipe(path: Path) -> Recipe:
    """The validated recipe with its data files present, or UserError saying what is wrong."""
    from models.recipe import RecipeError, load_usable_recipe

    try:
        return load_usable_recipe(path)
    except RecipeError as exc:
        raise UserError(str(exc)) from None


def run_folder(out: Path | None, stage: str, name: str) -> Path:
    """``out``, or DAPT_HOME/runs/<stage>-<time>-<name>; created, absolute."""
    from models.settings import runs_dir

    path = out or runs_dir() / f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{name}"
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
