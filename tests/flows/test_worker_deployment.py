"""prefect.yaml's `retrain` deployment on a process work pool, run by a real `prefect worker` against a real
`prefect server` on 127.0.0.1: created with the commands the README gives, triggered, completed on the worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.launcher import stop_server as _stop
from tests.tiny_recipe import write_tiny_recipe

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
POOL = "dapt-process"


def test_prefect_yaml_declares_the_retrain_deployment_on_the_process_pool():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (deployment,) = config["deployments"]
    assert deployment["entrypoint"] == "flows/retrain.py:retrain"
    assert deployment["work_pool"]["name"] == POOL
    assert (REPO / deployment["parameters"]["recipe"]).is_file()  # the default recipe exists
    assert config.get("pull") is None  # `prefect deploy` records the repository as the working directory


@pytest.mark.timeout(900)
def test_retrain_deployment_runs_to_completion_on_a_process_worker(
    tmp_path,
    sample_dir,
    tiny_base_model,
    prefect_server,
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from models.registry.store import Registry

    recipe = write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model)
    home = tmp_path / "home"
    env = os.environ | {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DAPT_HOME": str(home),
        "DAPT_REGISTRY_URL": f"sqlite:///{home / 'registry.db'}",
        "DAPT_ARTIFACT_ROOT": str(home / "artifacts"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]

    def run(*args: str) -> None:
        done = subprocess.run(
            [*prefect, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (
            f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )

    run("work-pool", "create", POOL, "--type", "process")
    run("deploy", "--all")

    worker_log = tmp_path / "worker.log"
    with open(worker_log, "w") as log:
        worker = subprocess.Popen(
            [*prefect, "worker", "start", "--pool", POOL, "--name", "test-worker", "--limit", "1"],
            cwd=tmp_path,  # the deployment's pull step, not the worker's folder, decides where the flow runs
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("retrain/dapt-retrain")
            assert deployment.work_pool_name == POOL
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ]
            flow_run = run_deployment("retrain/dapt-retrain", parameters={"recipe": str(recipe)}, timeout=0)
            deadline = time.monotonic() + 600
            state = None
            while time.monotonic() < deadline:
                assert worker.poll() is None, worker_log.read_text()[-3000:]
                state = client.read_flow_run(flow_run.id).state
                if state is not None and state.is_final():
                    break
                time.sleep(2)
            assert state is not None and state.is_completed(), (
                f"flow run ended as {state!r}\n{worker_log.read_text()[-4000:]}"
            )
            finished = client.read_flow_run(flow_run.id)
            # a process the worker started, on this pool
            assert finished.work_pool_name == POOL and finished.infrastructure_pid
        assert str(flow_run.id) in worker_log.read_text()  # this worker, not another, submitted it
    finally:
        _stop(worker)

    registry = Registry(f"sqlite:///{home / 'registry.db'}", home / "artifacts")
    versions = registry.list_versions("tiny")
    assert [v.version for v in versions] == [1]  # the run on the worker registered into DAPT_HOME
    assert versions[0].evidence["lineage"]["flow_run_id"] == str(flow_run.id)
