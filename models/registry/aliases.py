"""Aliases and their audit log: point an alias at a version (set, promote through the gate, force, roll back),
archive a version, and read who moved which alias when and why.

Every move appends an ``alias_events`` row in the same transaction as the alias write; refused promotions are
logged too. On Postgres, ``set_alias`` and ``archive`` lock the version row (``SELECT ... FOR UPDATE``), so an
alias can never end up on an archived version.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.registry.errors import AliasNotFound, ArchivedVersion, RegistryError
from models.registry.gate import GateDecision, decide
from models.registry.queries import RegistryQueries
from models.registry.schema import AliasEventRow, AliasRow
from models.registry.values import (
    ARCHIVED,
    AliasMove,
    ModelVersion,
    as_utc,
    check_name,
    check_version,
    default_actor,
    utc_now,
)

if TYPE_CHECKING:
    from models.recipe import GateConfig

log = logging.getLogger("dapt.registry")

_ANY = object()  # "no expectation" marker for set_alias(expected_from=...)


def move_from_row(row: AliasEventRow) -> AliasMove:
    return AliasMove(
        id=row.id,
        name=row.name,
        alias=row.alias,
        kind=row.kind,
        from_version=row.from_version,
        to_version=row.to_version,
        reason=row.reason,
        actor=row.actor,
        created_at=as_utc(row.created_at),
        decision=row.decision,
    )


class AliasOperations(RegistryQueries):
    """Alias reads, moves and the audit log; archiving a version."""

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
        return [move_from_row(row) for row in rows]

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
        check_version(version)
        actor = actor or default_actor()
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
            self.on_step("alias-checked")
            now = utc_now()
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
            return move_from_row(event_row)

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
        actor = actor or default_actor()
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
                    created_at=utc_now(),
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
        check_version(version)

        def do_archive(session: Session) -> None:
            self._lock_version(session, name, version)  # the lock set_alias takes: see there
            row = self._get_row(session, name, version, None)
            held = session.scalars(
                select(AliasRow.alias).where(AliasRow.name == name, AliasRow.version == version)
            ).all()
            self.on_step("archive-checked")
            if held:
                raise RegistryError(
                    f"{name} v{version} holds alias {', '.join(repr(a) for a in held)}; move it first "
                    f"(`dapt models promote {name} <version>` or `dapt models rollback {name}`), then archive"
                )
            if row.status != ARCHIVED:
                row.status, row.archived_at = ARCHIVED, utc_now()

        self._write(do_archive)
        return self.get_version(name, version)
