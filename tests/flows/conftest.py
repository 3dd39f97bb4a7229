"""Fixtures shared by the flow tests: a real Prefect server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from services.launcher import stop_server


@pytest.fixture()
def prefect_server(tmp_path):
    """`prefect server start` on a free loopback port, given up to 5 min to answer /health (migrations on
    first start take minutes on a loaded 2-core machine); stopped after the test."""
    from services.launcher import free_port

    port = free_port()
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect-server"), "PREFECT_API_URL": ""}
    log = open(tmp_path / "prefect-server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "prefect-server.log").read_text()[-2000:]
            time.sleep(1)
        else:
            pytest.fail("prefect server was not healthy within 300 s")
        yield url
    finally:
        stop_server(server)
        log.close()
