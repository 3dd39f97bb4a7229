"""The typed evidence the library builds from the stages' results (models/registry/evidence.py)."""

from __future__ import annotations

from models.registry.evidence import Evidence, Lineage, build_evidence, served_forgetting, serving_variants
from tests.tiny_recipe import write_tiny_recipe

ADAPTED = {
    "domain_loss_before": 4.0,
    "domain_loss_after": 3.0,
    "general_loss_before": 2.0,
    "general_loss_after": 2.5,
    "forgetting_delta": 0.5,
    "forgetting_note": None,
    "head_warmup_steps": 5,
}
EXPORTED = {
    "bundle_dir": "/tmp/bundle",
    "variants": ["int8", "fp32"],
    "preferred_cpu_variant": "int8",
    "dropped": {"fp16": "labels disagree"},
    "parity": {
        "fp16": {"label_agreement": 0.9, "max_abs_diff": 0.3, "extra": 1},
        "fp32": {"max_abs_diff": 1e-6},
    },
}


def test_forgetting_is_the_adapted_encoders_unless_the_base_was_kept():
    adapted = served_forgetting(ADAPTED, base_kept=False)
    assert adapted.delta == 0.5 and adapted.general_loss_after == 2.5
    kept = served_forgetting(ADAPTED, base_kept=True)
    assert kept.delta == 0.0 and kept.general_loss_after == 2.0  # the base serves: nothing forgotten
    assert "rose by 0.5000" in (kept.note or "")


def test_serving_variants_name_what_was_dropped_with_its_parity_numbers():
    variants = serving_variants(EXPORTED)
    assert variants.served == ["fp32", "int8"] and variants.preferred_cpu_variant == "int8"
    assert variants.dropped["fp16"].why == "labels disagree"
    assert variants.dropped["fp16"].label_agreement == 0.9 and variants.dropped["fp16"].max_abs_diff == 0.3


def test_built_evidence_records_the_keys_the_gate_card_and_registry_read(
    tmp_path, sample_dir, tiny_base_model
):
    from models.recipe import load_recipe

    recipe = load_recipe(write_tiny_recipe(tmp_path, sample_dir, tiny_base_model))
    evidence = build_evidence(
        recipe,
        validation={"success": True, "profile": {"rows": 3}},
        fingerprint={"sha256": "abc", "files": {}},
        adapted={"metrics": ADAPTED, "encoder_dir": "/enc"},
        gain={"kept": "base", "summary": "base kept"},
        encoder_dir="/base",
        finetuned={"params": {"learning_rate": 1e-4}},
        evaluation={"metrics": {"macro_f1": 0.8, "n_eval": 12, "passed": True, "per_class": {}}},
        exported=EXPORTED,
        lineage=Lineage(adapt_checkpoint="/enc", finetuned_from="/base", adapt_cache_key="k", run_dir="/run"),
        code_revision="abc123",
    )
    record = evidence.record()
    assert record["metrics"] == {"macro_f1": 0.8, "n_eval": 12}  # numbers only, ints stay ints
    assert record["forgetting"]["delta"] == 0.0  # the base was kept
    assert record["profile"] == {"rows": 3} and record["recipe"]["name"] == recipe.name
    assert record["lineage"]["flow_run_id"] is None
    assert Evidence.model_validate(record | {"later_field": 1}).record()["later_field"] == 1  # extras travel


def test_stored_records_read_back_typed_even_when_old_or_hand_made():
    """Versions registered by older code (or by hand) hold fewer fields or other shapes: they still load, what
    they lack reads as empty, and a value of the wrong shape reads as missing instead of failing the record."""
    old = {
        "metrics": {"macro_f1": 0.8, "note": "n/a"},
        "forgetting": {"delta": "big", "note": "measured by hand", "forgetting_delta": 0.2},
        "serving": {"served": ["fp32"]},
        "parity": {"fp32": {"passed": True, "max_abs_diff": "tiny"}, "int8": None},
        "lineage": {"run_id": "r1"},
        "validation": {"success": True},
    }
    evidence = Evidence.from_record(old)
    assert evidence.metrics == {"macro_f1": 0.8}  # the one non-number dropped, not the whole section
    assert evidence.forgetting.delta is None and evidence.forgetting.note == "measured by hand"
    assert evidence.forgetting.model_extra == {"forgetting_delta": 0.2}
    assert (
        evidence.serving is not None
        and evidence.serving.served == ["fp32"]
        and evidence.serving.dropped == {}
    )
    parity = evidence.parity_results()
    assert (
        parity["fp32"].passed is True
        and parity["fp32"].max_abs_diff is None
        and parity["int8"].passed is None
    )
    assert evidence.lineage is not None and evidence.lineage.model_dump(exclude_unset=True) == {
        "run_id": "r1"
    }
    assert (
        evidence.validation_success is True and evidence.gain() is None and evidence.lineage.run_dir is None
    )
    assert Evidence.from_record(None).metrics == {} and Evidence.from_record({}).serving is None
    wrong = Evidence.from_record({"lineage": 5, "metrics": {"macro_f1": 0.5}})
    assert (
        wrong.lineage is None
        and wrong.model_extra == {"raw_lineage": 5}
        and wrong.metrics == {"macro_f1": 0.5}
    )


def test_the_gate_decides_on_an_old_incumbent_record():
    """The incumbent a new version is compared with may be years old: its dict evidence still gives its metric."""
    from models.recipe import GateConfig
    from models.registry.gate import decide

    candidate = {"metrics": {"macro_f1": 0.81}, "validation": {"success": True}}
    incumbent = {"metrics": {"macro_f1": 0.80, "broken": "x"}, "forgetting": {"delta": "?"}}
    decision = decide(candidate, incumbent, GateConfig(tolerance=0.0, require_parity=False))
    assert decision.passed and decision.incumbent_value == 0.80
    assert (
        decide(Evidence.from_record(candidate), None, GateConfig(require_parity=False)).candidate_value
        == 0.81
    )
