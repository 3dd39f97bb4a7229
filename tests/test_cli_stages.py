"""`dapt adapt|finetune|evaluate|export RECIPE`: each stage alone, chained by folders, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_recipe import write_tiny_recipe

REPO = Path(__file__).resolve().parents[1]


def dapt(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"DAPT_HOME": str(home), "COLUMNS": "200", "DAPT_TORCH_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dapt.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.timeout(900)
def test_stages_run_one_at_a_time_and_chain_through_their_output_folders(
    tmp_path, sample_dir, tiny_base_model
):
    recipe = str(write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model))
    home = tmp_path / "home"
    stages = tmp_path / "stages"

    adapted = dapt("adapt", recipe, "--out", str(stages / "adapt"), home=home)
    assert adapted.returncode == 0, adapted.stderr
    assert (stages / "adapt" / "encoder" / "config.json").is_file()
    assert "general_loss_after" in adapted.stdout  # the forgetting measurement is shown
    assert "adaptation gain" in adapted.stdout  # and whether the adapted encoder beats the base on the task
    gain = json.loads((stages / "adapt" / "adaptation_gain.json").read_text())
    assert gain["kept"] in {"adapted", "base"} and gain["method"] == "short_finetune"

    tuned = dapt(
        "finetune", recipe, "--encoder", str(stages / "adapt"), "--out", str(stages / "ft"), home=home
    )
    assert tuned.returncode == 0, tuned.stderr
    assert (stages / "ft" / "model" / "config.json").is_file()
    assert (stages / "ft" / "learning_curves.png").is_file()

    scored = dapt("evaluate", recipe, "--model", str(stages / "ft"), "--out", str(stages / "eval"), home=home)
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((stages / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and "per_class" in metrics
    assert "macro_f1" in scored.stdout

    exported = dapt(
        "export", recipe, "--model", str(stages / "ft"), "--out", str(stages / "bundle"), home=home
    )
    assert exported.returncode == 0, exported.stderr
    assert (stages / "bundle" / "serving.json").is_file()
    assert "fp32: parity passed" in exported.stdout

    # Stages register nothing: the registry under DAPT_HOME stays empty.
    listed = dapt("models", "list", home=home)
    assert "finsent" not in listed.stdout and "tiny " not in listed.stdout


def test_a_stage_pointed_at_a_folder_without_a_model_says_so_in_one_line(
    tmp_path, sample_dir, tiny_base_model
):
    recipe = str(write_tiny_recipe(tmp_path / "recipe", sample_dir, tiny_base_model))
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = dapt("evaluate", recipe, "--model", str(empty), home=tmp_path / "home")
    assert result.returncode == 2
    assert "is not a model folder" in result.stderr and "dapt finetune" in result.stderr
    assert "Traceback" not in result.stderr
