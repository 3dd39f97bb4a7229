"""The registry's errors, shared by the database side (the store modules) and the artifact side (artifacts.py).

``models.registry.store`` re-exports them: import them from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.registry.gate import GateDecision


class RegistryError(Exception):
    """Base class: a registry operation that cannot be done; the message says why and what to do."""


class BundleError(RegistryError):
    """The folder given to ``register`` is not a usable serving bundle."""


class ChecksumError(RegistryError):
    """A registered version's files differ from its manifest (changed byte, missing or unexpected file)."""


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
