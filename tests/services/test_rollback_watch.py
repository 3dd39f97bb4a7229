"""Automatic rollback: `dapt watch` beside a live `dapt serve`-style server, a deliberately broken version
promoted, the alias moved back through the registry, and the service answering with the old version again.

Two broken versions, both cheap: a *slow* one (the tiny classifier with a chain of 512x512 matrix products
grafted onto its ONNX graph: same answers, far higher latency) and one whose files were changed after
registration (the service refuses to load it, so the alias points at a version nobody serves).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.rollback_watch import Traffic, WatchSettings, judge, parse_traffic
from tests.services.helpers import MINIMAL_EVIDENCE, corrupt, live_server, registry_env, tmp_registry

REPO = Path(__file__).resolve().parents[2]
SLOW_MATMULS = 8


def make_slow(bundle: Path, out: Path, matmuls: int = SLOW_MATMULS, size: int = 512) -> Path:
    """A copy of ``bundle`` whose every ONNX variant adds ``0 * sum(tanh(W^matmuls))`` to its logits: the
    answers are unchanged but each batch pays the matrix products. The chain depends on the input (through
    ``0 * sum(input_ids)``), so ONNX Runtime cannot fold it away as a constant."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shutil.copytree(bundle, out)
    spec = json.loads((out / "serving.json").read_text())
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    for rel in set(spec["variants"].values()):
        path = out / rel
        model = onnx.load(str(path))
        graph = model.graph
        logits = graph.output[0].name
        for node in graph.node:
            node.output[:] = [f"{logits}_fast" if name == logits else name for name in node.output]
        graph.initializer.extend(
            [
                numpy_helper.from_array(weight, "slow_w"),
                numpy_helper.from_array(np.zeros((), np.float32), "slow_zero"),
            ]
        )
        ids = next(i.name for i in graph.input if "input_ids" in i.name)
        nodes = [
            helper.make_node("Cast", [ids], ["slow_ids"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["slow_ids"], ["slow_sum"], keepdims=0),
            helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nil"]),
            helper.make_node("Add", ["slow_w", "slow_nil"], ["slow_m0"]),
        ]
        for step in range(matmuls):
            nodes.append(helper.make_node("MatMul", [f"slow_m{step}", "slow_w"], [f"slow_p{step}"]))
            nodes.append(helper.make_node("Tanh", [f"slow_p{step}"], [f"slow_m{step + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"slow_m{matmuls}"], ["slow_total"], keepdims=0),
            helper.make_node("Mul", ["slow_total", "slow_zero"], ["slow_delay"]),
            helper.make_node("Add", [f"{logits}_fast", "slow_delay"], [logits]),
        ]
        graph.node.extend(nodes)
        path.chmod(0o644)
        onnx.save(model, str(path))
    return out


class Load:
    """Sequential /classify requests from ``workers`` threads until stopped (bounded by ``max_s``); records
    the version that answered each one and every failure."""

    def __init__(self, url: str, workers: int = 2, max_s: float = 240.0) -> None:
        self.url, self.max_s = url, max_s
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(base_url=self.url, timeout=60) as client:
            index = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                index += 1
                try:
                    response = client.post(
                        "/classify", json={"texts": [f"Aspirin eased it {worker}.{index}"]}
                    )
                    if response.status_code == 200:
                        self.versions[response.json()["model"]["version"]] += 1
                    else:
                        self.failures.append(f"HTTP {response.status_code}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)


def _dapt(env: dict[str, str]) -> list[str]:
    script = Path(sys.executable).with_name("dapt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dapt.cli"]


def _env(root: Path) -> dict[str, str]:
    env = os.environ | registry_env(root)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {k: v for k, v in env.items() if k != "COLUMNS"}


def _watch(env: dict[str, str], url: str, log: Path, *extra: str) -> subprocess.Popen:
    command = [*_dapt(env), "watch", "tiny", "--url", url, "--interval-s", "1", "--once", *extra]
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _wait_for_line(process: subprocess.Popen, log: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s:\n{log.read_text()}"
        time.sleep(0.5)


def _served_version(url: str) -> str:
    return httpx.post(f"{url}/classify", json={"texts": ["ok"]}, timeout=30).json()["model"]["version"]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_watch_rolls_back_a_slow_and_an_unloadable_version_on_a_live_server(classifier_bundle, tmp_path):
    registry = tmp_registry(tmp_path)
    good = registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    slow = registry.register("tiny", make_slow(classifier_bundle, tmp_path / "slow"), MINIMAL_EVIDENCE)
    broken = registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    corrupt(next((broken.path / "onnx").rglob("*.onnx")))  # changed after registration: refused at load
    registry.set_alias("tiny", "production", good.version, "first release", "tester")
    env = _env(tmp_path)

    with (
        live_server(
            registry.load_path("tiny", good.version),
            name="tiny",
            version=good.version,
            alias="production",
            ready_timeout_s=240,
            DAPT_RELOAD_POLL_S="1",
            **registry_env(tmp_path),
        ) as (url, _),
        Load(url) as load,
    ):
        # 1. A slow version: served, then judged on latency against v1 and rolled back.
        log = tmp_path / "watch-slow.log"
        # The tiny model answers in milliseconds on an idle machine, so the default 50 ms noise floor would hide
        # the slow copy there: the floor is lowered and the ratio (2x, the default) decides.
        watcher = _watch(
            env,
            url,
            log,
            *("--window-s", "10", "--min-requests", "10", "--swap-timeout-s", "60"),
            *("--min-latency-increase-ms", "5"),
        )
        try:
            _wait_for_line(watcher, log, "watching tiny 'production' (v1)", 60)
            time.sleep(10)  # a baseline of v1's traffic
            registry.set_alias("tiny", "production", slow.version, "canary", "tester")
            code = watcher.wait(timeout=180)
        finally:
            watcher.kill() if watcher.poll() is None else None
        output = log.read_text()
        print(f"\n[rollback] slow version:\n{output}")
        assert code == 1, output  # --once: 1 means it rolled back
        assert "latency regression" in output and "answers with v1 again" in output
        assert registry.aliases("tiny")["production"] == good.version
        assert load.versions[str(slow.version)] > 0, "the slow version never answered: nothing was judged"
        assert _served_version(url) == str(good.version)

        # 2. A version the service cannot load: the alias points at it, the old version keeps answering.
        log = tmp_path / "watch-broken.log"
        watcher = _watch(env, url, log, "--window-s", "5", "--swap-timeout-s", "60")
        try:
            _wait_for_line(watcher, log, "watching tiny 'production' (v1)", 60)
            registry.set_alias("tiny", "production", broken.version, "hotfix", "tester")
            code = watcher.wait(timeout=120)
        finally:
            watcher.kill() if watcher.poll() is None else None
        output = log.read_text()
        print(f"[rollback] unloadable version:\n{output}")
        assert code == 1 and "could not load v3" in output, output
        assert registry.aliases("tiny")["production"] == good.version
        assert _served_version(url) == str(good.version)
        time.sleep(2)  # the service polls the alias: it must stay on v1

    assert load.failures == [], load.failures[:5]  # no production request failed through all of it
    assert load.versions[str(broken.version)] == 0
    print(f"[rollback] answers by version: {dict(load.versions)}")

    history = subprocess.run(
        [*_dapt(env), "models", "history", "tiny", "--alias", "production", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert history.returncode == 0, history.stderr
    tenures = json.loads(history.stdout)
    assert [(t["version"], t["how"]) for t in tenures] == [
        (1, "manual"),
        (2, "manual"),
        (1, "automatic rollback"),
        (3, "manual"),
        (1, "automatic rollback"),
    ]
    assert "latency regression" in tenures[2]["reason"] and tenures[2]["actor"].startswith("dapt-watch")
    assert "could not load v3" in tenures[4]["reason"]
    assert tenures[1]["ended_by"] == "automatic rollback" and tenures[-1]["current"]


def test_judge_compares_errors_and_latency_with_the_previous_version():
    settings = WatchSettings(min_requests=10, max_error_rate_increase=0.05, max_latency_ratio=2.0)
    baseline = Traffic(requests=100, errors=1, latency_s=1.0, timed=100)  # 1 % errors, 10 ms
    fine = Traffic(requests=50, errors=1, latency_s=0.9, timed=50)  # 2 %, 18 ms: within both limits
    assert judge(fine, baseline, 1, settings) is None
    erring = Traffic(requests=50, errors=5, latency_s=0.5, timed=50)
    assert "error-rate regression: 10.0%" in judge(erring, baseline, 1, settings)
    slow = Traffic(requests=50, errors=0, latency_s=5.0, timed=50)  # 100 ms > max(20, 10 + 50) ms
    assert "latency regression: mean 100 ms" in judge(slow, baseline, 1, settings)
    noisy = Traffic(requests=50, errors=0, latency_s=2.5, timed=50)  # 50 ms: 5x, but under +50 ms
    assert judge(noisy, baseline, 1, settings) is None
    assert judge(Traffic(requests=5, errors=5), baseline, 1, settings) is None  # too little traffic
    # no baseline: errors compared with 0, latency not judged
    assert "no baseline" in judge(erring, Traffic(), 1, settings)
    assert judge(slow, Traffic(), 1, settings) is None


def test_parse_traffic_reads_only_the_prediction_routes_of_bentomls_metrics():
    text = "\n".join(
        [
            "# TYPE bentoml_service_request_total counter",
            'bentoml_service_request_total{endpoint="/classify",http_response_code="200",service_name="dapt"} 40.0',
            'bentoml_service_request_total{endpoint="/classify",http_response_code="500",service_name="dapt"} 2.0',
            'bentoml_service_request_total{endpoint="/classify",http_response_code="422",service_name="dapt"} 3.0',
            'bentoml_service_request_total{endpoint="/metadata",http_response_code="500",service_name="dapt"} 9.0',
            "# TYPE bentoml_service_request_duration_seconds histogram",
            'bentoml_service_request_duration_seconds_sum{endpoint="/classify",http_response_code="200"} 0.8',
            'bentoml_service_request_duration_seconds_count{endpoint="/classify",http_response_code="200"} 40.0',
            'bentoml_service_request_duration_seconds_sum{endpoint="/metadata",http_response_code="200"} 7.0',
        ]
    )
    traffic = parse_traffic(text + "\n")
    assert (traffic.requests, traffic.errors, traffic.timed) == (45, 2, 40)
    assert traffic.mean_ms == pytest.approx(20.0)


def test_watch_refuses_bad_input_with_a_clear_line(tmp_path):
    from services.launcher import free_port

    registry = tmp_registry(tmp_path)
    registry.dispose()
    env = _env(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*_dapt(env), "watch", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )

    not_url = run("tiny", "--url", "localhost:3000")
    assert not_url.returncode == 2 and "is not an HTTP URL" in not_url.stderr
    window = run("tiny", "--window-s", "0")
    assert window.returncode == 2 and "--window-s must be a positive number" in window.stderr
    nobody = run("tiny", "--url", f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and "no dapt service answers at" in nobody.stderr
