"""Progress lines for long loops: a line at most every few seconds with the count and an ETA, so a run never
goes silent for long (in a terminal, in Prefect's log and in CI alike)."""

from __future__ import annotations

import time
from collections.abc import Callable

INTERVAL_S = 10.0


class Heartbeat:
    """``beat(done)`` says ``label: done/total (p%), ETA m:ss`` when ``INTERVAL_S`` passed since the last line."""

    def __init__(
        self, say: Callable[[str], None] | None, label: str, total: int, interval_s: float = INTERVAL_S
    ):
        self.say, self.label, self.total, self.interval_s = say, label, max(1, total), interval_s
        self.started = self.last = time.monotonic()

    def beat(self, done: int) -> None:
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
