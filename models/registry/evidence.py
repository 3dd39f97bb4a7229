"""The evidence a version is registered with: a typed model, built by the library from the stages' results.

The flow calls :func:`build_evidence` and hands the result to ``Registry.register``; the registry stores
``Evidence.record()`` (plain JSON) as ``evidence.json`` and in its database, where the gate, the model card,
the CLI and the UI read it back with :meth:`Evidence.from_record`. Fields the stages add later travel as
extras (``extra="allow"``), and every field has an empty default, so older and newer records both load: a
version registered by older code (or by hand, with only its metrics) reads with what it lacks empty.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

# Strict: a stored "0.8" or true is not a number (the gate treats it as missing), as before the typed model.
Number = Annotated[float, Strict()] | Annotated[int, Strict()]


class Forgetting(BaseModel):
    """MLM loss on domain and general text before/after adaptation, of the encoder that serves."""

    model_config = ConfigDict(extra="allow")  # older records may carry more numbers

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
    preferred_cpu_variant: str | None = None  # older records name only what serves
    dropped: dict[str, DroppedVariant] = Field(default_factory=dict)


class Lineage(BaseModel):
    """Where a version came from. The flow sets every field; older or hand-made records may hold fewer or
    others (kept as extras), so every field may be missing when read back."""

    model_config = ConfigDict(extra="allow")

    adapt_checkpoint: str | None = None
    finetuned_from: str | None = None
    adapt_cache_key: str | None = None
    run_dir: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None


class ParityResult(BaseModel):
    """One exported variant against PyTorch (models/export/onnx.py); more numbers travel as extras."""

    model_config = ConfigDict(extra="allow")

    passed: bool | None = None
    failures: list[str] = Field(default_factory=list)
    max_abs_diff: Number | None = None
    label_agreement: Number | None = None
    macro_f1_drop_vs_pytorch: Number | None = None


class AdaptationGain(BaseModel):
    """Base vs adapted encoder on the task (models/evaluation/adaptation_gain.py); details as extras."""

    model_config = ConfigDict(extra="allow")

    gain: Number | None = None
    kept: str | None = None  # "adapted" or "base"
    method: str | None = None
    summary: str | None = None


class Evidence(BaseModel):
    """Everything a registered version is judged and documented by.

    :func:`build_evidence` fills every field; the defaults exist for reading records that lack some.
    """

    model_config = ConfigDict(extra="allow")

    metrics: dict[str, Number] = Field(default_factory=dict)  # the scalar metrics the gate compares
    evaluation: dict[str, Any] = Field(default_factory=dict)  # the full evaluation (per class, slices, plots)
    forgetting: Forgetting = Field(default_factory=Forgetting)
    adaptation: dict[str, Any] = Field(default_factory=dict)
    adaptation_gain: dict[str, Any] | None = None
    parity: dict[str, Any] = Field(default_factory=dict)
    serving: ServingVariants | None = None  # None in records older than the export's drop list
    validation: dict[str, Any] = Field(default_factory=dict)
    profile: dict[str, Any] | None = None
    data_fingerprint: dict[str, Any] = Field(default_factory=dict)
    recipe: dict[str, Any] = Field(default_factory=dict)
    base_model: str | None = None
    finetune_params: dict[str, Any] | None = None
    lineage: Lineage | None = None
    code_revision: str | None = None
    created_at: str | None = None
    # Added after registration by a service that shadowed the version (services/shadow.py): requests,
    # agreement with production, errors, p50_ms; the gate can require it.
    shadow: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The plain JSON the registry stores (field order kept)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_record(cls, record: Evidence | Mapping[str, Any] | None) -> Evidence:
        """Read a stored record tolerantly: a missing field reads as its default, and a value of another shape
        (a record written by older code or by hand) reads as missing instead of failing the whole record: a
        bad entry inside a section (one metric, one forgetting number) is dropped from that section, a bad
        section as a whole when that is not enough. Dropped top-level values stay in ``model_extra`` as
        ``raw_<field>``."""
        if isinstance(record, Evidence):
            return record
        data = {str(k): v for k, v in (record or {}).items()}
        while True:
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                data = _without_invalid(data, exc)

    # Typed views of the sections stored as open dicts (their JSON is kept exactly as the stages wrote it).

    def parity_results(self) -> dict[str, ParityResult]:
        """Parity per exported variant; a variant whose record does not parse reads as having no numbers."""
        return {str(variant): _tolerant(ParityResult, record) for variant, record in self.parity.items()}

    def gain(self) -> AdaptationGain | None:
        """The measured adaptation gain, or None when it was not measured."""
        if not self.adaptation_gain:
            return None
        return _tolerant(AdaptationGain, self.adaptation_gain)

    @property
    def validation_success(self) -> Any:
        """``validation.success`` as recorded (True when the data contracts held); None when absent."""
        return self.validation.get("success")

    @property
    def adaptation_strategy(self) -> str | None:
        strategy = self.adaptation.get("strategy")
        return str(strategy) if strategy is not None else None

    @property
    def task(self) -> str | None:
        task = self.recipe.get("task")
        return str(task) if task is not None else None


_Section = TypeVar("_Section", bound=BaseModel)


def _tolerant(model: type[_Section], record: Any) -> _Section:
    """``model`` read from ``record``, fields of the wrong shape read as missing (not the whole record)."""
    data = {str(k): v for k, v in record.items()} if isinstance(record, Mapping) else {}
    while True:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            refused = {str(error["loc"][0]) for error in exc.errors() if error["loc"]} & data.keys()
            if not refused:
                return model()
            data = {k: v for k, v in data.items() if k not in refused}


def _without_invalid(data: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
    """``data`` without what ``exc`` refused: the refused entry of a section when it has one, else the section
    (kept as ``raw_<field>``). Raises ``exc`` when nothing can be removed (then nothing would change)."""
    entries: dict[str, set[Any]] = {}
    sections: set[str] = set()
    for error in exc.errors():
        loc = error["loc"]
        if not loc or str(loc[0]) not in data:
            continue
        field, section = str(loc[0]), data[str(loc[0])]
        if len(loc) >= 2 and isinstance(section, dict) and loc[1] in section:
            entries.setdefault(field, set()).add(loc[1])
        else:
            sections.add(field)
    if not entries and not sections:
        raise exc
    cleaned = {k: v for k, v in data.items() if k not in sections}
    cleaned |= {f"raw_{field}": data[field] for field in sections}
    for field, keys in entries.items():
        if field not in sections:
            cleaned[field] = {k: v for k, v in data[field].items() if k not in keys}
    return cleaned


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
