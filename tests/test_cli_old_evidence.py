"""`dapt models show` on a version whose evidence predates the typed model (or was written by hand): it still
shows, read through Evidence.from_record; run as users run it, the console script in a subprocess."""

from __future__ import annotations

from models.registry.store import Registry
from tests.models.test_registry import make_bundle
from tests.test_cli_models_json import dapt


def test_show_reads_old_and_hand_made_evidence(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    evidence = {
        "metrics": {"macro_f1": 0.8125},
        "forgetting": {"delta": "not measured", "note": "older record", "general_loss_before": 2.5},
        "parity": {"fp32": {"max_abs_diff": 6e-7, "passed": True}, "int8": {"passed": "yes"}},
        "lineage": {"run_id": "old-run-7"},
    }
    registry.register("finsent", make_bundle(tmp_path / "src"), evidence)
    env = {"DAPT_REGISTRY_URL": registry.url, "DAPT_ARTIFACT_ROOT": str(registry.artifact_root)}
    registry.dispose()
    shown = dapt(env, "show", "finsent")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "macro_f1" in out and "0.8125" in out
    assert "older record" in out and "2.5000" in out  # forgetting: the bad delta left out, the rest shown
    assert "old-run-7" in out  # lineage with other keys than the flow writes today
    assert (
        "6.00e-07" in out and "int8" in out
    )  # parity: a variant whose record does not parse shows no numbers
