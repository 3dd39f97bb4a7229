"""The files of a registered version as the UI shows them (model card, plots, the manifest's file list).

They are read through the registry's artifact store, so the UI works the same whether the versions live in a
local folder or on S3 (``DAPT_ARTIFACT_ROOT=s3://...``). Each read is checked before anything is shown: the
manifest against the digest in the database, a file against the manifest. Only the file asked for is read:
a page with a plot never downloads the ONNX weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.exceptions import HTTPException

from models.registry.bundle import MANIFEST, BundlePathError, check_bundle_path
from models.registry.store import ModelVersion, Registry, RegistryError


def _read(registry: Registry, mv: ModelVersion, rel: str) -> bytes:
    """A stored file of the version, unchecked; OSError when absent, HTTP 503 when the store is unreachable."""
    try:
        if mv.artifact_path is None:  # a version built by hand, not read from the database: its folder
            return (mv.path / rel).read_bytes()
        return registry.artifacts.read(mv.artifact_path, rel)
    except RegistryError as error:
        raise HTTPException(503, f"{mv.name} v{mv.version}: {error}") from None


def manifest_entries(registry: Registry, mv: ModelVersion) -> dict[str, Any]:
    """The manifest's ``files`` mapping after checking the manifest against the database's digest.
    HTTPException 404 when it is missing, 409 when it differs from the registered one."""
    try:
        data = _read(registry, mv, MANIFEST)
    except OSError:
        raise HTTPException(404, f"{mv.name} v{mv.version}: {MANIFEST} is missing") from None
    if mv.manifest_sha256 and hashlib.sha256(data).hexdigest() != mv.manifest_sha256:
        raise HTTPException(409, f"{mv.name} v{mv.version}: {MANIFEST} differs from the registry's digest")
    try:
        files = json.loads(data)["files"]
    except (ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict):
        raise HTTPException(409, f"{mv.name} v{mv.version}: {MANIFEST} is unreadable (no 'files' mapping)")
    return files


def verified_bytes(registry: Registry, mv: ModelVersion, rel: str) -> bytes:
    """The bytes of one file of the version, after checking the manifest against the database and the file
    against the manifest (only the requested file is hashed, so a plot does not cost a hash of the weights)."""
    entry = manifest_entries(registry, mv).get(rel)
    if entry is None:
        raise HTTPException(404, f"{rel} is not a file of {mv.name} v{mv.version} (not in its manifest)")
    try:
        check_bundle_path(rel, f"{MANIFEST} entry")
    except BundlePathError as error:
        raise HTTPException(404, str(error)) from None
    try:
        data = _read(registry, mv, rel)
    except OSError:
        raise HTTPException(
            409, f"{mv.name} v{mv.version}: {rel} is missing from the version folder"
        ) from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise HTTPException(
            409, f"{mv.name} v{mv.version}: {rel} changed since registration (sha256 differs)"
        )
    return data


def manifest_files(registry: Registry, mv: ModelVersion) -> list[str]:
    """The version's files as its registered manifest lists them (none when it cannot be read or checked)."""
    try:
        return sorted(manifest_entries(registry, mv))
    except HTTPException:
        return []
