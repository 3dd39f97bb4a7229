"""The `dapt` command line (Typer): app.py (run, validate, serve, demo, bento, schedule), stages.py (adapt,
finetune, evaluate, export), versions.py (`dapt models ...`), ui.py, and common.py (what they share)."""

from dapt.cli.app import app, main, run_cli

__all__ = ["app", "main", "run_cli"]
