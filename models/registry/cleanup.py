"""Removing abandoned registrations: a pending row whose owner stopped refreshing its lease (``heartbeat_at``
older than ``lease_s``), a row left ``removing``, their stored files, and staging folders no live registration
owns. Host names and pids are not trusted to tell a dead owner (two containers can share both): only the lease.

Removal marks the row ``removing`` first, so its owner can no longer turn it ``ready``, then deletes the
folders, then the row.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from models.registry.queries import RegistryQueries
from models.registry.schema import VersionRow
from models.registry.values import PENDING, REMOVING, utc_now

log = logging.getLogger("dapt.registry")


def token_of(owner: str) -> str:
    """The token part of ``<token>@host:pid``: it names the owner's staging folder."""
    return owner.partition("@")[0]


class StaleRegistrationCleanup(RegistryQueries):
    """``cleanup()`` and the removal of one registration's files and row."""

    def cleanup(self, lease_s: float | None = None) -> int:
        """Remove abandoned registrations: pending rows whose heartbeat is older than the lease, rows left
        ``removing``, their folders, and staging folders no live registration owns. Returns how many rows."""
        lease = self.lease_s if lease_s is None else lease_s
        cutoff = utc_now() - timedelta(seconds=lease)
        staging = self.artifacts.staging
        # List the staging folders before reading the rows: a folder is created after its row is committed,
        # so any folder seen here whose owner is alive has its row in the read below.
        staged = list(staging.iterdir()) if staging.is_dir() else []
        last_beat = func.coalesce(VersionRow.heartbeat_at, VersionRow.created_at)
        abandoned = (VersionRow.status == REMOVING) | ((VersionRow.status == PENDING) & (last_beat < cutoff))
        with self._read() as session:
            candidates = session.execute(select(VersionRow.id, VersionRow.owner).where(abandoned)).all()
        removed = 0
        for row_id, owner in candidates:

            def claim(session: Session, row_id: int = row_id) -> VersionRow | None:
                # Conditional on the lease still being expired: a heartbeat that came in meanwhile wins.
                row = session.scalars(
                    select(VersionRow)
                    .where(VersionRow.id == row_id, abandoned)
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
            shutil.rmtree(staging / token_of(owner), ignore_errors=True)
            if not self._remove_files_and_row(row_id, row.artifact_path):
                continue
            removed += 1
            log.info("removed abandoned registration of %s v%d (owner %s)", row.name, row.version, owner)

        if staged:
            with self._read() as session:
                live = {
                    token_of(owner)
                    for owner in session.scalars(select(VersionRow.owner).where(VersionRow.status == PENDING))
                }
            for work in staged:
                if work.name not in live:
                    shutil.rmtree(work, ignore_errors=True)
        return removed

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

    def _delete_removing(self, row_id: int) -> None:
        try:
            self._write(
                lambda s: s.execute(
                    delete(VersionRow).where(VersionRow.id == row_id, VersionRow.status == REMOVING)
                )
            )
        except Exception:  # noqa: BLE001 - cleanup() finishes it
            log.warning("could not delete registration row %d marked for removal; cleanup() will", row_id)
