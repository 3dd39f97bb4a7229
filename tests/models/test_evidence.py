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
