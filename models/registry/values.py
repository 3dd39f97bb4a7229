"""What the registry hands out (``ModelVersion``, ``AliasMove``, ``VersionDiff``) and the checks and
conversions on what it takes in (names, version numbers, idempotency keys, evidence as plain JSON).

Standard library only: the serving process imports the registry.
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models.registry.errors import InvalidName, RegistryError

# Same rule as models.recipe.MODEL_NAME_PATTERN (a test pins the equality); copied so that importing the
# registry does not import pydantic/yaml. Names become folder names: no dots, slashes or upper case.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_IDEMPOTENCY_KEY = 200

PENDING, READY, ARCHIVED, REMOVING = "pending", "ready", "archived", "removing"
VISIBLE = (READY, ARCHIVED)

ATTACHABLE_EVIDENCE = ("shadow",)  # evidence a running service may add to a version
# Events that moved the alias ("refused" did not). "auto-rollback": a watcher (services/rollback_watch.py) moved
# it back after the new version regressed on the live service; its reason says what regressed.
MOVE_KINDS = ("set", "promote", "force", "rollback", "auto-rollback")


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


# ----------------------------------------------------------------------------------------------- checks
def check_name(value: str, what: str = "model name") -> str:
    """Return ``value`` if it is a valid model/alias name, else raise InvalidName saying the rule."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidName(
            f"{value!r} is not a valid {what}: use 1-63 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit (it becomes a folder name)"
        )
    return value


def check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"version must be a positive integer, got {version!r}")
    return version


def check_idempotency_key(key: Any) -> None:
    if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY):
        raise RegistryError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} characters, got {key!r}"
        )


# ----------------------------------------------------------------------------------------------- conversions
def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    # SQLite drops the zone; everything is written in UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def default_actor() -> str:
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


def plain_json(value: Any) -> Any:
    """Evidence as plain JSON: Paths and unknown objects as strings, numpy scalars as numbers, NaN/inf as None
    (Postgres JSON rejects NaN)."""
    if isinstance(value, dict):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return plain_json(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def evidence_record(evidence: Any) -> dict[str, Any]:
    """An Evidence, or its record (a dict) as stored, as plain JSON whose metrics are numbers."""
    supplied: Any = evidence.record() if hasattr(evidence, "record") else evidence
    if not isinstance(supplied, dict):
        raise RegistryError(f"evidence must be an Evidence or a dict, got {type(supplied).__name__}")
    record: dict[str, Any] = plain_json(supplied)
    metrics = record.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise RegistryError("evidence['metrics'] must be a dict of metric name -> number")
    for key, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RegistryError(f"evidence['metrics'][{key!r}] must be a number, got {value!r}")
    return record


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted paths -> leaf values (an empty dict is a leaf)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}
