"""The evidence a version is registered with: a typed model, built by the library from the stages' results.

The flow calls :func:`build_evidence` and hands the result to ``Registry.register``; the registry stores
``Evidence.record()`` (plain JSON) as ``evidence.json`` and in its database, where the gate, the model card,
the CLI and the UI read it. Fields the stages add later travel as extras (``extra="allow"``), so older and
newer records both load.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

Number = float | int


class Forgetting(BaseModel):
    """MLM loss on domain and general text before/after adaptation, of the encoder that serves."""

    domain_loss_before: Number | None = None
    domain_loss_after: Number | None = None
    general_loss_before: Number | None = None
    general_loss_after: Number | None = None
    delta: Number | None = None  # general loss after - before: what adaptation forgot
    note: str | None = None
    head_warmup_steps: int | None = None


class DroppedVariant(BaseModel):
    why: str
    label_agreement: Number | None = None
    macro_f1_drop_vs_pytorch: Number | None = None
    max_abs_diff: Number | None = None


class ServingVariants(BaseModel):
    """What the version serves and what the export dropped (with the parity numbers that dropped it)."""

    served: list[str]
    preferred_cpu_variant: str
    dropped: dict[str, DroppedVariant]


class Lineage(BaseModel):
    adapt_checkpoint: str
    finetuned_from: str
    adapt_cache_key: str
    run_dir: str
    flow_run_id: str | None = None
    flow_run_name: str | None = None


class Evidence(BaseModel):
    """Everything a registered version is judged and documented by."""

    model_config = ConfigDict(extra="allow")

    metrics: dict[str, Number]  # the scalar metrics the gate compares
    evaluation: dict[str, Any]  # the full evaluation (per class, slices, calibration, plots)
    forgetting: Forgetting
    adaptation: dict[str, Any]
    adaptation_gain: dict[str, Any] | None = None
    parity: dict[str, Any]
    serving: ServingVariants
    validation: dict[str, Any]
    profile: dict[str, Any] | None = None
    data_fingerprint: dict[str, Any]
    recipe: dict[str, Any]
    base_model: str
    finetune_params: dict[str, Any] | None = None
    lineage: Lineage
    code_revision: str
    created_at: str

    def record(self) -> dict[str, Any]:
        """The plain JSON the registry stores (field order kept)."""
        return self.model_dump(mode="json")


def served_forgetting(adaptation: dict[str, Any], base_kept: bool) -> Forgetting:
    """Forgetting of the encoder that serves: the adapted one's, or none when the base was kept."""
    measured = Forgetting(
        domain_loss_before=adaptation.get("domain_loss_before"),
        domain_loss_after=adaptation.get("domain_loss_after"),
        general_loss_before=adaptation.get("general_loss_before"),
        general_loss_after=adaptation.get("general_loss_after"),
        delta=adaptation.get("forgetting_delta"),
        note=adaptation.get("forgetting_note"),
        head_warmup_steps=adaptation.get("head_warmup_steps"),
    )
    if not base_kept:
        return measured
    rise = measured.delta
    return measured.model_copy(
        update={
            "general_loss_after": measured.general_loss_before,
            "delta": 0.0,
            "note": "the base encoder serves (adaptation did not help the task), so nothing was forgotten"
            + (
                f"; the discarded adapted encoder's general loss rose by {rise:.4f}"
                if rise is not None
                else ""
            ),
        }
    )


def serving_variants(exported: dict[str, Any]) -> ServingVariants:
    """What the version serves and what the export dropped (with the parity numbers that dropped it)."""
    parity = exported["parity"]
    dropped = {}
    for variant, why in (exported.get("dropped") or {}).items():
        record = parity.get(variant) or {}
        dropped[variant] = DroppedVariant(
            why=why,
            **{k: record.get(k) for k in ("label_agreement", "macro_f1_drop_vs_pytorch", "max_abs_diff")},
        )
    return ServingVariants(
        served=sorted(exported["variants"]),
        preferred_cpu_variant=exported["preferred_cpu_variant"],
        dropped=dropped,
    )


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Number]:
    """The numbers among the evaluation's metrics (booleans are not numbers here)."""
    return {k: v for k, v in metrics.items() if isinstance(v, float | int) and not isinstance(v, bool)}


def build_evidence(
    recipe: Any,
    *,
    validation: dict[str, Any],
    fingerprint: dict[str, Any],
    adapted: dict[str, Any],
    gain: dict[str, Any] | None,
    encoder_dir: str,
    finetuned: dict[str, Any],
    evaluation: dict[str, Any],
    exported: dict[str, Any],
    lineage: Lineage,
    code_revision: str,
) -> Evidence:
    """The evidence of one run, from the stages' results (``recipe`` is a models.recipe.Recipe)."""
    base_kept = gain is not None and gain["kept"] == "base"
    return Evidence(
        metrics=scalar_metrics(evaluation["metrics"]),
        evaluation=evaluation["metrics"],
        forgetting=served_forgetting(adapted["metrics"], base_kept),
        adaptation=adapted["metrics"],
        adaptation_gain=gain,
        parity=exported["parity"],
        serving=serving_variants(exported),
        validation=validation,
        profile=validation.get("profile"),
        data_fingerprint=fingerprint,
        recipe=recipe.model_dump(mode="json"),
        base_model=str(recipe.resolved_base_model()),
        finetune_params=finetuned.get("params"),
        lineage=lineage,
        code_revision=code_revision,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(),
    )
