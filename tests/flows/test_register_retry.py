"""The retrain flow's register task retried by Prefect returns the version its first attempt committed."""

from __future__ import annotations

from pathlib import Path

from tests.models.test_registry import make_bundle, make_evidence


def test_registration_key_is_one_per_run():
    from flows.retrain import registration_key

    run_dir = Path("/runs/20261130T010203000000-finsent")
    assert registration_key("abc", run_dir) == registration_key("abc", run_dir)
    assert registration_key("abc", run_dir) != registration_key("def", run_dir)
    assert registration_key("abc", run_dir) != registration_key("abc", run_dir.with_name("later-finsent"))
    assert len(registration_key("0" * 36, run_dir)) <= 200


def test_retried_register_task_returns_the_version_it_already_committed(
    prefect_harness, tmp_path, monkeypatch
):
    """The first attempt commits v1 and then fails (its answer lost); Prefect's retry must not add v2."""
    from prefect import flow
    from prefect.context import get_run_context

    from flows.retrain import register_version, registration_key
    from models.registry.store import Registry

    monkeypatch.setenv("DAPT_REGISTRY_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("DAPT_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    bundle = make_bundle(tmp_path / "src")
    real_get_version = Registry.get_version
    calls = {"failed": 0}

    def get_version_once_lost(self, name, version=None, alias=None):
        if calls["failed"] == 0:
            calls["failed"] += 1
            raise ConnectionResetError("connection lost after the version was committed")
        return real_get_version(self, name, version, alias)

    monkeypatch.setattr(Registry, "get_version", get_version_once_lost)

    @flow(name="register-retry-test")
    def register_flow() -> dict:
        run = get_run_context().flow_run
        key = registration_key(run.id, tmp_path / "runs" / "20261130T000000000000-finsent")
        return register_version.with_options(retry_delay_seconds=0)(
            "finsent", str(bundle), make_evidence(), key
        )

    registered = register_flow()
    assert calls["failed"] == 1  # the first attempt really failed and was retried
    assert registered["version"] == 1
    monkeypatch.setattr(Registry, "get_version", real_get_version)
    assert [v.version for v in Registry().list_versions("finsent")] == [1]
