"""Progress a person can read: a bar per stage with an ETA in a terminal, plain lines that never go silent for
long in logs and CI. The installed `dapt` console script runs in a subprocess, on a pipe and under a
pseudo-terminal (python's `pty`), the way a user or a CI job runs it."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dapt.progress_view import QUIET_S, _Board
from models import progress
from tests.tiny_recipe import write_tiny_recipe

REPO = Path(__file__).resolve().parents[1]
DAPT = Path(sys.executable).parent / "dapt"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The watchdog speaks after QUIET_S of silence; allow a few seconds of scheduling delay on a busy machine.
MAX_GAP_S = QUIET_S + 5.0


def _env(home: Path) -> dict[str, str]:
    from models.settings import stack_environment

    env = os.environ | stack_environment(home) | {"DAPT_TORCH_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    for key in ("DAPT_REGISTRY_URL", "DAPT_ARTIFACT_ROOT", "PREFECT_API_URL", "COLUMNS", "LINES"):
        env.pop(key, None)
    return env


# ------------------------------------------------------------------------------------------------ events
def test_stage_and_advance_reach_listeners_and_a_failing_listener_breaks_nothing():
    seen: list[tuple] = []

    def broken(*_event):
        raise RuntimeError("a display bug")

    with progress.listening(lambda *e: seen.append(e)), progress.listening(broken):
        with pytest.raises(ValueError):
            with progress.stage("export"):
                progress.advance("export: parity", 2, 4)
                raise ValueError("the stage fails")
        progress.Heartbeat(None, "evaluate: batches", 10, interval_s=3600).beat(3)
    progress.advance("nobody listens", 1, 1)
    assert seen == [
        ("start", "export", 0, 0),
        ("advance", "export: parity", 2, 4),
        ("end", "export", 0, 0),  # also when the stage raised
        ("advance", "evaluate: batches", 3, 10),  # every beat, though the line waits for its interval
    ]


def test_watchdog_names_the_quiet_stage_and_stays_quiet_while_lines_come():
    lines: list[str] = []
    watchdog = progress.Watchdog(lines.append, quiet_s=0.6)
    with progress.listening(watchdog), watchdog:
        with progress.stage("validate"):
            for _ in range(6):  # lines keep coming: nothing to add
                time.sleep(0.2)
                watchdog.heard()
            assert lines == []
            time.sleep(1.6)
    assert lines and all(re.fullmatch(r"validate: still working \(0:0\d\)", line) for line in lines), lines


def test_board_draws_a_row_per_stage_and_counted_loop_and_finishes_them_with_the_stage():
    from rich.console import Console
    from rich.progress import Progress

    bars = Progress(console=Console(file=io.StringIO(), force_terminal=True, width=120))
    board = _Board(bars)
    board("start", "fine-tune")
    board("advance", "[fine-tune] steps", 3, 12)
    rows = {task.description: task for task in bars.tasks}
    assert rows["fine-tune: steps"].completed == 3 and rows["fine-tune: steps"].total == 12
    assert rows["fine-tune"].total is None  # a stage without a count: a pulsing bar and its elapsed time
    board("end", "fine-tune")
    assert all(task.finished for task in bars.tasks)
    board("start", "fine-tune")  # a stage that runs again gets a fresh row
    assert len(bars.tasks) == 3 and not bars.tasks[-1].finished


def test_plain_mode_counts_log_records_as_output_also_after_prefect_replaced_the_root_handlers(monkeypatch):
    import logging

    from rich.console import Console

    from dapt import progress_view

    monkeypatch.setattr(progress_view, "QUIET_S", 0.6)
    # Prefect's API log handler (attached once Prefect is imported) warns about records sent outside a flow run;
    # the records still reach the root logger's handlers, which is what this test is about
    monkeypatch.setattr(logging.getLogger("prefect.task_runs"), "handlers", [])
    out = io.StringIO()
    root = logging.getLogger()
    with progress_view.watched(Console(file=out, width=200)) as show:
        show("a plain line")
        for handler in [h for h in root.handlers if isinstance(h, progress_view._Heard)]:
            root.removeHandler(handler)  # what importing Prefect does (its dictConfig owns the root logger)
        progress_view.adopt_log_handlers()
        for _ in range(8):  # a log line every 0.2 s: never quiet for 0.6 s
            logging.getLogger("prefect.task_runs").warning("training goes on")
            time.sleep(0.2)
        assert "still working" not in out.getvalue()
        time.sleep(1.5)
    assert "a plain line" in out.getvalue() and "[dapt] still working" in out.getvalue()
    assert "━" not in out.getvalue() and not ANSI.search(out.getvalue())
    assert not [h for h in root.handlers if isinstance(h, progress_view._Heard)]  # removed afterwards


def test_terminal_mode_draws_bars_with_count_and_eta_and_prints_lines_above(monkeypatch):
    from rich.console import Console

    from dapt import progress_view

    monkeypatch.delenv("TERM", raising=False)
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=140)
    with progress_view.watched(terminal) as show:
        with progress.stage("fine-tune"):
            for step in range(1, 7):
                progress.advance("[fine-tune] steps", step, 6)
                time.sleep(0.3)  # the bars refresh four times a second
            show("epoch 1.00 step 6/6 loss 1.09")
    plain = ANSI.sub("", out.getvalue())
    assert re.search(r"fine-tune: steps\s+━+\s+6/6\s+100%\s+\d:\d\d:\d\d ETA", plain), plain
    assert re.search(r"fine-tune\s+━+\s+100%", plain), plain  # the stage row, finished with the stage
    assert "epoch 1.00 step 6/6 loss 1.09" in plain and "still working" not in plain


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.integration
def test_dapt_run_on_a_pipe_prints_plain_lines_never_silent_for_long(tmp_path, sample_dir, tiny_base_model):
    recipe = write_tiny_recipe(tmp_path / "run", sample_dir, tiny_base_model)
    started = time.monotonic()
    process = subprocess.Popen(
        [str(DAPT), "run", str(recipe)],
        cwd=REPO,
        # A busy CI machine can take long to start Prefect's temporary server; that is not what is tested here.
        env=_env(tmp_path / "home")
        | {"PYTHONUNBUFFERED": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stamped: list[tuple[float, str]] = []
    try:
        for line in process.stdout:
            stamped.append((time.monotonic(), line.rstrip("\n")))
            assert time.monotonic() - started < 900, "dapt run took over 15 minutes"
        assert process.wait(timeout=60) == 0, "\n".join(line for _, line in stamped)
    finally:
        process.kill()
    ended = time.monotonic()
    times = [t for t, _ in stamped]
    gaps = [
        (later - earlier, index + 1)
        for index, (earlier, later) in enumerate(zip(times, times[1:], strict=False))
    ]
    worst, where = max(gaps)
    text = "\n".join(line for _, line in stamped)
    context = "\n".join(
        f"+{b - a:5.1f}s {line}" for (a, _), (b, line) in zip(stamped, stamped[1:], strict=False)
    )
    print(
        f"[progress] dapt run on a pipe: {len(stamped)} lines in {ended - started:.0f} s; first after "
        f"{times[0] - started:.1f} s, longest gap between lines {worst:.1f} s, exit {ended - times[-1]:.1f} s after the last"
    )
    assert worst <= MAX_GAP_S, f"silent for {worst:.1f} s before line {where}:\n{context}"
    assert "run tiny: validate → adapt" in text  # the first line comes before the slow imports
    # the run's summary table is drawn with box characters; what must not appear is a progress bar
    bars = [line for line in text.splitlines() if "━" in line and "ETA" in line]
    assert not bars and not ANSI.search(text), f"a pipe gets plain lines, no bars or escape codes: {bars[:3]}"
    assert "tiny v1" in text and "gate: PASSED" in text
    assert "The flow took" in text  # how long the run took is said beside the gate's verdict


def _run_in_terminal(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    process = subprocess.Popen(
        args, cwd=REPO, env=env | {"TERM": "xterm-256color"}, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    output, ends = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < ends:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the command exited
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{args[1]} did not finish within {timeout_s:.0f} s; its screen so far:\n{output[-3000:]!r}"
            )
    finally:
        process.kill()
        os.close(leader)
    return code, output.decode("utf-8", "replace")


@pytest.mark.integration
def test_dapt_finetune_in_a_terminal_draws_a_bar_with_count_and_eta(tmp_path, sample_dir, tiny_base_model):
    recipe = write_tiny_recipe(tmp_path / "run", sample_dir, tiny_base_model)
    code, screen = _run_in_terminal(
        [
            str(DAPT),
            "finetune",
            str(recipe),
            "--encoder",
            str(tiny_base_model),
            "--out",
            str(tmp_path / "ft"),
        ],
        _env(tmp_path / "home"),
        timeout_s=600,
    )
    plain = ANSI.sub("", screen)
    assert code == 0, plain[-3000:]
    assert "\x1b[" in screen and "\r" in screen  # drawn and redrawn in place
    row = re.search(r"fine-tune: steps\s+━+\s+(\d+)/6\s+(\d+)%\s+\d:\d\d:\d\d ETA", plain)
    assert row, plain[-3000:]
    assert re.search(r"fine-tune: steps\s+━+\s+6/6\s+100%", plain), "the bar reaches the last step"
    assert "epoch" in plain and "loss" in plain  # the progress lines still print, above the bars
    assert "model: " in plain
