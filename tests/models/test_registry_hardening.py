"""Registry hardening (issue 14), each test on SQLite and on the real PostgreSQL server the tests start:
a failed registration never loses a ready version, ownership by lease, idempotent register, no alias on an
archived version, every loaded path covered by the manifest, durable registrations."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models.registry.store import (
    ArchivedVersion,
    BundleError,
    ChecksumError,
    Registry,
    RegistryError,
    VersionRow,
)
from tests.models.test_registry import make_bundle, make_evidence, pending_rows
from tests.models.test_registry_postgres import postgres_server  # noqa: F401 - fixture


@pytest.fixture(params=["sqlite", "postgres"])
def make_registry(request, tmp_path):
    """make_registry(**options) -> a Registry on one fresh database (all calls share it) and artifact root."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        import psycopg

        host, port = request.getfixturevalue("postgres_server")
        database = f"reg_{os.urandom(6).hex()}"
        with psycopg.connect(
            host=host, port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        url = f"postgresql+psycopg://postgres@{host}:{port}/{database}"
    made: list[Registry] = []

    def make(**options) -> Registry:
        registry = Registry(url, tmp_path / "artifacts", **options)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.dispose()


@pytest.fixture()
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "src")


def _raise_at(wanted: str, error: BaseException):
    def on_step(stage: str) -> None:
        if stage == wanted:
            raise error

    return on_step


def _folders(registry: Registry) -> list[str]:
    root = registry.artifact_root / "finsent"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# ------------------------------------------------------------------------------ failed registrations, retries
def test_error_after_the_ready_commit_keeps_the_version_and_a_retry_with_the_key_returns_it(
    make_registry, bundle
):
    """Seen: a commit that raised after succeeding left a ready row with no files, and the retry duplicated."""
    flaky = make_registry(on_step=_raise_at("marked-ready", ConnectionResetError("answer to COMMIT lost")))
    version = flaky.register("finsent", bundle, make_evidence(), idempotency_key="run-1")
    assert version.version == 1 and version.status == "ready"
    registry = make_registry()
    registry.load_path("finsent", 1)  # files are all there and match the manifest

    again = registry.register("finsent", bundle, make_evidence(), idempotency_key="run-1")
    assert again.version == 1 and again.path == version.path
    assert [v.version for v in registry.list_versions("finsent")] == [1]
    assert pending_rows(registry) == 0


def test_error_before_the_commit_removes_only_its_own_row_and_files(make_registry, bundle):
    registry = make_registry()
    first = registry.register("finsent", bundle, make_evidence(run_id="ok"))
    failing = make_registry(on_step=_raise_at("moved", OSError("disk went away")))
    with pytest.raises(OSError, match="disk went away"):
        failing.register("finsent", bundle, make_evidence(run_id="retry"), idempotency_key="run-2")
    assert pending_rows(registry) == 0
    assert _folders(registry) == [first.path.name]  # the failed one's folder is gone, v1's is untouched
    registry.load_path("finsent", 1)

    retried = registry.register("finsent", bundle, make_evidence(run_id="retry"), idempotency_key="run-2")
    assert retried.version == 2
    assert registry.register("finsent", bundle, make_evidence(), idempotency_key="run-2").version == 2
    assert registry.register("finsent", bundle, make_evidence(), idempotency_key="other").version == 3
    assert [v.version for v in registry.list_versions("finsent")] == [1, 2, 3]


def test_concurrent_calls_with_one_key_register_once(make_registry, bundle):
    inside, release = threading.Event(), threading.Event()

    def park(stage: str) -> None:
        if stage == "copied":
            inside.set()
            release.wait(timeout=60)

    first_registry, second_registry = make_registry(on_step=park), make_registry()
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(label: str, registry: Registry) -> None:
        try:
            results[label] = registry.register(
                "finsent", bundle, make_evidence(), idempotency_key="k"
            ).version
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=run, args=("first", first_registry))
    first.start()
    assert inside.wait(timeout=60)
    second = threading.Thread(target=run, args=("second", second_registry))
    second.start()
    time.sleep(1.0)
    assert second.is_alive()  # it waits for the registration in flight instead of making its own
    release.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert errors == [] and results == {"first": 1, "second": 1}
    assert [v.version for v in second_registry.list_versions("finsent")] == [1]


def test_idempotency_key_must_be_a_short_string(make_registry, bundle):
    registry = make_registry()
    for bad in ("", "x" * 201, 7):
        with pytest.raises(RegistryError, match="idempotency_key"):
            registry.register("finsent", bundle, make_evidence(), idempotency_key=bad)


# ------------------------------------------------------------------------------ ownership by lease
def _add_pending(registry: Registry, version: int, owner: str, heartbeat: datetime) -> Path:
    folder = registry.artifact_root / "finsent" / f"{version}-{owner[:12]}"
    folder.mkdir(parents=True)
    (folder / "partial.onnx").write_bytes(b"half")
    with Session(registry.engine) as session, session.begin():
        session.add(
            VersionRow(
                name="finsent",
                version=version,
                status="pending",
                owner=owner,
                created_at=heartbeat,
                heartbeat_at=heartbeat,
                artifact_path=f"finsent/{folder.name}",
                metrics={},
                evidence={},
            )
        )
    return folder


def test_same_host_and_dead_pid_do_not_make_a_registration_stale_only_its_lease_does(make_registry, bundle):
    """Two containers can share a host name and a pid: the pid of a live registration elsewhere may be dead
    here. Only a heartbeat older than the lease counts."""
    registry = make_registry(lease_s=60)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    now = datetime.now(timezone.utc)
    alive = _add_pending(registry, 1, f"{'a' * 32}@{host}:{dead.pid}", now)
    expired = _add_pending(registry, 2, f"{'b' * 32}@{host}:{os.getpid()}", now - timedelta(seconds=61))

    assert registry.cleanup() == 1
    assert alive.is_dir() and not expired.exists()
    assert pending_rows(registry) == 1
    assert registry.register("finsent", bundle, make_evidence()).version == 2  # 1 is still being registered


def test_heartbeat_keeps_a_slow_registration_alive_past_its_lease(make_registry, bundle):
    lease = 1.0
    reached = threading.Event()

    def slow(stage: str) -> None:
        if stage == "copied":
            reached.set()
            time.sleep(3 * lease)

    slow_registry, other = make_registry(lease_s=lease, on_step=slow), make_registry(lease_s=lease)
    result: list = []
    worker = threading.Thread(
        target=lambda: result.append(slow_registry.register("finsent", bundle, make_evidence()))
    )
    worker.start()
    assert reached.wait(timeout=60)
    time.sleep(1.5 * lease)
    assert other.cleanup() == 0  # the heartbeat is fresh although the registration started long ago
    worker.join(timeout=60)
    assert result and result[0].version == 1
    other.load_path("finsent", 1)


# ------------------------------------------------------------------------------ aliases vs archive (write skew)
@pytest.mark.parametrize("paused", ["set_alias", "archive"])
def test_an_alias_never_points_at_an_archived_version(make_registry, bundle, paused):
    """set_alias and archive of one version at the same moment, in two sessions: one of them must lose."""
    setup = make_registry()
    setup.register("finsent", bundle, make_evidence(0.80))
    setup.register("finsent", bundle, make_evidence(0.85))
    setup.set_alias("finsent", "production", 1, "first")
    inside, release = threading.Event(), threading.Event()
    stage = "alias-checked" if paused == "set_alias" else "archive-checked"

    def park(at: str) -> None:
        if at == stage:
            inside.set()
            release.wait(timeout=60)

    pausing, other = make_registry(on_step=park), make_registry()
    outcome: dict[str, object] = {}

    def set_alias(registry: Registry) -> None:
        try:
            outcome["set_alias"] = registry.set_alias("finsent", "production", 2, "move")
        except (ArchivedVersion, RegistryError) as exc:
            outcome["set_alias"] = exc

    def archive(registry: Registry) -> None:
        try:
            outcome["archive"] = registry.archive("finsent", 2)
        except RegistryError as exc:
            outcome["archive"] = exc

    first_fn, second_fn = (set_alias, archive) if paused == "set_alias" else (archive, set_alias)
    first = threading.Thread(target=first_fn, args=(pausing,))
    first.start()
    assert inside.wait(timeout=60)
    second = threading.Thread(target=second_fn, args=(other,))
    second.start()
    second.join(timeout=3)  # it either finishes now (no lock: the bug) or waits for the first to commit
    release.set()
    first.join(timeout=60)
    second.join(timeout=60)

    alias = setup.aliases("finsent")["production"]
    archived = setup.get_version("finsent", 2).archived
    assert not (alias == 2 and archived), f"alias on an archived version: {outcome}"
    failed = [name for name, value in outcome.items() if isinstance(value, Exception)]
    assert len(failed) == 1, outcome  # exactly one of the two went through


# ------------------------------------------------------------------------------ manifest covers what is loaded
def _write_spec(bundle: Path, variants: dict) -> None:
    spec = json.loads((bundle / "serving.json").read_text())
    spec["variants"] = variants
    (bundle / "serving.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    "variant",
    ["../../outside/model.onnx", "/etc/passwd", "onnx/../../outside/model.onnx", "onnx/fp32/missing.onnx"],
)
def test_bundle_whose_serving_spec_points_outside_or_nowhere_is_refused(
    make_registry, bundle, tmp_path, variant
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"not covered by any manifest")
    _write_spec(bundle, {"fp32": variant})
    registry = make_registry()
    with pytest.raises(BundleError, match="serving.json"):
        registry.register("finsent", bundle, make_evidence())
    assert registry.list_versions() == [] and pending_rows(registry) == 0


def _tamper_registered(registry: Registry, version, change) -> None:
    """Edit a registered folder the way a registry without these checks could have stored it: files changed,
    manifest and its digest in the database updated to match."""
    from models.hashing import file_sha256 as _sha256

    root = version.path
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    change(root)
    manifest = json.loads((root / "manifest.json").read_text())
    for rel in list(manifest["files"]):
        if (root / rel).is_file():
            manifest["files"][rel] = {"sha256": _sha256(root / rel), "size": (root / rel).stat().st_size}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with registry.engine.begin() as connection:
        connection.execute(
            text("UPDATE versions SET manifest_sha256 = :sha WHERE name = 'finsent' AND version = :v"),
            {"sha": _sha256(root / "manifest.json"), "v": version.version},
        )


def test_verification_refuses_a_variant_outside_the_bundle_or_the_manifest(make_registry, bundle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"swapped weights")
    registry = make_registry()
    first = registry.register("finsent", bundle, make_evidence())
    relative = os.path.relpath(outside / "model.onnx", first.path)  # ../../../outside/model.onnx
    _tamper_registered(registry, first, lambda root: _write_spec(root, {"fp32": relative}))
    with pytest.raises(ChecksumError, match="serving.json variant 'fp32'"):
        registry.load_path("finsent", 1)

    second = registry.register("finsent", bundle, make_evidence())

    def unlisted_variant(root: Path) -> None:
        (root / "onnx" / "fp32" / "other.onnx").write_bytes(b"not in the manifest")
        _write_spec(root, {"fp32": "onnx/fp32/model.onnx", "int8": "onnx/fp32/other.onnx"})

    _tamper_registered(registry, second, unlisted_variant)
    with pytest.raises(ChecksumError) as caught:
        registry.load_path("finsent", 2)
    assert "'int8' loads onnx/fp32/other.onnx, which is not in the manifest" in str(caught.value)


def test_verification_flags_every_file_not_in_the_manifest_and_links(make_registry, bundle, tmp_path):
    registry = make_registry()
    version = registry.register("finsent", bundle, make_evidence())
    (version.path / "reports" / "notes.txt").write_text("added later")
    with pytest.raises(ChecksumError, match=r"reports/notes.txt is an unexpected file"):
        registry.load_path("finsent", 1)
    (version.path / "reports" / "notes.txt").unlink()
    (tmp_path / "elsewhere").mkdir()
    (version.path / "reports" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ChecksumError, match=r"reports/linked is a symbolic link"):
        registry.load_path("finsent", 1)
    (version.path / "reports" / "linked").unlink()
    registry.load_path("finsent", 1)


def test_a_bundle_without_a_manifest_is_refused(make_registry, bundle):
    registry = make_registry()
    version = registry.register("finsent", bundle, make_evidence())
    (version.path / "manifest.json").chmod(0o644)
    (version.path / "manifest.json").unlink()
    with pytest.raises(ChecksumError, match="manifest.json is missing"):
        registry.load_path("finsent", 1)


def test_serving_side_checks_go_through_the_same_rules(tmp_path):
    """The service reads bundles through models.registry.bundle (no registry needed): the same path rules apply."""
    from models.registry.bundle import BundlePathError, ServingSpec
    from services.predictor import ChecksumError as ServingChecksumError
    from services.predictor import verify_manifest

    bundle = make_bundle(tmp_path / "src")
    _write_spec(bundle, {"fp32": "../../outside/model.onnx"})
    with pytest.raises(BundlePathError, match="not a plain path inside the bundle"):
        ServingSpec.read(bundle)
    _write_spec(bundle, {"fp32": "onnx/fp32/model.onnx"})
    (bundle / "manifest.json").write_text(json.dumps({"files": {"serving.json": {"sha256": ""}}}))
    with pytest.raises(ServingChecksumError, match="onnx/fp32/model.onnx .* not listed in manifest.json"):
        verify_manifest(bundle, only=["serving.json", "onnx/fp32/model.onnx"])


# ------------------------------------------------------------------------------ durability
def test_a_registration_is_on_stable_storage_before_it_is_committed(make_registry, bundle, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    registry = make_registry(on_step=lambda stage: events.append(("stage", stage)))
    version = registry.register("finsent", bundle, make_evidence())
    ready_at = events.index(("stage", "marked-ready"))
    synced = [path for kind, path in events[:ready_at] if kind == "fsync"]
    token_dir = str(registry.artifact_root / ".staging" / version.path.name.split("-")[1])  # + rest of token
    staged = {
        path.split("/bundle/", 1)[1] for path in synced if path.startswith(token_dir) and "/bundle/" in path
    }
    files = {p.relative_to(version.path).as_posix() for p in version.path.rglob("*") if p.is_file()}
    folders = {p.relative_to(version.path).as_posix() for p in version.path.rglob("*") if p.is_dir()}
    assert files <= staged  # every file, the manifest, evidence and card included
    assert folders <= staged
    assert str(version.path.parent) in synced  # the folder holding the renamed version: the rename, too
    if registry.url.startswith("sqlite"):
        with registry.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


# ------------------------------------------------------------------------------ databases from earlier releases
def test_a_database_from_before_these_changes_is_upgraded_in_place(make_registry, bundle):
    old = make_registry()
    first = old.register("finsent", bundle, make_evidence())
    with old.engine.begin() as connection:  # back to the earlier schema: no heartbeat, no key, no index
        connection.execute(text("DROP INDEX uq_versions_name_idempotency_key"))
        connection.execute(text("ALTER TABLE versions DROP COLUMN heartbeat_at"))
        connection.execute(text("ALTER TABLE versions DROP COLUMN idempotency_key"))
    old.dispose()

    upgraded = make_registry()
    assert upgraded.load_path("finsent", 1) == first.path
    again = upgraded.register("finsent", bundle, make_evidence(), idempotency_key="after-upgrade")
    assert upgraded.register("finsent", bundle, make_evidence(), idempotency_key="after-upgrade") == again
    assert [v.version for v in upgraded.list_versions("finsent")] == [1, 2]
