"""Live servers: `bentoml serve` on loopback under load, fuzzing, model swaps, SIGTERM; imports; `bentoml build`.

Figures (requests, errors, seconds, req/s, RSS, fuzz cases, swap times) are printed: run with `pytest -s`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.services.helpers import (
    MINIMAL_EVIDENCE,
    corrupt,
    drive_load,
    live_server,
    registry_env,
    tmp_registry,
    tree_rss_bytes,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(classifier_bundle):
    """One server for the contract, load and fuzz tests (each test reads only what it caused)."""
    with live_server(classifier_bundle, name="tiny", version=9) as (url, process):
        yield url, process


def _metric(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample whose labels include ``labels``."""
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_live_contract_readiness_metadata_batching_and_model_metrics(served):
    url, _ = served
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    metadata = httpx.get(f"{url}/metadata", timeout=5).json()
    assert (metadata["name"], metadata["version"], metadata["task"]) == ("tiny", "9", "classification")
    assert metadata["last_reload_error"] is None and metadata["alias"] is None
    # The loaded libraries and model are frozen out of the collector's full passes (services/heap.py).
    assert metadata["gc_frozen_objects"] > 10_000

    response = httpx.post(f"{url}/classify", json={"texts": ["Aspirin eased it", "ok"]}, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["name"] == "tiny" and body["model"]["version"] == "9"
    assert len(body["predictions"]) == 2 and "model" not in body["predictions"][0]
    assert httpx.post(f"{url}/classify", json={"texts": []}, timeout=30).status_code == 422

    def classify(i: int) -> dict:
        return httpx.post(f"{url}/classify", json={"texts": [f"text {i}", "more"]}, timeout=60).json()

    before = httpx.get(f"{url}/metrics", timeout=10).text
    requests = 48
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(classify, range(requests)))
    assert all(len(a["predictions"]) == 2 for a in answers)
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    labels = {"model_name": "tiny", "model_version": "9"}
    predicted = _metric(metrics, "dapt_predictions_total", **labels) - (
        _metric(before, "dapt_predictions_total", **labels) or 0.0
    )
    assert predicted == 2 * requests  # every text counted once, under the version that answered
    calls = _metric(metrics, "dapt_batch_size_count", **labels) - _metric(
        before, "dapt_batch_size_count", **labels
    )
    assert 0 < calls < requests  # concurrent requests were merged into fewer model calls
    assert _metric(metrics, "dapt_batch_size_bucket", le="+Inf", **labels) is not None
    print(f"\n[metrics] {requests} concurrent requests -> {calls:.0f} model calls ({2 * requests} texts)")


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_load_10k_requests_at_concurrency_64_without_errors_or_memory_growth(served):
    """10k requests at concurrency 64: no error, and RSS growth under 5% once warm.

    One warm-up round of 500 requests first: the worker's RSS rises once as ONNX Runtime, tokenizers and
    the HTTP stack reach their working size. Before services/timeouts.py the worker kept every request of the
    last 60 s alive (BentoML's timeout timer) and grew ~20 KB per request all through this test.
    """
    url, process = served
    rss_at_start = tree_rss_bytes(process.pid)
    warmup = drive_load(url, 500, 64)
    assert warmup["errors"] == 0, warmup
    rss_before = tree_rss_bytes(process.pid)
    result = drive_load(url, 10_000, 64)
    rss_after = tree_rss_bytes(process.pid)
    growth = (rss_after - rss_before) / rss_before
    print(
        f"\n[load] RSS MiB at start {rss_at_start / 2**20:.0f}, after 500 warm-up requests "
        f"{rss_before / 2**20:.1f}\n"
        f"[load] requests={result['requests']} errors={result['errors']} seconds={result['seconds']} "
        f"req/s={result['req_per_s']} rss_before={rss_before / 2**20:.1f}MiB rss_after={rss_after / 2**20:.1f}MiB "
        f"growth={growth:+.2%}"
    )
    assert result["errors"] == 0, result
    assert growth < 0.05, f"server RSS grew {growth:.1%} over 10k requests (limit 5%)"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_schemathesis_fuzz_of_the_openapi_spec_finds_no_5xx(served):
    """Schema-valid and schema-violating requests to every operation in /docs.json: never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    url, _ = served
    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    cases: dict[str, int] = {}
    server_errors: list[str] = []
    unsatisfiable: list[str] = []

    def fuzz(operation, mode) -> None:
        key = f"{operation.method.upper()} {operation.path} {mode.value}"
        cases[key] = 0

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            cases[key] += 1
            response = case.call(base_url=url, timeout=30)
            if response.status_code >= 500:
                server_errors.append(f"{key}: {response.status_code} {response.text[:200]} for {case.body!r}")

        try:
            check()
        except Unsatisfiable:  # e.g. an operation with no input has no schema-violating request
            unsatisfiable.append(key)

    for result in schema.get_all_operations():
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)
    total = sum(cases.values())
    print(
        f"\n[fuzz] schemathesis {schemathesis.__version__}: {total} cases over {len(cases)} operation/modes, "
        f"{len(server_errors)} answered 5xx"
    )
    for key, count in sorted(cases.items()):
        print(f"[fuzz]   {key}: {count}" + (" (no such input exists)" if key in unsatisfiable else ""))
    assert not server_errors, server_errors[:5]
    assert total >= 100
    assert {"POST /classify positive", "POST /classify negative"} <= set(cases)
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200  # still up


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_alias_move_swaps_under_load_and_a_corrupted_version_is_refused(
    tmp_path, classifier_bundle, positive_bundle
):
    registry = tmp_registry(tmp_path)
    v1 = registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    v2 = registry.register("tiny", positive_bundle, MINIMAL_EVIDENCE)
    registry.set_alias("tiny", "production", v1.version, reason="test: first deploy")
    path = registry.load_path("tiny", version=v1.version, verify=True)
    env = {**registry_env(tmp_path), "DAPT_RELOAD_POLL_S": "0.5", "DAPT_ADMIN_TOKEN": "s3cret"}
    with live_server(path, name="tiny", version=v1.version, alias="production", **env) as (url, _):
        seen: list[tuple[float, int, str]] = []  # (answered at, status, version)
        sent_at: list[float] = []  # parallel to seen: when each request was sent
        stop = threading.Event()

        def client_loop() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    started = time.monotonic()
                    response = client.post("/classify", json={"texts": ["is this still served?"]})
                    version = response.json()["model"]["version"] if response.status_code == 200 else "-"
                    with lock:
                        sent_at.append(started)
                        seen.append((time.monotonic(), response.status_code, version))

        lock = threading.Lock()

        clients = [threading.Thread(target=client_loop) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            time.sleep(1.0)
            moved_at = time.monotonic()
            registry.set_alias("tiny", "production", v2.version, reason="test: promote")
            deadline = moved_at + 30
            while time.monotonic() < deadline and not any(v == "2" for _, _, v in seen):
                time.sleep(0.1)
            time.sleep(1.0)  # keep the load on after the swap
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        failed = [s for s in seen if s[1] != 200]
        first_new = min((t for t, _, v in seen if v == "2"), default=None)
        print(
            f"\n[swap] {len(seen)} requests during the swap, {len(failed)} failed; "
            f"new version answered {first_new - moved_at:.2f} s after the alias moved"
            if first_new
            else f"\n[swap] {len(seen)} requests, the new version never answered"
        )
        assert not failed, failed[:5]
        assert first_new is not None and first_new - moved_at < 15
        # Requests in flight at the swap may finish on the old model; any request *sent* after the new
        # version first answered must be served by it (no flapping back).
        after_swap = [v for started, (_, _, v) in zip(sent_at, seen, strict=True) if started > first_new]
        assert after_swap and set(after_swap) == {"2"}
        assert (
            httpx.post(f"{url}/classify", json={"texts": ["x"]}).json()["predictions"][0]["label"]
            == "positive"
        )
        metadata = httpx.get(f"{url}/metadata").json()
        assert metadata["version"] == "2" and metadata["last_reload"]["from_version"] == "1"
        metrics = httpx.get(f"{url}/metrics").text
        assert _metric(metrics, "dapt_predictions_total", model_name="tiny", model_version="2") > 0
        assert _metric(metrics, "dapt_model_reloads_total", model_name="tiny", outcome="swapped") == 1

        # A promoted version whose artifact changed on disk: the reload is refused, v2 keeps serving.
        v3 = registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
        corrupt(v3.path / "onnx" / "int8" / "model.onnx")
        registry.set_alias("tiny", "production", v3.version, reason="test: corrupted promotion")
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline and httpx.get(f"{url}/metadata").json()["last_reload_error"] is None
        ):
            time.sleep(0.2)
        public = httpx.get(f"{url}/metadata")
        metadata = public.json()
        error = metadata["last_reload_error"]
        assert error is not None and error["version"] == "v3" and "verification" in error["error"]
        # The raw error names the file (and the registry's paths): the operator's view only, not /metadata.
        assert "model.onnx" not in public.text and str(tmp_path) not in public.text
        assert httpx.get(f"{url}/admin/status").status_code == 401
        operator = httpx.get(f"{url}/admin/status", headers={"authorization": "Bearer s3cret"}).json()
        raw = operator["last_reload_error"]["error"]
        print(f"[swap] corrupted v3 refused: {raw[:160]}")
        assert "onnx/int8/model.onnx" in raw and operator["bundle_dir"].startswith(str(tmp_path))
        assert metadata["version"] == "2"
        assert httpx.post(f"{url}/classify", json={"texts": ["x"]}).json()["model"]["version"] == "2"

        # The admin endpoint: token required; reloading by hand to v1 (intact) works, to v3 fails the same way.
        assert httpx.post(f"{url}/admin/reload", json={"version": 1}).status_code == 401
        auth = {"authorization": "Bearer s3cret"}
        refused = httpx.post(f"{url}/admin/reload", json={"version": 3}, headers=auth, timeout=60)
        assert refused.status_code == 422 and "v2 keeps serving" in refused.json()["error"]
        rolled_back = httpx.post(f"{url}/admin/reload", json={"version": 1}, headers=auth, timeout=60)
        assert rolled_back.status_code == 200 and rolled_back.json()["to_version"] == "1"
        assert httpx.post(f"{url}/classify", json={"texts": ["x"]}).json()["model"]["version"] == "1"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_sigterm_lets_a_request_in_flight_finish(classifier_bundle):
    """A request whose body is still arriving when SIGTERM lands is answered 200; the server then exits 0."""
    with live_server(classifier_bundle) as (url, process):
        sent_first_part = threading.Event()
        outcome: dict = {}

        def slow_body():
            yield b'{"texts": ["a request that is '
            sent_first_part.set()
            time.sleep(2.0)  # SIGTERM arrives meanwhile
            yield b'still in flight"]}'

        def post() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{url}/classify",
                    content=slow_body(),
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
            except httpx.HTTPError as exc:
                outcome["error"] = repr(exc)

        request = threading.Thread(target=post)
        request.start()
        assert sent_first_part.wait(10)
        time.sleep(0.3)  # the server has the headers and part of the body
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)  # what a container runtime sends first
        request.join(30)
        exit_code = process.wait(timeout=30)
        print(
            f"\n[sigterm] in-flight request -> {outcome}; server exited {exit_code} after {time.monotonic() - signalled:.1f} s"
        )
        assert "error" not in outcome, outcome
        assert outcome["response"].status_code == 200
        assert outcome["response"].json()["predictions"][0]["label"]
        assert exit_code == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/livez", timeout=2)  # and it is gone


@pytest.mark.timeout(120)
def test_serving_process_never_imports_torch_or_transformers(classifier_bundle):
    script = textwrap.dedent(
        f"""
        import json, os, sys
        os.environ["DAPT_BUNDLE_DIR"] = {str(classifier_bundle)!r}
        from services.service import DaptService
        from services.predictor import OnnxPredictor
        import asyncio
        service = DaptService()
        assert len(asyncio.run(service.classify(texts=["hello there"])).predictions) == 1
        OnnxPredictor(os.environ["DAPT_BUNDLE_DIR"]).classify(["again"])
        import models.registry.store  # what a reload imports
        service.slot.stop()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
        print(json.dumps({{"heavy": heavy, "bentoml": "bentoml" in sys.modules}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bentoml"] is True  # the check ran in a real serving import graph
    assert report["heavy"] == []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_bento_build_packs_the_model_and_writes_a_dockerfile(classifier_bundle, ner_bundle, isolated_home):
    from dapt.bento import BentoError, build_bento, import_bundle_to_bentoml

    assert os.environ["BENTOML_HOME"].startswith(str(isolated_home))  # never the user's store
    tag = import_bundle_to_bentoml(classifier_bundle, "tiny-cls", 1, {"metrics": {"macro_f1": 0.5}})
    assert tag == "tiny-cls:1"
    assert import_bundle_to_bentoml(classifier_bundle, "tiny-cls", 1) == tag  # same files: same tag
    with pytest.raises(BentoError, match="already exists"):
        import_bundle_to_bentoml(ner_bundle, "tiny-cls", 1)

    stored = Path(os.environ["BENTOML_HOME"]) / "models" / "tiny-cls" / "1"
    assert (stored / "serving.json").is_file() and (stored / "onnx" / "int8" / "model.onnx").is_file()
    assert not (stored / "pytorch").exists()  # serving files only

    bento_tag, dockerfile = build_bento(tag)  # the GPU image (bentofile.yaml)
    gpu_lines = dockerfile.read_text().splitlines()
    froms = [line.split()[1] for line in gpu_lines if line.startswith("FROM ")]
    assert froms and froms[0].startswith("nvidia/cuda:12.8.1-cudnn-runtime")
    uv_copied = next(
        i for i, line in enumerate(gpu_lines) if line.startswith("COPY --from=ghcr.io/astral-sh/uv:")
    )
    uv_needed = next(
        i for i, line in enumerate(gpu_lines) if line.startswith("RUN") and "pip install uv" in line
    )
    assert uv_copied < uv_needed  # the CUDA base's Python has no pip: uv must be there before BentoML asks
    gpu_requirements = (dockerfile.parents[1] / "python" / "requirements.txt").read_text()
    gpu_runtime = [line for line in gpu_requirements.splitlines() if line.startswith("onnxruntime")]
    assert gpu_runtime == ["onnxruntime-gpu==1.26.0"]  # the last CUDA 12 build, matching the base image
    # Pinned from requirements.lock (docker/requirements.*.txt), the Postgres registry driver included.
    assert "psycopg==" in gpu_requirements and "psycopg-binary==" in gpu_requirements
    bento_yaml = (dockerfile.parents[2] / "bento.yaml").read_text()
    assert "tag: tiny-cls:1" in bento_yaml  # the service declared the model, so the bento references it
    assert "bento_model: tiny-cls:1" in bento_yaml
    requirements = (dockerfile.parents[1] / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "torch" not in requirements
    sources = {
        p.relative_to(dockerfile.parents[2] / "src").as_posix()
        for p in (dockerfile.parents[2] / "src").rglob("*.py")
    }
    assert "services/service.py" in sources and "models/registry/bundle.py" in sources
    assert "models/export/onnx.py" not in sources  # no training code in the image
    assert {
        "services/guard.py",
        "services/reloader.py",
        "models/registry/store.py",
        "models/settings.py",
    } <= sources
    # The generated Dockerfile creates a `bentoml` user and switches to it before the entrypoint: not root.
    docker_lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    users = [line.split()[1] for line in docker_lines if line.startswith("USER ")]
    assert users and users[-1] == "bentoml"
    assert any("useradd" in line and "$BENTO_USER" in line for line in docker_lines)
    entrypoint = max(i for i, line in enumerate(docker_lines) if line.startswith("ENTRYPOINT"))
    assert max(i for i, line in enumerate(docker_lines) if line.startswith("USER ")) < entrypoint
    assert "sqlalchemy" in requirements.lower()  # the registry client, for following an alias

    cpu_tag, cpu_dockerfile = build_bento(tag, cpu=True)  # bentofile.cpu.yaml
    assert cpu_tag != bento_tag
    cpu_froms = [
        line.split()[1] for line in cpu_dockerfile.read_text().splitlines() if line.startswith("FROM ")
    ]
    assert cpu_froms and cpu_froms[0].startswith("python:3.11-slim")
    cpu_requirements = (cpu_dockerfile.parents[1] / "python" / "requirements.txt").read_text()
    assert "\nonnxruntime==" in cpu_requirements and "onnxruntime-gpu" not in cpu_requirements
    assert "psycopg==" in cpu_requirements and "psycopg-binary==" in cpu_requirements
    cpu_lines = [line.strip() for line in cpu_dockerfile.read_text().splitlines()]
    assert [line.split()[1] for line in cpu_lines if line.startswith("USER ")][-1] == "bentoml"
