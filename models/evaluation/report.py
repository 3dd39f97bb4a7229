"""The evaluation as numbers for people: deltas against the production model and a markdown report."""

from __future__ import annotations

from pathlib import Path

COMPARED_METRICS = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "ece",
    "eval_loss",
    "entity_f1",
    "entity_precision",
    "entity_recall",
    "token_accuracy",
)
LOWER_IS_BETTER = {"ece", "eval_loss"}


def compare_with_production(candidate_metrics: dict, production_metrics: dict | None) -> dict:
    """Per-metric deltas (candidate - production) for the scalar metrics both have.

    ``improved`` says whether the change is for the better (ECE and loss: lower is better). Without a
    production model every delta is None and ``has_production`` is False.
    """
    deltas = {}
    for name in COMPARED_METRICS:
        value = candidate_metrics.get(name)
        if not isinstance(value, (int, float)):
            continue
        baseline = (production_metrics or {}).get(name)
        baseline = baseline if isinstance(baseline, (int, float)) else None
        delta = None if baseline is None else float(value) - float(baseline)
        improved = None if delta is None else (delta < 0 if name in LOWER_IS_BETTER else delta > 0)
        deltas[name] = {
            "candidate": float(value),
            "production": baseline,
            "delta": delta,
            "improved": improved,
        }
    return {"has_production": production_metrics is not None, "metrics": deltas}


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


HEADLINE_METRICS = (
    "n",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "micro_f1",
    "entity_precision",
    "entity_recall",
    "entity_f1",
    "token_accuracy",
    "ece",
    "eval_loss",
)


def _tables(metrics: dict) -> list[str]:
    """Headline metrics, per class (or per entity type) and per slice."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_number(metrics[k])} |" for k in HEADLINE_METRICS if k in metrics]
    lines.append("")
    for key, heading in (("per_class", "Per class"), ("per_type", "Per entity type")):
        if metrics.get(key):
            lines += [
                f"## {heading}",
                "",
                "| label | precision | recall | f1 | support |",
                "|---|---|---|---|---|",
            ]
            for name, row in metrics[key].items():
                lines.append(
                    f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | "
                    f"{row['support']} |"
                )
            lines.append("")
    if metrics.get("per_slice"):
        lines += ["## Per slice", "", "| slice | n | accuracy | macro_f1 |", "|---|---|---|---|"]
        for name, row in metrics["per_slice"].items():
            lines.append(f"| {name} | {row['n']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} |")
        lines.append("")
    return lines


def _comparison(comparison: dict) -> list[str]:
    lines = ["## Candidate vs production", ""]
    if not comparison.get("has_production"):
        return lines + ["No production model yet: nothing to compare with.", ""]
    lines += ["| metric | candidate | production | delta | better |", "|---|---|---|---|---|"]
    for name, row in comparison["metrics"].items():
        delta = "–" if row["delta"] is None else f"{row['delta']:+.4f}"
        better = {True: "yes", False: "no", None: "–"}[row["improved"]]
        lines.append(
            f"| {name} | {_number(row['candidate'])} | {_number(row['production'])} | {delta} | {better} |"
        )
    return lines + [""]


def _plot_links(plots: list[Path], folder: Path) -> list[str]:
    """Links to the plots, relative to the report's folder when they are inside it."""
    lines = ["## Plots", ""]
    for plot in plots:
        plot = Path(plot)
        try:
            target = plot.resolve().relative_to(folder.resolve())
        except ValueError:
            target = plot
        lines.append(f"![{plot.stem}]({target.as_posix()})")
    return lines + [""]


def write_report(
    path: Path,
    metrics: dict,
    *,
    title: str = "Evaluation report",
    comparison: dict | None = None,
    plots: list[Path] | None = None,
    params: dict | None = None,
) -> Path:
    """A markdown report: headline metrics, per-class (or per-type), per-slice, comparison with production,
    the hyperparameters, and links to the plots (relative to the report)."""
    path = Path(path)
    lines = [f"# {title}", ""] + _tables(metrics)
    if comparison is not None:
        lines += _comparison(comparison)
    if params:
        lines += ["## Hyperparameters", "", "| name | value |", "|---|---|"]
        lines += [
            f"| {k} | {v} |"
            for k, v in params.items()
            if not isinstance(v, (list, dict)) or k in ("unfreeze_schedule", "labels")
        ]
        lines.append("")
    if plots:
        lines += _plot_links(plots, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
