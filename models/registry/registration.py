"""Registering a version: allocate the number, assemble and hash the bundle in a staging folder, publish it,
then commit the row ``ready`` (the one step that makes the version visible).

* The number is allocated in a transaction guarded by the unique constraint (name, version) and retried on
  conflict; every row gets its own folder (``<name>/<version>-<token>``), so no two registrations ever write or
  delete the same files.
* Files are copied into a staging folder under the artifact root, fsynced, published (a rename on disk; an
  upload, manifest last, to an object store), and only then does the row turn ``ready``.
* While it works, the registering call refreshes its row's lease (``heartbeat_at``) every ``lease_s / 4``
  seconds; cleanup.py removes a pending row only once the lease has run out.
* A failed registration re-reads its row before touching any file: when the commit to ``ready`` went through
  (and only the answer was lost) it returns the version instead.
* ``idempotency_key``: a second call with the same name and key returns the version the first one registered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.hashing import file_sha256
from models.registry.artifacts import (
    EVIDENCE_FILE,
    MODEL_CARD,
    copy_and_hash,
    fsync_tree,
    scan_bundle,
    write_durably,
)
from models.registry.bundle import MANIFEST, SERVING_SPEC
from models.registry.cleanup import StaleRegistrationCleanup
from models.registry.errors import RegistryError
from models.registry.modelcard import render_model_card
from models.registry.schema import VersionRow
from models.registry.values import (
    PENDING,
    READY,
    REMOVING,
    VISIBLE,
    ModelVersion,
    check_idempotency_key,
    check_name,
    evidence_record,
    utc_now,
)

if TYPE_CHECKING:
    from models.registry.evidence import Evidence

log = logging.getLogger("dapt.registry")

Manifest = dict[str, dict[str, Any]]  # relative path -> {"sha256": ..., "size": ...}


def _new_owner() -> tuple[str, str]:
    """(token, owner): the token names this call's folders; host and pid are only for people reading the row."""
    token = uuid.uuid4().hex
    return token, f"{token}@{socket.gethostname()}:{os.getpid()}"


class _Heartbeat:
    """Calls ``beat`` every ``interval`` seconds from a background thread until stopped, or until ``beat``
    answers False (the lease is lost: the registration will fail when it tries to turn its row ready)."""

    def __init__(self, beat: Callable[[], bool], interval: float, row_id: int):
        self._beat, self._interval, self._row_id = beat, interval, row_id
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
        while not self._stop.wait(self._interval):
            try:
                if not self._beat():
                    return  # removed as abandoned: the registration will fail at mark_ready
            except Exception as error:  # noqa: BLE001 - keep beating; a lost lease shows at mark_ready
                log.warning("registry heartbeat of row %d failed: %s", self._row_id, error)


class VersionRegistration(StaleRegistrationCleanup):
    """``register()`` and its steps."""

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
        check_idempotency_key(idempotency_key)
        bundle = Path(bundle_dir).expanduser().resolve()
        files = scan_bundle(bundle)
        record = evidence_record(evidence)

        self.cleanup()
        token, owner = _new_owner()
        created = utc_now()
        allocated = self._allocate(name, record, token, owner, created, idempotency_key)
        if isinstance(allocated, ModelVersion):
            return allocated
        row_id, version, artifact_path = allocated
        work = self.artifacts.staging / token
        heartbeat = _Heartbeat(
            lambda: self._refresh_lease(row_id, owner), interval=self.lease_s / 4, row_id=row_id
        )
        heartbeat.start()
        try:
            entries, manifest_sha = self._assemble(
                bundle, files, work / "bundle", name, version, created, record
            )
            self.artifacts.publish(work / "bundle", artifact_path, self.on_step)
            self.on_step("moved")
            if not self._mark_ready(row_id, owner, manifest_sha, entries):
                raise RegistryError(
                    f"registration of {name} v{version} was removed as abandoned by another process (no "
                    f"heartbeat for {self.lease_s:.0f} s) before it finished; register again"
                )
            self.on_step("marked-ready")
        except BaseException as error:
            heartbeat.stop()
            self._settle_or_raise(error, row_id, owner, work, artifact_path, f"{name} v{version}")
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

    def _settle_or_raise(
        self, error: BaseException, row_id: int, owner: str, work: Path, artifact_path: str, label: str
    ) -> None:
        """After ``register`` failed midway: return when the version was committed anyway (only the answer was
        lost), else remove what this call owns (when it still owns it) and re-raise ``error``."""
        state = self._settle_failed(row_id, owner)
        if state == READY and isinstance(error, Exception):
            # The commit went through and only its answer was lost: the version is complete.
            log.warning("%s: %s after the version was committed; it is registered", label, error)
            return
        if state in (REMOVING, "gone"):
            shutil.rmtree(work, ignore_errors=True)
            if state == REMOVING:
                self._remove_files_and_row(row_id, artifact_path)
        # else ready but interrupted, or unknown: leave the files; cleanup() decides by the row later
        raise error

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

    def _assemble(
        self,
        bundle: Path,
        files: list[str],
        staged: Path,
        name: str,
        version: int,
        created: datetime,
        record: dict[str, Any],
    ) -> tuple[Manifest, str]:
        """Copy the bundle into the local staging folder while hashing it, add evidence, model card and manifest
        (read-only, fsynced). Returns (manifest entries, the manifest's sha256)."""
        staged.mkdir(parents=True)
        total = sum((bundle / rel).stat().st_size for rel in files)
        log.info("registering %s v%d: copying %d files (%.1f MB)", name, version, len(files), total / 1e6)
        entries: Manifest = {}
        for rel in files:
            digest, size = copy_and_hash(bundle / rel, staged / rel)
            entries[rel] = {"sha256": digest, "size": size}
            self.on_step("copying")

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
        self.on_step("copied")
        return entries, manifest_sha

    def _mark_ready(self, row_id: int, owner: str, manifest_sha: str, entries: Manifest) -> bool:
        """Turn our pending row ``ready`` (the commit that makes the version visible); False when it is no longer
        ours (removed as abandoned)."""

        def mark_ready(session: Session) -> int:
            result = session.execute(
                update(VersionRow)
                .where(VersionRow.id == row_id, VersionRow.status == PENDING, VersionRow.owner == owner)
                .values(
                    status=READY,
                    ready_at=utc_now(),
                    manifest_sha256=manifest_sha,
                    size_bytes=sum(entry["size"] for entry in entries.values()),
                    file_count=len(entries),
                )
            )
            return result.rowcount  # type: ignore[attr-defined]

        return self._write(mark_ready) == 1

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

    def _refresh_lease(self, row_id: int, owner: str) -> bool:
        """Refresh the lease of our pending row; False when it is no longer ours (removed as abandoned)."""

        def beat(session: Session) -> int:
            result = session.execute(
                update(VersionRow)
                .where(VersionRow.id == row_id, VersionRow.status == PENDING, VersionRow.owner == owner)
                .values(heartbeat_at=utc_now())
            )
            return result.rowcount  # type: ignore[attr-defined]

        return self._write(beat, attempts=10) == 1
