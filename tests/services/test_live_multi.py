"""The installed `dapt serve` with several models in one process, and with a shadow version under load.

Figures (requests, errors, shadow counts) are printed: run with `pytest -s`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.services.helpers import (
    DAPT,
    MINIMAL_EVIDENCE,
    dapt_serve,
    drive_load,
    tmp_registry,
)
from tests.services.helpers import dapt_env as _env
from tests.services.helpers import until as _until


def _metric(metrics: str, name: str, **labels: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_two_models_in_one_process_answer_by_task_or_name_and_each_follows_its_alias(
    tmp_path, classifier_bundle, ner_bundle
):
    registry = tmp_registry(tmp_path)
    registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    registry.register("tinyner", ner_bundle, MINIMAL_EVIDENCE)
    registry.set_alias("tiny", "production", 1, reason="test")
    registry.set_alias("tinyner", "production", 1, reason="test")
    with dapt_serve(
        tmp_path, "--name", "tiny", "--name", "tinyner@production", DAPT_RELOAD_POLL_S="0.5"
    ) as url:
        metadata = httpx.get(f"{url}/metadata", timeout=10).json()
        assert [(m["name"], m["version"], m["task"], m["alias"]) for m in metadata["models"]] == [
            ("tiny", "1", "classification", "production"),
            ("tinyner", "1", "ner", "production"),
        ]
        assert (metadata["name"], metadata["task"]) == ("tiny", "classification")  # single-model fields kept
        assert metadata["shadow"] is None

        # No `model`: the only model of the endpoint's task answers, in the single-model shapes.
        classified = httpx.post(f"{url}/classify", json={"texts": ["Aspirin eased it"]}, timeout=30)
        assert classified.status_code == 200 and classified.json()["model"]["name"] == "tiny"
        assert set(classified.json()["predictions"][0]) == {"label", "score", "scores", "truncated"}
        found = httpx.post(f"{url}/entities", json={"texts": ["Aspirin eased it"]}, timeout=30)
        assert found.status_code == 200 and found.json()["model"]["name"] == "tinyner"
        assert found.json()["entities"][0][0]["label"] == "DRUG"
        named = httpx.post(f"{url}/entities", json={"texts": ["x y"], "model": "tinyner"}, timeout=30)
        assert named.status_code == 200 and named.json()["model"]["name"] == "tinyner"

        # Wrong, unknown and ambiguous choices are 4xx that say what to send.
        wrong = httpx.post(f"{url}/classify", json={"texts": ["x"], "model": "tinyner"}, timeout=30)
        assert wrong.status_code == 400 and wrong.json()["use"] == "/entities"
        unknown = httpx.post(f"{url}/classify", json={"texts": ["x"], "model": "nope"}, timeout=30)
        assert unknown.status_code == 404 and unknown.json()["choices"] == ["tiny", "tinyner"]
        assert "tiny (classification), tinyner (ner)" in unknown.json()["error"]
        not_a_name = httpx.post(f"{url}/classify", json={"texts": ["x"], "model": 3}, timeout=30)
        assert not_a_name.status_code == 422 and not_a_name.json()["field"] == "model"
        ambiguous = httpx.post(f"{url}/embed", json={"texts": ["x"]}, timeout=30)  # both bundles can embed
        assert ambiguous.status_code == 400 and ambiguous.json()["choices"] == ["tiny", "tinyner"]
        embedded = httpx.post(f"{url}/embed", json={"texts": ["x"], "model": "tinyner"}, timeout=30)
        assert embedded.status_code == 200 and embedded.json()["model"]["name"] == "tinyner"

        # One model's alias moves: only that model swaps, the other keeps serving its version.
        registry.register("tinyner", ner_bundle, MINIMAL_EVIDENCE)
        registry.set_alias("tinyner", "production", 2, reason="test: promote the NER model")

        def versions() -> dict[str, str]:
            return {
                m["name"]: m["version"] for m in httpx.get(f"{url}/metadata", timeout=10).json()["models"]
            }

        _until(lambda: versions()["tinyner"] == "2", 60, "tinyner to swap to v2")
        assert versions() == {"tiny": "1", "tinyner": "2"}
        after = httpx.post(f"{url}/entities", json={"texts": ["Aspirin eased it"]}, timeout=30)
        assert after.status_code == 200 and after.json()["model"]["version"] == "2"


def _shadow_run(tmp_path: Path, shadow: str, requests: int) -> tuple[dict, dict, str]:
    """Serve tiny's production with ``--shadow``, drive ``requests`` requests; (load result, /metadata's
    shadow once every copy is accounted for and the registry holds that summary, /metrics)."""
    registry = tmp_registry(tmp_path)
    with dapt_serve(
        tmp_path,
        "--name",
        "tiny",
        "--shadow",
        shadow,
        DAPT_SHADOW_EVIDENCE_S="1",
        DAPT_SHADOW_QUEUE="32",
    ) as url:
        load = drive_load(url, requests, 16)

        def settled() -> dict | None:
            status = httpx.get(f"{url}/metadata", timeout=10).json()["shadow"]
            accounted = status["requests"] + status["dropped"] + status["errors"]
            if accounted < requests or status["queue"]["waiting"]:
                return None
            stored = registry.get_version("tiny", int(status["version"])).evidence.get("shadow") or {}
            return status if stored.get("requests") == status["requests"] else None  # written periodically

        status = _until(settled, 90, "every shadow copy to be compared or dropped")
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return load, status, metrics


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_a_shadow_under_load_never_fails_production_and_its_agreement_reaches_the_registry_and_gate(
    tmp_path, classifier_bundle, positive_bundle
):
    registry = tmp_registry(tmp_path)
    registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)
    registry.register("tiny", positive_bundle, MINIMAL_EVIDENCE)
    registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE)  # v3: never shadowed
    registry.set_alias("tiny", "production", 1, reason="test")
    registry.set_alias("tiny", "candidate", 2, reason="test")
    requests = 300

    # A version shadowing itself agrees on every text.
    load, status, metrics = _shadow_run(tmp_path, "1", requests)
    print(f"\n[shadow itself] load {load}\n[shadow itself] {status}")
    assert load["errors"] == 0, load
    assert status["version"] == "1" and status["errors"] == 0 and status["requests"] > 0
    assert status["agreement"] == 1.0 and status["metric"] == "label_agreement"
    assert status["p50_ms"] > 0
    compared = _metric(
        metrics, "dapt_shadow_requests_total", model_name="tiny", shadow_version="1", outcome="compared"
    )
    assert compared == status["requests"]
    assert _metric(metrics, "dapt_shadow_agreement", model_name="tiny", shadow_version="1") == 1.0
    stored = registry.get_version("tiny", 1).evidence["shadow"]  # written at shutdown
    assert (stored["requests"], stored["agreement"], stored["errors"]) == (status["requests"], 1.0, 0)

    # Another version (the candidate alias: always "positive") disagrees where production says otherwise.
    load, status, _ = _shadow_run(tmp_path, "candidate", requests)
    print(f"[shadow candidate] load {load}\n[shadow candidate] {status}")
    assert load["errors"] == 0, load
    assert status["version"] == "2" and status["alias"] == "candidate" and status["requests"] > 0
    production_says = _production_label(classifier_bundle)
    expected = (
        1.0 if production_says == "positive" else 0.0
    )  # the tiny model answers one label for these texts
    assert status["agreement"] == pytest.approx(expected)
    stored = registry.get_version("tiny", 2).evidence["shadow"]
    assert stored["requests"] == status["requests"] and stored["against"] == ["1"]

    # The gate: refused without shadow evidence, or below the agreement asked for; passes with enough of both.
    def promote(version: int, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(DAPT), "models", "promote", "tiny", str(version), *options],
            env=_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    never = promote(3, "--no-require-parity", "--min-shadow-requests", "10")
    assert never.returncode == 3, never.stdout + never.stderr
    assert "no shadow evidence" in never.stdout + never.stderr
    if expected < 1.0:
        low = promote(2, "--no-require-parity", "--min-shadow-agreement", "0.99")
        assert low.returncode == 3, low.stdout + low.stderr
        assert "below the required 0.9900" in low.stdout + low.stderr
    ok = promote(2, "--no-require-parity", "--min-shadow-requests", "10")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert registry.aliases("tiny")["production"] == 2


def _production_label(bundle: Path) -> str:
    """What the production version answers for the load's texts, in-process (ONNX Runtime, same bundle)."""
    from services.predictor import OnnxPredictor

    labels = {
        p["label"]
        for p in OnnxPredictor(bundle).classify([f"Aspirin eased the headache. {i}" for i in range(20)])
    }
    assert len(labels) == 1, f"the tiny model answers several labels ({labels}): compute agreement per text"
    return labels.pop()
