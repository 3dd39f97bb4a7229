"""The registry's base: what it is connected to (database, artifact store, lease, step observer), its
transactions, and every read (list, get, load and verify a version, diff two, attach late evidence).

Registration (registration.py), cleanup of abandoned registrations (cleanup.py) and alias moves (aliases.py)
build on :class:`RegistryQueries`; ``models.registry.store.Registry`` puts them together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from models.registry.artifacts import ArtifactStore, open_store, verify_folder
from models.registry.errors import (
    AliasNotFound,
    ChecksumError,
    ModelNotFound,
    RegistryError,
    VersionNotFound,
)
from models.registry.schema import AliasRow, VersionRow, create_schema, is_retryable, make_engine
from models.registry.values import (
    ATTACHABLE_EVIDENCE,
    READY,
    VISIBLE,
    ModelVersion,
    VersionDiff,
    as_utc,
    check_name,
    check_version,
    flatten,
    plain_json,
)

# A pending registration whose heartbeat is older than this counts as abandoned. Its owner refreshes the
# heartbeat every lease/4 seconds, so only a process that is dead (or stalled for the whole lease) loses it.
DEFAULT_LEASE_S = 120.0

# The points a registration or alias move passes, in order, as the step observer hears them: ``copying``
# (after each file), ``copied`` (staged, hashed, fsynced), ``uploading`` (object store: after each file),
# ``moved`` (published), ``marked-ready`` (committed); ``alias-checked`` and ``archive-checked`` (inside the
# alias or archive transaction, after its checks).
STEPS = (
    "copying",
    "copied",
    "uploading",
    "moved",
    "marked-ready",
    "alias-checked",
    "archive-checked",
)
StepObserver = Callable[[str], None]

_T = TypeVar("_T")


def ignore_step(step: str) -> None:
    """The default step observer: nothing to report."""


class RegistryQueries:
    """Connection, transactions and reads; see ``models.registry.store.Registry`` for the parameters."""

    def __init__(
        self,
        url: str | None = None,
        artifact_root: str | Path | None = None,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        on_step: StepObserver = ignore_step,
        cache_dir: str | Path | None = None,
        artifacts: ArtifactStore | None = None,
    ):
        from models import settings

        if not lease_s > 0:
            raise RegistryError(f"lease_s must be positive, got {lease_s!r}")
        self.url = url or settings.registry_url()
        self.artifacts = artifacts or open_store(
            artifact_root or settings.artifact_location(), cache_dir or settings.artifact_cache_dir()
        )
        # A Path for a local store (tests and tools join paths to it), the URL for an object store.
        self.artifact_root: Any = getattr(self.artifacts, "root", self.artifacts.location)
        self.lease_s = float(lease_s)
        self.on_step = on_step
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        return f"Registry({make_url(self.url).render_as_string(hide_password=True)!r}, {str(self.artifact_root)!r})"

    # -- plumbing ------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = make_engine(self.url)
            create_schema(engine)
            self._engine = engine
        return self._engine

    def dispose(self) -> None:
        """Close pooled database connections (e.g. before forking)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _write(
        self, work: Callable[[Session], _T], *, retry_conflicts: bool = False, attempts: int = 60
    ) -> _T:
        """Run ``work`` in one write transaction; retry lock timeouts, and unique-key conflicts if asked."""
        for attempt in range(attempts):
            try:
                with Session(self.engine, expire_on_commit=False) as session, session.begin():
                    return work(session)
            except IntegrityError:
                if not retry_conflicts or attempt == attempts - 1:
                    raise
            except OperationalError as error:
                if not is_retryable(error) or attempt == attempts - 1:
                    raise
            time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 8))
        raise AssertionError("unreachable")

    def _read(self) -> Session:
        return Session(self.engine.execution_options(sqlite_begin="DEFERRED"), expire_on_commit=False)

    def _where(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def _to_model_version(self, row: VersionRow, aliases: list[str]) -> ModelVersion:
        return ModelVersion(
            name=row.name,
            version=row.version,
            status=row.status,
            created_at=as_utc(row.created_at),
            path=self.artifacts.folder(row.artifact_path, row.manifest_sha256),
            metrics=dict(row.metrics or {}),
            evidence=dict(row.evidence or {}),
            aliases=sorted(aliases),
            manifest_sha256=row.manifest_sha256,
            size_bytes=row.size_bytes,
            file_count=row.file_count,
            base_model=row.base_model,
            data_sha256=row.data_sha256,
            code_revision=row.code_revision,
            artifact_path=row.artifact_path,
            location=self.artifacts.url(row.artifact_path),
        )

    # -- reading -------------------------------------------------------------------------------------------
    def _alias_map(self, session: Session, name: str | None) -> dict[tuple[str, int], list[str]]:
        query = select(AliasRow)
        if name is not None:
            query = query.where(AliasRow.name == name)
        mapping: dict[tuple[str, int], list[str]] = {}
        for row in session.scalars(query):
            mapping.setdefault((row.name, row.version), []).append(row.alias)
        return mapping

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Visible (ready or archived) versions, ordered by name then version. ``name=None`` lists every model."""
        if name is not None:
            check_name(name)
        with self._read() as session:
            query = select(VersionRow).where(VersionRow.status.in_(VISIBLE))
            if name is not None:
                query = query.where(VersionRow.name == name)
            rows = session.scalars(query.order_by(VersionRow.name, VersionRow.version)).all()
            aliases = self._alias_map(session, name)
        return [self._to_model_version(row, aliases.get((row.name, row.version), [])) for row in rows]

    def _get_row(self, session: Session, name: str, version: int | None, alias: str | None) -> VersionRow:
        if version is not None and alias is not None:
            raise RegistryError("give a version or an alias, not both")
        visible = select(VersionRow).where(VersionRow.name == name, VersionRow.status.in_(VISIBLE))
        known = session.scalars(visible.order_by(VersionRow.version)).all()
        if not known:
            raise ModelNotFound(
                f"no model named '{name}' in the registry ({self._where()}); register one with `dapt run RECIPE`, "
                "or see `dapt models list`"
            )
        if alias is not None:
            check_name(alias, "alias")
            holder = session.get(AliasRow, (name, alias))
            if holder is None:
                raise AliasNotFound(
                    f"no version of '{name}' has alias '{alias}'; run `dapt models promote {name} <version>"
                    + (f" --alias {alias}`" if alias != "production" else "`")
                )
            version = holder.version
        if version is None:
            live = [row for row in known if row.status == READY]
            if not live:
                raise ModelNotFound(f"every version of '{name}' is archived; register a new one")
            return live[-1]
        check_version(version)
        for row in known:
            if row.version == version:
                return row
        numbers = ", ".join(str(row.version) for row in known)
        raise VersionNotFound(
            f"version {version} of '{name}' does not exist (versions: {numbers}); see `dapt models list {name}`"
        )

    @staticmethod
    def _lock_version(session: Session, name: str, version: int) -> None:
        """Row-lock one version for the rest of the transaction (Postgres; SQLite writers are serialized)."""
        session.execute(
            select(VersionRow)
            .where(VersionRow.name == name, VersionRow.version == version)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()

    def get_version(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """One version: by number, by alias, or (neither given) the newest non-archived version."""
        check_name(name)
        with self._read() as session:
            row = self._get_row(session, name, version, alias)
            aliases = self._alias_map(session, name).get((name, row.version), [])
        return self._to_model_version(row, aliases)

    def diff(self, name: str, v1: int, v2: int) -> VersionDiff:
        """Metric deltas (v2 - v1) and every evidence field whose value differs between two versions."""
        first, second = self.get_version(name, v1), self.get_version(name, v2)
        metrics: dict[str, tuple[float | None, float | None, float | None]] = {}
        for key in sorted(set(first.metrics) | set(second.metrics)):
            a, b = first.metrics.get(key), second.metrics.get(key)
            delta = b - a if isinstance(a, int | float) and isinstance(b, int | float) else None
            metrics[key] = (a, b, delta)
        flat_a, flat_b = flatten(first.evidence), flatten(second.evidence)
        changed = {
            key: (flat_a.get(key), flat_b.get(key))
            for key in sorted(set(flat_a) | set(flat_b))
            if flat_a.get(key) != flat_b.get(key)
        }
        return VersionDiff(name=name, v1=v1, v2=v2, metrics=metrics, evidence=changed)

    # -- loading -------------------------------------------------------------------------------------------
    def load_path(
        self, name: str, version: int | None = None, alias: str | None = None, verify: bool = True
    ) -> Path:
        """The local bundle folder of a version (by number, alias, or newest), verified against its manifest.
        From an object store, the files are downloaded into the local cache first (each checked as it comes)."""
        model_version = self.get_version(name, version, alias)
        if verify:
            self.verify(model_version)
            return model_version.path
        path = self._fetch(model_version)
        if not path.is_dir():
            raise ChecksumError(f"{name} v{model_version.version}: folder {path} is missing")
        return path

    def _fetch(self, model_version: ModelVersion) -> Path:
        label = f"{model_version.name} v{model_version.version}"
        if model_version.artifact_path is None:  # built by hand, not read from the database
            return model_version.path
        return self.artifacts.fetch(model_version.artifact_path, model_version.manifest_sha256, label)

    def attach_evidence(self, name: str, version: int, key: str, value: dict[str, Any]) -> None:
        """Set one evidence entry gathered after registration (``ATTACHABLE_EVIDENCE``, e.g. the service's
        ``shadow`` summary); what the run registered cannot be overwritten this way."""
        if key not in ATTACHABLE_EVIDENCE:
            raise RegistryError(
                f"evidence '{key}' is written at registration; attachable: {ATTACHABLE_EVIDENCE}"
            )

        def attach(session: Session) -> None:
            row = self._get_row(session, name, check_version(version), None)
            row.evidence = {**(row.evidence or {}), key: plain_json(value)}

        self._write(attach)

    def verify(self, model_version: ModelVersion) -> None:
        """Raise ChecksumError (naming model, version and files) unless the folder matches the manifest exactly."""
        root = self._fetch(model_version)
        fix = self.artifacts.fix_hint(model_version.artifact_path or "", model_version.manifest_sha256)
        label = f"{model_version.name} v{model_version.version}"
        verify_folder(root, model_version.manifest_sha256, label, fix)
