"""Progress of long work, for people watching a run.

Two channels, neither of which needs the CLI or Prefect:

* lines: ``Heartbeat`` says ``label: done/total (p%), ETA m:ss`` at most every few seconds through the ``say``
  callable a stage was given (Prefect's log in a flow, stderr in a single-stage command, CI logs alike);
* events: ``stage(label)`` and ``advance(label, done, total)`` go to whoever ``listening()`` registered (the CLI
  draws a progress bar per stage from them in a terminal, and says "still working" when a stage goes quiet).
  Nobody listening: they cost a list lookup.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

INTERVAL_S = 10.0

# (event, label, done, total); event is "start" or "end" of a stage, or "advance" within one (total 0: unknown).
Listener = Callable[[str, str, int, int], None]
_listeners: list[Listener] = []
_listeners_lock = threading.Lock()
_log = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])


def emit(event: str, label: str, done: int = 0, total: int = 0) -> None:
    """Tell every listener; a listener that fails is logged and skipped (a display never breaks a run)."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event, label, done, total)
        except Exception:  # noqa: BLE001
            _log.debug("progress listener failed", exc_info=True)


def advance(label: str, done: int, total: int) -> None:
    """``done`` of ``total`` units of ``label`` are finished (steps, batches)."""
    emit("advance", label, done, total)


@contextmanager
def stage(label: str) -> Iterator[None]:
    """Marks a stage (validate, adapt, fine-tune, ...) from start to end, also when it raises."""
    emit("start", label)
    try:
        yield
    finally:
        emit("end", label)


def staged(label: str) -> Callable[[_F], _F]:
    """Decorator form of ``stage``."""

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with stage(label):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    with _listeners_lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _listeners_lock:
            _listeners.remove(listener)


class Heartbeat:
    """``beat(done)`` says ``label: done/total (p%), ETA m:ss`` when ``INTERVAL_S`` passed since the last line
    (and reports every beat to the listeners, for a bar)."""

    def __init__(
        self, say: Callable[[str], None] | None, label: str, total: int, interval_s: float = INTERVAL_S
    ):
        self.say, self.label, self.total, self.interval_s = say, label, max(1, total), interval_s
        self.started = self.last = time.monotonic()

    def beat(self, done: int) -> None:
        advance(self.label, done, self.total)
        now = time.monotonic()
        if self.say is None or now - self.last < self.interval_s:
            return
        self.last = now
        self.say(
            f"{self.label}: {done}/{self.total} ({done / self.total:.0%}){eta(now - self.started, done, self.total)}"
        )


def eta(elapsed_s: float, done: int, total: int) -> str:
    """``", ETA m:ss"`` from the pace so far ('' before the first unit is done)."""
    if done <= 0 or done >= total:
        return ""
    remaining = elapsed_s / done * (total - done)
    return f", ETA {int(remaining // 60)}:{int(remaining % 60):02d}"


class Watchdog:
    """Says ``<stage>: still working (m:ss)`` whenever nothing was heard for ``quiet_s``: the calls that report
    nothing themselves (imports, a server start, an ONNX export, a Great Expectations run) never leave a
    silence longer than that. Call ``heard()`` whenever a line goes out; stage events come as a listener."""

    def __init__(self, say: Callable[[str], None], quiet_s: float = 7.0, idle: str = "working"):
        self.say, self.quiet_s, self.idle = say, quiet_s, idle
        self.stages: list[tuple[str, float]] = []
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dapt-progress-watchdog", daemon=True)

    def heard(self) -> None:
        self.last = time.monotonic()

    def __call__(self, event: str, label: str, done: int = 0, total: int = 0) -> None:
        if event == "start":
            self.stages.append((label, time.monotonic()))
        elif event == "end":
            for index in range(len(self.stages) - 1, -1, -1):
                if self.stages[index][0] == label:
                    del self.stages[index]
                    break

    def line(self, now: float) -> str:
        if self.stages:
            label, started = self.stages[-1]
            return f"{label}: still working ({clock(now - started)})"
        return f"still {self.idle}"

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            if now - self.last >= self.quiet_s:
                self.last = now
                try:
                    self.say(self.line(now))
                except Exception:  # noqa: BLE001 - a closed stream at exit, say: never kill the run for it
                    _log.debug("watchdog line failed", exc_info=True)

    def __enter__(self) -> Watchdog:
        self.last = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def clock(seconds: float) -> str:
    """``m:ss``."""
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
