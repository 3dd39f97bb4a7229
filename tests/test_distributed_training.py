"""Training on more than one process: `accelerate launch --multi_gpu --num_processes 2` of the installed
`dapt run` on a machine without a GPU is one data-parallel job on gloo: both ranks train adaptation and
fine-tuning, rank 0 alone validates, evaluates, exports, writes and registers, and exactly one version lands in
the registry.

``--multi_gpu`` is what makes accelerate start the processes (through torchrun) on a CPU-only host too: with
``--cpu`` accelerate 1.15 starts one process unless MPI runs them (``--mpirun_hostfile``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.launcher import free_port
from tests.tiny_recipe import write_tiny_recipe

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# About two minutes on an idle 2-core machine; the limit leaves room for a loaded one.
LAUNCH_TIMEOUT_S = 600


def _env(home: Path) -> dict[str, str]:
    from models.settings import stack_environment

    env = os.environ | stack_environment(home) | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # a fresh local registry and Prefect's temporary server, whatever the calling shell points at
    for key in (
        "DAPT_REGISTRY_URL",
        "DAPT_ARTIFACT_ROOT",
        "PREFECT_API_URL",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
    ):
        env.pop(key, None)
    return env


def _models(env: dict[str, str], *args: str) -> object:
    done = subprocess.run(
        [str(BIN / "dapt"), "models", *args, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_process_launch_trains_data_parallel_and_registers_one_version(
    tmp_path, tiny_base_model, sample_dir
):
    recipe = write_tiny_recipe(
        tmp_path / "recipe", sample_dir, tiny_base_model, export={"variants": ["fp32"]}
    )
    home = tmp_path / "home"
    env = _env(home)
    command = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(BIN / "dapt"),
        "run",
        str(recipe),
    ]
    started = time.monotonic()
    # A launch that runs out of time gets SIGTERM first: torchrun (inside accelerate) then stops its workers,
    # which run in sessions of their own; SIGKILL to the launcher's group is the last resort.
    launch = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = launch.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        launch.terminate()
        try:
            output, _ = launch.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            output, _ = launch.communicate()
        raise AssertionError(f"no exit within {LAUNCH_TIMEOUT_S} s:\n{output[-6000:]}") from None
    seconds = time.monotonic() - started
    assert launch.returncode == 0, output[-6000:]
    print(f"two-process dapt run (accelerate launch, gloo) took {seconds:.1f} s")

    # rank 1 ran the training stages with rank 0, and nothing else
    assert "[rank 1] following rank 0 into adapt_stage" in output, output[-6000:]
    assert "[rank 1] following rank 0 into finetune_stage" in output, output[-6000:]
    # the default gain check fine-tunes from both encoders: the followers train those with rank 0 too
    assert "[rank 1] following rank 0 into adaptation_gain_stage" in output, output[-6000:]
    assert "[rank 1] rank 0 is done" in output

    # one version, registered once, by rank 0
    listed = _models(env, "list", "tiny")
    assert [v["version"] for v in listed] == [1], listed
    shown = _models(env, "show", "tiny", "--version", "1")
    evidence = shown["evidence"]
    # the Trainer's world size, recorded by the training stages: both ranks trained one model together
    assert evidence["finetune_params"]["processes"] == 2
    assert evidence["adaptation_gain"]["method"] == "short_finetune", evidence["adaptation_gain"]
    phases = evidence["adaptation"]["phases"]
    assert phases and all(phase["processes"] == 2 for phase in phases), phases

    # rank 0 alone made the run folder and the adaptation cache entry
    assert len(list((home / "runs").iterdir())) == 1
    assert len(list((home / "adapt").iterdir())) == 1
