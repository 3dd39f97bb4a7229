"""`dapt adapt|finetune|evaluate|export RECIPE`: one stage of the flow at a time, without Prefect.

Each stage writes into ``--out`` (default ``DAPT_HOME/runs/<stage>-<time>-<name>``) and prints where, so the
next stage can be pointed at it:

    dapt adapt recipes/demo.yaml --out .dapt/stages/adapt
    dapt finetune recipes/demo.yaml --encoder .dapt/stages/adapt --out .dapt/stages/finetune
    dapt evaluate recipes/demo.yaml --model .dapt/stages/finetune
    dapt export recipes/demo.yaml --model .dapt/stages/finetune --out .dapt/stages/bundle

Nothing is registered: ``dapt run`` validates, runs every stage and registers the result with its evidence.
Stages do not validate the data either; ``dapt validate RECIPE`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dapt.cli.common import UserError, console, err, read_recipe, run_folder

FLOAT_FORMAT = "{:.4f}"


def _progress(line: str) -> None:
    from dapt.progress_view import say

    say(line)


def _print_numbers(title: str, numbers: dict) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        table.add_row(key, FLOAT_FORMAT.format(value) if isinstance(value, float) else str(value))
    console.print(table)


def _stage_errors() -> tuple[type[BaseException], ...]:
    """The stages' own exceptions: each says what is wrong and how to fix it, so one line is enough."""
    from models.data import DataError
    from models.evaluation.evaluate import EvaluationError
    from models.export.onnx import ExportError
    from models.stages import StageInputError
    from models.training.adapt import AdaptError
    from models.training.augment import AugmentationError
    from models.training.head_warmup import HeadWarmupError
    from models.training.scratch import ScratchConfigError
    from models.training.search import SearchError
    from models.training.task_model import FinetuneError

    return (
        StageInputError,
        DataError,
        AdaptError,
        HeadWarmupError,
        ScratchConfigError,
        FinetuneError,
        AugmentationError,
        SearchError,
        EvaluationError,
        ExportError,
    )


def _run(stage_call):
    from dapt.progress_view import watched

    try:
        with watched(err):  # a bar per stage in a terminal, plain lines (never silent for long) otherwise
            return stage_call()
    except _stage_errors() as exc:
        raise UserError(str(exc)) from None


def adapt(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/demo.yaml"),
    out: Path = typer.Option(None, help="Output folder (default: DAPT_HOME/runs/adapt-<time>-<name>)."),
) -> None:
    """Adapt the base encoder to the domain (the recipe's `adapt` section); writes OUT/encoder, then
    measures whether it beats the base on the task (OUT/adaptation_gain.json) and says which to fine-tune.

    Example: dapt adapt recipes/demo.yaml --out .dapt/stages/adapt
    """
    from models.stages import adapt_stage, adaptation_gain_stage

    parsed = read_recipe(recipe)
    out_dir = run_folder(out, "adapt", parsed.name)
    result = _run(lambda: adapt_stage(parsed, out_dir, progress=_progress))
    _print_numbers(f"adaptation ({result.strategy})", result.metrics)
    console.print(f"encoder: {result.encoder_dir}")
    gain = _run(
        lambda: adaptation_gain_stage(parsed, result.encoder_dir, out_dir / "gain", progress=_progress)
    )
    if gain is not None:
        (out_dir / "adaptation_gain.json").write_text(json.dumps(gain.to_dict(), indent=2), encoding="utf-8")
        console.print(gain.sentence())
    if gain is None or gain.helped:
        console.print(f"next: dapt finetune {recipe} --encoder {out_dir}")
    else:
        console.print(
            f"next: dapt finetune {recipe}   (the base encoder; --encoder {out_dir} to use it anyway)"
        )


def finetune(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/demo.yaml"),
    encoder: Path = typer.Option(
        None, help="Encoder folder from `dapt adapt` (default: the recipe's base model, not adapted)."
    ),
    out: Path = typer.Option(None, help="Output folder (default: DAPT_HOME/runs/finetune-<time>-<name>)."),
) -> None:
    """Fine-tune an encoder on the recipe's labelled data (the `finetune` section); writes OUT/model.

    Example: dapt finetune recipes/demo.yaml --encoder .dapt/stages/adapt --out .dapt/stages/finetune
    """
    from models.stages import finetune_stage

    parsed = read_recipe(recipe)
    encoder_dir = encoder or parsed.resolved_base_model()
    out_dir = run_folder(out, "finetune", parsed.name)
    result = _run(lambda: finetune_stage(parsed, Path(encoder_dir), out_dir, progress=_progress))
    final = [row for row in result.history if any(key.startswith("eval_") for key in row)]
    if final:
        _print_numbers("last evaluation during training", final[-1])
    console.print(f"model: {result.model_dir}")
    console.print(f"learning curves: {result.curves_png}")
    console.print(f"next: dapt evaluate {recipe} --model {out_dir}")


def evaluate(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/demo.yaml"),
    model: Path = typer.Option(..., help="Fine-tuned model folder from `dapt finetune`."),
    out: Path = typer.Option(None, help="Output folder (default: DAPT_HOME/runs/evaluate-<time>-<name>)."),
) -> None:
    """Score a fine-tuned model on the recipe's evaluation split: metrics.json and PNG plots.

    Example: dapt evaluate recipes/demo.yaml --model .dapt/stages/finetune
    """
    from models.stages import evaluate_stage

    parsed = read_recipe(recipe)
    out_dir = run_folder(out, "evaluate", parsed.name)
    result = _run(lambda: evaluate_stage(parsed, model, out_dir))
    _print_numbers("evaluation", result.metrics)
    for plot in result.plots:
        console.print(f"plot: {plot}")
    console.print(f"metrics: {out_dir / 'metrics.json'}")


def export_(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/demo.yaml"),
    model: Path = typer.Option(..., help="Fine-tuned model folder from `dapt finetune`."),
    out: Path = typer.Option(
        None,
        help="Bundle folder: new, empty or an earlier export (default: DAPT_HOME/runs/export-<time>-<name>).",
    ),
) -> None:
    """Export a fine-tuned model to ONNX variants (the `export` section), each checked for parity.

    Example: dapt export recipes/demo.yaml --model .dapt/stages/finetune --out .dapt/stages/bundle
    """
    from models.export.onnx import check_export_target
    from models.stages import export_stage

    parsed = read_recipe(recipe)
    if out is not None:  # checked before the folder is created: never leave one in the registry's store
        _run(lambda: check_export_target(out))
    out_dir = run_folder(out, "export", parsed.name)
    result = _run(lambda: export_stage(parsed, model, out_dir, progress=_progress))
    console.print_json(json.dumps({"variants": {k: str(v) for k, v in result.variants.items()}}))
    for variant, record in result.parity.items():
        passed = record.get("passed")
        verdict = {True: "[green]passed[/green]", False: "[red]FAILED[/red]"}.get(passed, record.get("note"))
        console.print(f"{variant}: parity {verdict}")
    console.print(f"bundle: {result.bundle_dir} (CPU serves {result.preferred_cpu_variant})")
    console.print(f"serve it: DAPT_BUNDLE_DIR={result.bundle_dir} bentoml serve services.service:DaptService")


def register(app: typer.Typer) -> None:
    """Add the four stage commands to the main app."""
    app.command()(adapt)
    app.command()(finetune)
    app.command()(evaluate)
    app.command("export")(export_)
