"""Start, wait for and stop `bentoml serve` on a bundle: the launcher beside the service it starts.

Used by the CLI (`dapt serve`, `dapt demo`), the benchmarks and the live tests. Stdlib only at import.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from models.settings import (
    ALIAS_ENV,
    BUNDLE_ENV,
    EXTRA_MODELS_ENV,
    MODEL_NAME_ENV,
    MODEL_VERSION_ENV,
    SHADOW_ENV,
)

REPO = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """The server exited or did not become ready; the message says which."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server(
    bundle_dir: Path,
    name: str,
    version: int,
    host: str,
    port: int,
    alias: str | None = None,
    log: Path | None = None,
    *,
    extra_models: list[dict] | None = None,
    shadow: dict | None = None,
) -> subprocess.Popen:
    """`bentoml serve` on a verified bundle; with an alias the service can follow it when it moves.

    ``extra_models`` are served beside it and ``shadow`` answers copies of its (or an extra model's) requests,
    each a dict ``{"name", "version", "bundle_dir", "alias"?}`` (services/model_set.py reads them).
    The server writes to this process's stdout/stderr, or with ``log`` appends both to that file.
    """
    env = os.environ | {
        BUNDLE_ENV: str(bundle_dir),
        MODEL_NAME_ENV: name,
        MODEL_VERSION_ENV: str(version),
    }
    if alias:
        env[ALIAS_ENV] = alias
    if extra_models:
        env[EXTRA_MODELS_ENV] = json.dumps(extra_models, default=str)
    if shadow:
        env[SHADOW_ENV] = json.dumps(shadow, default=str)
    command = [sys.executable, "-m", "bentoml", "serve", "services.service:DaptService", "--host", host]
    command += ["--port", str(port)]
    if log is None:
        return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=REPO, env=env, start_new_session=True, stdout=handle, stderr=subprocess.STDOUT
        )


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll ``/readyz`` until 200; ServerError when the process exits first or the time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServerError(f"the server at {url} was not ready after {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def serve_until_stopped(process: subprocess.Popen) -> int:
    """Wait for the server; SIGTERM, SIGINT or SIGHUP to this command stop it gracefully (it runs in its own
    process group, so a signal to this process alone would otherwise leave it serving). Returns its exit
    status as a shell reports it (128 + signal number when a signal killed it)."""
    stopping: list[int] = []

    def forward(signum: int, _frame) -> None:
        stopping.append(signum)
        raise _Stop

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        try:
            process.wait()
        except _Stop:
            pass
        # Further signals while it drains must not cut the drain short: the server is already stopping.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if stopping:
            stop_server(process)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = process.returncode
    return 128 - code if code < 0 else code


class _Stop(BaseException):
    """Raised by the signal handler to end the wait (BaseException: no `except Exception` swallows it)."""
