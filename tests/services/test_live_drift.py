"""Live drift on a real `bentoml serve`: the gauge moves when the input distribution shifts, and the
prediction log (hash mode) records what was served without the texts."""

from __future__ import annotations

import csv
import os
import random
import time
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import SAMPLE
from tests.services.helpers import MINIMAL_EVIDENCE, registry_env, tmp_registry

pytestmark = pytest.mark.integration


def _metric(metrics: str, name: str, **labels: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def short_sample_texts(tokenizer_file) -> list[str]:
    """Sample sentences that fit the tiny bundle's max_length (24) whole, so truncation plays no part."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()  # the exported tokenizer.json may pad to max_length
    with open(SAMPLE / "sentiment.csv", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return [t for t in texts if len(tokenizer.encode(t, add_special_tokens=False).ids) <= 22]


def gibberish(count: int, seed: int = 3) -> list[str]:
    """Short texts of made-up words: a different length and vocabulary from the training text."""
    rng = random.Random(seed)
    consonants = "bcdfghjklmnpqrstvwxz"
    return [
        " ".join("".join(rng.choice(consonants) for _ in range(3)) for _ in range(2)) for _ in range(count)
    ]


@contextmanager
def served(bundle, version: int, **env: str):
    """`bentoml serve` on loopback with ``env`` added; waits up to 5 min for /readyz (a loaded 2-core machine
    has taken two)."""
    from services.launcher import free_port, start_server, stop_server, wait_ready

    port = free_port()
    saved = dict(os.environ)
    os.environ.update({"DAPT_ORT_THREADS": "1", **env})  # start_server passes os.environ on
    try:
        process = start_server(bundle, "tiny", version, "127.0.0.1", port)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, timeout_s=300)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def _drift_after(url: str, texts: int) -> dict:
    """/metadata's drift once the observer has taken in ``texts`` texts (it runs after the answers)."""
    deadline = time.monotonic() + 30
    while True:
        drift = httpx.get(f"{url}/metadata", timeout=10).json()["drift"]
        if drift["texts"] >= texts or time.monotonic() > deadline:
            return drift
        time.sleep(0.2)


@pytest.mark.timeout(1200)  # fixtures export a tiny bundle; a loaded machine starts the server slowly
def test_drift_gauge_moves_when_the_input_distribution_shifts(positive_bundle, tmp_path):
    from expectations.drift import profile_data

    texts = short_sample_texts(positive_bundle / "tokenizer" / "tokenizer.json")
    reference_texts, live_texts = texts[::2], texts[1::2][:200]
    # The test model always answers "positive": that is its training label distribution here.
    profile = profile_data(
        reference_texts, ["positive"] * len(reference_texts), positive_bundle / "tokenizer" / "tokenizer.json"
    )
    registry = tmp_registry(tmp_path)
    evidence = {
        **MINIMAL_EVIDENCE,
        "profile": {"task": profile},
        "recipe": {"monitor": {"window": 200, "min_texts": 50}},
    }
    version = registry.register("tiny", positive_bundle, evidence)
    bundle = registry.load_path("tiny", version=version.version, verify=True)
    log_dir = tmp_path / "predictions"
    env = registry_env(tmp_path) | {"DAPT_PREDICTION_LOG": "hash", "DAPT_PREDICTION_LOG_DIR": str(log_dir)}
    with served(bundle, version.version, **env) as url:
        drift = httpx.get(f"{url}/metadata", timeout=10).json()["drift"]
        assert (drift["status"], drift["texts"], drift["window"]) == ("waiting", 0, 200)

        for start in range(0, 200, 20):
            response = httpx.post(
                f"{url}/classify", json={"texts": live_texts[start : start + 20]}, timeout=30
            )
            assert response.status_code == 200
        calm = _drift_after(url, 200)
        assert calm["status"] == "ok", calm
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        calm_gauges = {
            s: _metric(metrics, "dapt_input_drift", model="tiny", version="1", statistic=s)
            for s in ("length", "oov_rate", "labels")
        }
        assert all(value is not None for value in calm_gauges.values()), calm_gauges
        assert (
            calm_gauges["length"] < 0.15 and calm_gauges["oov_rate"] < 0.05 and calm_gauges["labels"] == 0.0
        )

        shifted = gibberish(200)
        for start in range(0, 200, 20):
            response = httpx.post(f"{url}/classify", json={"texts": shifted[start : start + 20]}, timeout=30)
            assert response.status_code == 200
        deadline = time.monotonic() + 30
        while True:
            drifted = httpx.get(f"{url}/metadata", timeout=10).json()["drift"]
            if drifted["status"] == "fail" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert drifted["status"] == "fail", drifted
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        length = _metric(metrics, "dapt_input_drift", model="tiny", version="1", statistic="length")
        oov = _metric(metrics, "dapt_input_drift", model="tiny", version="1", statistic="oov_rate")
        assert length is not None and length >= 0.3 > calm_gauges["length"]
        assert oov is not None and oov >= 0.15 > calm_gauges["oov_rate"]
        assert (
            drifted["statistics"]["length"]["status"] == drifted["statistics"]["oov_rate"]["status"] == "fail"
        )
        assert drifted["statistics"]["labels"]["status"] == "ok"  # still answers "positive"
        log_status = httpx.get(f"{url}/metadata", timeout=10).json()["prediction_log"]
        assert log_status["mode"] == "hash" and log_status["written"] == 400
        print(f"[metrics] drift calm {calm_gauges} shifted length={length} oov_rate={oov}")

    from models.monitoring import read_prediction_log

    records = read_prediction_log(log_dir, "tiny")
    assert len(records) == 400 and {r["version"] for r in records} == {"1"}
    assert all("text" not in r and len(r["text_sha256"]) == 64 for r in records)
    assert {r["label"] for r in records} == {"positive"} and all(r["latency_ms"] > 0 for r in records)
    content = (log_dir / "tiny" / "predictions.jsonl").read_text()
    assert live_texts[0] not in content and shifted[0] not in content
