"""The evidence of a bundle registered from outside a dapt run (`dapt models register NAME BUNDLE_DIR`).

A bundle exported by `dapt export`, copied from a registered version, or written by another trainer carries
its evidence in one of two ways, read in this order:

1. an evidence file (``--evidence FILE``, else the bundle's own ``evidence.json``): a JSON object. When it is
   a complete :class:`models.registry.evidence.Evidence` it is normalised through it; otherwise it is kept as
   given (the registry still checks that ``metrics`` maps names to numbers) and the answer says which typed
   fields are missing, so the gate's verdict can be read for what it is.
2. without one, what the bundle's reports say: ``reports/metrics.json`` (scalar metrics) and
   ``reports/parity.json`` (the export's ONNX-vs-PyTorch parity per variant).

Either way the record gains ``imported`` (where it came from, which evidence file, when).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.registry.artifacts import EVIDENCE_FILE
from models.registry.bundle import REPORTS_DIR
from models.registry.errors import BundleError


@dataclass(frozen=True)
class ImportedEvidence:
    record: dict[str, Any]
    source: str  # the evidence file, or "reports/" when built from the bundle's reports
    missing: list[str]  # typed Evidence fields the record lacks or gets wrong (empty: a complete Evidence)


def _read_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"{what} {path} is not readable JSON ({error}); fix or remove it") from error
    if not isinstance(value, dict):
        raise BundleError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")
    return value


def _numbers(values: dict[str, Any]) -> dict[str, float | int]:
    return {k: v for k, v in values.items() if isinstance(v, float | int) and not isinstance(v, bool)}


def imported_evidence(bundle: Path, evidence_file: Path | None = None) -> ImportedEvidence:
    """The evidence to register ``bundle`` with (see the module docstring). Raises BundleError for an evidence
    file that is not a JSON object, or one whose ``metrics`` is not a mapping."""
    from pydantic import ValidationError

    from models.registry.evidence import Evidence

    bundle = Path(bundle)
    chosen = evidence_file if evidence_file is not None else bundle / EVIDENCE_FILE
    missing: list[str] = []
    if evidence_file is not None and not chosen.is_file():
        raise BundleError(f"evidence file {chosen} does not exist; give a JSON file, or leave --evidence out")
    if chosen.is_file():
        record = _read_object(chosen, "evidence file")
        if not isinstance(record.get("metrics", {}), dict):
            raise BundleError(f"{chosen}: 'metrics' must map metric names to numbers")
        try:
            record = Evidence.model_validate(record).record()
        except ValidationError as error:
            missing = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors()})
        source = str(chosen)
    else:
        reports = bundle / REPORTS_DIR
        metrics_path, parity_path = reports / "metrics.json", reports / "parity.json"
        metrics = _numbers(_read_object(metrics_path, "report")) if metrics_path.is_file() else {}
        parity = _read_object(parity_path, "report").get("variants") if parity_path.is_file() else None
        record = {"metrics": metrics, **({"parity": parity} if isinstance(parity, dict) else {})}
        required = {name for name, field in Evidence.model_fields.items() if field.is_required()}
        missing = sorted(required - set(record))
        source = f"{REPORTS_DIR}/"
    record["imported"] = {
        "bundle": str(bundle),
        "evidence": source,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    return ImportedEvidence(record=record, source=source, missing=missing)
