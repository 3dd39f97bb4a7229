"""Offline Optuna search over the fine-tuning defaults on real data (issue 13, item 2), scored on a tuning set.

The defaults must not need a search at run time; this is the offline search that checks them. Each trial is
dapt's own ``finetune()`` (no time budget, every epoch, the defaults' way of fitting every training row) with
one set of hyperparameters, scored on a **tuning set that is neither the training rows nor the test split**:

- ``sentiment``: the fin_sentiment_tfns train tweets outside the 5,000-row stratified subsample that
  ``quality.py`` trains on (4,535 tweets);
- ``ner``: BC5CDR's labelled dev split (4,579 sentences; quality.py uses only its text, as the corpus).

Trial 0 is always the current defaults, so the baseline is measured in the same run, on the same seed and
tuning set. Finally the best trial and the defaults are both scored on the test split (reported, never
searched on). A seed moves a recipe by up to a point on the tweets: read a gain smaller than that as noise
unless it holds at other seeds (``--confirm-seeds``).

    .venv/bin/python benchmarks/search_defaults.py --task sentiment --trials 12 --out /tmp/search
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchmarkError, load_average, say  # noqa: E402
from benchmarks.quality_real import (  # noqa: E402
    _read_csv,
    find_data_dir,
    keep_types,
    prepare_ner,
    prepare_sentiment,
    read_conll,
    write_conll,
)

# Around each default (models/recipe.py, resolved for the task).
SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": (5e-5, 3e-4),  # log-uniform
    "head_learning_rate": (3e-4, 3e-3),  # log-uniform
    "layer_lr_decay": (0.75, 1.0),
    "warmup_ratio": (0.0, 0.2),
    "weight_decay": (0.0, 0.1),
    "epochs": (3, 5),  # integer
}
# The most epochs the 8-minute fine-tuning budget of a whole run fits on the 2-core CPU of sessions 10-19:
# the tweets' 5 epochs trained in 430-473 s, BC5CDR's 5 in 376 s (benchmarks/README.md).
MOST_EPOCHS = {"sentiment": 5, "ner": 6}


def search_space(task: str) -> dict[str, Any]:
    return SEARCH_SPACE | {"epochs": (SEARCH_SPACE["epochs"][0], MOST_EPOCHS[task])}


def tuning_set(task: str, data: Path, out: Path, prepared: dict) -> Path:
    """The file the search scores trials on: never train rows, never the test split."""
    if task == "sentiment":
        used = {text for text, _ in prepared["train"]}
        rows = [r for r in _read_csv(data / "fin_sentiment_tfns" / "train.csv") if r["text"] not in used]
        path = out / "tuning.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
        return path
    labels = prepared["recipe"]["data"]["labels"]
    dev = [(w, keep_types(t, labels)) for w, t in read_conll(data / "bc5cdr_ner" / "dev.conll")]
    path = out / "tuning.conll"
    write_conll(path, dev)
    return path


def score(recipe, model_dir: Path, frame, out: Path) -> dict[str, float]:
    from models.evaluation.evaluate import evaluate_model

    metrics = evaluate_model(recipe, model_dir, frame, out).metrics
    key = "entity_f1" if recipe.task == "ner" else "macro_f1"
    return {"f1": round(float(metrics[key]), 4), "accuracy": round(float(metrics["accuracy"]), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("sentiment", "ner"), required=True)
    parser.add_argument("--data-dir", type=Path, default=None, help="real data folder (or $DAPT_REAL_DATA)")
    parser.add_argument("--trials", type=int, default=12, help="trials including the defaults' trial 0")
    parser.add_argument("--timeout-minutes", type=float, default=None, help="stop starting trials after this")
    parser.add_argument("--seed", type=int, default=42, help="training seed of every trial")
    parser.add_argument(
        "--confirm-seeds", default="", help="comma-separated seeds to re-run best and defaults"
    )
    parser.add_argument("--out", type=Path, default=None, help="work folder (a temp folder by default)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        raise BenchmarkError("--trials must be at least 1 (trial 0 is the defaults)")

    import optuna
    import torch

    from models.data import load_task_data, read_classification, read_ner_labelled
    from models.recipe import Recipe
    from models.training.finetune import finetune

    data = find_data_dir(args.data_dir)
    out = args.out or Path(tempfile.mkdtemp(prefix="dapt-search-"))
    out.mkdir(parents=True, exist_ok=True)
    prepared = (
        prepare_sentiment(data, out, 5000, "headlines", 7)
        if args.task == "sentiment"
        else prepare_ner(data, out, ["Disease"])
    )
    base_raw = prepared["recipe"] | {"name": f"search-{args.task}"}
    base_raw["finetune"] = {"time_budget_minutes": None}
    tuning_path = tuning_set(args.task, data, out, prepared)

    def recipe_with(params: dict, seed: int) -> Recipe:
        raw = json.loads(json.dumps(base_raw, default=str)) | {"seed": seed}
        raw["finetune"] = {**raw["finetune"], **params}
        return Recipe.model_validate(raw)

    defaults = recipe_with({}, args.seed)
    task = load_task_data(defaults)
    tuning = (
        read_classification(tuning_path)
        if args.task == "sentiment"
        else read_ner_labelled(tuning_path, defaults.data)[0]
    )
    say(f"{args.task}: {len(task.train)} train rows, {len(tuning)} tuning rows, {len(task.eval)} test rows")

    from models.training.task_model import resolve_task_defaults

    resolved = resolve_task_defaults(defaults, defaults.finetune)
    space = search_space(args.task)
    default_params = {name: getattr(resolved, name) for name in space}
    default_params["epochs"] = int(default_params["epochs"])
    trials: list[dict] = []
    models: dict[int, Path] = {}

    def fit(params: dict, seed: int, folder: Path) -> tuple[Recipe, Path, float]:
        recipe = recipe_with(params, seed)
        started = time.perf_counter()
        result = finetune(
            recipe, Path(recipe.resolved_base_model()), task.train, task.eval, folder, progress=say
        )
        return recipe, result.model_dir, time.perf_counter() - started

    def objective(trial: optuna.Trial) -> float:
        params = {
            name: (
                trial.suggest_int(name, *bounds)
                if name == "epochs"
                else trial.suggest_float(name, *bounds, log=name.endswith("learning_rate"))
            )
            for name, bounds in space.items()
        }
        say(f"trial {trial.number}/{args.trials - 1}: {params} (load {load_average()})")
        folder = out / f"trial_{trial.number}"
        recipe, model_dir, seconds = fit(params, args.seed, folder)
        result = score(recipe, model_dir, tuning, folder / "tuning_eval")
        trials.append(
            {"number": trial.number, "params": params, "tuning": result, "seconds": round(seconds, 1)}
        )
        models[trial.number] = model_dir
        say(f"trial {trial.number}: tuning F1 {result['f1']:.4f} in {seconds:.0f} s")
        (out / "trials.json").write_text(json.dumps(trials, indent=1))
        return result["f1"]

    torch.manual_seed(args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.enqueue_trial(default_params)  # trial 0: today's defaults, the baseline of this run
    timeout = args.timeout_minutes * 60 if args.timeout_minutes else None
    study.optimize(objective, n_trials=args.trials, timeout=timeout)

    best = max(trials, key=lambda t: t["tuning"]["f1"])
    baseline = trials[0]
    report: dict[str, Any] = {
        "task": args.task,
        "seed": args.seed,
        "tuning_set": str(tuning_path.name),
        "n_tuning": len(tuning),
        "search_space": {k: list(v) for k, v in space.items()},
        "defaults": baseline,
        "best": best,
        "best_minus_defaults_points": round(100 * (best["tuning"]["f1"] - baseline["tuning"]["f1"]), 2),
        "trials": trials,
        "load_average_end": load_average(),
    }
    # the test split only reports the two that matter; nothing is chosen on it
    for name, trial in (("defaults", baseline), ("best", best)):
        recipe = recipe_with(trial["params"], args.seed)
        report[f"{name}_test"] = score(recipe, models[trial["number"]], task.eval, out / f"test_{name}")
    (out / "search.json").write_text(json.dumps(report, indent=1))
    confirm: dict[str, Any] = {}
    seeds = [int(s) for s in args.confirm_seeds.split(",") if s.strip()]
    if best["number"] == baseline["number"]:
        say("the defaults scored best: nothing to confirm at other seeds")
        seeds = []
    for seed in seeds:
        row = {}
        for name, trial in (("defaults", baseline), ("best", best)):
            folder = out / f"confirm_{name}_{seed}"
            recipe, model_dir, seconds = fit(trial["params"], seed, folder)
            row[name] = {
                "tuning": score(recipe, model_dir, tuning, folder / "tuning_eval"),
                "test": score(recipe, model_dir, task.eval, folder / "test_eval"),
                "seconds": round(seconds, 1),
            }
            shutil.rmtree(model_dir, ignore_errors=True)
        confirm[str(seed)] = row
    if confirm:
        report["confirm"] = confirm
    (out / "search.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
