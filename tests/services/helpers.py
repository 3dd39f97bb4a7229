"""Helpers of the service tests: a temporary registry, a corrupter, a live `bentoml serve`, the installed
`dapt serve` as users run it, a load driver."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAPT = Path(sys.executable).parent / "dapt"

MINIMAL_EVIDENCE = {"metrics": {"macro_f1": 0.5}, "parity": {}, "validation": {"success": True}}


def tmp_registry(root: Path):
    """A registry of its own (database + artifacts under ``root``); a served process sees the same one through
    DAPT_REGISTRY_URL / DAPT_ARTIFACT_ROOT (see :func:`registry_env`)."""
    from models.registry.store import Registry

    return Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")


def registry_env(root: Path) -> dict[str, str]:
    return {
        "DAPT_REGISTRY_URL": f"sqlite:///{root / 'registry.db'}",
        "DAPT_ARTIFACT_ROOT": str(root / "artifacts"),
    }


def dapt_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a `dapt` subprocess on ``root``'s registry (``extra`` overrides, e.g. another
    DAPT_REGISTRY_URL / DAPT_ARTIFACT_ROOT)."""
    return {
        **os.environ,
        **registry_env(root),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "DAPT_ORT_THREADS": "1",
        **extra,
    }


@contextmanager
def dapt_serve(root: Path, *args: str, **env: str):
    """`dapt serve ARGS` on a free loopback port until /readyz says 200; SIGTERM at exit. Yields the URL.
    The server's output goes to ``root/serve-<port>.log``."""
    import httpx

    from services.launcher import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / f"serve-{port}.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [str(DAPT), "serve", *args, "--port", str(port)],
            env=dapt_env(root, **env),
            cwd=root,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300  # two or three models load before /readyz; slow on a loaded host
        ready = False
        while not ready and time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            if not ready:
                time.sleep(0.5)
        assert ready, f"not ready (exit code {process.poll()}): " + log.read_text(errors="replace")[-3000:]
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def until(condition, timeout_s: float, what: str):
    """The first truthy value of ``condition()``, polled every 0.3 s; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def corrupt(path: Path) -> None:
    """Flip one byte in the middle of a registered (read-only) file."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@contextmanager
def live_server(
    bundle_dir: Path,
    *,
    name: str = "tiny",
    version: int = 1,
    alias: str | None = None,
    ready_timeout_s: float = 90,
    **env: str,
):
    """`bentoml serve` on a free loopback port (services.launcher's start_server), ready, stopped with SIGTERM at exit.

    Yields (url, process). Extra keyword arguments become environment variables of the server.
    """
    from services.launcher import free_port, start_server, stop_server, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update({"DAPT_ORT_THREADS": "1", **env})  # start_server passes os.environ on
    try:
        process = start_server(bundle_dir, name, version, "127.0.0.1", port, alias=alias)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        wait_ready(url, process, timeout_s=ready_timeout_s)
        yield url, process
    finally:
        stop_server(process)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (the BentoML arbiter and its workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def drive_load(url: str, requests: int, concurrency: int, text: str = "Aspirin eased the headache.") -> dict:
    """POST /classify ``requests`` times from ``concurrency`` concurrent keep-alive connections (aiohttp).

    Returns requests, errors (non-200 answers and transport failures, by kind, with a few samples), seconds
    and req/s. aiohttp rather than httpx.AsyncClient: on this 2-core machine, under load from other
    processes, httpx 0.28's async client failed about 1 request in 1000 with ReadError(BrokenResourceError)
    after the request had waited seconds client-side, with no trace of it reaching the server; aiohttp
    (BentoML's own client) against the same server saw none, and uses about half the client CPU.
    """
    import aiohttp

    async def run() -> dict:
        errors: Counter[str] = Counter()
        samples: list[str] = []
        next_index = 0
        started = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

            async def worker() -> None:
                nonlocal next_index
                while next_index < requests:
                    index = next_index
                    next_index += 1
                    try:
                        async with session.post("/classify", json={"texts": [f"{text} {index}"]}) as response:
                            await response.read()
                            if response.status != 200:
                                errors[f"HTTP {response.status}"] += 1
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        errors[type(exc).__name__] += 1
                        if len(samples) < 3:
                            samples.append(
                                f"request {index} at {time.perf_counter() - started:.1f} s: {exc!r}"
                            )

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        return {
            "requests": requests,
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "error_samples": samples,
            "seconds": round(seconds, 2),
            "req_per_s": round(requests / seconds, 1),
        }

    return asyncio.run(run())
