"""Every task and adaptation strategy runs through the real flow to a served model (tiny configs)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.tiny_recipe import write_tiny_ner_recipe, write_tiny_recipe

pytestmark = pytest.mark.integration


def test_ner_flow_serves_entities_with_character_offsets(
    tmp_path, sample_dir, tiny_base_model, prefect_harness
):
    from dapt.cli.app import run_recipe
    from models.registry.store import Registry
    from services.launcher import free_port, start_server, stop_server, wait_ready

    summary = run_recipe(write_tiny_ner_recipe(tmp_path / "ner", sample_dir, tiny_base_model))
    assert "entity_f1" in summary["metrics"]  # entity-level F1 is reported
    bundle = Registry().load_path("tinyner", alias="production", verify=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(bundle, "tinyner", summary["version"], "127.0.0.1", port)
    try:
        wait_ready(url, server, timeout_s=120)
        text = "Nokia reported net sales of EUR 1.2 mn in 2008 ."
        response = httpx.post(f"{url}/entities", json={"texts": [text]}, timeout=30)
        assert response.status_code == 200, response.text
        spans = response.json()["entities"][0]
        for span in spans:  # whatever a barely trained model finds, offsets must point into the input
            assert text[span["start"] : span["end"]] == span["text"]
            assert span["label"] in {"ORG", "MONEY", "PERCENT", "DATE"}
        wrong = httpx.post(f"{url}/classify", json={"texts": [text]}, timeout=30)
        assert 400 <= wrong.status_code < 500 and "entities" in wrong.text
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("name", "adapt"),
    [
        (
            "scratch",
            {
                "strategy": "scratch",
                "scratch_vocab_size": 300,
                "scratch_hidden_size": 32,
                "scratch_layers": 1,
                "scratch_heads": 2,
            },
        ),
        ("nsp", {"strategy": "dapt", "objective": "mlm+nsp"}),
        ("tapt", {"strategy": "dapt+tapt"}),
    ],
)
def test_adaptation_strategies_reach_a_served_prediction(
    tmp_path, sample_dir, tiny_base_model, prefect_harness, name, adapt
):
    from dapt.cli.app import run_recipe
    from models.registry.store import Registry
    from services.predictor import OnnxPredictor

    recipe = write_tiny_recipe(tmp_path / name, sample_dir, tiny_base_model, name=f"tiny-{name}", adapt=adapt)
    summary = run_recipe(recipe)
    bundle = Registry().load_path(f"tiny-{name}", version=summary["version"], verify=True)
    predictions = OnnxPredictor(bundle).classify(["Operating profit rose to EUR 3 mn."])
    assert predictions[0]["label"] in {"negative", "neutral", "positive"}


def test_flow_fine_tunes_the_base_when_adaptation_does_not_help_and_says_so(
    tmp_path, sample_dir, tiny_base_model, prefect_harness
):
    from flows.retrain import retrain
    from models.recipe import load_recipe
    from models.registry.store import Registry

    path = write_tiny_recipe(
        tmp_path / "r", sample_dir, tiny_base_model, name="gainflow", adapt={"min_gain": 2.0}
    )
    summary = retrain(load_recipe(path))
    gain = summary["adaptation_gain"]
    assert gain["kept"] == "base" and "did not help" in gain["summary"]
    evidence = Registry().get_version("gainflow", version=summary["version"]).evidence
    assert evidence["adaptation_gain"]["kept"] == "base"
    assert Path(evidence["lineage"]["finetuned_from"]) == Path(tiny_base_model)
    assert evidence["forgetting"]["delta"] == 0.0 and "base encoder serves" in evidence["forgetting"]["note"]
