"""Alias history: which version held each alias, from when to when, and who or what moved it there and why.

    from models.registry.history import alias_history
    for tenure in alias_history(Registry(), "finsent", alias="production"):
        print(tenure.alias, tenure.version, tenure.since, tenure.until, tenure.how, tenure.reason)

Built from the registry's append-only audit log (``alias_events``): every move starts a tenure and ends the
alias's previous one. Refused promotions moved nothing and are not tenures (``dapt models audit`` lists them).
Standard library only, besides the registry it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.registry.store import AliasMove, Registry

# What moved the alias, in words, by event kind.
HOW = {
    "set": "manual",
    "force": "manual (gate overridden)",
    "promote": "gate",
    "rollback": "rollback",
    "auto-rollback": "automatic rollback",
}


@dataclass(frozen=True)
class Tenure:
    """One stretch of time during which ``version`` held ``alias``; ``until`` is None while it still does."""

    alias: str
    version: int
    since: datetime
    until: datetime | None
    kind: str  # the event kind that moved the alias here (see HOW)
    how: str
    actor: str
    reason: str
    event_id: int | None
    previous_version: int | None
    ended_by: str | None = None  # how the next move was made (None while current)
    ended_reason: str | None = None

    @property
    def current(self) -> bool:
        return self.until is None

    def held_s(self, now: datetime) -> float:
        return ((self.until or now) - self.since).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "since": self.since.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "current": self.current,
            "kind": self.kind,
            "how": self.how,
            "actor": self.actor,
            "reason": self.reason,
            "event_id": self.event_id,
            "previous_version": self.previous_version,
            "ended_by": self.ended_by,
            "ended_reason": self.ended_reason,
        }


def tenures(moves: list[AliasMove]) -> list[Tenure]:
    """Tenures from audit-log entries (oldest first, as ``Registry.audit_log`` returns them), oldest first."""
    out: list[Tenure] = []
    open_by_alias: dict[str, int] = {}  # alias -> index in ``out`` of its current tenure
    for move in moves:
        if not move.moved:
            continue
        previous = open_by_alias.get(move.alias)
        if previous is not None:
            out[previous] = replace(
                out[previous],
                until=move.created_at,
                ended_by=HOW.get(move.kind, move.kind),
                ended_reason=move.reason,
            )
        open_by_alias[move.alias] = len(out)
        out.append(
            Tenure(
                alias=move.alias,
                version=move.to_version,
                since=move.created_at,
                until=None,
                kind=move.kind,
                how=HOW.get(move.kind, move.kind),
                actor=move.actor,
                reason=move.reason,
                event_id=move.id,
                previous_version=move.from_version,
            )
        )
    return out


def alias_history(registry: Registry, name: str, alias: str | None = None) -> list[Tenure]:
    """The tenures of ``name``'s aliases (all, or only ``alias``), oldest first."""
    return tenures(registry.audit_log(name, alias))
