"""The `monitor` flow against a real `prefect server start` on 127.0.0.1, through `dapt monitor`: it starts a run
of the retrain deployment when the logged inputs drifted, and none when they did not."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE
from tests.services.conftest import classifier_bundle  # noqa: F401 - a fixture
from tests.services.helpers import MINIMAL_EVIDENCE, registry_env, tmp_registry
from tests.services.test_live_drift import gibberish
from tests.tiny_recipe import write_tiny_recipe

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _sample() -> tuple[list[str], list[str]]:
    with open(SAMPLE / "sentiment.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def _log(log_dir: Path, name: str, texts: list[str], labels: list[str], tokenizer_file: Path) -> None:
    """Prediction-log records as the service writes them (its writer, its counting), for ``texts``."""
    from tokenizers import Tokenizer

    from services.drift import encoding_stats
    from services.prediction_log import PredictionLog

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    unk = tokenizer.token_to_id("[UNK]")
    stats = [encoding_stats(e, unk) for e in tokenizer.encode_batch(texts)]
    answers = [{"label": label, "score": 0.9} for label in labels]
    log = PredictionLog(log_dir, mode="hash")
    log.write(
        name,
        log.records(
            name=name,
            version="1",
            task="classification",
            texts=texts,
            stats=stats,
            answers=answers,
            latency_ms=5.0,
        ),
    )
    log.close()


def _monitor(name: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dapt.cli", "monitor", name, "--json", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )


@pytest.mark.timeout(1200)  # fixtures export a tiny bundle and start a Prefect server
def test_monitor_flow_starts_retraining_on_drift_and_not_without(
    tmp_path,
    sample_dir,
    tiny_base_model,
    classifier_bundle,  # noqa: F811
    prefect_server,
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        DeploymentFilter,
        DeploymentFilterId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from expectations.drift import profile_data
    from flows.retrain import retrain
    from models.recipe import load_recipe

    started = time.monotonic()
    texts, labels = _sample()
    tokenizer_file = classifier_bundle / "tokenizer" / "tokenizer.json"
    profile = profile_data(texts[::2], labels[::2], tokenizer_file)
    evidence = {
        **MINIMAL_EVIDENCE,
        "profile": {"task": profile},
        "recipe": {"monitor": {"window": 300, "min_texts": 50}},
    }
    registry = tmp_registry(tmp_path)
    log_dir = tmp_path / "predictions"
    for name in ("calm", "drifted"):
        registry.set_alias(
            name, "production", registry.register(name, classifier_bundle, evidence).version, "test"
        )
    _log(log_dir, "calm", texts[1::2][:300], labels[1::2][:300], tokenizer_file)
    _log(log_dir, "drifted", gibberish(300), ["negative"] * 300, tokenizer_file)

    recipe = load_recipe(write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model))
    deployment_ids = {}
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        for name in ("calm", "drifted"):
            deployment = retrain.to_deployment(
                name=f"{name}-scheduled", parameters={"recipe": recipe.model_dump(mode="json")}
            )
            deployment_ids[name] = deployment.apply()

    env = (
        os.environ
        | registry_env(tmp_path)
        | {
            "PREFECT_API_URL": prefect_server,
            "DAPT_HOME": str(tmp_path / "home"),
            "PREFECT_HOME": str(tmp_path / "home" / "prefect"),
            "DAPT_PREDICTION_LOG_DIR": str(log_dir),
        }
    )
    print(f"[monitor] set up at {time.monotonic() - started:.0f} s", flush=True)
    calm = _monitor("calm", env)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    calm_result = json.loads(calm.stdout)
    assert calm_result["status"] == "ok" and calm_result["retrain"] is None, calm_result
    assert calm_result["texts"] == 300

    drifted = _monitor("drifted", env)
    assert drifted.returncode == 0, drifted.stdout + drifted.stderr
    result = json.loads(drifted.stdout)
    assert result["status"] == "fail", result
    assert {s["status"] for s in result["statistics"].values()} == {"fail"}
    assert result["retrain"]["deployment"] == "retrain/drifted-scheduled"
    assert Path(result["plot"]).stat().st_size > 10_000 and Path(result["report"]).is_file()

    print(f"[monitor] drifted run done at {time.monotonic() - started:.0f} s", flush=True)

    from flows.monitor import MonitorError, start_retrain

    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        with pytest.raises(MonitorError, match="'retrain/nowhere' is not on the Prefect server"):
            start_retrain("retrain/nowhere", "drifted", "test")

        def runs_of(name: str):
            return client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_ids[name]]))
            )

        assert runs_of("calm") == []
        (run,) = runs_of("drifted")
        assert str(run.id) == result["retrain"]["flow_run_id"]
        assert "drift" in run.tags and run.parameters["recipe"]["name"] == "tiny"
        drift_reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drifted-drift"]))
        )
        assert drift_reports and "Drift of drifted v1: fail" in drift_reports[0].data
        assert "retrain/drifted-scheduled" in drift_reports[0].data
