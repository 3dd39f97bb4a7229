"""The same registry on a real PostgreSQL server: 8 concurrent registering processes, aliases and rollback.

A throwaway server is started in a temp dir on 127.0.0.1 with a free port (tests/pg_server.py) and stopped
afterwards. Skipped only when the PostgreSQL binaries are absent: install them with `scripts/ensure-postgres.sh`.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from models.recipe import GateConfig
from models.registry.bundle import ServingSpec
from models.registry.store import Registry
from tests.pg_server import SKIP_REASON, new_database, postgres_bindir
from tests.pg_server import postgres_server as start_postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_server():
    """(host, port) of a throwaway PostgreSQL server (tests/pg_server.py)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    with start_postgres(bindir) as server:
        yield server


@pytest.fixture()
def pg_registry(postgres_server, tmp_path) -> Registry:
    """A registry on a fresh database of the throwaway server."""
    registry = Registry(new_database(*postgres_server), tmp_path / "artifacts")
    yield registry
    registry.dispose()


def make_bundle(root: Path) -> Path:
    bundle = root / "bundle"
    (bundle / "onnx" / "fp32").mkdir(parents=True)
    (bundle / "tokenizer").mkdir()
    ServingSpec("finsent", "classification", ["neg", "pos"], 64, {"fp32": "onnx/fp32/model.onnx"}).write(
        bundle
    )
    (bundle / "onnx" / "fp32" / "model.onnx").write_bytes(os.urandom(2048))
    (bundle / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return bundle


def make_evidence(macro_f1: float, run_id: str = "run") -> dict:
    return {
        "metrics": {
            "macro_f1": macro_f1,
            "accuracy": macro_f1,
            "eval_loss": float("nan"),
        },  # NaN: Postgres-safe
        "forgetting": {"delta": 0.01},
        "parity": {"fp32": {"max_abs_diff": 1e-6, "label_agreement": 1.0, "passed": True}},
        "validation": {"success": True},
        "data_fingerprint": {"sha256": "cd" * 32},
        "recipe": {"name": "finsent"},
        "base_model": "tiny",
        "lineage": {"run_id": run_id},
        "code_revision": "abc",
    }


def _register_worker(url: str, root: str, bundle: str, run_id: str, barrier, results) -> None:
    registry = Registry(url, root)
    registry.engine  # schema creation races between processes too  # noqa: B018
    barrier.wait(timeout=120)
    results.put((run_id, registry.register("finsent", Path(bundle), make_evidence(0.8, run_id)).version))


def test_eight_processes_register_at_once_on_postgres(pg_registry, tmp_path):
    bundle = make_bundle(tmp_path / "src")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(8), context.Queue()
    args = (pg_registry.url, str(pg_registry.artifact_root), str(bundle))
    workers = [
        context.Process(target=_register_worker, args=(*args, f"run-{i}", barrier, results)) for i in range(8)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert sorted(version for _, version in outcomes) == list(range(1, 9))
    versions = pg_registry.list_versions("finsent")
    assert [v.version for v in versions] == list(range(1, 9))
    assert {v.version: v.evidence["lineage"]["run_id"] for v in versions} == {v: r for r, v in outcomes}
    assert versions[0].metrics["eval_loss"] is None  # NaN stored as null, not rejected by Postgres JSON
    for version in versions:
        pg_registry.load_path("finsent", version.version)


def test_promote_refuse_force_rollback_on_postgres(pg_registry, tmp_path):
    bundle = make_bundle(tmp_path / "src")
    for score in (0.80, 0.85, 0.60):
        pg_registry.register("finsent", bundle, make_evidence(score))
    assert pg_registry.promote("finsent", 1).passed
    assert pg_registry.promote("finsent", 2, gate=GateConfig(tolerance=0.01)).passed
    refused = pg_registry.promote("finsent", 3)
    assert not refused.passed and "0.6000" in refused.failures[0] and "0.8500" in refused.failures[0]
    assert pg_registry.aliases("finsent") == {"production": 2}

    pg_registry.promote("finsent", 3, force_reason="load test", actor="bob")
    assert pg_registry.aliases("finsent") == {"production": 3}
    assert pg_registry.rollback("finsent").to_version == 2
    assert pg_registry.load_path("finsent", alias="production") == pg_registry.get_version("finsent", 2).path

    kinds = [(m.kind, m.from_version, m.to_version) for m in pg_registry.audit_log("finsent")]
    assert kinds == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("refused", 2, 3),
        ("force", 2, 3),
        ("rollback", 3, 2),
    ]
    forced = pg_registry.audit_log("finsent")[3]
    assert forced.reason == "load test" and forced.actor == "bob" and forced.decision["passed"] is False
