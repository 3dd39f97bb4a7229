"""Promotion gates: each rule passes and fails on its own, and every reason names both numbers."""

from __future__ import annotations

import copy

import pytest

from models.recipe import GateConfig
from models.registry.gate import GateDecision, decide

GOOD = {
    "metrics": {"macro_f1": 0.82, "accuracy": 0.85, "eval_loss": 0.4},
    "forgetting": {"general_loss_before": 2.0, "general_loss_after": 2.05, "delta": 0.05},
    "parity": {
        "fp32": {"max_abs_diff": 6e-7, "label_agreement": 1.0, "passed": True},
        "int8": {"max_abs_diff": 0.06, "label_agreement": 1.0, "passed": True},
    },
    "validation": {"success": True},
}


def evidence(**changes) -> dict:
    result = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        result[section][key] = value
    return result


def test_good_candidate_without_incumbent_passes():
    decision = decide(GOOD, None, GateConfig(min_value=0.5, max_forgetting=0.1))
    assert decision.passed and decision.failures == []
    assert decision.candidate_value == pytest.approx(0.82) and decision.incumbent_value is None
    assert decision.summary().startswith("PASSED: macro_f1 0.8200")


def test_floor_failure_names_value_and_floor():
    decision = decide(evidence(metrics__macro_f1=0.41), None, GateConfig(min_value=0.6))
    assert not decision.passed
    assert decision.failures == ["macro_f1 0.4100 is below the floor 0.6000"]
    assert "0.4100" in decision.summary() and "0.6000" in decision.summary()


def test_worse_than_incumbent_beyond_tolerance_fails_with_both_numbers():
    incumbent = evidence(metrics__macro_f1=0.90)
    decision = decide(evidence(metrics__macro_f1=0.85), incumbent, GateConfig(tolerance=0.02))
    assert not decision.passed
    (failure,) = decision.failures
    assert "0.8500" in failure and "0.9000" in failure and "0.0200" in failure
    assert decision.incumbent_value == pytest.approx(0.90)


def test_within_tolerance_of_incumbent_passes():
    incumbent = evidence(metrics__macro_f1=0.83)
    decision = decide(evidence(metrics__macro_f1=0.82), incumbent, GateConfig(tolerance=0.02))
    assert decision.passed
    assert any("0.8200" in r and "0.8300" in r for r in decision.reasons)


def test_forgetting_over_budget_fails_and_names_delta_and_budget():
    decision = decide(evidence(forgetting__delta=0.3), None, GateConfig(max_forgetting=0.1))
    assert not decision.passed
    (failure,) = decision.failures
    assert "0.3000" in failure and "0.1000" in failure


def test_forgetting_not_measured_fails_only_when_budget_set():
    candidate = copy.deepcopy(GOOD)
    del candidate["forgetting"]
    assert decide(candidate, None, GateConfig()).passed
    refused = decide(candidate, None, GateConfig(max_forgetting=0.1))
    assert not refused.passed and "not measured" in refused.failures[0]


def test_unmeasured_forgetting_names_the_reason_from_adaptation():
    candidate = evidence(forgetting__delta=None, forgetting__note="no general text given (data.general)")
    refused = decide(candidate, None, GateConfig(max_forgetting=0.1))
    assert not refused.passed and "no general text given (data.general)" in refused.failures[0]


def test_forgetting_budget_does_not_apply_to_a_model_trained_from_scratch():
    note = "scratch: no pretrained model to forget; general loss is reported after training only"
    candidate = evidence(forgetting__delta=None, forgetting__note=note)
    candidate["adaptation"] = {"strategy": "scratch"}  # as the retrain flow records it
    decision = decide(candidate, None, GateConfig(max_forgetting=0.1))
    assert decision.passed
    assert any("not applicable" in reason and "scratch" in reason for reason in decision.reasons)


def test_failed_int8_that_was_dropped_from_serving_is_reported_but_does_not_block():
    failed_int8 = {
        "max_abs_diff": 0.4,
        "label_agreement": 0.955,
        "macro_f1_drop_vs_pytorch": 0.003,
        "passed": False,
        "failures": ["label agreement 0.9550 < 0.99"],
    }
    candidate = evidence(parity__int8=failed_int8)
    candidate["serving"] = {"served": ["fp32"], "dropped": {"int8": "label agreement 0.9550 < 0.99"}}
    decision = decide(candidate, None, GateConfig(require_parity=True))
    assert decision.passed, decision.failures
    (dropped,) = [r for r in decision.reasons if "dropped from serving" in r]
    assert (
        "'int8'" in dropped and "0.9550" in dropped and "0.30 points" in dropped and "serves fp32" in dropped
    )
    assert (
        decision.dropped == [dropped] and dropped in decision.summary()
    )  # the run's one-line verdict says so
    # evidence written before the export recorded what serves: a failed int8 never served either
    del candidate["serving"]
    assert decide(candidate, None, GateConfig(require_parity=True)).passed


def test_a_served_variant_that_failed_parity_blocks_and_is_named():
    candidate = evidence(parity__int8={"max_abs_diff": 0.4, "label_agreement": 0.91, "passed": False})
    candidate["serving"] = {"served": ["fp32", "int8"]}
    decision = decide(candidate, None, GateConfig(require_parity=True))
    assert not decision.passed
    (failure,) = decision.failures
    assert "served variant 'int8'" in failure and "0.9100" in failure
    assert decide(candidate, None, GateConfig(require_parity=False)).passed


def test_fp32_parity_always_counts_because_fp32_is_the_fallback():
    bad_fp32 = {"max_abs_diff": 0.2, "label_agreement": 0.99, "passed": False}
    candidate = evidence(parity__fp32=bad_fp32)
    candidate["serving"] = {"served": ["fp32", "int8"]}
    decision = decide(candidate, None, GateConfig())
    assert not decision.passed and "'fp32'" in decision.failures[0] and "2.00e-01" in decision.failures[0]
    only_int8 = copy.deepcopy(GOOD)
    del only_int8["parity"]["fp32"]
    refused = decide(only_int8, None, GateConfig())
    assert not refused.passed and "no fp32 parity" in refused.failures[0]


def test_missing_parity_fails_when_required():
    candidate = copy.deepcopy(GOOD)
    candidate["parity"] = {}
    assert not decide(candidate, None, GateConfig()).passed


def test_failed_validation_fails():
    decision = decide(evidence(validation__success=False), None, GateConfig())
    assert not decision.passed and "validation" in decision.failures[0]


def test_missing_or_nan_metric_fails_and_lists_known_metrics():
    decision = decide(evidence(metrics__macro_f1=float("nan")), None, GateConfig())
    assert not decision.passed and decision.candidate_value is None
    assert "accuracy" in decision.failures[0]
    decision = decide(GOOD, None, GateConfig(metric="f1"))
    assert not decision.passed and "'f1'" in decision.failures[0]


def test_several_failures_all_reported_and_decision_round_trips():
    candidate = evidence(metrics__macro_f1=0.1, validation__success=False)
    decision = decide(candidate, evidence(metrics__macro_f1=0.9), GateConfig(min_value=0.5))
    assert len(decision.failures) == 3  # floor, incumbent, validation
    assert decision.summary().count(";") >= 3
    assert GateDecision.from_dict(decision.to_dict()) == decision


def test_shadow_evidence_is_not_required_by_default():
    decision = decide(GOOD, None, GateConfig())
    assert decision.passed and not any("shadow" in r for r in decision.reasons)


def test_a_required_shadow_refuses_a_version_that_was_never_shadowed():
    decision = decide(GOOD, None, GateConfig(min_shadow_requests=100))
    assert not decision.passed
    (failure,) = decision.failures
    assert "no shadow evidence" in failure and "dapt serve" in failure and "--shadow" in failure


def test_shadow_requests_and_agreement_are_checked_with_both_numbers():
    shadowed = {
        **GOOD,
        "shadow": {"version": "2", "requests": 250, "agreement": 0.97, "metric": "label_agreement"},
    }
    passed = decide(shadowed, None, GateConfig(min_shadow_requests=200, min_shadow_agreement=0.95))
    assert passed.passed
    assert any("250" in r and "200" in r for r in passed.reasons)
    refused = decide(shadowed, None, GateConfig(min_shadow_requests=300, min_shadow_agreement=0.99))
    assert not refused.passed and len(refused.failures) == 2
    assert any("250 requests" in f and "300" in f for f in refused.failures)
    assert any("label_agreement 0.9700" in f and "0.9900" in f for f in refused.failures)


def test_shadow_gate_fields_are_validated():
    with pytest.raises(ValueError):
        GateConfig(min_shadow_agreement=1.5)
    with pytest.raises(ValueError):
        GateConfig(min_shadow_requests=0)
