"""`dapt models list|show|diff|audit --json` for scripts, and tables that keep whole cells when piped; run as
users run them: the console script in a subprocess with stdout on a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.registry.store import Registry
from tests.models.test_registry import make_bundle, make_evidence

REPO = Path(__file__).resolve().parents[1]
LONG_REASON = "accepted by review board 7 after checking the blogs slice by hand; " * 2


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("json_registry")
    registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    bundle = make_bundle(root / "src")
    registry.register("finsent", bundle, make_evidence(0.80))
    registry.register("finsent", bundle, make_evidence(0.70, run_id="run-2"))
    registry.promote("finsent", 1, actor="tester")
    registry.promote("finsent", 2, force_reason=LONG_REASON.strip(), actor="tester")
    registry.dispose()
    return {"DAPT_REGISTRY_URL": registry.url, "DAPT_ARTIFACT_ROOT": str(registry.artifact_root)}


def dapt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("dapt")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "dapt.cli"]
    full_env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [*command, "models", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_list_show_diff_audit_print_parseable_json(populated):
    listed = json.loads(dapt(populated, "list", "--json").stdout)
    assert [(v["name"], v["version"], v["aliases"]) for v in listed] == [
        ("finsent", 1, []),
        ("finsent", 2, ["production"]),
    ]
    assert listed[0]["metrics"]["macro_f1"] == 0.8 and listed[0]["data_sha256"] == "ab" * 32

    shown = dapt(populated, "show", "finsent", "--alias", "production", "--verify", "--json")
    assert shown.returncode == 0, shown.stderr
    version = json.loads(shown.stdout)
    assert version["version"] == 2 and version["verified"] is True
    assert version["evidence"]["lineage"]["run_id"] == "run-2"

    diff = json.loads(dapt(populated, "diff", "finsent", "1", "2", "--json").stdout)
    assert diff["metrics"]["macro_f1"]["delta"] == pytest.approx(-0.1)
    assert diff["evidence"]["lineage.run_id"] == {"v1": "run-1", "v2": "run-2"}

    audit = json.loads(dapt(populated, "audit", "finsent", "--json").stdout)
    assert [(m["kind"], m["from_version"], m["to_version"]) for m in audit] == [
        ("promote", None, 1),
        ("force", 1, 2),
    ]
    assert audit[1]["reason"] == LONG_REASON.strip() and audit[1]["decision"]["passed"] is False


def test_json_errors_go_to_stderr_with_exit_1_and_nothing_on_stdout(populated):
    result = dapt(populated, "show", "nosuch", "--json")
    assert result.returncode == 1 and result.stdout == ""
    assert "no model named 'nosuch'" in result.stderr


def test_piped_tables_keep_whole_cells(populated):
    audit = dapt(populated, "audit", "finsent")
    assert audit.returncode == 0, audit.stderr
    assert LONG_REASON.strip() in audit.stdout  # one unbroken cell, not cut at 80 columns
    listed = dapt(populated, "list").stdout
    assert "…" not in listed and "production" in listed


def test_piped_show_sums_up_validation_in_short_rows(tmp_path):
    """The validation evidence of a real run holds every check and a data profile: long JSON that used to make
    one giant cell (thousands of columns when piped). `show` sums it up; `--json` keeps every field."""
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    checks = [
        {"name": f"check_{n}", "suite": "corpus", "status": "pass", "examples": ["x" * 80] * 5}
        for n in range(40)
    ] + [{"name": "too_short", "suite": "corpus", "status": "warn", "examples": ["R ."]}]
    validation = {
        "success": True,
        "summary": "data validation PASSED: 41 checks, 0 failed, 1 warnings",
        "checks": checks,
        "profile": {"corpus": {"length": {"shares": [0.125] * 400}}},
        "drift": None,
    }
    registry.register(
        "finsent", make_bundle(tmp_path / "src"), make_evidence(0.8) | {"validation": validation}
    )
    env = {"DAPT_REGISTRY_URL": registry.url, "DAPT_ARTIFACT_ROOT": str(registry.artifact_root)}
    registry.dispose()
    shown = dapt(env, "show", "finsent")
    assert shown.returncode == 0, shown.stderr
    assert max(len(line) for line in shown.stdout.splitlines()) < 200, shown.stdout
    assert "data validation PASSED: 41 checks, 0 failed, 1 warnings" in shown.stdout
    assert "too_short (corpus): warn" in shown.stdout and "41 (each with its numbers: --json)" in shown.stdout
    full = json.loads(dapt(env, "show", "finsent", "--json").stdout)
    assert full["evidence"]["validation"]["checks"] == checks
