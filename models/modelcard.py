"""The model card (README.md) the registry writes into every registered version. Standard library only."""

from __future__ import annotations

import json
from typing import Any

DEFAULT_INTENDED_USE = (
    "Domain-specific text {task} for the data the recipe describes. Not evaluated outside that domain or "
    "language; check the data fingerprint and metrics before reusing it elsewhere."
)


def _fmt(value: Any) -> str:
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


def render_model_card(
    name: str,
    version: int,
    created_at: str,
    evidence: dict[str, Any],
    serving: dict[str, Any] | None,
    files: dict[str, dict[str, Any]],
) -> str:
    """Markdown model card: summary, metrics, forgetting, parity, validation, data, lineage, intended use, files."""
    serving = serving or {}
    task = serving.get("task", "unknown task")
    lines = [f"# {name} v{version}", ""]
    lines += [
        f"- **Task:** {task}" + (f" ({len(serving['labels'])} labels)" if serving.get("labels") else ""),
        f"- **Base model:** {_fmt(evidence.get('base_model'))}",
        f"- **Registered:** {created_at}",
        f"- **Code revision:** {_fmt(evidence.get('code_revision'))}",
        f"- **Data fingerprint (sha256):** `{(evidence.get('data_fingerprint') or {}).get('sha256', 'unknown')}`",
        "",
    ]
    if serving.get("labels"):
        lines += ["Labels: " + ", ".join(f"`{label}`" for label in serving["labels"]), ""]

    lines += ["## Metrics", ""]
    metrics = evidence.get("metrics") or {}
    lines += _table(("metric", "value"), sorted(metrics.items())) if metrics else ["Not recorded.", ""]

    forgetting = evidence.get("forgetting") or {}
    lines += ["## Forgetting (general-text MLM loss)", ""]
    lines += _table(("measure", "value"), sorted(forgetting.items())) if forgetting else ["Not measured.", ""]

    parity = evidence.get("parity") or {}
    lines += ["## Export parity (ONNX vs PyTorch)", ""]
    if parity:
        rows = [
            (
                variant,
                (r or {}).get("max_abs_diff"),
                (r or {}).get("label_agreement"),
                (r or {}).get("passed"),
            )
            for variant, r in sorted(parity.items())
        ]
        lines += _table(("variant", "max abs diff", "label agreement", "passed"), rows)
    else:
        lines += ["Not measured.", ""]

    validation = evidence.get("validation") or {}
    lines += ["## Data validation", ""]
    if validation:
        lines += [f"Success: **{validation.get('success')}**", ""]
        details = {k: v for k, v in validation.items() if k != "success"}
        if details:
            lines += _table(("field", "value"), sorted(details.items()))
    else:
        lines += ["Not recorded.", ""]

    lines += ["## Lineage", ""]
    lineage = evidence.get("lineage") or {}
    lines += _table(("field", "value"), sorted(lineage.items())) if lineage else ["Not recorded.", ""]

    lines += [
        "## Intended use",
        "",
        str(evidence.get("intended_use") or DEFAULT_INTENDED_USE.format(task=task)),
        "",
    ]
    if evidence.get("limitations"):
        lines += ["## Limitations", "", str(evidence["limitations"]), ""]

    if evidence.get("recipe"):
        lines += [
            "## Recipe",
            "",
            "```json",
            json.dumps(evidence["recipe"], indent=2, sort_keys=True),
            "```",
            "",
        ]

    lines += [
        "## Files",
        "",
        "Verified against `manifest.json` (sha256) every time the registry loads this version.",
        "",
    ]
    file_rows: list[tuple[Any, ...]] = [
        (f"`{path}`", entry["size"], entry["sha256"][:16]) for path, entry in sorted(files.items())
    ]
    lines += _table(("file", "bytes", "sha256 (prefix)"), file_rows)
    return "\n".join(lines)
