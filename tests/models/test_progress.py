"""Long loops report their count and an ETA at most every few seconds, so a run never goes silent for long."""

from __future__ import annotations

from models.progress import Heartbeat, eta


def test_eta_is_the_remaining_share_at_the_pace_so_far():
    assert eta(30.0, 1, 3) == ", ETA 1:00"
    assert eta(10.0, 0, 3) == "" and eta(10.0, 3, 3) == ""


def test_heartbeat_speaks_only_after_its_interval_with_count_share_and_eta():
    lines: list[str] = []
    beat = Heartbeat(lines.append, "encoded", 200, interval_s=0.0)
    beat.beat(50)
    assert lines and lines[0].startswith("encoded: 50/200 (25%), ETA")
    quiet = Heartbeat(lines.append, "encoded", 200, interval_s=3600.0)
    quiet.beat(100)
    assert len(lines) == 1  # nothing new within the interval
    Heartbeat(None, "x", 1, interval_s=0.0).beat(0)  # no sink: silent, no error
