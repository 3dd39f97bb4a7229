"""The whole run's time budget (``time_budget_minutes``): fine-tuning gets what the run's budget leaves once the
stages before it are done and the stages after it are provided for, never more than its own budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from models.recipe import Recipe
from models.training.step_budget import (
    RESERVE_COVERS_EVAL_ROWS,
    RESERVED_AFTER_FINETUNE_SECONDS,
    SECONDS_PER_EXTRA_EVAL_ROW,
    expected_eval_rows,
    finetune_minutes_in_run,
    reserved_after_finetune_seconds,
)
from tests.tiny_recipe import write_tiny_recipe


def test_fine_tuning_keeps_its_own_budget_when_the_run_leaves_more():
    budget = finetune_minutes_in_run(15, 240, 8)
    assert budget["binds"] is False
    assert budget["finetune_minutes"] == 8
    assert budget["spent_minutes"] == 4.0


def test_fine_tuning_is_cut_to_what_the_run_leaves_after_the_reserve():
    spent = 400.0
    budget = finetune_minutes_in_run(15, spent, 8)
    assert budget["binds"] is True
    assert budget["finetune_minutes"] == pytest.approx(
        (900 - spent - RESERVED_AFTER_FINETUNE_SECONDS["classification"]) / 60, abs=0.01
    )
    assert budget["finetune_minutes"] < 8


def test_a_stage_without_a_budget_of_its_own_gets_what_the_run_leaves():
    budget = finetune_minutes_in_run(15, 300, None)
    assert budget["binds"] is True and budget["stage_minutes"] is None
    assert budget["finetune_minutes"] == pytest.approx(
        (900 - 300 - RESERVED_AFTER_FINETUNE_SECONDS["classification"]) / 60, abs=0.01
    )


def test_a_spent_run_budget_leaves_a_positive_sliver_so_min_epochs_decides():
    budget = finetune_minutes_in_run(5, 600, 8)
    assert budget["binds"] is True
    assert 0 < budget["finetune_minutes"] <= 0.01


def test_ner_keeps_more_time_after_fine_tuning_than_classification():
    ner = finetune_minutes_in_run(15, 300, None, task="ner")
    classification = finetune_minutes_in_run(15, 300, None, task="classification")
    assert ner["reserved_minutes"] == round(RESERVED_AFTER_FINETUNE_SECONDS["ner"] / 60, 2)
    assert ner["reserved_minutes"] > classification["reserved_minutes"]
    assert ner["finetune_minutes"] < classification["finetune_minutes"]


def test_an_eval_set_larger_than_the_measured_ones_keeps_its_evaluation_time_after_fine_tuning():
    measured = RESERVED_AFTER_FINETUNE_SECONDS["ner"]
    assert reserved_after_finetune_seconds("ner", 2_000) == measured
    assert reserved_after_finetune_seconds("ner", RESERVE_COVERS_EVAL_ROWS) == measured
    big = RESERVE_COVERS_EVAL_ROWS + 10_000
    assert reserved_after_finetune_seconds("ner", big) == pytest.approx(
        measured + 10_000 * SECONDS_PER_EXTRA_EVAL_ROW
    )
    small = finetune_minutes_in_run(15, 300, None, task="ner", eval_rows=1_000)
    large = finetune_minutes_in_run(15, 300, None, task="ner", eval_rows=big)
    assert large["reserved_minutes"] > small["reserved_minutes"]
    assert large["finetune_minutes"] == pytest.approx(
        (900 - 300 - reserved_after_finetune_seconds("ner", big)) / 60, abs=0.01
    )


def test_the_eval_size_is_the_eval_files_rows_or_the_share_split_from_train():
    assert expected_eval_rows({"train": 5_000, "eval": 2_388}, 0.2) == 2_388
    assert expected_eval_rows({"train": 5_000, "eval": 0}, 0.2) == 1_000
    assert expected_eval_rows({}, 0.2) == 0


def test_the_budget_clock_starts_at_the_callers_start_when_given():
    from flows.retrain import _budget_clock

    flow_started = time.monotonic()
    assert _budget_clock(flow_started, None) == flow_started
    clock = _budget_clock(flow_started, time.time() - 12.0)  # the command started 12 s before the flow
    assert flow_started - clock == pytest.approx(12.0, abs=0.5)
    assert _budget_clock(flow_started, time.time() + 60) == flow_started  # a clock ahead never adds time


def test_no_run_budget_leaves_fine_tuning_alone():
    assert finetune_minutes_in_run(None, 10_000, 8) is None


def test_the_run_budget_defaults_to_the_issue_budget_and_must_be_positive_or_null():
    data = {"name": "x", "data": {"corpus": "c.txt", "train": "t.csv", "labels": ["a", "b"]}}
    assert Recipe.model_validate(data).time_budget_minutes == 15.0
    assert Recipe.model_validate(data | {"time_budget_minutes": None}).time_budget_minutes is None
    with pytest.raises(ValueError, match="time_budget_minutes"):
        Recipe.model_validate(data | {"time_budget_minutes": 0})


@pytest.mark.integration
def test_a_run_whose_budget_is_spent_before_fine_tuning_cuts_its_budget_and_says_so(
    tmp_path, sample_dir, tiny_base_model, prefect_harness
):
    from dapt.cli.app import run_recipe

    recipe = write_tiny_recipe(
        tmp_path / "run",
        sample_dir,
        tiny_base_model,
        # its own registry name and seed: the session's registry and adaptation cache are shared by every test
        name="tiny-runbudget",
        seed=11,
        time_budget_minutes=0.05,  # 3 s: spent by validation and adaptation
        finetune={"max_steps": -1, "epochs": 2, "min_epochs": 1, "time_budget_minutes": 5},
    )
    summary = run_recipe(recipe)

    run_budget = summary["run_budget"]
    assert run_budget["binds"] is True
    assert run_budget["stage_minutes"] == 5
    assert run_budget["finetune_minutes"] == 0.01
    assert run_budget["spent_minutes"] > 0 and run_budget["flow_minutes"] >= run_budget["spent_minutes"]
    # the budget counts from the command's start, so it has used at least what the flow took
    assert run_budget["used_minutes"] >= run_budget["flow_minutes"]
    record = json.loads((Path(summary["files"]["run"]) / "finetune" / "finetune.json").read_text())
    # fine-tuning planned with the cut budget, and min_epochs still trained at least one whole epoch
    assert record["params"]["time_budget_minutes"] == 0.01
    assert record["params"]["time_budget"]["minutes"] == 0.01
    assert record["params"]["global_steps"] >= record["params"]["steps_per_epoch"]
    assert summary["gate"]["passed"] is True
    report = (Path(summary["files"]["run"]) / "report.md").read_text(encoding="utf-8")
    assert "fine-tuning got 0.01 min, set by the run's budget" in report
    assert f"The run used {run_budget['used_minutes']} min of its 0.05-minute budget" in report
