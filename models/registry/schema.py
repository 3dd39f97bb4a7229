"""The registry's database: its three tables, the engine (SQLite tuned for concurrent writers, or Postgres) and
creating or upgrading the schema on first use.

Tables: ``versions`` (one row per version: status, metrics and evidence as JSON, manifest digest), ``aliases``
(name, alias -> version) and ``alias_events`` (the append-only audit log of every alias move, with its reason,
gate decision, actor and time; refused promotions are logged too). SQLAlchemy only.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

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
    event,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from models.registry.errors import RegistryError
from models.registry.values import MAX_IDEMPOTENCY_KEY


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


# ----------------------------------------------------------------------------------------------- engine
def make_engine(url: str) -> Engine:
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


def is_retryable(error: DBAPIError) -> bool:
    """A lock timeout, deadlock or serialization failure: the same transaction may succeed when run again."""
    message = str(error.orig).lower()
    return any(
        word in message for word in ("locked", "busy", "deadlock", "serializ", "could not obtain lock")
    )


def create_schema(engine: Engine) -> None:
    # Several processes may create the schema at once: SQLite serializes on BEGIN IMMEDIATE, Postgres on an
    # advisory lock held for the transaction.
    for attempt in range(20):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(742001)"))
                Base.metadata.create_all(connection)
                _upgrade_schema(connection)
            return
        except (IntegrityError, OperationalError) as error:
            if attempt == 19 or (isinstance(error, OperationalError) and not is_retryable(error)):
                raise RegistryError(
                    f"cannot create the registry schema in {engine.url!r}: {error.orig}"
                ) from error
            time.sleep(0.05 * (attempt + 1))


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
