"""`dapt models history`: which version held each alias, from when to when, who or what moved it and why.

Run as users run it: the console script in a subprocess, stdout on a pipe."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from models.registry.history import alias_history
from models.registry.store import Registry
from tests.models.test_registry import make_bundle, make_evidence
from tests.test_cli_models_json import dapt

AUTO_REASON = "latency regression: mean 412 ms on v3 vs 9 ms on v1 over 40 requests (limit 2.0x)"


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> dict[str, str]:
    """v1 promoted by the gate, v2 forced, a manual rollback to v1, v3 set by hand on production, an
    automatic rollback back to v1; v2 promoted on staging."""
    root = tmp_path_factory.mktemp("history_registry")
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    bundle = make_bundle(root / "src")
    for f1 in (0.80, 0.70, 0.85):
        registry.register("finsent", bundle, make_evidence(f1))
    registry.promote("finsent", 1, actor="alice")
    registry.promote("finsent", 2, force_reason="hotfix for the blogs slice", actor="bob")
    registry.rollback("finsent", actor="carol")
    registry.set_alias("finsent", "production", 3, "canary by hand", "dave")
    registry.set_alias(
        "finsent", "production", 1, AUTO_REASON, "dapt-watch", kind="auto-rollback", expected_from=3
    )
    registry.promote("finsent", 2, alias="staging", actor="alice")
    registry.dispose()
    return {"DAPT_REGISTRY_URL": registry.url, "DAPT_ARTIFACT_ROOT": str(registry.artifact_root)}


def test_history_json_lists_every_tenure_with_how_why_and_when(moved):
    result = dapt(moved, "history", "finsent", "--alias", "production", "--json")
    assert result.returncode == 0, result.stderr
    history = json.loads(result.stdout)
    assert [(t["version"], t["how"], t["actor"]) for t in history] == [
        (1, "gate", "alice"),
        (2, "manual (gate overridden)", "bob"),
        (1, "rollback", "carol"),
        (3, "manual", "dave"),
        (1, "automatic rollback", "dapt-watch"),
    ]
    assert history[1]["reason"] == "hotfix for the blogs slice"
    assert history[-1]["reason"] == AUTO_REASON and history[-1]["kind"] == "auto-rollback"
    # each tenure ends when the next one starts, and says what ended it; only the last one is current
    for before, after in zip(history, history[1:], strict=False):
        assert before["until"] == after["since"] and before["current"] is False
        assert datetime.fromisoformat(before["since"]) <= datetime.fromisoformat(before["until"])
        assert before["ended_by"] == after["how"] and before["ended_reason"] == after["reason"]
    assert history[-1]["until"] is None and history[-1]["current"] is True
    assert history[3]["ended_by"] == "automatic rollback" and history[3]["ended_reason"] == AUTO_REASON
    assert [t["previous_version"] for t in history] == [None, 1, 2, 1, 3]


def test_history_without_alias_covers_every_alias_and_the_table_keeps_the_reason(moved):
    every = json.loads(dapt(moved, "history", "finsent", "--json").stdout)
    assert sorted({t["alias"] for t in every}) == ["production", "staging"]
    staging = [t for t in every if t["alias"] == "staging"]
    assert [(t["version"], t["how"], t["current"]) for t in staging] == [(2, "gate", True)]

    table = dapt(moved, "history", "finsent", "--alias", "production")
    assert table.returncode == 0, table.stderr
    assert "automatic rollback" in table.stdout and AUTO_REASON in table.stdout
    assert "now" in table.stdout and "v3" in table.stdout


def test_history_errors_exit_1_with_a_clear_line(moved):
    missing = dapt(moved, "history", "nosuch")
    assert missing.returncode == 1 and "no model named 'nosuch'" in missing.stderr
    bad_alias = dapt(moved, "history", "finsent", "--alias", "Prod/1")
    assert bad_alias.returncode == 1 and "not a valid alias" in bad_alias.stderr
    empty = dapt(moved, "history", "finsent", "--alias", "canary")
    assert empty.returncode == 0 and "has held alias 'canary'" in empty.stdout


def test_a_manual_rollback_after_an_automatic_one_undoes_it(tmp_path):
    """The automatic rollback is a move like any other: `dapt models rollback` returns to the version it left."""
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    bundle = make_bundle(tmp_path / "src")
    registry.register("finsent", bundle, make_evidence(0.8))
    registry.register("finsent", bundle, make_evidence(0.9))
    registry.promote("finsent", 1)
    registry.promote("finsent", 2)
    registry.set_alias("finsent", "production", 1, "errors", "w", kind="auto-rollback", expected_from=2)
    move = registry.rollback("finsent")
    assert (move.from_version, move.to_version) == (1, 2)
    assert [t.version for t in alias_history(registry, "finsent")] == [1, 2, 1, 2]
