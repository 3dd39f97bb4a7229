"""The registry's base errors, shared by the database side (store.py) and the artifact side (artifacts.py).

``models.registry.store`` re-exports them: import them from there.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: a registry operation that cannot be done; the message says why and what to do."""


class BundleError(RegistryError):
    """The folder given to ``register`` is not a usable serving bundle."""


class ChecksumError(RegistryError):
    """A registered version's files differ from its manifest (changed byte, missing or unexpected file)."""
