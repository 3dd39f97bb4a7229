"""The model registry: immutable numbered versions with sha256 manifests and evidence, and aliases moved by gates.

What it stores
--------------
* Database (SQLAlchemy 2.0; SQLite under DAPT_HOME by default, Postgres by URL, same schema, tables created on
  first use): ``versions``, ``aliases`` and the append-only audit log ``alias_events`` (schema.py).
* Artifact store: ``<artifact_root>/<name>/<version>-<token>/`` holds a copy of the serving bundle (models/registry/bundle.py)
  plus ``manifest.json`` (sha256 + size of every file), ``evidence.json`` and a generated model card ``README.md``.

Guarantees
----------
* Versions are numbered per name (1, 2, 3, ...) and never change once registered (files are made read-only
  and verified against the manifest on every load; the manifest's own digest lives in the database).
* Registration is atomic and safe under concurrency (registration.py): the number is allocated in a transaction
  guarded by the unique constraint (name, version) and retried on conflict; every row gets its own folder
  (``<name>/<version>-<token>``), so no two registrations ever write or delete the same files. Files are
  copied into a staging folder under the artifact root, fsynced, renamed into place, and only then does the
  row turn ``ready`` (committed with SQLite ``synchronous=FULL``), so a registration that returned survives a
  power loss. A process killed midway leaves a ``pending`` row and folders that nobody sees (list/get read
  ``ready``/``archived`` rows only).
* Ownership of a pending row is a lease: the registering process refreshes ``heartbeat_at`` every
  ``lease_s / 4`` seconds; :meth:`Registry.cleanup` (cleanup.py; run by every registration) removes a pending
  row only when its heartbeat is older than ``lease_s`` (host names and pids are not trusted: two containers
  can share both). Removal marks the row ``removing`` first, so its owner can no longer turn it ``ready``, then
  deletes the folders, then the row. A failed registration re-reads its row before touching any file: when the
  commit to ``ready`` went through (and only the answer was lost) it returns the version instead.
* ``register(..., idempotency_key=K)``: a second call with the same name and key returns the version the
  first one registered (the retrain flow passes one per run, so a retried register task never duplicates).
* SQLite runs in WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` write transactions, so concurrent
  writer processes queue instead of failing. On Postgres, ``set_alias`` and ``archive`` lock the version row
  (``SELECT ... FOR UPDATE``), so an alias can never end up on an archived version (aliases.py).
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

This module is the registry's public face: ``Registry`` and every name callers import live here. Import cost:
standard library + SQLAlchemy only (the serving process imports this module).
"""

from __future__ import annotations

from models.registry.aliases import AliasOperations
from models.registry.artifacts import EVIDENCE_FILE, MODEL_CARD
from models.registry.bundle import MANIFEST
from models.registry.errors import (
    AliasNotFound,
    ArchivedVersion,
    BundleError,
    ChecksumError,
    GateRefused,
    InvalidName,
    ModelNotFound,
    RegistryError,
    VersionNotFound,
)
from models.registry.queries import DEFAULT_LEASE_S, STEPS, StepObserver, ignore_step
from models.registry.registration import VersionRegistration
from models.registry.schema import AliasEventRow, AliasRow, VersionRow
from models.registry.values import (
    ATTACHABLE_EVIDENCE,
    MOVE_KINDS,
    NAME_PATTERN,
    AliasMove,
    ModelVersion,
    VersionDiff,
    check_name,
)


class Registry(VersionRegistration, AliasOperations):
    """Versions, aliases and the audit log in one SQL database; bundles in the artifact store.

    ``Registry()`` uses ``models.settings.registry_url()``, ``models.settings.artifact_location()`` (a folder or an
    object-store URL) and ``models.settings.artifact_cache_dir()`` (where object-store readers keep checked
    copies). Nothing touches disk or the database until the first call (which creates the tables).
    ``artifacts``: an :class:`~models.registry.artifacts.ArtifactStore` to use instead of the one the root names.

    ``lease_s``: how long a pending registration may go without a heartbeat before others may remove it.
    ``on_step``: called with the name of each point a registration or alias move passes (``STEPS``: ``copying``
    after each file, ``copied``, ``uploading``, ``moved``, ``marked-ready``, ``alias-checked``,
    ``archive-checked``); ignored by default. A caller that wants progress passes one; the tests pass one that
    pauses, fails or kills the call at a chosen point.

    Reads (queries.py), registration (registration.py), cleanup of abandoned registrations (cleanup.py) and
    alias moves with their audit log (aliases.py) each live in their own module.
    """


__all__ = [
    "ATTACHABLE_EVIDENCE",
    "DEFAULT_LEASE_S",
    "EVIDENCE_FILE",
    "MANIFEST",
    "MODEL_CARD",
    "MOVE_KINDS",
    "NAME_PATTERN",
    "STEPS",
    "AliasEventRow",
    "AliasMove",
    "AliasNotFound",
    "AliasRow",
    "ArchivedVersion",
    "BundleError",
    "ChecksumError",
    "GateRefused",
    "InvalidName",
    "ModelNotFound",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "StepObserver",
    "VersionDiff",
    "VersionNotFound",
    "VersionRow",
    "check_name",
    "ignore_step",
]
