"""What a person watching a long command sees (`dapt run`, `dapt validate`, `dapt adapt|finetune|evaluate|
export`, `dapt demo`).

* stderr is a terminal: a live progress bar per stage and sub-stage (adaptation steps, fine-tuning steps,
  export, validation, ...) with its count, elapsed time and ETA, fed by the events of ``models.progress``;
  log lines (Prefect's, the stages' own) scroll above the bars.
* anything else (a log file, CI, a pipe): the same plain lines as before, plus ``<stage>: still working
  (m:ss)`` whenever nothing was printed for ``QUIET_S`` seconds, so a run never goes silent for long.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

from models import progress as events

# Lines come at most this far apart in plain mode (plus the watchdog's half-second tick).
QUIET_S = 5.0
_active: list[Callable[[str], None]] = []


def say(line: str) -> None:
    """A progress line: above the bars in a terminal, a plain stderr line elsewhere."""
    if _active:
        _active[-1](line)
    else:
        Console(stderr=True).print(f"[dim]{escape(line)}[/dim]", highlight=False, soft_wrap=True)


def use_bars(console: Console) -> bool:
    return console.is_terminal and not console.is_dumb_terminal


@contextmanager
def watched(console: Console, idle: str = "working") -> Iterator[Callable[[str], None]]:
    """Show progress on ``console`` (stderr) for the duration; yields the ``say`` to hand to the stages."""
    with _bars(console) if use_bars(console) else _lines(console, idle) as show:
        _active.append(show)
        try:
            yield show
        finally:
            _active.remove(show)


# --------------------------------------------------------------------------------------------- plain lines


_heard: list[logging.Handler] = []


class _Heard(logging.Handler):
    """Counts any log record as a line heard (Prefect's console handler prints them)."""

    def __init__(self, watchdog: events.Watchdog):
        super().__init__(level=logging.NOTSET)
        self.watchdog = watchdog

    def emit(self, record: logging.LogRecord) -> None:
        self.watchdog.heard()


@contextmanager
def _lines(console: Console, idle: str) -> Iterator[Callable[[str], None]]:
    def show(line: str) -> None:
        console.print(f"[dim]{escape(line)}[/dim]", highlight=False, soft_wrap=True)
        watchdog.heard()

    watchdog = events.Watchdog(lambda line: show(f"[dapt] {line}"), quiet_s=QUIET_S, idle=idle)
    handler = _Heard(watchdog)
    _heard.append(handler)
    logging.getLogger().addHandler(handler)
    try:
        with events.listening(watchdog), watchdog:
            yield show
    finally:
        _heard.remove(handler)
        logging.getLogger().removeHandler(handler)


# ---------------------------------------------------------------------------------------------------- bars


def _progress_columns():
    from rich.progress import (
        BarColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (
        SpinnerColumn(finished_text="[green]✓[/green]"),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


class _Board:
    """Turns ``models.progress`` events into rich progress tasks: one row per stage, one per counted loop
    inside it (the training steps, the head warm-up's encoding, ...); a stage's end finishes its rows."""

    def __init__(self, bars):
        self.bars = bars
        self.rows: dict[str, int] = {}
        self.open: list[tuple[str, int]] = []  # stages in progress, with the number of rows when each began

    def _row(self, label: str, total: int | None) -> int:
        row = self.rows.get(label)
        if row is None or self.bars.tasks[self._index(row)].finished:
            if row is not None:  # a stage that runs again (a second fine-tune, say) gets a new row
                self.rows.pop(label)
            row = self.bars.add_task(label.strip("[]").replace("] ", ": "), total=total, count="")
            self.rows[label] = row
        return row

    def _index(self, row: int) -> int:
        return next(i for i, task in enumerate(self.bars.tasks) if task.id == row)

    def __call__(self, event: str, label: str, done: int = 0, total: int = 0) -> None:
        if event == "start":
            self.open.append((label, len(self.bars.tasks)))
            self.rows.pop(label, None)
            self._row(label, None)
        elif event == "advance":
            row = self._row(label, total or None)
            self.bars.update(
                row, completed=done, total=total or None, count=f"{done}/{total}" if total else ""
            )
        elif event == "end":
            first = None
            for index in range(len(self.open) - 1, -1, -1):
                if self.open[index][0] == label:
                    first = self.open.pop(index)[1]
                    break
            for task in self.bars.tasks[first if first is not None else 0 :]:
                if not task.finished:
                    total = task.total or max(1, int(task.completed))
                    self.bars.update(task.id, total=total, completed=total)


def _prefect_consoles() -> list:
    """Prefect's console log handlers (each holds a rich Console on the real stderr)."""
    try:
        from prefect.logging.handlers import PrefectConsoleHandler
    except ImportError:
        return []
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return [h for logger in loggers for h in logger.handlers if isinstance(h, PrefectConsoleHandler)]


_swapped: list[tuple] = []  # (handler, its stream, its console's file) while bars are up


def adopt_log_handlers() -> None:
    """Call after importing Prefect, whose logging set-up replaces the root logger's handlers: in plain mode the
    log records count as lines heard again; while bars are up, Prefect's console handlers print above them."""
    root = logging.getLogger()
    for handler in _heard:
        if handler not in root.handlers:
            root.addHandler(handler)
    if not _bars_up:
        return
    known = {id(handler) for handler, _stream, _file in _swapped}
    for handler in _prefect_consoles():
        if id(handler) not in known:
            # They hold the stderr they were created with; while the bars are up, sys.stderr is rich's proxy,
            # which prints above the bars.
            _swapped.append((handler, handler.stream, handler.console.file))
            handler.stream = handler.console.file = sys.stderr


_bars_up: list[bool] = []


@contextmanager
def _bars(console: Console) -> Iterator[Callable[[str], None]]:
    from rich.progress import Progress

    bars = Progress(*_progress_columns(), console=console, refresh_per_second=4, redirect_stderr=True)

    def show(line: str) -> None:
        bars.console.print(f"[dim]{escape(line)}[/dim]", highlight=False, soft_wrap=True)

    with bars, events.listening(_Board(bars)):
        _bars_up.append(True)
        adopt_log_handlers()
        try:
            yield show
        finally:
            _bars_up.pop()
            while _swapped:
                handler, stream, file = _swapped.pop()
                handler.stream, handler.console.file = stream, file
