"""The model registry: immutable numbered versions with sha256 manifests and evidence, and aliases moved by gates.

What it stores
--------------
* Database (SQLAlchemy 2.0; SQLite under DAPT_HOME by default, Postgres by URL, same schema, tables created on
  first use): ``versions`` (one row per version: status, metrics and evidence as JSON, manifest digest),
  ``aliases`` (name, alias -> version) and ``alias_events`` (the append-only audit log of every alias move,
  with its reason, gate decision, actor and time; refused promotions are logged too).
* Artifact store: ``<artifact_root>/<name>/<version>-<token>/`` holds a copy of the serving bundle (models/registry/bundle.py)
  plus ``manifest.json`` (sha256 + size of every file), ``evidence.json`` and a generated model card ``README.md``.

Guarantees
----------
* Versions are numbered per name (1, 2, 3, ...) and never change once registered (files are made read-only
  and verified against the manifest on every load; the manifest's own digest lives in the database).
* Registration is atomic and safe under concurrency: the number is allocated in a transaction guarded by the
  unique constraint (name, version) and retried on conflict; every row gets its own folder
  (``<name>/<version>-<token>``), so no two registrations ever write or delete the same files. Files are
  copied into a staging folder under the artifact root, fsynced, renamed into place, and only then does the
  row turn ``ready`` (committed with SQLite ``synchronous=FULL``), so a registration that returned survives a
  power loss. A process killed midway leaves a ``pending`` row and folders that nobody sees (list/get read
  ``ready``/``archived`` rows only).
* Ownership of a pending row is a lease: the registering process refreshes ``heartbeat_at`` every
  ``lease_s / 4`` seconds; :meth:`Registry.cleanup` (run by every registration) removes a pending row only
  when its heartbeat is older than ``lease_s`` (host names and pids are not trusted: two containers can share
  both). Removal marks the row ``removing`` first, so its owner can no longer turn it ``ready``, then deletes
  the folders, then the row. A failed registration re-reads its row before touching any file: when the
  commit to ``ready`` went through (and only the answer was lost) it returns the version instead.
* ``register(..., idempotency_key=K)``: a second call with the same name and key returns the version the
  first one registered (the retrain flow passes one per run, so a retried register task never duplicates).
* SQLite runs in WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` write transactions, so concurrent
  writer processes queue instead of failing. On Postgres, ``set_alias`` and ``archive`` lock the version row
  (``SELECT ... FOR UPDATE``), so an alias can never end up on an archived version.
* A bundle's ``serving.json`` variants must be plain relative paths to files of the bundle; ``verify`` refuses
  a version whose loaded files are not all in its manifest, any file not in the manifest, and symbolic links.
* Only safetensors and ONNX weights are ever loaded: bundles with pickle-based files (``*.bin``, ``*.pt``,
  ``*.pth``, ``*.pkl``, ``*.pickle``, ``*.ckpt``, ``*.joblib``) are refused at registration and at load.

Artifact stores
---------------
``artifact_root`` is a local folder (or shared mount) or an object-store URL (``DAPT_ARTIFACT_ROOT=
s3://bucket/prefix``, through fsspec + s3fs; endpoint and credentials from the standard AWS variables). Both sit
behind models/registry/artifacts.py: a registration always assembles and hashes the version in a local staging
folder, then publishes it (one rename on disk; an upload, manifest last, to an object store) and only then turns
the row ``ready``, so a registration killed mid-upload is never visible. Readers of an object store get a local
copy in a cache keyed by the manifest's sha256, each file checked against the manifest as it is downloaded.

Usage::

    from models.registry.store import Registry
    registry = Registry()                                   # models.settings URLs
    mv = registry.register("finsent", bundle_dir, evidence)  # -> ModelVersion(version=1, ...)
    registry.promote("finsent", mv.version)                 # -> GateDecision; moves `production` if passed
    path = registry.load_path("finsent", alias="production")  # verified bundle folder

Import cost: standard library + SQLAlchemy only (the serving process imports this module).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from models.hashing import file_sha256
from models.registry.artifacts import (
    EVIDENCE_FILE,
    MODEL_CARD,
    ArtifactStore,
    copy_and_hash,
    fsync_tree,
    open_store,
    scan_bundle,
    verify_folder,
    write_durably,
)
from models.registry.bundle import MANIFEST, SERVING_SPEC
from models.registry.errors import BundleError, ChecksumError, RegistryError
from models.registry.gate import GateDecision, decide
from models.registry.modelcard import render_model_card

if TYPE_CHECKING:
    from models.recipe import GateConfig
    from models.registry.evidence import Evidence

log = logging.getLogger("dapt.registry")

# Same rule as models.recipe.MODEL_NAME_PATTERN (a test pins the equality); copied so that importing the
# registry does not import pydantic/yaml. Names become folder names: no dots, slashes or upper case.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# A pending registration whose heartbeat is older than this counts as abandoned. Its owner refreshes the
# heartbeat every lease/4 seconds, so only a process that is dead (or stalled for the whole lease) loses it.
DEFAULT_LEASE_S = 120.0
MAX_IDEMPOTENCY_KEY = 200

PENDING, READY, ARCHIVED, REMOVING = "pending", "ready", "archived", "removing"
VISIBLE = (READY, ARCHIVED)


# ----------------------------------------------------------------------------------------------- errors
class InvalidName(RegistryError, ValueError):
    """A model or alias name that does not match the naming rule."""


class ModelNotFound(RegistryError):
    """No (visible) version of this model name exists."""


class VersionNotFound(RegistryError):
    """The model exists but not this version."""


class AliasNotFound(VersionNotFound):
    """No version of the model holds this alias."""


class ArchivedVersion(RegistryError):
    """The version is archived and cannot take an alias."""


class GateRefused(RegistryError):
    """The promotion gate refused the candidate (raised by callers that want an exception, e.g. the CLI)."""

    def __init__(self, decision: GateDecision, name: str, version: int, alias: str):
        self.decision = decision
        super().__init__(
            f"gate refused {name} v{version} for '{alias}': {'; '.join(decision.failures)}. "
            f"Fix the model, or override with `dapt models promote {name} {version} --force REASON`"
        )


# ----------------------------------------------------------------------------------------------- schema
class Base(DeclarativeBase):
    pass


_JSON = JSON().with_variant(JSONB(), "postgresql")


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_versions_name_version"),
        # NULL keys never collide (SQLite and Postgres), so registrations without a key are unaffected.
        Index("uq_versions_name_idempotency_key", "name", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | ready | archived | removing
    owner: Mapped[str] = mapped_column(
        String(300)
    )  # <token>@host:pid of the registering call (token decides)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(MAX_IDEMPOTENCY_KEY), nullable=True)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    artifact_path: Mapped[str] = mapped_column(
        String(200)
    )  # relative to the artifact root: <name>/<version>-<token>
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    file_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    base_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    data_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    code_revision: Mapped[str | None] = mapped_column(String(100), nullable=True)
    metrics: Mapped[dict] = mapped_column(_JSON, default=dict)
    evidence: Mapped[dict] = mapped_column(_JSON, default=dict)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["name", "version"], ["versions.name", "versions.version"], name="fk_alias_version"
        ),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasEventRow(Base):
    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    # set | promote | force | rollback | auto-rollback | refused (16 characters at most: the column width)
    kind: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    decision: Mapped[dict | None] = mapped_column(_JSON, nullable=True)
    actor: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


_ANY = object()  # "no expectation" marker for set_alias(expected_from=...)
ATTACHABLE_EVIDENCE = ("shadow",)  # evidence a running service may add to a version
# Events that moved the alias ("refused" did not). "auto-rollback": a watcher (services/rollback_watch.py) moved
# it back after the new version regressed on the live service; its reason says what regressed.
MOVE_KINDS = ("set", "promote", "force", "rollback", "auto-rollback")


# ----------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class ModelVersion:
    """One registered version as the registry sees it. ``path`` is the local bundle folder to load: the folder in
    a local artifact store, or the checked cache copy of an object store's (filled by ``load_path``/``verify``);
    ``location`` is where the files are stored (that folder, or their URL)."""

    name: str
    version: int
    status: str  # ready | archived
    created_at: datetime
    path: Path
    metrics: dict[str, Any]
    evidence: dict[str, Any]
    aliases: list[str] = field(default_factory=list)
    manifest_sha256: str | None = None
    size_bytes: int | None = None
    file_count: int | None = None
    base_model: str | None = None
    data_sha256: str | None = None
    code_revision: str | None = None
    artifact_path: str | None = None  # relative to the artifact root: <name>/<version>-<token>
    location: str | None = None

    @property
    def archived(self) -> bool:
        return self.status == ARCHIVED

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class AliasMove:
    """One entry of the audit log: the alias moved from ``from_version`` to ``to_version`` (or was refused)."""

    id: int | None
    name: str
    alias: str
    kind: str  # set | promote | force | rollback | auto-rollback | refused | noop
    from_version: int | None
    to_version: int
    reason: str
    actor: str
    created_at: datetime
    decision: dict[str, Any] | None = None

    @property
    def moved(self) -> bool:
        return self.kind in MOVE_KINDS and self.from_version != self.to_version


@dataclass(frozen=True)
class VersionDiff:
    """Differences between two versions: metric deltas and every changed evidence field (dotted paths)."""

    name: str
    v1: int
    v2: int
    metrics: dict[str, tuple[float | None, float | None, float | None]]  # metric -> (v1, v2, v2 - v1)
    evidence: dict[str, tuple[Any, Any]]  # dotted path -> (v1 value, v2 value), only fields that differ


# ----------------------------------------------------------------------------------------------- helpers
_T = TypeVar("_T")


def check_name(value: str, what: str = "model name") -> str:
    """Return ``value`` if it is a valid model/alias name, else raise InvalidName saying the rule."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidName(
            f"{value!r} is not a valid {what}: use 1-63 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit (it becomes a folder name)"
        )
    return value


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"version must be a positive integer, got {version!r}")
    return version


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    # SQLite drops the zone; everything is written in UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _new_owner() -> tuple[str, str]:
    """(token, owner): the token names this call's folders; host and pid are only for people reading the row."""
    token = uuid.uuid4().hex
    return token, f"{token}@{socket.gethostname()}:{os.getpid()}"


def _token_of(owner: str) -> str:
    return owner.partition("@")[0]


def _default_actor() -> str:
    from models.settings import actor

    configured = actor()
    if configured:
        return configured
    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _jsonable(value: Any) -> Any:
    """Evidence as plain JSON: Paths and unknown objects as strings, numpy scalars as numbers, NaN/inf as None
    (Postgres JSON rejects NaN)."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _check_idempotency_key(key: Any) -> None:
    if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY):
        raise RegistryError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} characters, got {key!r}"
        )


def _evidence_record(evidence: Any) -> dict[str, Any]:
    """An Evidence, or its record (a dict) as stored, as plain JSON whose metrics are numbers."""
    supplied: Any = evidence.record() if hasattr(evidence, "record") else evidence
    if not isinstance(supplied, dict):
        raise RegistryError(f"evidence must be an Evidence or a dict, got {type(supplied).__name__}")
    record: dict[str, Any] = _jsonable(supplied)
    metrics = record.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise RegistryError("evidence['metrics'] must be a dict of metric name -> number")
    for key, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RegistryError(f"evidence['metrics'][{key!r}] must be a number, got {value!r}")
    return record


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


# ----------------------------------------------------------------------------------------------- engine
def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _sqlite_on_connect(dbapi_connection, _record):  # noqa: ANN001
        # We issue BEGIN ourselves (below): pysqlite's implicit transactions defer locking, which turns
        # concurrent read-then-write transactions into immediate "database is locked" errors.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        # FULL: a committed registration (or alias move) survives a power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_on_begin(connection):  # noqa: ANN001
        # Writers take the lock up front and queue on busy_timeout; readers stay deferred (WAL snapshot).
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _retryable(error: DBAPIError) -> bool:
    message = str(error.orig).lower()
    return any(
        word in message for word in ("locked", "busy", "deadlock", "serializ", "could not obtain lock")
    )


class _Heartbeat:
    """Refreshes a pending registration's lease from a background thread until stopped."""

    def __init__(self, registry: Registry, row_id: int, owner: str):
        self._registry, self._row_id, self._owner = registry, row_id, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"dapt-registry-heartbeat-{row_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        interval = self._registry.lease_s / 4
        while not self._stop.wait(interval):
            try:
                if not self._registry._heartbeat(self._row_id, self._owner):
                    return  # removed as abandoned: the registration will fail at mark_ready
            except Exception as error:  # noqa: BLE001 - keep beating; a lost lease shows at mark_ready
                log.warning("registry heartbeat of row %d failed: %s", self._row_id, error)


# ----------------------------------------------------------------------------------------------- registry
class Registry:
    """Versions, aliases and the audit log in one SQL database; bundles in the artifact store.

    ``Registry()`` uses ``models.settings.registry_url()``, ``models.settings.artifact_location()`` (a folder or an
    object-store URL) and ``models.settings.artifact_cache_dir()`` (where object-store readers keep checked
    copies). Nothing touches disk or the database until the first call (which creates the tables).
    ``artifacts``: an :class:`~models.registry.artifacts.ArtifactStore` to use instead of the one the root names.

    ``lease_s``: how long a pending registration may go without a heartbeat before others may remove it.
    ``hook``: called with a stage name at fixed points (``copying`` after each file, ``copied``, ``moved``,
    ``marked-ready``, ``alias-checked``, ``archive-checked``); a seam for tests that pause, fail or kill a call
    there. ``None`` in real use.
    """

    def __init__(
        self,
        url: str | None = None,
        artifact_root: str | Path | None = None,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        hook: Callable[[str], None] | None = None,
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
        self._hook = hook
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        return f"Registry({make_url(self.url).render_as_string(hide_password=True)!r}, {str(self.artifact_root)!r})"

    # -- plumbing ------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = _make_engine(self.url)
            self._create_schema(engine)
            self._engine = engine
        return self._engine

    @staticmethod
    def _create_schema(engine: Engine) -> None:
        # Several processes may create the schema at once: SQLite serializes on BEGIN IMMEDIATE, Postgres on an
        # advisory lock held for the transaction.
        for attempt in range(20):
            try:
                with engine.begin() as connection:
                    if connection.dialect.name == "postgresql":
                        connection.execute(text("SELECT pg_advisory_xact_lock(742001)"))
                    Base.metadata.create_all(connection)
                    Registry._upgrade_schema(connection)
                return
            except (IntegrityError, OperationalError) as error:
                if attempt == 19 or (isinstance(error, OperationalError) and not _retryable(error)):
                    raise RegistryError(
                        f"cannot create the registry schema in {engine.url!r}: {error.orig}"
                    ) from error
                time.sleep(0.05 * (attempt + 1))

    @staticmethod
    def _upgrade_schema(connection: Any) -> None:
        """Add what later releases added to ``versions`` in a database created by an earlier one."""
        present = {column["name"] for column in inspect(connection).get_columns("versions")}
        table = VersionRow.__table__
        for column in ("heartbeat_at", "idempotency_key"):
            if column not in present:
                kind = table.c[column].type.compile(dialect=connection.dialect)
                connection.execute(text(f"ALTER TABLE versions ADD COLUMN {column} {kind}"))
        for index in table.indexes:  # type: ignore[attr-defined]  # a Table, which has them
            index.create(connection, checkfirst=True)

    def _stage(self, stage: str) -> None:
        if self._hook is not None:
            self._hook(stage)

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
                if not _retryable(error) or attempt == attempts - 1:
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
            created_at=_utc(row.created_at),
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

    @staticmethod
    def _to_move(row: AliasEventRow) -> AliasMove:
        return AliasMove(
            id=row.id,
            name=row.name,
            alias=row.alias,
            kind=row.kind,
            from_version=row.from_version,
            to_version=row.to_version,
            reason=row.reason,
            actor=row.actor,
            created_at=_utc(row.created_at),
            decision=row.decision,
        )

    # -- registration --------------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        bundle_dir: str | Path,
        evidence: Evidence | dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> ModelVersion:
        """Copy ``bundle_dir`` into the artifact store as the next version of ``name``, with manifest, evidence
        and model card. Returns the new ``ready`` version. Safe to call from many processes at once.

        ``idempotency_key``: when a version of ``name`` was already registered with this key, return it instead
        of registering again (a retry after a lost answer, a crash or a timeout gets the same version); when one
        is being registered with it right now, wait for that one.
        """
        check_name(name)
        _check_idempotency_key(idempotency_key)
        bundle = Path(bundle_dir).expanduser().resolve()
        files = scan_bundle(bundle)
        record = _evidence_record(evidence)

        self.cleanup()
        token, owner = _new_owner()
        created = _now()
        allocated = self._allocate(name, record, token, owner, created, idempotency_key)
        if isinstance(allocated, ModelVersion):
            return allocated
        row_id, version, artifact_path = allocated
        work = self.artifacts.staging / token
        staged = work / "bundle"
        heartbeat = _Heartbeat(self, row_id, owner)
        heartbeat.start()
        try:
            entries, manifest_sha = self._assemble(bundle, files, staged, name, version, created, record)
            self.artifacts.publish(staged, artifact_path, self._stage)
            self._stage("moved")

            if not self._mark_ready(row_id, owner, manifest_sha, entries):
                raise RegistryError(
                    f"registration of {name} v{version} was removed as abandoned by another process (no "
                    f"heartbeat for {self.lease_s:.0f} s) before it finished; register again"
                )
            self._stage("marked-ready")
        except BaseException as error:
            heartbeat.stop()
            state = self._settle_failed(row_id, owner)
            if state == READY and isinstance(error, Exception):
                # The commit went through and only its answer was lost: the version is complete.
                log.warning(
                    "%s v%d: %s after the version was committed; it is registered", name, version, error
                )
            elif state in (REMOVING, "gone"):
                shutil.rmtree(work, ignore_errors=True)
                if state == REMOVING:
                    self._remove_files_and_row(row_id, artifact_path)
                raise
            else:  # ready but interrupted, or unknown: leave the files; cleanup() decides by the row later
                raise
        finally:
            heartbeat.stop()
        shutil.rmtree(work, ignore_errors=True)
        log.info(
            "registered %s v%d at %s (manifest sha256 %s)",
            name,
            version,
            self.artifacts.url(artifact_path),
            manifest_sha[:12],
        )
        return self.get_version(name, version)

    def _allocate(
        self,
        name: str,
        record: dict[str, Any],
        token: str,
        owner: str,
        created: datetime,
        idempotency_key: str | None,
    ) -> ModelVersion | tuple[int, int, str]:
        """Insert this registration's ``pending`` row with the next number: (row id, version, artifact path).
        With ``idempotency_key``: the version already registered with it instead, once any registration with
        it in flight has finished (or its lease ran out)."""
        metrics = record.get("metrics") or {}
        fingerprint = record.get("data_fingerprint") or {}

        def allocate(session: Session) -> tuple[str, Any]:
            if idempotency_key is not None:
                existing = session.scalars(
                    select(VersionRow)
                    .where(VersionRow.name == name, VersionRow.idempotency_key == idempotency_key)
                    .with_for_update()
                ).first()
                if existing is not None:
                    return ("done" if existing.status in VISIBLE else "busy"), existing.version
            latest = session.scalar(select(func.max(VersionRow.version)).where(VersionRow.name == name)) or 0
            row = VersionRow(
                name=name,
                version=latest + 1,
                status=PENDING,
                owner=owner,
                created_at=created,
                heartbeat_at=created,
                idempotency_key=idempotency_key,
                artifact_path=f"{name}/{latest + 1}-{token[:12]}",
                base_model=str(record["base_model"]) if record.get("base_model") is not None else None,
                data_sha256=fingerprint.get("sha256") if isinstance(fingerprint, dict) else None,
                code_revision=str(record["code_revision"])[:100] if record.get("code_revision") else None,
                metrics=metrics,
                evidence=record,
            )
            session.add(row)
            session.flush()  # the unique constraints fire here when another process won
            return "new", (row.id, row.version, row.artifact_path)

        # A registration with the same key in flight: wait for it to finish, or for its lease to run out.
        give_up = time.monotonic() + 2 * self.lease_s + 30
        while True:
            kind, value = self._write(allocate, retry_conflicts=True)
            if kind == "new":
                return value
            if kind == "done":
                log.info(
                    "%s v%d was already registered with key %r; returning it", name, value, idempotency_key
                )
                return self.get_version(name, value)
            if time.monotonic() > give_up:
                raise RegistryError(
                    f"{name} v{value} is still being registered with key {idempotency_key!r} by another process; "
                    "try again later"
                )
            time.sleep(min(1.0, self.lease_s / 8))
            self.cleanup()

    def _mark_ready(
        self, row_id: int, owner: str, manifest_sha: str, entries: dict[str, dict[str, Any]]
    ) -> bool:
        """Turn our pending row ``ready`` (the commit that makes the version visible); False when it is no longer
        ours (removed as abandoned)."""

        def mark_ready(session: Session) -> int:
            result = session.execute(
                update(VersionRow)
                .where(VersionRow.id == row_id, VersionRow.status == PENDING, VersionRow.owner == owner)
                .values(
                    status=READY,
                    ready_at=_now(),
                    manifest_sha256=manifest_sha,
                    size_bytes=sum(entry["size"] for entry in entries.values()),
                    file_count=len(entries),
                )
            )
            return result.rowcount  # type: ignore[attr-defined]

        return self._write(mark_ready) == 1

    def _assemble(
        self,
        bundle: Path,
        files: list[str],
        staged: Path,
        name: str,
        version: int,
        created: datetime,
        record: dict[str, Any],
    ) -> tuple[dict[str, dict[str, Any]], str]:
        """Copy the bundle into the local staging folder while hashing it, add evidence, model card and manifest
        (read-only, fsynced). Returns (manifest entries, the manifest's sha256)."""
        staged.mkdir(parents=True)
        total = sum((bundle / rel).stat().st_size for rel in files)
        log.info("registering %s v%d: copying %d files (%.1f MB)", name, version, len(files), total / 1e6)
        entries: dict[str, dict[str, Any]] = {}
        for rel in files:
            digest, size = copy_and_hash(bundle / rel, staged / rel)
            entries[rel] = {"sha256": digest, "size": size}
            self._stage("copying")

        serving = json.loads((staged / SERVING_SPEC).read_text(encoding="utf-8"))
        write_durably(staged / EVIDENCE_FILE, json.dumps(record, indent=2, sort_keys=True))
        card = render_model_card(
            name, version, created.isoformat(timespec="seconds"), record, serving, entries
        )
        write_durably(staged / MODEL_CARD, card)
        for rel in (EVIDENCE_FILE, MODEL_CARD):
            entries[rel] = {"sha256": file_sha256(staged / rel), "size": (staged / rel).stat().st_size}
            os.chmod(staged / rel, 0o444)
        manifest = {
            "format": 1,
            "name": name,
            "version": version,
            "created_at": created.isoformat(),
            "files": dict(sorted(entries.items())),
        }
        write_durably(staged / MANIFEST, json.dumps(manifest, indent=2))
        os.chmod(staged / MANIFEST, 0o444)
        manifest_sha = file_sha256(staged / MANIFEST)
        fsync_tree(staged)
        self._stage("copied")
        return entries, manifest_sha

    def _remove_files_and_row(self, row_id: int, artifact_path: str) -> bool:
        """Delete a ``removing`` row's stored files, then the row; a row whose files could not be deleted stays
        ``removing`` for cleanup() to try again (an object store may be unreachable for a while)."""
        try:
            self.artifacts.remove(artifact_path)
        except Exception as error:  # noqa: BLE001 - cleanup() retries
            log.warning("could not delete %s (%s); cleanup() will", self.artifacts.url(artifact_path), error)
            return False
        self._delete_removing(row_id)
        return True

    def _settle_failed(self, row_id: int, owner: str) -> str:
        """After a failed registration, read the row again before touching any file. Returns ``ready`` (it was
        committed), ``removing`` (it was pending: now marked for removal by us), ``gone`` (someone else removed
        or is removing it) or ``unknown`` (the database did not answer: leave everything to cleanup())."""

        def settle(session: Session) -> str:
            row = session.scalars(
                select(VersionRow)
                .where(VersionRow.id == row_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).first()
            if row is None or row.owner != owner or row.status == REMOVING:
                return "gone"
            if row.status in VISIBLE:
                return READY
            row.status = REMOVING
            return REMOVING

        try:
            return self._write(settle, attempts=20)
        except Exception as error:  # noqa: BLE001 - the original error is what the caller sees
            log.warning(
                "could not read back registration row %d (%s); cleanup() will settle it", row_id, error
            )
            return "unknown"

    def _delete_removing(self, row_id: int) -> None:
        try:
            self._write(
                lambda s: s.execute(
                    delete(VersionRow).where(VersionRow.id == row_id, VersionRow.status == REMOVING)
                )
            )
        except Exception:  # noqa: BLE001 - cleanup() finishes it
            log.warning("could not delete registration row %d marked for removal; cleanup() will", row_id)

    def _heartbeat(self, row_id: int, owner: str) -> bool:
        """Refresh the lease of our pending row; False when it is no longer ours (removed as abandoned)."""

        def beat(session: Session) -> int:
            result = session.execute(
                update(VersionRow)
                .where(VersionRow.id == row_id, VersionRow.status == PENDING, VersionRow.owner == owner)
                .values(heartbeat_at=_now())
            )
            return result.rowcount  # type: ignore[attr-defined]

        return self._write(beat, attempts=10) == 1

    def cleanup(self, lease_s: float | None = None) -> int:
        """Remove abandoned registrations: pending rows whose heartbeat is older than the lease, rows left
        ``removing``, their folders, and staging folders no live registration owns. Returns how many rows."""
        lease = self.lease_s if lease_s is None else lease_s
        cutoff = _now() - timedelta(seconds=lease)
        staging = self.artifacts.staging
        # List the staging folders before reading the rows: a folder is created after its row is committed,
        # so any folder seen here whose owner is alive has its row in the read below.
        staged = list(staging.iterdir()) if staging.is_dir() else []
        last_beat = func.coalesce(VersionRow.heartbeat_at, VersionRow.created_at)
        with self._read() as session:
            candidates = session.execute(
                select(VersionRow.id, VersionRow.owner).where(
                    (VersionRow.status == REMOVING) | ((VersionRow.status == PENDING) & (last_beat < cutoff))
                )
            ).all()
        removed = 0
        for row_id, owner in candidates:

            def claim(session: Session, row_id: int = row_id) -> VersionRow | None:
                # Conditional on the lease still being expired: a heartbeat that came in meanwhile wins.
                row = session.scalars(
                    select(VersionRow)
                    .where(
                        VersionRow.id == row_id,
                        (VersionRow.status == REMOVING)
                        | ((VersionRow.status == PENDING) & (last_beat < cutoff)),
                    )
                    .with_for_update()
                    .execution_options(populate_existing=True)
                ).first()
                if row is not None:
                    row.status = REMOVING
                return row

            row = self._write(claim)
            if row is None:
                continue
            # The row is `removing`: its owner can no longer turn it ready, so its folders can go.
            shutil.rmtree(staging / _token_of(owner), ignore_errors=True)
            if not self._remove_files_and_row(row_id, row.artifact_path):
                continue
            removed += 1
            log.info("removed abandoned registration of %s v%d (owner %s)", row.name, row.version, owner)

        if staged:
            with self._read() as session:
                live = {
                    _token_of(owner)
                    for owner in session.scalars(select(VersionRow.owner).where(VersionRow.status == PENDING))
                }
            for work in staged:
                if work.name not in live:
                    shutil.rmtree(work, ignore_errors=True)
        return removed

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
        _check_version(version)
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

    def aliases(self, name: str) -> dict[str, int]:
        """alias -> version for one model (empty when it has none)."""
        check_name(name)
        with self._read() as session:
            rows = session.scalars(
                select(AliasRow).where(AliasRow.name == name).order_by(AliasRow.alias)
            ).all()
        return {row.alias: row.version for row in rows}

    def audit_log(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every alias event of ``name`` (oldest first), including refused promotions (``kind='refused'``)."""
        check_name(name)
        with self._read() as session:
            query = select(AliasEventRow).where(AliasEventRow.name == name)
            if alias is not None:
                query = query.where(AliasEventRow.alias == check_name(alias, "alias"))
            rows = session.scalars(query.order_by(AliasEventRow.id)).all()
        return [self._to_move(row) for row in rows]

    def diff(self, name: str, v1: int, v2: int) -> VersionDiff:
        """Metric deltas (v2 - v1) and every evidence field whose value differs between two versions."""
        first, second = self.get_version(name, v1), self.get_version(name, v2)
        metrics: dict[str, tuple[float | None, float | None, float | None]] = {}
        for key in sorted(set(first.metrics) | set(second.metrics)):
            a, b = first.metrics.get(key), second.metrics.get(key)
            delta = b - a if isinstance(a, int | float) and isinstance(b, int | float) else None
            metrics[key] = (a, b, delta)
        flat_a, flat_b = _flatten(first.evidence), _flatten(second.evidence)
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
            row = self._get_row(session, name, _check_version(version), None)
            row.evidence = {**(row.evidence or {}), key: _jsonable(value)}

        self._write(attach)

    def verify(self, model_version: ModelVersion) -> None:
        """Raise ChecksumError (naming model, version and files) unless the folder matches the manifest exactly."""
        root = self._fetch(model_version)
        fix = self.artifacts.fix_hint(model_version.artifact_path or "", model_version.manifest_sha256)
        label = f"{model_version.name} v{model_version.version}"
        verify_folder(root, model_version.manifest_sha256, label, fix)

    # -- aliases -------------------------------------------------------------------------------------------
    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        reason: str,
        actor: str | None = None,
        *,
        decision: GateDecision | dict[str, Any] | None = None,
        kind: str = "set",
        expected_from: Any = _ANY,
    ) -> AliasMove:
        """Point ``alias`` at ``version`` atomically and append the move to the audit log.

        ``expected_from`` (optional) makes the move conditional on the alias still pointing there (a promotion
        decided against one incumbent must not overwrite a concurrent move). Moving to the current holder is a
        no-op (``kind='noop'``, nothing logged).
        """
        check_name(name)
        check_name(alias, "alias")
        _check_version(version)
        actor = actor or _default_actor()
        decision_dict = decision.to_dict() if isinstance(decision, GateDecision) else decision

        def move(session: Session) -> AliasMove:
            # Lock the version row first: archive() takes the same lock, so on Postgres (READ COMMITTED) an
            # archive cannot slip in between this check and the alias write (write skew).
            self._lock_version(session, name, version)
            row = self._get_row(session, name, version, None)
            if row.status == ARCHIVED:
                raise ArchivedVersion(
                    f"{name} v{version} is archived and cannot take alias '{alias}'; pick a live version "
                    f"(`dapt models list {name}`)"
                )
            holder = session.scalars(
                select(AliasRow).where(AliasRow.name == name, AliasRow.alias == alias).with_for_update()
            ).first()
            current = holder.version if holder else None
            if expected_from is not _ANY and current != expected_from:
                raise RegistryError(
                    f"alias '{alias}' of '{name}' moved to v{current} while this move was being decided; try again"
                )
            self._stage("alias-checked")
            now = _now()
            if current == version:
                return AliasMove(
                    None, name, alias, "noop", current, version, reason, actor, now, decision_dict
                )
            if holder is None:
                session.add(AliasRow(name=name, alias=alias, version=version, updated_at=now))
            else:
                holder.version, holder.updated_at = version, now
            event_row = AliasEventRow(
                name=name,
                alias=alias,
                kind=kind,
                from_version=current,
                to_version=version,
                reason=reason or "",
                decision=decision_dict,
                actor=actor,
                created_at=now,
            )
            session.add(event_row)
            session.flush()
            return self._to_move(event_row)

        result = self._write(move, retry_conflicts=True)
        if result.kind != "noop":
            log.info(
                "%s: alias '%s' v%s -> v%d (%s: %s)", name, alias, result.from_version, version, kind, reason
            )
        return result

    def promote(
        self,
        name: str,
        version: int,
        alias: str = "production",
        gate: GateConfig | None = None,
        force_reason: str | None = None,
        actor: str | None = None,
    ) -> GateDecision:
        """Gate ``version`` against the alias's current holder; move the alias if it passed, or if
        ``force_reason`` is given (recorded as kind 'force'). A refusal is logged and returned, not raised
        (wrap with ``GateRefused`` if you want an exception). ``gate=None`` means ``GateConfig()``."""
        if gate is None:
            from models.recipe import GateConfig

            gate = GateConfig()
        if force_reason is not None and not force_reason.strip():
            raise RegistryError("--force needs a reason that says why the gate is overridden")
        check_name(alias, "alias")
        candidate = self.get_version(name, version)
        if candidate.archived:
            raise ArchivedVersion(f"{name} v{version} is archived and cannot take alias '{alias}'")
        holder = self.aliases(name).get(alias)
        incumbent = self.get_version(name, holder) if holder is not None and holder != version else None
        decision = decide(candidate.evidence, incumbent.evidence if incumbent else None, gate)
        actor = actor or _default_actor()
        if holder == version:
            log.info("%s v%d already holds '%s'", name, version, alias)
        elif decision.passed:
            self.set_alias(
                name,
                alias,
                version,
                decision.summary(),
                actor,
                decision=decision,
                kind="promote",
                expected_from=holder,
            )
        elif force_reason is not None:
            self.set_alias(
                name,
                alias,
                version,
                force_reason.strip(),
                actor,
                decision=decision,
                kind="force",
                expected_from=holder,
            )
        else:
            self._log_refusal(name, alias, holder, version, decision, actor)
        return decision

    def _log_refusal(
        self, name: str, alias: str, holder: int | None, version: int, decision: GateDecision, actor: str
    ) -> None:
        def log_it(session: Session) -> None:
            session.add(
                AliasEventRow(
                    name=name,
                    alias=alias,
                    kind="refused",
                    from_version=holder,
                    to_version=version,
                    reason=decision.summary(),
                    decision=decision.to_dict(),
                    actor=actor,
                    created_at=_now(),
                )
            )

        self._write(log_it)
        log.info("%s: gate refused v%d for '%s': %s", name, version, alias, decision.summary())

    def rollback(self, name: str, alias: str = "production", actor: str | None = None) -> AliasMove:
        """Move ``alias`` back to the version it pointed at before its last move (from the audit log)."""
        check_name(name)
        check_name(alias, "alias")
        current = self.aliases(name).get(alias)
        if current is None:
            self.get_version(name)  # ModelNotFound when the model does not exist
            raise AliasNotFound(f"no version of '{name}' has alias '{alias}'; nothing to roll back")
        moves = [move for move in self.audit_log(name, alias) if move.moved]
        if not moves or moves[-1].from_version is None:
            raise RegistryError(
                f"alias '{alias}' of '{name}' has no earlier version to roll back to (v{current} was its first); "
                f"promote another version instead: `dapt models promote {name} <version> --alias {alias}`"
            )
        last = moves[-1]
        target = last.from_version
        assert target is not None
        return self.set_alias(
            name,
            alias,
            target,
            f"rollback of move #{last.id} (v{last.from_version} -> v{last.to_version})",
            actor,
            kind="rollback",
            expected_from=current,
        )

    def archive(self, name: str, version: int) -> ModelVersion:
        """Mark a version archived: it stays loadable by number but can no longer take aliases."""
        check_name(name)
        _check_version(version)

        def do_archive(session: Session) -> None:
            self._lock_version(session, name, version)  # the lock set_alias takes: see there
            row = self._get_row(session, name, version, None)
            held = session.scalars(
                select(AliasRow.alias).where(AliasRow.name == name, AliasRow.version == version)
            ).all()
            self._stage("archive-checked")
            if held:
                raise RegistryError(
                    f"{name} v{version} holds alias {', '.join(repr(a) for a in held)}; move it first "
                    f"(`dapt models promote {name} <version>` or `dapt models rollback {name}`), then archive"
                )
            if row.status != ARCHIVED:
                row.status, row.archived_at = ARCHIVED, _now()

        self._write(do_archive)
        return self.get_version(name, version)


__all__ = [
    "AliasMove",
    "AliasNotFound",
    "ArchivedVersion",
    "BundleError",
    "ChecksumError",
    "GateRefused",
    "InvalidName",
    "ModelNotFound",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "VersionDiff",
    "VersionNotFound",
    "check_name",
]
