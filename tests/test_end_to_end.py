"""The vertical slice on tiny data: flow → registry → live `bentoml serve` on 127.0.0.1 → HTTP prediction."""

from __future__ import annotations

import httpx
import pytest

from tests.tiny_recipe import write_tiny_recipe

pytestmark = pytest.mark.integration


def test_flow_registers_promotes_and_serves_over_http(tmp_path, sample_dir, tiny_base_model, prefect_harness):
    from dapt.cli.app import run_recipe
    from dapt.cli.common import UserError
    from models.registry.store import Registry
    from services.launcher import free_port, start_server, stop_server, wait_ready

    # a seed no other test uses: the session's adaptation cache is shared, and the first run must adapt
    recipe = write_tiny_recipe(tmp_path / "run", sample_dir, tiny_base_model, seed=12)
    first = run_recipe(recipe)
    assert first["version"] == 1
    assert first["gate"]["passed"] is True, first["gate"]["summary"]
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
        response = httpx.post(
            f"{url}/classify", json={"texts": ["Profit rose 5 %.", "Sales fell."]}, timeout=30
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["version"] in (1, "1")
        assert [p["label"] in {"negative", "neutral", "positive"} for p in body["predictions"]] == [
            True,
            True,
        ]
        assert abs(sum(body["predictions"][0]["scores"].values()) - 1.0) < 1e-3
    finally:
        stop_server(server)

    # A second run registers version 2 and the gate decides with both numbers in view.
    second = run_recipe(recipe)
    assert second["version"] == 2
    assert first["adapt_cache_hit"] is False
    assert second["adapt_cache_hit"] is True  # unchanged data and settings: adaptation is skipped
    assert second["gate"]["incumbent_value"] is not None
    assert second["gate"]["candidate_value"] is not None

    # Bad data stops the run before training, and nothing new is registered.
    broken = write_tiny_recipe(tmp_path / "broken", sample_dir, tiny_base_model)
    train = broken.parent / "train.csv"
    train.write_text(
        train.read_text(encoding="utf-8") + "Shares jumped 12 %.,bullish,newswire\n", encoding="utf-8"
    )
    with pytest.raises(UserError, match="data validation failed"):
        run_recipe(broken)
    assert [v.version for v in registry.list_versions("tiny")] == [1, 2] or sorted(
        v.version for v in registry.list_versions("tiny")
    ) == [1, 2]
