"""Promotion gates: may a candidate version take an alias from the incumbent? Pure functions, no database.

A gate compares two versions' evidence (``Evidence``, or the dicts the registry stores, read with
``Evidence.from_record``)::

    decision = decide(candidate_evidence, incumbent_evidence_or_None, GateConfig(metric="macro_f1", tolerance=0.01))
    decision.passed        # True/False
    decision.reasons       # one readable sentence per check, each naming both numbers
    decision.summary()     # one line for logs and the audit trail

Rules (all must hold):
  1. ``metrics[gate.metric] >= gate.min_value``
  2. with an incumbent: ``candidate >= incumbent - gate.tolerance`` (metrics are higher-is-better)
  3. with ``gate.max_forgetting`` set: ``forgetting.delta <= gate.max_forgetting`` (not applied to models
     trained from scratch, ``adaptation.strategy == "scratch"``: they have nothing to forget)
  4. with ``gate.require_parity``: parity for fp32 (what every bundle can fall back to), and every variant that
     will serve ``passed``. A variant that failed parity was dropped from the bundle by the export: it is
     reported with its numbers and does not hold the version back (``serving.served`` in the evidence says
     what serves; older evidence without it: every variant whose parity did not fail)
  5. ``validation.success`` is true
  6. with ``gate.min_adaptation_gain`` set: the adapted encoder was kept and its measured task gain is at least
     that much (``adaptation_gain``, models/evaluation/adaptation_gain.py)
  7. with ``gate.min_shadow_requests`` / ``gate.min_shadow_agreement`` set: the version was served as a shadow
     (``dapt serve --shadow``; its ``shadow`` evidence, services/shadow.py) for at least that many requests,
     agreeing with production at least that much

Besides the standard library only the evidence model (pydantic) is imported here: the registry and the serving
process import this module. ``GateConfig`` comes from models.recipe and is only referenced for typing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.recipe import GateConfig
    from models.registry.evidence import Evidence, ParityResult


@dataclass(frozen=True)
class GateDecision:
    """The outcome of a gate. ``reasons`` holds one sentence per check (passed or failed), with both numbers."""

    passed: bool
    reasons: list[str]
    metric: str
    candidate_value: float | None
    incumbent_value: float | None
    failures: list[str] = field(default_factory=list)  # the subset of ``reasons`` that failed
    dropped: list[str] = field(default_factory=list)  # variants dropped from serving, one sentence each

    def summary(self) -> str:
        """One line: verdict, the metric with both values, the failed checks if any, dropped variants."""
        incumbent = "none" if self.incumbent_value is None else f"{self.incumbent_value:.4f}"
        candidate = "n/a" if self.candidate_value is None else f"{self.candidate_value:.4f}"
        head = f"{'PASSED' if self.passed else 'REFUSED'}: {self.metric} {candidate} (incumbent {incumbent})"
        return "; ".join([head, *([] if self.passed else self.failures), *self.dropped])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateDecision:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def served_variants(evidence: Evidence | Mapping[str, Any]) -> set[str]:
    """The ONNX variants a version will serve: ``serving.served`` when the export recorded it, else fp32 plus
    every variant whose parity did not fail (what older exports let the service choose)."""
    from models.registry.evidence import Evidence  # pydantic only when evidence is read

    evidence = Evidence.from_record(evidence)
    if evidence.serving is not None:
        return set(evidence.serving.served)
    return {"fp32"} | {v for v, r in evidence.parity_results().items() if r.passed is not False}


def _parity_numbers(result: ParityResult) -> str:
    diff, agreement = _number(result.max_abs_diff), _number(result.label_agreement)
    drop = _number(result.macro_f1_drop_vs_pytorch)
    parts = [
        f"max |diff| {diff:.2e}" if diff is not None else "",
        f"label agreement {agreement:.4f}" if agreement is not None else "",
        f"macro-F1 drop {100 * drop:.2f} points" if drop is not None else "",
    ]
    return ", ".join(p for p in parts if p) or "no numbers"


Check = Callable[[bool, str], None]


def _check_floor(check: Check, metric: str, value: float | None, known: list[str], gate: GateConfig) -> None:
    """1. absolute floor"""
    if value is None:
        check(
            False,
            f"candidate has no finite value for metric '{metric}' (its metrics: {', '.join(known) or 'none'})",
        )
        return
    ok = value >= gate.min_value
    verb = "is at or above" if ok else "is below"
    check(ok, f"{metric} {value:.4f} {verb} the floor {gate.min_value:.4f}")


def _check_incumbent(
    check: Check, reasons: list[str], metric: str, candidate: float, incumbent: float | None, gate: GateConfig
) -> None:
    """2. not worse than the incumbent beyond the tolerance"""
    if incumbent is None:
        reasons.append(f"incumbent has no '{metric}' value; compared with the floor only")
        return
    allowed = incumbent - gate.tolerance
    if candidate >= allowed:
        check(
            True,
            f"{metric} {candidate:.4f} vs incumbent {incumbent:.4f}: within tolerance "
            f"{gate.tolerance:.4f} (needs >= {allowed:.4f})",
        )
    else:
        check(
            False,
            f"{metric} {candidate:.4f} is worse than the incumbent's {incumbent:.4f} by "
            f"{incumbent - candidate:.4f}, more than the tolerance {gate.tolerance:.4f}",
        )


def _check_forgetting(check: Check, candidate: Evidence, budget: float) -> None:
    """3. forgetting budget (rise of general-text MLM loss)"""
    forgetting = candidate.forgetting
    delta, note = _number(forgetting.delta), forgetting.note
    if delta is None and candidate.adaptation_strategy == "scratch":
        # A model trained from scratch has no earlier general competence to lose: the budget does not apply.
        check(True, f"forgetting budget not applicable ({note or 'trained from scratch'})")
    elif delta is None:
        why = note or "evidence has no forgetting.delta"
        check(
            False,
            f"forgetting was not measured ({why}) but the gate allows at most {budget:.4f}; "
            "fix what the note says (e.g. add data.general, keep adapt.head_warmup_steps > 0) or unset "
            "gate.max_forgetting",
        )
    else:
        before, after = _number(forgetting.general_loss_before), _number(forgetting.general_loss_after)
        detail = f" ({before:.4f} -> {after:.4f})" if before is not None and after is not None else ""
        ok = delta <= budget
        verb = "within" if ok else "over"
        check(ok, f"general-text loss rose by {delta:.4f}{detail}, {verb} the budget {budget:.4f}")


def _check_parity(check: Check, reasons: list[str], dropped: list[str], candidate: Evidence) -> None:
    """4. export parity of what will serve"""
    parity = candidate.parity_results()
    served = served_variants(candidate)
    if not parity:
        check(False, "no parity results in the evidence, but the gate requires parity (run the export stage)")
    elif "fp32" not in parity:
        check(False, "no fp32 parity in the evidence: fp32 is what every bundle serves as the fallback")
    for variant, result in sorted(parity.items()):
        numbers = _parity_numbers(result)
        if variant in served:
            ok = result.passed is True
            check(ok, f"parity of served variant '{variant}' {'passed' if ok else 'FAILED'} ({numbers})")
        else:
            why = "; ".join(result.failures) or "parity failed"
            sentence = (
                f"variant '{variant}' was dropped from serving ({why}; {numbers}); the version serves "
                f"{', '.join(sorted(served)) or 'nothing'}"
            )
            reasons.append(sentence)
            dropped.append(sentence)


def _check_validation(check: Check, candidate: Evidence) -> None:
    """5. data validation"""
    if candidate.validation_success is True:
        check(True, "data validation succeeded")
    else:
        detail = "missing" if "success" not in candidate.validation else repr(candidate.validation_success)
        check(False, f"data validation did not succeed (validation.success is {detail})")


def _check_adaptation_gain(check: Check, candidate: Evidence, required: float) -> None:
    """6. adaptation must have paid for itself on the task"""
    gain = candidate.gain()
    value = _number(gain.gain) if gain else None
    if gain is None or value is None:
        check(
            False,
            f"adaptation gain was not measured but the gate requires at least {required:+.4f}; "
            "keep adapt.keep_only_if_helps on (and an adapt.strategy other than none) or unset "
            "gate.min_adaptation_gain",
        )
    elif gain.kept != "adapted":
        check(
            False,
            f"the adapted encoder was not kept (gain {value:+.4f}); the gate requires an adapted encoder "
            f"with a gain of at least {required:+.4f}",
        )
    else:
        ok = value >= required
        check(
            ok,
            f"adaptation gain {value:+.4f} ({gain.method}) is {'at or above' if ok else 'below'} the required "
            f"{required:+.4f}",
        )


def decide(
    candidate: Evidence | Mapping[str, Any],
    incumbent: Evidence | Mapping[str, Any] | None,
    gate: GateConfig,
) -> GateDecision:
    """Apply ``gate`` to the candidate's evidence, comparing with the incumbent's evidence when there is one."""
    reasons: list[str] = []
    failures: list[str] = []
    dropped: list[str] = []

    def check(ok: bool, sentence: str) -> None:
        reasons.append(sentence)
        if not ok:
            failures.append(sentence)

    metric = gate.metric
    from models.registry.evidence import Evidence  # pydantic only when evidence is read

    candidate = Evidence.from_record(candidate)
    incumbent = Evidence.from_record(incumbent) if incumbent is not None else None
    candidate_value = _number(candidate.metrics.get(metric))
    incumbent_value = _number(incumbent.metrics.get(metric)) if incumbent is not None else None

    _check_floor(check, metric, candidate_value, sorted(candidate.metrics), gate)
    if incumbent is not None and candidate_value is not None:
        _check_incumbent(check, reasons, metric, candidate_value, incumbent_value, gate)
    if gate.max_forgetting is not None:
        _check_forgetting(check, candidate, gate.max_forgetting)
    if gate.require_parity:
        _check_parity(check, reasons, dropped, candidate)
    _check_validation(check, candidate)
    if gate.min_adaptation_gain is not None:
        _check_adaptation_gain(check, candidate, gate.min_adaptation_gain)

    # 7. shadow traffic: answered beside production, agreeing with it
    if gate.min_shadow_requests is not None or gate.min_shadow_agreement is not None:
        shadow = candidate.shadow or {}
        requests = shadow.get("requests")
        requests = requests if isinstance(requests, int) and not isinstance(requests, bool) else None
        agreement = _number(shadow.get("agreement"))
        if requests is None:
            check(
                False,
                "no shadow evidence but the gate requires it: serve the version as a shadow of production "
                "(`dapt serve --name NAME --shadow VERSION`) until it has enough requests, or unset "
                "gate.min_shadow_requests / gate.min_shadow_agreement",
            )
        else:
            if gate.min_shadow_requests is not None:
                ok = requests >= gate.min_shadow_requests
                check(
                    ok,
                    f"shadow answered {requests} requests, {'at least' if ok else 'fewer than'} the required "
                    f"{gate.min_shadow_requests}",
                )
            if gate.min_shadow_agreement is not None:
                metric = shadow.get("metric", "agreement")
                if agreement is None:
                    check(False, f"shadow {metric} was not measured (no texts compared)")
                else:
                    ok = agreement >= gate.min_shadow_agreement
                    check(
                        ok,
                        f"shadow {metric} {agreement:.4f} with production is "
                        f"{'at or above' if ok else 'below'} the required {gate.min_shadow_agreement:.4f}",
                    )

    return GateDecision(
        passed=not failures,
        reasons=reasons,
        metric=metric,
        candidate_value=candidate_value,
        incumbent_value=incumbent_value,
        failures=failures,
        dropped=dropped,
    )
