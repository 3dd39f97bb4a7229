"""The `retrain` flow: validate → adapt → fine-tune → evaluate → export → register → promote.

Thin by design: every task calls one function in models/ or expectations/. The flow owns what Prefect is
for: retries on I/O tasks only (never around training), caching of the expensive adaptation keyed by data
fingerprint and stage config, artifacts (a markdown report, tables) and a readable failure summary.
"""

# No `from __future__ import annotations`: Prefect builds the parameter form from the real Recipe type.
import datetime as dt
import hashlib
import json
import subprocess
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import Failed

from expectations.report import write_validation_html
from models.recipe import Recipe
from models.registry.evidence import Evidence, Lineage, ServingVariants, build_evidence
from models.settings import dapt_home, runs_dir

REPO = Path(__file__).resolve().parents[1]


def _plain(value: Any) -> Any:
    """JSON-friendly copy of results (dataclasses, paths) for evidence and task results."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def _logger_progress():
    logger = get_run_logger()
    return logger.info


def adaptation_key(recipe: Recipe, fingerprint: dict) -> str:
    """Same base model, data and adaptation settings → same key → the cached encoder is reused."""
    payload = {
        "base_model": str(recipe.resolved_base_model()),
        "adapt": recipe.adapt.model_dump(mode="json"),
        "seed": recipe.seed,
        "task": recipe.task,
        "corpus_min_chars": recipe.validation.min_chars,  # decides which corpus lines are cleaned away
        "data": {k: v["sha256"] for k, v in fingerprint["files"].items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _adapt_cache_key(context, parameters: dict) -> str:
    return f"adapt-{parameters['cache_key']}"


def _adapted_encoder_exists(cache_key: str) -> bool:
    return (dapt_home() / "adapt" / cache_key / "encoder" / "config.json").is_file()


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(recipe: Recipe, out_dir: Path, reference_profile: dict | None) -> dict:
    from expectations.runner import validate_recipe_data

    report = validate_recipe_data(recipe, out_dir, reference_profile=reference_profile)
    get_run_logger().info(report.summary())
    return {"report": report, "dict": _plain(report.to_dict())}


@task(name="adapt-encoder", cache_key_fn=_adapt_cache_key, persist_result=True)
def adapt_encoder(recipe: Recipe, cache_key: str) -> dict:
    from models.stages import adapt_stage

    return _plain(adapt_stage(recipe, dapt_home() / "adapt" / cache_key, progress=_logger_progress()))


@task(name="adaptation-gain", cache_policy=NO_CACHE)
def measure_gain(recipe: Recipe, encoder_dir: str, out_dir: Path) -> dict | None:
    from models.stages import adaptation_gain_stage

    gain = adaptation_gain_stage(recipe, Path(encoder_dir), out_dir, progress=_logger_progress())
    if gain is not None and not gain.helped:
        get_run_logger().warning(gain.sentence())
    return gain.to_dict() if gain is not None else None


def _within_run_budget(recipe: Recipe, budget_clock: float, row_counts: dict) -> tuple[Recipe, dict | None]:
    """The recipe fine-tuning runs with: its time budget cut to what the run's own budget leaves, if less.

    ``budget_clock``: the ``time.monotonic()`` the run's budget counts from; ``row_counts``: validation's."""
    from models.training.step_budget import expected_eval_rows, finetune_minutes_in_run

    stage = recipe.finetune
    budget = finetune_minutes_in_run(
        recipe.time_budget_minutes,
        time.monotonic() - budget_clock,
        stage.time_budget_minutes,
        task=recipe.task,
        eval_rows=expected_eval_rows(row_counts, recipe.data.eval_fraction),
    )
    if budget is None or stage.max_steps > 0:  # a fixed step count is trained whatever the clock says
        return recipe, None
    if budget["binds"]:
        own = f"{stage.time_budget_minutes:g}" if stage.time_budget_minutes is not None else "no limit"
        get_run_logger().info(
            "[run budget] %g min: %.2f min spent before fine-tuning, %.2f min kept for evaluation and export; "
            "fine-tuning gets %.2f min (finetune.time_budget_minutes: %s; raise time_budget_minutes, or set it "
            "to null, for more)",
            budget["run_minutes"],
            budget["spent_minutes"],
            budget["reserved_minutes"],
            budget["finetune_minutes"],
            own,
        )
    update = {"time_budget_minutes": budget["finetune_minutes"]}
    return recipe.model_copy(update={"finetune": stage.model_copy(update=update)}), budget


def _budget_clock(flow_started: float, budget_started_at: float | None) -> float:
    """The ``time.monotonic()`` reading the run's budget counts from: the flow's start, or earlier by the
    wall-clock seconds since ``budget_started_at`` (the caller's own start, such as the command's)."""
    if budget_started_at is None:
        return flow_started
    return flow_started - max(0.0, time.time() - budget_started_at)


@task(name="fine-tune", cache_policy=NO_CACHE)
def finetune_model(recipe: Recipe, encoder_dir: str, out_dir: Path) -> dict:
    from models.stages import finetune_stage

    return _plain(finetune_stage(recipe, Path(encoder_dir), out_dir, progress=_logger_progress()))


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(recipe: Recipe, model_dir: str, out_dir: Path) -> dict:
    from models.stages import evaluate_stage

    return _plain(evaluate_stage(recipe, Path(model_dir), out_dir))


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_onnx(recipe: Recipe, model_dir: str, out_dir: Path) -> dict:
    from models.stages import export_stage

    return _plain(export_stage(recipe, Path(model_dir), out_dir, progress=_logger_progress()))


@task(name="register-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def register_version(name: str, bundle_dir: str, evidence: dict, idempotency_key: str) -> dict:
    from models.registry.store import Registry

    # The key is the same for every retry of this task in this run: a retry after an error that came once the
    # version was already committed returns that version instead of registering a duplicate.
    version = Registry().register(name, Path(bundle_dir), evidence, idempotency_key=idempotency_key)
    return _plain(version)


def registration_key(flow_run_id: Any, run_dir: Path) -> str:
    """One key per run of the flow (its Prefect id and run folder), reused by the register task's retries."""
    return f"retrain:{flow_run_id or 'local'}:{run_dir.name}"


@task(name="promote", cache_policy=NO_CACHE)
def promote_version(recipe: Recipe, version: int) -> dict:
    from models.registry.store import Registry

    decision = Registry().promote(recipe.name, version, alias=recipe.gate.alias, gate=recipe.gate)
    get_run_logger().info(decision.summary())
    return _plain(decision) | {"summary": decision.summary()}


def production_evidence(recipe: Recipe) -> Evidence | None:
    """The evidence of the version the recipe's alias points to (read tolerantly: it may be old), or None."""
    from models.registry.store import Registry, RegistryError

    try:
        current = Registry().get_version(recipe.name, alias=recipe.gate.alias)
    except RegistryError:
        return None
    return Evidence.from_record(current.evidence) if current is not None else None


def code_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _copy_reports(sources: list[str], bundle_dir: Path) -> None:
    import shutil

    reports = bundle_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    for source in sources:
        path = Path(source)
        if path.is_file():
            shutil.copy2(path, reports / path.name)


def _variants_line(variants: ServingVariants) -> str:
    line = f"**Serves**: {', '.join(variants.served)} (CPU: {variants.preferred_cpu_variant})"
    for variant, dropped in variants.dropped.items():
        line += f"; **{variant} dropped**: {dropped.why}"
    return line


def run_time_line(run_budget: dict) -> str:
    """One sentence on the run's time: how much of its budget it used and who set fine-tuning's budget."""
    flow = run_budget.get("flow_minutes", "?")
    if "run_minutes" not in run_budget:
        return f"The flow took {flow} min (no run budget, or a fixed step count)."
    source = "the run's budget" if run_budget["binds"] else "its own budget (finetune.time_budget_minutes)"
    used = run_budget.get("used_minutes", flow)
    return (
        f"The run used {used} min of its {run_budget['run_minutes']:g}-minute budget (the flow itself {flow} "
        f"min); fine-tuning got {run_budget['finetune_minutes']:g} min, set by {source}, after "
        f"{run_budget['spent_minutes']:g} min of earlier stages and with {run_budget['reserved_minutes']:g} min "
        "kept for evaluation and export."
    )


def _report_markdown(recipe: Recipe, summary: dict) -> str:
    metrics = summary["metrics"]
    forgetting = summary["forgetting"]
    gate = summary.get("gate") or {}
    lines = [
        f"# {recipe.name} v{summary.get('version', '?')} ({recipe.task})",
        "",
        f"**Gate ({recipe.gate.alias})**: {gate.get('summary', 'not evaluated')}",
        "",
        _variants_line(ServingVariants.model_validate(summary["variants"])),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in metrics.items():
        if isinstance(value, float | int):
            lines.append(f"| {key} | {value:.4f} |")
    gain = summary.get("adaptation_gain")
    lines += ["", "## Adaptation gain", ""]
    lines.append(
        gain["summary"] if gain else "not measured (adapt.strategy none, or adapt.keep_only_if_helps off)"
    )
    lines += ["", "## Forgetting (MLM loss on general text)", "", "| | value |", "|---|---|"]
    for key, value in forgetting.items():
        if isinstance(value, float | int):
            lines.append(f"| {key} | {value:.4f} |")
    lines += ["", "## Time", "", run_time_line(summary.get("run_budget") or {})]
    lines += ["", "## Files", ""]
    for label, path in summary.get("files", {}).items():
        lines.append(f"- {label}: `{path}`")
    return "\n".join(lines)


def artifact_key(model_name: str, kind: str) -> str:
    """A Prefect artifact key for this model: Prefect allows only lowercase letters, digits and dashes, while
    a model name may also hold '_' (models/recipe.py), so '_' becomes '-'."""
    return f"{model_name}-{kind}".lower().replace("_", "-")


def _inline_pictures(paths: list[Path], max_bytes: int = 400_000) -> str:
    """PNG plots embedded in the markdown artifact, so the Prefect UI shows them without a file server."""
    import base64

    parts = ["", "## Plots", ""]
    for path in paths:
        if path.stat().st_size <= max_bytes:
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"### {path.stem}\n\n![{path.stem}](data:image/png;base64,{data})\n")
        else:
            parts.append(f"- {path.stem}: `{path}`")
    return "\n".join(parts) if paths else ""


def write_run_report(run_dir: Path, markdown: str, pictures: list[Path], title: str) -> tuple[Path, Path]:
    """The Prefect report as files in the run folder: report.md (plots linked relatively) and report.html
    (one self-contained page, plots inlined, opens offline)."""
    import os

    from models.htmlpage import markdown_to_html, standalone_page

    links = "".join(f"\n![{p.stem}]({Path(os.path.relpath(p, run_dir)).as_posix()})\n" for p in pictures)
    md_path = run_dir / "report.md"
    md_path.write_text(markdown + ("\n\n## Plots\n" + links if pictures else "") + "\n", encoding="utf-8")
    html_path = run_dir / "report.html"
    html_path.write_text(
        standalone_page(title, markdown_to_html(markdown + _inline_pictures(pictures))), encoding="utf-8"
    )
    return md_path, html_path


def _new_run_dir(recipe: Recipe) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    run_dir = runs_dir() / f"{stamp}-{recipe.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _adapt_cached(recipe: Recipe, key: str) -> tuple[dict, bool]:
    """The adapted encoder (the cached one when data and settings match and its folder still exists)."""
    # A cached result whose encoder folder was deleted must not be reused: refresh it.
    adapt_task = adapt_encoder.with_options(refresh_cache=not _adapted_encoder_exists(key))
    adapt_state = adapt_task(recipe, key, return_state=True)
    adapted = adapt_state.result()
    cache_hit = adapt_state.name == "Cached"
    if cache_hit:
        get_run_logger().info(
            "adaptation cache hit (key %s): same data and settings, reusing %s", key, adapted["encoder_dir"]
        )
    return adapted, cache_hit


def _bundle_reports(
    validation: dict, adapted: dict, finetuned: dict, evaluation: dict, exported: dict
) -> None:
    """The plots and the validation report travel inside the bundle (reports/), so the registry keeps them."""
    report_files = [adapted.get("curves_png"), finetuned.get("curves_png"), *evaluation.get("plots", [])]
    _copy_reports([p for p in report_files if p], Path(exported["bundle_dir"]))
    (Path(exported["bundle_dir"]) / "reports" / "validation.json").write_text(
        json.dumps(validation["dict"], indent=2), encoding="utf-8"
    )


def _lineage(adapted: dict, encoder_dir: str, key: str, run_dir: Path, flow_run: Any) -> Lineage:
    return Lineage(
        adapt_checkpoint=adapted["encoder_dir"],
        finetuned_from=encoder_dir,
        adapt_cache_key=key,
        run_dir=str(run_dir),
        flow_run_id=str(flow_run.id) if flow_run else None,
        flow_run_name=flow_run.name if flow_run else None,
    )


def _summary(
    recipe: Recipe,
    evidence: Evidence,
    registered: dict,
    decision: dict,
    incumbent: Evidence | None,
    adapt_cache_hit: bool,
    run_dir: Path,
    validation: dict,
) -> dict:
    """What the run returns and writes to summary.json (the CLI prints it)."""
    return {
        "name": recipe.name,
        "version": int(registered["version"]),
        "metrics": evidence.metrics,
        "forgetting": evidence.forgetting.model_dump(mode="json"),
        "adaptation_gain": evidence.adaptation_gain,
        "gate": decision,
        "variants": evidence.serving.model_dump(mode="json") if evidence.serving else None,
        "incumbent_metrics": incumbent.metrics if incumbent else None,
        "adapt_cache_hit": adapt_cache_hit,
        "files": {
            "run": str(run_dir),
            "data_docs": str(validation["dict"].get("data_docs")),
            "validation_report": str(run_dir / "validation" / "report.html"),
            "report": str(run_dir / "report.html"),
            "bundle": registered.get("path"),
        },
    }


def _publish(recipe: Recipe, summary: dict, evidence: Evidence, run_dir: Path, bundle_dir: str) -> None:
    """summary.json, the report (Prefect artifact and run-folder files) and the metrics table artifact."""
    version = summary["version"]
    (run_dir / "summary.json").write_text(json.dumps(_plain(summary), indent=2), encoding="utf-8")
    pictures = sorted((Path(bundle_dir) / "reports").glob("*.png"))
    report = _report_markdown(recipe, summary)
    create_markdown_artifact(
        key=artifact_key(recipe.name, "report"),
        markdown=report + _inline_pictures(pictures),
        description="retrain report",
    )
    write_run_report(run_dir, report, pictures, title=f"{recipe.name} v{version}")
    create_table_artifact(
        key=artifact_key(recipe.name, "metrics"),
        table=[{"metric": k, "value": round(float(v), 4)} for k, v in summary["metrics"].items()],
        description=f"{recipe.name} v{version} metrics",
    )
    logger = get_run_logger()
    for variant, dropped in (evidence.serving.dropped if evidence.serving else {}).items():
        logger.warning("%s dropped from serving: %s", variant, dropped.why)
    logger.info("registered %s v%s; %s", recipe.name, version, summary["gate"].get("summary"))


@flow(name="retrain", log_prints=True)
def retrain(recipe: Recipe | str, budget_started_at: float | None = None) -> dict:
    """Raw domain text to a registered (and, if the gate passes, promoted) model version.

    ``recipe``: the recipe, or the path of a recipe file (what a deployment run by a worker passes; a relative
    path is read from the working directory the deployment's pull step sets, the repository root).
    ``budget_started_at``: when the run's time budget started (``time.time()``); by default the flow's start.
    ``dapt run`` passes its own start, so the budget covers the seconds Prefect takes to start as well."""
    from models.data import data_fingerprint

    if isinstance(recipe, str):
        from models.recipe import load_usable_recipe

        recipe = load_usable_recipe(recipe)  # RecipeError names the file and the field
    started = time.monotonic()
    budget_clock = _budget_clock(started, budget_started_at)  # the run's time budget counts from here
    run_dir = _new_run_dir(recipe)
    fingerprint = data_fingerprint(recipe)
    incumbent = production_evidence(recipe)

    validation = validate_data(recipe, run_dir / "validation", incumbent.profile if incumbent else None)
    write_validation_html(
        validation["dict"], run_dir / "validation" / "report.html", f"Data validation — {recipe.name}"
    )
    if not validation["dict"]["success"]:
        # A failed state carrying the report (the CLI prints it from the state's data), not a summary dict.
        return Failed(
            message=f"data validation failed: {validation['report'].summary()}", data=validation["dict"]
        )  # type: ignore[return-value]

    key = adaptation_key(recipe, fingerprint)
    adapted, adapt_cache_hit = _adapt_cached(recipe, key)
    gain = measure_gain(recipe, adapted["encoder_dir"], run_dir / "adaptation_gain")
    base_kept = gain is not None and gain["kept"] == "base"
    encoder_dir = str(recipe.resolved_base_model()) if base_kept else adapted["encoder_dir"]
    budgeted, run_budget = _within_run_budget(
        recipe, budget_clock, validation["dict"].get("profile", {}).get("rows", {})
    )
    finetuned = finetune_model(budgeted, encoder_dir, run_dir / "finetune")
    evaluation = evaluate_model(recipe, finetuned["model_dir"], run_dir / "evaluate")
    exported = export_onnx(recipe, finetuned["model_dir"], run_dir / "bundle")
    _bundle_reports(validation, adapted, finetuned, evaluation, exported)

    flow_run = get_run_context().flow_run  # type: ignore[union-attr]  # a flow's context
    evidence = build_evidence(
        recipe,
        validation=validation["dict"],
        fingerprint=fingerprint,
        adapted=adapted,
        gain=gain,
        encoder_dir=encoder_dir,
        finetuned=finetuned,
        evaluation=evaluation,
        exported=exported,
        lineage=_lineage(adapted, encoder_dir, key, run_dir, flow_run),
        code_revision=code_revision(),
    )
    key_of_run = registration_key(flow_run.id if flow_run else None, run_dir)
    registered = register_version(recipe.name, exported["bundle_dir"], evidence.record(), key_of_run)
    decision = promote_version(recipe, int(registered["version"]))

    summary = _summary(
        recipe, evidence, registered, decision, incumbent, adapt_cache_hit, run_dir, validation
    )
    summary["run_budget"] = (run_budget or {}) | {
        "flow_minutes": round((time.monotonic() - started) / 60, 2),
        "used_minutes": round((time.monotonic() - budget_clock) / 60, 2),  # the budget's: with the start-up
    }
    _publish(recipe, summary, evidence, run_dir, exported["bundle_dir"])
    return _plain(summary)
