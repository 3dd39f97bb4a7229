"""The model registry: immutable numbered versions with sha256 manifests and evidence, and aliases moved by gates.

What it stores
--------------
* Database (SQLAlchemy 2.0; SQLite under DAPT_HOME by default, Postgres by URL, same schema, tables created on
  first use): ``versions`` (one row per version: status, metrics and evidence as JSON, manifest digest),
  ``aliases`` (name, alias -> version) and ``alias_events`` (the append-only audit log of every alias move,
  with its reason, gate decision, actor and time; refused promotions are logged too).
* Artifact store: ``<artifact_root>/<name>/<version>/`` holds a copy of the serving bundle (models/bundle.py)
  plus ``manifest.json`` (sha256 + size of every file), ``evidence.json`` and a generated model card ``README.md``.

Guarantees
----------
* Versions are numbered per name (1, 2, 3, ...) and never change once registered (files are made read-only
  and verified against the manifest on every load; the manifest's own digest lives in the database).
* Registration is atomic and safe under concurrency: the number is allocated in a transaction guarded by the
  unique constraint (name, version) and retried on conflict; files are copied into a staging folder under the
  artifact root and renamed into place; the row turns ``ready`` only after that. A process killed midway
  leaves a ``pending`` row and a staging folder that nobody sees (list/get read ``ready``/``archived`` rows
  only); :meth:`Registry.cleanup` (run by every registration) removes them once their owner process is dead.
  SQLite runs in WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` write transactions, so concurrent
  writer processes queue instead of failing.
* Only safetensors and ONNX weights are ever loaded: bundles with pickle-based files (``*.bin``, ``*.pt``,
  ``*.pth``, ``*.pkl``, ``*.pickle``, ``*.ckpt``, ``*.joblib``) are refused at registration and at load.

Object storage
--------------
Artifacts live on local disk (or a shared mount). Object storage would plug in through fsspec: keep the
database as is, make ``artifact_root`` a URL (``s3://bucket/dapt``), replace the copy/rename/hash helpers
(``_copy_and_hash``, ``os.replace``, ``_verify_files``) with ``fsspec.filesystem(protocol)`` calls (upload to
``<root>/.staging/<uuid>/`` then copy to ``<root>/<name>/<version>/`` — object stores have no atomic rename,
which is fine because visibility is decided by the row's ``ready`` status, not by the folder), and have
``load_path`` download into a local cache folder keyed by the manifest digest before verifying it.

Usage::

    from models.registry import Registry
    registry = Registry()                                   # dapt.settings URLs
    mv = registry.register("finsent", bundle_dir, evidence)  # -> ModelVersion(version=1, ...)
    registry.promote("finsent", mv.version)                 # -> GateDecision; moves `production` if passed
    path = registry.load_path("finsent", alias="production")  # verified bundle folder

Import cost: standard library + SQLAlchemy only (the serving process imports this module).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from models.bundle import MANIFEST, ONNX_DIR, PYTORCH_DIR, SERVING_SPEC, TOKENIZER_DIR
from models.gate import GateDecision, decide
from models.modelcard import render_model_card

if TYPE_CHECKING:
    from models.recipe import GateConfig

log = logging.getLogger("dapt.registry")

# Same rule as models.recipe.MODEL_NAME_PATTERN (a test pins the equality); copied so that importing the
# registry does not import pydantic/yaml. Names become folder names: no dots, slashes or upper case.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
EVIDENCE_FILE = "evidence.json"
MODEL_CARD = "README.md"
REGISTRY_FILES = frozenset({MANIFEST, EVIDENCE_FILE, MODEL_CARD})  # written by the registry, never copied
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
STRICT_DIRS = (ONNX_DIR, TOKENIZER_DIR, PYTORCH_DIR)  # an unexpected file here could be loaded: refuse it
STAGING_DIR = ".staging"
DEFAULT_STALE_AFTER_S = 24 * 3600  # pending work of a process on another host counts as dead after this
_TEST_PAUSE_ENV = (
    "DAPT_REGISTRY_TEST_PAUSE"  # "copy:SECONDS" (after each file) or "ready:SECONDS"; tests only
)
_CHUNK = 1 << 20

PENDING, READY, ARCHIVED = "pending", "ready", "archived"
VISIBLE = (READY, ARCHIVED)


# ----------------------------------------------------------------------------------------------- errors
class RegistryError(Exception):
    """Base class: a registry operation that cannot be done; the message says why and what to do."""


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


class BundleError(RegistryError):
    """The folder given to ``register`` is not a usable serving bundle."""


class ChecksumError(RegistryError):
    """A registered version's files differ from its manifest (changed byte, missing or unexpected file)."""


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
    __table_args__ = (UniqueConstraint("name", "version", name="uq_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | ready | archived
    owner: Mapped[str] = mapped_column(String(300))  # host:pid of the registering process (stale detection)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    artifact_path: Mapped[str] = mapped_column(String(200))  # relative to the artifact root: <name>/<version>
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
    kind: Mapped[str] = mapped_column(String(16))  # set | promote | force | rollback | refused
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    decision: Mapped[dict | None] = mapped_column(_JSON, nullable=True)
    actor: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


_ANY = object()  # "no expectation" marker for set_alias(expected_from=...)
MOVE_KINDS = ("set", "promote", "force", "rollback")  # events that moved the alias ("refused" did not)


# ----------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class ModelVersion:
    """One registered version as the registry sees it. ``path`` is the bundle folder in the artifact store."""

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
    kind: str  # set | promote | force | rollback | refused | noop
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


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _default_actor() -> str:
    if os.environ.get("DAPT_ACTOR"):
        return os.environ["DAPT_ACTOR"]
    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but unreaped child is a zombie: dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner_dead(owner: str, started: datetime | None, stale_after_s: float) -> bool:
    if started is None or (_now() - _utc(started)).total_seconds() > stale_after_s:
        return True  # also covers a reused pid on this host
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


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


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _test_pause(stage: str) -> None:
    # Lets tests kill a registration at a known point; unset in real use.
    spec = os.environ.get(_TEST_PAUSE_ENV, "")
    if spec.partition(":")[0] == stage:
        time.sleep(float(spec.partition(":")[2] or 0))


def _pickle_files(paths: Iterable[str]) -> list[str]:
    return sorted(p for p in paths if p.lower().endswith(PICKLE_SUFFIXES))


def _scan_bundle(bundle: Path) -> list[str]:
    """Relative POSIX paths of the bundle's files to copy; refuses non-bundles and pickle-based files."""
    if not bundle.is_dir():
        raise BundleError(f"bundle folder {bundle} does not exist; pass the export stage's bundle directory")
    if not (bundle / SERVING_SPEC).is_file():
        raise BundleError(
            f"{bundle} is not a serving bundle: {SERVING_SPEC} is missing (see models/bundle.py for the layout)"
        )
    files = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if path.is_symlink():
            raise BundleError(f"{bundle}: {rel} is a symbolic link; bundles must hold real files only")
        if path.is_file() and rel not in REGISTRY_FILES:
            files.append(rel)
    pickles = _pickle_files(files)
    if pickles:
        raise BundleError(
            f"{bundle} contains pickle-based files the project never loads: {', '.join(pickles)}. "
            "Keep weights as safetensors/ONNX only and delete these files (e.g. training_args.bin) before registering"
        )
    return files


def _copy_and_hash(source: Path, target: Path) -> tuple[str, int]:
    """Copy one file while hashing it; the copy is read-only (registered files never change)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    os.chmod(target, 0o444)
    return digest.hexdigest(), size


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
        cursor.execute("PRAGMA synchronous = NORMAL")
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


# ----------------------------------------------------------------------------------------------- registry
class Registry:
    """Versions, aliases and the audit log in one SQL database; bundles in the artifact store.

    ``Registry()`` uses ``dapt.settings.registry_url()`` and ``dapt.settings.artifact_root()``. Nothing touches
    disk or the database until the first call (which creates the tables).
    """

    def __init__(
        self,
        url: str | None = None,
        artifact_root: str | Path | None = None,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ):
        from dapt import settings

        self.url = url or settings.registry_url()
        self.artifact_root = Path(artifact_root or settings.artifact_root()).expanduser().resolve()
        self.stale_after_s = stale_after_s
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
                return
            except (IntegrityError, OperationalError) as error:
                if attempt == 19 or (isinstance(error, OperationalError) and not _retryable(error)):
                    raise RegistryError(
                        f"cannot create the registry schema in {engine.url!r}: {error.orig}"
                    ) from error
                time.sleep(0.05 * (attempt + 1))

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

    def _version_path(self, name: str, version: int) -> Path:
        return self.artifact_root / name / str(version)

    def _to_model_version(self, row: VersionRow, aliases: list[str]) -> ModelVersion:
        return ModelVersion(
            name=row.name,
            version=row.version,
            status=row.status,
            created_at=_utc(row.created_at),
            path=self.artifact_root / row.artifact_path,
            metrics=dict(row.metrics or {}),
            evidence=dict(row.evidence or {}),
            aliases=sorted(aliases),
            manifest_sha256=row.manifest_sha256,
            size_bytes=row.size_bytes,
            file_count=row.file_count,
            base_model=row.base_model,
            data_sha256=row.data_sha256,
            code_revision=row.code_revision,
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
    def register(self, name: str, bundle_dir: str | Path, evidence: dict[str, Any]) -> ModelVersion:
        """Copy ``bundle_dir`` into the artifact store as the next version of ``name``, with manifest, evidence
        and model card. Returns the new ``ready`` version. Safe to call from many processes at once."""
        check_name(name)
        bundle = Path(bundle_dir).expanduser().resolve()
        files = _scan_bundle(bundle)
        if not isinstance(evidence, dict):
            raise RegistryError(f"evidence must be a dict, got {type(evidence).__name__}")
        evidence = _jsonable(evidence)
        metrics = evidence.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise RegistryError("evidence['metrics'] must be a dict of metric name -> number")
        for key, value in metrics.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise RegistryError(f"evidence['metrics'][{key!r}] must be a number, got {value!r}")
        fingerprint = evidence.get("data_fingerprint") or {}

        self.cleanup()
        created = _now()

        def allocate(session: Session) -> tuple[int, int]:
            latest = session.scalar(select(func.max(VersionRow.version)).where(VersionRow.name == name)) or 0
            row = VersionRow(
                name=name,
                version=latest + 1,
                status=PENDING,
                owner=_owner(),
                created_at=created,
                artifact_path=f"{name}/{latest + 1}",
                base_model=str(evidence["base_model"]) if evidence.get("base_model") is not None else None,
                data_sha256=fingerprint.get("sha256") if isinstance(fingerprint, dict) else None,
                code_revision=str(evidence["code_revision"])[:100] if evidence.get("code_revision") else None,
                metrics=metrics,
                evidence=evidence,
            )
            session.add(row)
            session.flush()  # the unique (name, version) constraint fires here when another process won
            return row.id, row.version

        row_id, version = self._write(allocate, retry_conflicts=True)
        final = self._version_path(name, version)
        work = self.artifact_root / STAGING_DIR / uuid.uuid4().hex
        staged = work / "bundle"
        moved = False
        try:
            staged.mkdir(parents=True)
            (work / "owner.json").write_text(
                json.dumps(
                    {"owner": _owner(), "created_at": created.isoformat(), "name": name, "version": version}
                )
            )
            total = sum((bundle / rel).stat().st_size for rel in files)
            log.info("registering %s v%d: copying %d files (%.1f MB)", name, version, len(files), total / 1e6)
            entries: dict[str, dict[str, Any]] = {}
            for rel in files:
                digest, size = _copy_and_hash(bundle / rel, staged / rel)
                entries[rel] = {"sha256": digest, "size": size}
                _test_pause("copy")

            serving = json.loads((staged / SERVING_SPEC).read_text(encoding="utf-8"))
            (staged / EVIDENCE_FILE).write_text(
                json.dumps(evidence, indent=2, sort_keys=True), encoding="utf-8"
            )
            card = render_model_card(
                name, version, created.isoformat(timespec="seconds"), evidence, serving, entries
            )
            (staged / MODEL_CARD).write_text(card, encoding="utf-8")
            for rel in (EVIDENCE_FILE, MODEL_CARD):
                entries[rel] = {"sha256": _sha256(staged / rel), "size": (staged / rel).stat().st_size}
                os.chmod(staged / rel, 0o444)
            manifest = {
                "format": 1,
                "name": name,
                "version": version,
                "created_at": created.isoformat(),
                "files": dict(sorted(entries.items())),
            }
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.chmod(staged / MANIFEST, 0o444)
            manifest_sha = _sha256(staged / MANIFEST)

            # We hold the only row for (name, version), so anything at `final` is debris of a killed registration.
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            moved = True
            _test_pause("ready")

            def mark_ready(session: Session) -> int:
                result = session.execute(
                    update(VersionRow)
                    .where(VersionRow.id == row_id, VersionRow.status == PENDING)
                    .values(
                        status=READY,
                        ready_at=_now(),
                        manifest_sha256=manifest_sha,
                        size_bytes=sum(entry["size"] for entry in entries.values()),
                        file_count=len(entries),
                    )
                )
                return result.rowcount  # type: ignore[attr-defined]

            if self._write(mark_ready) != 1:
                raise RegistryError(
                    f"registration of {name} v{version} was cleaned up as stale by another process before it "
                    "finished; register again"
                )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if moved:
                shutil.rmtree(final, ignore_errors=True)
            try:
                self._write(
                    lambda s: s.execute(
                        delete(VersionRow).where(VersionRow.id == row_id, VersionRow.status == PENDING)
                    )
                )
            except Exception:  # cleanup() removes the row later
                log.warning("could not remove pending row of %s v%d; cleanup() will", name, version)
            raise
        shutil.rmtree(work, ignore_errors=True)
        log.info("registered %s v%d at %s (manifest sha256 %s)", name, version, final, manifest_sha[:12])
        return self.get_version(name, version)

    def cleanup(self, stale_after_s: float | None = None) -> int:
        """Remove pending rows and staging folders whose registering process is gone. Returns how many.

        A process on this host counts as gone when its pid is dead; one on another host after ``stale_after_s``.
        """
        stale_after = self.stale_after_s if stale_after_s is None else stale_after_s
        removed = 0
        with self._read() as session:
            pending = session.execute(
                select(
                    VersionRow.id,
                    VersionRow.name,
                    VersionRow.version,
                    VersionRow.owner,
                    VersionRow.created_at,
                ).where(VersionRow.status == PENDING)
            ).all()
        for row_id, name, version, owner, created in pending:
            if not _owner_dead(owner, created, stale_after):
                continue
            # Folder first, then row: while the pending row exists nobody else can take this version number.
            shutil.rmtree(self._version_path(name, version), ignore_errors=True)
            statement = delete(VersionRow).where(VersionRow.id == row_id, VersionRow.status == PENDING)

            def remove_row(session: Session, statement: Any = statement) -> int:
                return session.execute(statement).rowcount  # type: ignore[attr-defined]

            deleted = self._write(remove_row)
            if deleted:
                removed += 1
                log.info("removed unfinished registration of %s v%d (owner %s is gone)", name, version, owner)

        staging = self.artifact_root / STAGING_DIR
        if staging.is_dir():
            for work in staging.iterdir():
                try:
                    info = json.loads((work / "owner.json").read_text())
                    dead = _owner_dead(info["owner"], datetime.fromisoformat(info["created_at"]), stale_after)
                except (
                    OSError,
                    ValueError,
                    KeyError,
                ):  # killed before owner.json was written, or just removed
                    try:
                        dead = time.time() - work.stat().st_mtime > 600
                    except OSError:
                        continue
                if dead:
                    shutil.rmtree(work, ignore_errors=True)
                    removed += 1
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
        """The bundle folder of a version (by number, alias, or newest), verified against its manifest."""
        model_version = self.get_version(name, version, alias)
        if verify:
            self.verify(model_version)
        elif not model_version.path.is_dir():
            raise ChecksumError(f"{name} v{model_version.version}: folder {model_version.path} is missing")
        return model_version.path

    def verify(self, model_version: ModelVersion) -> None:
        """Raise ChecksumError (naming model, version and files) unless the folder matches the manifest exactly."""
        label = f"{model_version.name} v{model_version.version}"
        root = model_version.path
        fix = "re-register the bundle from its run, or restore the folder from a backup"
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise ChecksumError(f"{label}: {MANIFEST} is missing in {root}; {fix}")
        if model_version.manifest_sha256 and _sha256(manifest_path) != model_version.manifest_sha256:
            raise ChecksumError(
                f"{label}: {MANIFEST} was modified (its sha256 differs from the registry's); {fix}"
            )
        try:
            expected: dict[str, dict[str, Any]] = json.loads(manifest_path.read_text(encoding="utf-8"))[
                "files"
            ]
        except (ValueError, KeyError) as error:
            raise ChecksumError(f"{label}: {MANIFEST} is unreadable ({error}); {fix}") from error

        problems: list[str] = []
        for rel, entry in sorted(expected.items()):
            path = root / rel
            if not path.is_file():
                problems.append(f"{rel} is missing")
            elif path.stat().st_size != entry["size"]:
                problems.append(f"{rel} changed size ({entry['size']} -> {path.stat().st_size} bytes)")
            elif _sha256(path) != entry["sha256"]:
                problems.append(f"{rel} changed (sha256 differs from the manifest)")
        present = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()]
        for rel in sorted(present):
            if rel in expected or rel == MANIFEST:
                continue
            if rel.split("/", 1)[0] in STRICT_DIRS or rel.lower().endswith(PICKLE_SUFFIXES):
                problems.append(f"{rel} is an unexpected file (not in the manifest)")
        if problems:
            raise ChecksumError(f"{label} failed verification at {root}: {'; '.join(problems)}; {fix}")

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
            row = self._get_row(session, name, version, None)
            held = session.scalars(
                select(AliasRow.alias).where(AliasRow.name == name, AliasRow.version == version)
            ).all()
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
