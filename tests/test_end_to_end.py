"""The vertical slice on tiny data: flow → registry → live `bentoml serve` on 127.0.0.1 → HTTP prediction."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_tiny_recipe(folder: Path, sample: Path, base_model: Path, **sections) -> Path:
    """A recipe over a small slice of data/sample/ and the tiny BERT, so the whole flow takes seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = sample.joinpath("corpus.txt").read_text(encoding="utf-8").splitlines()[:80]
    folder.joinpath("corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    general = sample.joinpath("general.txt").read_text(encoding="utf-8").splitlines()[:30]
    folder.joinpath("general.txt").write_text("\n".join(general) + "\n", encoding="utf-8")
    with sample.joinpath("sentiment.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picked = []
    for label in ("negative", "neutral", "positive"):
        picked += [r for r in rows if r["label"] == label][:20]
    with folder.joinpath("train.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(picked)
    recipe = {
        "name": "tiny",
        "task": "classification",
        "base_model": str(base_model),
        "data": {
            "corpus": "corpus.txt",
            "general": "general.txt",
            "train": "train.csv",
            "slice_column": "source",
            "labels": ["negative", "neutral", "positive"],
            "eval_fraction": 0.25,
        },
        "validation": {"min_examples_per_class": 5},
        "adapt": {"strategy": "dapt", "max_steps": 3, "batch_size": 8, "max_length": 32},
        "finetune": {"max_steps": 6, "batch_size": 8, "max_length": 32},
        "export": {"variants": ["fp32", "int8"], "min_label_agreement": 0.5},
        "gate": {"min_value": 0.0, "tolerance": 1.0},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_flow_registers_promotes_and_serves_over_http(tmp_path, sample_dir, tiny_base_model, prefect_harness):
    from dapt.cli import UserError, free_port, run_recipe, start_server, stop_server, wait_ready
    from models.registry import Registry

    recipe = write_tiny_recipe(tmp_path / "run", sample_dir, tiny_base_model)
    first = run_recipe(recipe)
    assert first["version"] == 1
    assert first["gate"]["passed"] is True
    registry = Registry()
    production = registry.get_version("tiny", alias="production")
    assert production.version == 1
    for key in ("metrics", "parity", "validation", "data_fingerprint", "lineage", "recipe"):
        assert key in production.evidence, key

    # Serve the production version for real and ask it over HTTP.
    bundle = registry.load_path("tiny", alias="production", verify=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(bundle, "tiny", 1, "127.0.0.1", port)
    try:
        wait_ready(url, server, timeout_s=120)
        response = httpx.post(f"{url}/classify", json={"texts": ["Profit rose 5 %.", "Sales fell."]}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["version"] in (1, "1")
        assert [p["label"] in {"negative", "neutral", "positive"} for p in body["predictions"]] == [True, True]
        assert abs(sum(body["predictions"][0]["scores"].values()) - 1.0) < 1e-3
    finally:
        stop_server(server)

    # A second run registers version 2 and the gate decides with both numbers in view.
    second = run_recipe(recipe)
    assert second["version"] == 2
    assert second["gate"]["incumbent_value"] is not None
    assert second["gate"]["candidate_value"] is not None

    # Bad data stops the run before training, and nothing new is registered.
    broken = write_tiny_recipe(tmp_path / "broken", sample_dir, tiny_base_model)
    train = broken.parent / "train.csv"
    train.write_text(train.read_text(encoding="utf-8") + "Shares jumped 12 %.,bullish,newswire\n", encoding="utf-8")
    with pytest.raises(UserError, match="data validation failed"):
        run_recipe(broken)
    assert [v.version for v in registry.list_versions("tiny")] == [1, 2] or sorted(
        v.version for v in registry.list_versions("tiny")
    ) == [1, 2]
