#!/usr/bin/env python3
"""Quality benchmark: dapt's default recipe on real public data, against a plain Hugging Face fine-tune.

Real data (the default; issue 13): see benchmarks/quality_real.py. For the tweets sentiment set and BC5CDR NER it
runs, in one go and on the same split, the default recipe, the same without adaptation, the same with the adapted
encoder forced, and a plain Trainer fine-tune; it prints macro-F1 / entity F1, per-class F1, wall time, the
measured adaptation gain, int8 agreement and whether the first version was promoted.

    .venv/bin/python benchmarks/quality.py --data-dir ../shared/data              # both tasks, all runs
    .venv/bin/python benchmarks/quality.py --task sentiment --runs default,plain --corpus fomc
    .venv/bin/python benchmarks/quality.py --task sentiment --runs default,plain --seeds 42,7,13

Synthetic (``--synthetic``, issue 5's check, never a quality claim): a generated 4000-sentence set in the
Financial PhraseBank's style (3% of labels flipped) through ``dapt run``; then the int8 and fp32 ONNX variants
are scored through the serving predictor. ``--quick`` does that on 300 rows with a tiny BERT (a smoke test).

    .venv/bin/python benchmarks/quality.py --synthetic --recipe-override finetune.learning_rate=1e-4
    .venv/bin/python benchmarks/quality.py --quick

Prints one JSON document on stdout (also saved as ``quality.json`` in the output folder); progress on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, BenchmarkError, cpu_count, load_average, say  # noqa: E402
from benchmarks.quality_real import CORPORA, RUNS  # noqa: E402

SAMPLE = REPO / "data" / "sample"
MODEL_NAME = "qualitybench"
LABELS = ["negative", "neutral", "positive"]
TARGETS = {"accuracy": 0.86, "macro_f1": 0.84, "int8_drop_points": 0.5, "wall_minutes": 15.0}
DEFAULT_ROWS, DEFAULT_SEED, DEFAULT_NOISE = 4000, 7, 0.03
QUICK_ROWS = 300
# Prefect names each task run "<task-name>-<suffix>"; these are the retrain flow's stages in order.
STAGES = [
    "validate-data",
    "adapt-encoder",
    "adaptation-gain",
    "fine-tune",
    "evaluate",
    "export-onnx",
    "register-version",
    "promote",
]
# Settings for --quick on the tiny BERT: a few steps per stage, so the whole flow takes under a minute.
QUICK_OVERRIDES = {
    "adapt.max_steps": 3,
    "adapt.batch_size": 8,
    "adapt.max_length": 32,
    "adapt.head_warmup_steps": 5,
    "finetune.max_steps": 8,
    "finetune.batch_size": 8,
    "finetune.max_length": 32,
    "export.min_label_agreement": 0.5,
}


# --------------------------------------------------------------------------- data and recipe


def _generator():
    """data/sample/generate.py as a module (it is a script in a data folder, not a package)."""
    if "sample_generate" in sys.modules:
        return sys.modules["sample_generate"]
    spec = importlib.util.spec_from_file_location("sample_generate", SAMPLE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sample_generate"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def write_dataset(path: Path, rows: int, seed: int, label_noise: float) -> dict[str, int]:
    """The labelled CSV; rows that occur inside the adaptation corpus are never written (no leakage)."""
    corpus = (SAMPLE / "corpus.txt").read_text(encoding="utf-8").splitlines()
    return _generator().write_sentiment(path, rows, seed, label_noise, exclude=corpus)


def parse_value(text: str) -> Any:
    """A YAML scalar or list, with '1e-4' read as a number (YAML 1.1 wants '1.0e-4')."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["finetune.learning_rate=1e-4", ...]`` -> ``{"finetune.learning_rate": 0.0001, ...}``."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", key):
            raise BenchmarkError(
                f"--recipe-override {item!r}: write a dotted recipe key and a value, "
                "e.g. finetune.learning_rate=1e-4"
            )
        overrides[key] = parse_value(value)
    return overrides


def build_recipe(train_csv: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recipe that names only the data (every other field keeps its default), then the overrides."""
    recipe: dict[str, Any] = {
        "name": MODEL_NAME,
        "task": "classification",
        "data": {
            "corpus": str(SAMPLE / "corpus.txt"),
            "general": str(SAMPLE / "general.txt"),
            "train": str(Path(train_csv).resolve()),
            "labels": list(LABELS),
            "slice_column": "source",
        },
    }
    for key, value in (overrides or {}).items():
        node = recipe
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BenchmarkError(f"--recipe-override {key}: {part} is not a section of the recipe")
            node = child
        node[leaf] = value
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    """Validate with the real Recipe model (a wrong key fails here, naming it) and write the YAML."""
    import yaml

    from models.recipe import RecipeError, recipe_from_dict

    try:
        recipe_from_dict(recipe, source="benchmark recipe")
    except RecipeError as exc:
        raise BenchmarkError(str(exc)) from None
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the run


def run_pipeline(recipe_path: Path, home: Path, log_path: Path) -> dict[str, Any]:
    """``dapt run RECIPE`` with a private DAPT_HOME; output teed to ``log_path`` and, briefly, to stderr.

    Stage times come from the moment each Prefect task run's "Finished in state" line arrives: a stage's
    time is the gap since the previous stage finished (the first since the flow run started).
    """
    from models.settings import stack_environment

    env = os.environ | stack_environment(home)  # overrides any DAPT/Prefect/BentoML home of the caller
    dapt = Path(sys.executable).with_name("dapt")
    command = (
        [str(dapt), "run", str(recipe_path)]
        if dapt.is_file()
        else [sys.executable, "-m", "dapt.cli", "run", str(recipe_path)]
    )
    say(f"running: {' '.join(command)} (DAPT_HOME={home}; log {log_path})")
    finished: dict[str, float] = {}
    flow_started: float | None = None
    started = time.perf_counter()
    with (
        open(log_path, "w", encoding="utf-8", buffering=1) as log,
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            now = time.perf_counter() - started
            log.write(line)
            if flow_started is None and re.search(r"Beginning flow run|Created flow run", line):
                flow_started = now
            match = re.search(r"Task run '([a-z-]+?)-[0-9a-z]+' - Finished in state (\w+)", line)
            if match and match.group(1) in STAGES:
                finished[match.group(1)] = now
                say(f"stage {match.group(1)} finished ({match.group(2)}) at {now:.0f} s")
            elif re.search(r"\[adapt\]|epoch|fine-tun|export done|evaluation:|gate", line, re.IGNORECASE):
                say("  " + line.strip()[:160])
        returncode = process.wait()
    wall = time.perf_counter() - started
    if returncode not in (0, 3):  # 3: registered, but the gate refused to promote it (still a result)
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise BenchmarkError(f"dapt run failed (exit {returncode}); end of {log_path}:\n{tail}")
    stages: dict[str, float] = {}
    previous = flow_started if flow_started is not None else 0.0
    for stage in STAGES:
        if stage in finished:
            stages[stage] = round(finished[stage] - previous, 1)
            previous = finished[stage]
    stages["startup_before_flow"] = round(flow_started or 0.0, 1)
    stages["after_last_stage"] = round(wall - previous, 1)
    return {"wall_seconds": round(wall, 1), "stage_seconds": stages, "exit_code": returncode}


def onnx_scores(bundle: Path, texts: list[str], gold: list[str]) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 of each ONNX variant on the evaluation texts, through the serving predictor."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from services.predictor import OnnxPredictor

    scores = {}
    for variant in ("fp32", "int8"):
        predictor = OnnxPredictor(bundle, variant=variant, providers=["CPUExecutionProvider"])
        logits = np.concatenate([predictor.logits(texts[i : i + 64]) for i in range(0, len(texts), 64)])
        predicted = [predictor.spec.labels[i] for i in logits.argmax(-1)]
        scores[variant] = {
            "accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(f1_score(gold, predicted, labels=LABELS, average="macro", zero_division=0)),
        }
    return scores


def read_results(recipe_path: Path, home: Path) -> dict[str, Any]:
    """Metrics of the version the run registered (evidence) and of its ONNX variants on the same split."""
    from models.data import load_task_data
    from models.recipe import load_recipe
    from models.registry.bundle import ServingSpec
    from models.registry.store import Registry

    registry = Registry(url=f"sqlite:///{home / 'registry.db'}", artifact_root=home / "artifacts")
    version = registry.get_version(MODEL_NAME)
    bundle = registry.load_path(MODEL_NAME, version.version)  # checksums verified
    registry.dispose()
    evidence = version.evidence
    evaluation = load_task_data(load_recipe(recipe_path)).eval
    texts, gold = list(evaluation["text"]), list(evaluation["label"])
    say(f"scoring the ONNX variants of {MODEL_NAME} v{version.version} on {len(texts)} evaluation texts")
    onnx = onnx_scores(bundle, texts, gold)
    metrics = evidence["metrics"]
    parity = evidence.get("parity", {})
    points = 100.0
    return {
        "version": version.version,
        "bundle": str(bundle),
        "eval_rows": len(texts),
        "train_rows": len(load_task_data(load_recipe(recipe_path)).train),
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "ece": metrics.get("ece"),
        "per_slice": (evidence.get("evaluation") or {}).get("per_slice"),
        "onnx": onnx,
        "int8": {
            "accuracy": onnx["int8"]["accuracy"],
            "macro_f1": onnx["int8"]["macro_f1"],
            "accuracy_drop_points": round((metrics["accuracy"] - onnx["int8"]["accuracy"]) * points, 3),
            "macro_f1_drop_points": round((metrics["macro_f1"] - onnx["int8"]["macro_f1"]) * points, 3),
            "label_agreement": (parity.get("int8") or {}).get("label_agreement"),
            "export_macro_f1_drop_points": (
                round(parity["int8"]["macro_f1_drop_vs_pytorch"] * points, 3)
                if (parity.get("int8") or {}).get("macro_f1_drop_vs_pytorch") is not None
                else None
            ),
            "served_on_cpu": ServingSpec.read(bundle).preferred_cpu_variant,
        },
        "adaptation": {
            key: (evidence.get("adaptation") or {}).get(key)
            for key in (
                "wall_seconds",
                "train_seconds",
                "tokens_per_second",
                "domain_loss_before",
                "domain_loss_after",
                "general_loss_before",
                "general_loss_after",
                "head_warmup_steps",
            )
        },
        "finetune_train_seconds": (evidence.get("finetune_params") or {}).get("train_seconds"),
        "effective_recipe": {
            key: evidence["recipe"][key]
            for key in ("adapt", "finetune", "export")
            if key in evidence["recipe"]
        },
    }


def judge(results: dict[str, Any], wall_seconds: float) -> dict[str, dict[str, Any]]:
    int8 = results["int8"]
    int8_drop = max(int8["accuracy_drop_points"], int8["macro_f1_drop_points"])
    return {
        "accuracy": {
            "value": results["accuracy"],
            "target": f">= {TARGETS['accuracy']}",
            "met": results["accuracy"] >= TARGETS["accuracy"],
        },
        "macro_f1": {
            "value": results["macro_f1"],
            "target": f">= {TARGETS['macro_f1']}",
            "met": results["macro_f1"] >= TARGETS["macro_f1"],
        },
        "int8_within_half_point": {
            "value": round(int8_drop, 3),
            "target": f"accuracy and macro-F1 drop <= {TARGETS['int8_drop_points']} points",
            "met": int8_drop <= TARGETS["int8_drop_points"],
        },
        "wall_minutes": {
            "value": round(wall_seconds / 60, 2),
            "target": f"<= {TARGETS['wall_minutes']}",
            "met": wall_seconds / 60 <= TARGETS["wall_minutes"],
        },
    }


def torch_threads(home: Path) -> int | None:
    """Threads torch uses in a child with the same environment as the run (defaults to the core count)."""
    from models.settings import stack_environment

    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=os.environ | stack_environment(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return int(probe.stdout.strip()) if probe.returncode == 0 and probe.stdout.strip().isdigit() else None


# --------------------------------------------------------------------------- main


def parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds 42,7`` → [42, 7]; None when not given."""
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BenchmarkError(
            f"--seeds: {text!r} is not a comma-separated list of integers, e.g. --seeds 42,7"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise BenchmarkError(
            f"--seeds: give one or more different integers, e.g. --seeds 42,7 (got {text!r})"
        )
    return seeds


def real_main(args) -> dict[str, Any]:
    from benchmarks.quality_real import find_data_dir, run_task

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise BenchmarkError(f"--runs: unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    args.runs = runs
    args.overrides = parse_overrides(args.recipe_override)
    args.ner_types = [t.strip() for t in args.ner_types.split(",") if t.strip()]
    args.seeds = parse_seeds(args.seeds)
    data = find_data_dir(args.data_dir)
    out = (args.out or Path(tempfile.mkdtemp(prefix="dapt-quality-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = ["sentiment", "ner"] if args.task == "both" else [args.task]
    report: dict[str, Any] = {
        "benchmark": "quality-real",
        "data_dir": str(data),
        "machine": {"cpus": cpu_count(), "load_average_start": load_average()},
        "tasks": {},
    }
    for task in tasks:
        report["tasks"][task] = run_task(task, args, data, out)
        (out / "quality.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    report["machine"]["load_average_end"] = load_average()
    report["files"] = {"out": str(out)}
    (out / "quality.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--rows", type=int, default=None, help=f"labelled rows (default {DEFAULT_ROWS})")
    parser.add_argument("--label-noise", type=float, default=DEFAULT_NOISE, help="share of flipped labels")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="data seed (the sample uses 20240611)")
    parser.add_argument(
        "--recipe-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted recipe key, repeatable: finetune.learning_rate=1e-4 adapt.epochs=1",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS} rows, tiny BERT, a few steps")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    parser.add_argument(
        "--synthetic", action="store_true", help="the generated FPB-style set instead of real data"
    )
    real = parser.add_argument_group("real data (default mode)")
    real.add_argument("--data-dir", type=Path, default=None, help="folder of the real sets ($DAPT_REAL_DATA)")
    real.add_argument("--task", choices=["sentiment", "ner", "both"], default="both")
    real.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    real.add_argument("--train-rows", type=int, default=5000, help="tweets train rows (stratified sample)")
    real.add_argument(
        "--corpus", choices=sorted(CORPORA), default="headlines", help="sentiment's domain corpus"
    )
    real.add_argument("--ner-types", default="Disease", help="BC5CDR entity types kept (comma-separated)")
    real.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds: every run is repeated per seed (the recipe's seed, the plain "
        "Trainer's seed) and the report adds each run's mean and range over them (default: one run each, "
        "recipe seed 42)",
    )
    args = parser.parse_args(argv)
    if not (args.synthetic or args.quick):
        return real_main(args)

    rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    overrides = parse_overrides(args.recipe_override)
    out = (args.out or Path(tempfile.mkdtemp(prefix="dapt-quality-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = out / "dapt_home"
    if home.exists() and any(home.iterdir()):
        raise BenchmarkError(f"{home} is not empty: give a new --out folder so the run starts from scratch")
    load_start = load_average()
    started = time.perf_counter()

    say(f"writing {rows} labelled rows (seed {args.seed}, label noise {args.label_noise}) into {out}")
    class_counts = write_dataset(out / "sentiment.csv", rows, args.seed, args.label_noise)
    if args.quick:
        from models.tiny import save_tiny_bert

        say("--quick: building a tiny BERT base model")
        tiny = save_tiny_bert(out / "tiny_bert")  # what the tests use
        overrides = {"base_model": str(tiny), **QUICK_OVERRIDES, **overrides}
    recipe_path = write_recipe(out / "recipe.yaml", build_recipe(out / "sentiment.csv", overrides))

    run = run_pipeline(recipe_path, home, out / "dapt_run.log")
    results = read_results(recipe_path, home)
    load_end = load_average()
    report = {
        "benchmark": "quality",
        "quick": args.quick,
        "data": {
            "rows": rows,
            "label_noise": args.label_noise,
            "seed": args.seed,
            "class_counts": class_counts,
            "train_rows": results.pop("train_rows"),
            "eval_rows": results.pop("eval_rows"),
        },
        "recipe_overrides": overrides
        if not args.quick
        else {k: v for k, v in overrides.items() if k != "base_model"},
        "accuracy": results["accuracy"],
        "macro_f1": results["macro_f1"],
        "int8": results["int8"],
        "wall_seconds": {
            "dapt_run": run["wall_seconds"],
            "benchmark_total": round(time.perf_counter() - started, 1),
            "stages": run["stage_seconds"],
            "adaptation_in_stage": results["adaptation"]["wall_seconds"],
            "finetune_training": results["finetune_train_seconds"],
        },
        "machine": {
            "cpus": cpu_count(),
            "torch_threads": torch_threads(home),
            "load_average_start": load_start,
            "load_average_end": load_end,
        },
        "targets": judge(results, run["wall_seconds"]),
        "details": {
            k: results[k]
            for k in ("version", "bundle", "ece", "onnx", "per_slice", "adaptation", "effective_recipe")
        },
        "files": {"out": str(out), "recipe": str(recipe_path), "log": str(out / "dapt_run.log")},
    }
    report["meets_target"] = {
        "accuracy": report["targets"]["accuracy"]["met"],
        "macro_f1": report["targets"]["macro_f1"]["met"],
        "int8_within_half_point": report["targets"]["int8_within_half_point"]["met"],
        "within_15_minutes": report["targets"]["wall_minutes"]["met"],
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    try:
        print(json.dumps(main(), indent=2))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
