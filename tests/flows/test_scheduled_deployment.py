"""Scheduled retraining against a real `prefect server start` on 127.0.0.1 (bounded in time)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.launcher import stop_server as _stop
from tests.tiny_recipe import write_tiny_recipe

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_cron_deployment_runs_the_flow_and_publishes_artifacts(
    tmp_path, sample_dir, tiny_base_model, prefect_server
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    recipe = write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model)
    env = os.environ | {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "DAPT_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "home" / "prefect"),
    }
    schedule_log = tmp_path / "schedule.log"
    with open(schedule_log, "w") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "dapt.cli", "schedule", str(recipe), "--cron", "0 3 * * *"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            with get_client(sync_client=True) as client:
                deployment = None
                deadline = time.monotonic() + 120
                while deployment is None and time.monotonic() < deadline:
                    assert runner.poll() is None, schedule_log.read_text()[-3000:]
                    try:
                        deployment = client.read_deployment_by_name("retrain/tiny-scheduled")
                    except Exception:  # noqa: BLE001 - not created yet
                        time.sleep(1)
                assert deployment is not None, "the deployment was not created within 120 s"
                crons = [s.schedule.cron for s in deployment.schedules]
                assert crons == ["0 3 * * *"]
                # one scheduled run at a time by default: a run that comes due while one runs waits for it
                assert deployment.global_concurrency_limit is not None
                assert deployment.global_concurrency_limit.limit == 1
                assert deployment.concurrency_options.collision_strategy == "ENQUEUE"

                flow_run = run_deployment("retrain/tiny-scheduled", timeout=0)
                deadline = time.monotonic() + 420
                state = None
                while time.monotonic() < deadline:
                    state = client.read_flow_run(flow_run.id).state
                    if state is not None and state.is_final():
                        break
                    time.sleep(2)
                assert state is not None and state.is_completed(), (
                    f"flow run ended as {state!r}\n{schedule_log.read_text()[-3000:]}"
                )
                from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
                )
                by_key = {a.key: a for a in artifacts}
                assert "tiny-report" in by_key and "tiny-metrics" in by_key
                assert "Gate (production)" in by_key["tiny-report"].data
    finally:
        _stop(runner)


def test_concurrency_limit_is_a_setting(tmp_path, sample_dir, tiny_base_model, prefect_server):
    """DAPT_SCHEDULE_CONCURRENCY changes the deployment's limit (0 removes it); a bad value is a clear error."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    recipe = write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model)
    env = os.environ | {
        "PREFECT_API_URL": prefect_server,
        "DAPT_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "home" / "prefect"),
    }
    bad = subprocess.run(
        [sys.executable, "-m", "dapt.cli", "schedule", str(recipe), "--cron", "0 3 * * *"],
        cwd=REPO,
        env=env | {"DAPT_SCHEDULE_CONCURRENCY": "many"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "DAPT_SCHEDULE_CONCURRENCY='many' is not a valid limit" in bad.stdout + bad.stderr

    schedule_log = tmp_path / "schedule.log"
    with open(schedule_log, "w") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "dapt.cli", "schedule", str(recipe), "--cron", "0 3 * * *"],
            cwd=REPO,
            env=env | {"DAPT_SCHEDULE_CONCURRENCY": "3"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
            deployment = None
            deadline = time.monotonic() + 120
            while deployment is None and time.monotonic() < deadline:
                assert runner.poll() is None, schedule_log.read_text()[-3000:]
                try:
                    deployment = client.read_deployment_by_name("retrain/tiny-scheduled")
                except Exception:  # noqa: BLE001 - not created yet
                    time.sleep(1)
            assert deployment is not None, "the deployment was not created within 120 s"
            assert deployment.global_concurrency_limit.limit == 3
    finally:
        _stop(runner)


def test_schedule_concurrency_setting_parses(monkeypatch):
    from flows.deploy import ScheduleError, schedule_concurrency

    monkeypatch.delenv("DAPT_SCHEDULE_CONCURRENCY", raising=False)
    assert schedule_concurrency() == 1
    monkeypatch.setenv("DAPT_SCHEDULE_CONCURRENCY", "4")
    assert schedule_concurrency() == 4
    monkeypatch.setenv("DAPT_SCHEDULE_CONCURRENCY", "0")
    assert schedule_concurrency() is None  # no limit
    assert schedule_concurrency(2) == 2  # an explicit value wins over the environment
    for bad in ("-1", "one", "1.5"):
        monkeypatch.setenv("DAPT_SCHEDULE_CONCURRENCY", bad)
        with pytest.raises(ScheduleError, match="DAPT_SCHEDULE_CONCURRENCY"):
            schedule_concurrency()
