"""Where registered bundles live: a local folder (or shared mount) or an object store, behind one small interface.

The registry (store.py) decides what is visible (a version is visible only once its database row turns
``ready``); this module only moves and checks files:

* :func:`scan_bundle` checks a folder given to ``register`` (layout, no links, no pickle files, variants that
  exist) and :func:`copy_and_hash` copies it, file by file, into a local staging folder while hashing.
* :meth:`ArtifactStore.publish` puts a complete staged folder (manifest written last) at its final place:
  one atomic rename on a local disk; an upload of every file, ``manifest.json`` last, on an object store
  (which has no atomic rename: that is fine, because readers only look at rows that are ``ready``, and a row
  turns ready after the upload returned).
* :meth:`ArtifactStore.fetch` gives a local folder to load: the stored folder itself on disk; on an object
  store a copy in a local cache keyed by the manifest's sha256, downloaded into a temporary folder with every
  file checked against the manifest (size and sha256) and then renamed into place, so a cache folder is only
  ever complete. :func:`verify_folder` then checks that folder exactly as a local version is checked.

``DAPT_ARTIFACT_ROOT=s3://bucket/prefix`` selects the object store (any fsspec URL works; ``s3://`` needs
s3fs). Endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), so MinIO, Ceph or AWS all work.

Import cost: the standard library only (fsspec is imported when an object store is opened).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from models.hashing import CHUNK, file_sha256
from models.registry.bundle import (
    MANIFEST,
    SERVING_SPEC,
    BundlePathError,
    ServingSpec,
    check_bundle_path,
)
from models.registry.errors import BundleError, ChecksumError, RegistryError

log = logging.getLogger("dapt.registry")

EVIDENCE_FILE = "evidence.json"
MODEL_CARD = "README.md"
REGISTRY_FILES = frozenset({MANIFEST, EVIDENCE_FILE, MODEL_CARD})  # written by the registry, never copied
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
STAGING_DIR = ".staging"


# ----------------------------------------------------------------------------------------------- local files
def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to stable storage (a folder fsync makes renames and creations durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every folder under ``root`` (files are fsynced as they are written), deepest first."""
    folders = [Path(top) for top, _dirs, _files in os.walk(root)]
    for folder in reversed(folders):
        fsync_path(folder)


def write_durably(path: Path, text_value: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text_value)
        handle.flush()
        os.fsync(handle.fileno())


def pickle_files(paths: Iterable[str]) -> list[str]:
    return sorted(p for p in paths if p.lower().endswith(PICKLE_SUFFIXES))


def walk(root: Path) -> tuple[list[str], list[str]]:
    """(relative paths of regular files, relative paths of symbolic links) under ``root``, links not followed."""
    files, links = [], []
    for top, dirs, names in os.walk(root, followlinks=False):
        for entry in [*dirs, *names]:
            path = Path(top) / entry
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                links.append(rel)
            elif path.is_file():
                files.append(rel)
    return sorted(files), sorted(links)


def serving_variants(spec_path: Path) -> dict[str, str]:
    """The variant paths of a serving.json, checked to be plain relative paths (raises BundlePathError)."""
    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BundlePathError(f"{SERVING_SPEC} is unreadable ({error})") from error
    variants = raw.get("variants") if isinstance(raw, dict) else None
    if not isinstance(variants, dict) or not variants:
        raise BundlePathError(f"{SERVING_SPEC} has no variants (variant name -> ONNX path in the bundle)")
    for variant, rel in variants.items():
        check_bundle_path(rel, f"{SERVING_SPEC} variant {variant!r}")
    return variants


def scan_bundle(bundle: Path) -> list[str]:
    """Relative POSIX paths of the bundle's files to copy; refuses non-bundles, links, pickle-based files and
    serving specs that point at files outside the bundle."""
    if not bundle.is_dir():
        raise BundleError(f"bundle folder {bundle} does not exist; pass the export stage's bundle directory")
    if not (bundle / SERVING_SPEC).is_file():
        raise BundleError(
            f"{bundle} is not a serving bundle: {SERVING_SPEC} is missing (see models/registry/bundle.py for the layout)"
        )
    found, links = walk(bundle)
    if links:
        raise BundleError(f"{bundle}: {links[0]} is a symbolic link; bundles must hold real files only")
    files = [rel for rel in found if rel not in REGISTRY_FILES]
    pickles = pickle_files(files)
    if pickles:
        raise BundleError(
            f"{bundle} contains pickle-based files the project never loads: {', '.join(pickles)}. "
            "Keep weights as safetensors/ONNX only and delete these files (e.g. training_args.bin) before registering"
        )
    try:
        variants = serving_variants(bundle / SERVING_SPEC)
        ServingSpec.read(bundle)
    except (BundlePathError, TypeError, ValueError) as error:
        raise BundleError(f"{bundle}: {error}; fix {SERVING_SPEC} (see models/registry/bundle.py)") from error
    missing = [f"{variant} -> {rel}" for variant, rel in sorted(variants.items()) if rel not in files]
    if missing:
        raise BundleError(
            f"{bundle}: {SERVING_SPEC} names ONNX files that are not in the bundle: {', '.join(missing)}; "
            "export again, or fix the variant paths"
        )
    return files


def copy_and_hash(source: Path, target: Path) -> tuple[str, int]:
    """Copy one file while hashing it, fsynced; the copy is read-only (registered files never change)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(target, 0o444)
    return digest.hexdigest(), size


def _manifest_files(manifest_path: Path, label: str, fix: str) -> dict[str, dict[str, Any]]:
    try:
        expected = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ChecksumError(f"{label}: {MANIFEST} is unreadable ({error}); {fix}") from error
    if not isinstance(expected, dict):
        raise ChecksumError(f"{label}: {MANIFEST} has no 'files' mapping; {fix}")
    return expected


def verify_folder(root: Path, manifest_sha256: str | None, label: str, fix: str) -> None:
    """Raise ChecksumError (naming ``label`` and the files) unless ``root`` matches its manifest exactly, and the
    manifest matches ``manifest_sha256`` (the digest the database holds)."""
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ChecksumError(f"{label}: {MANIFEST} is missing in {root}; {fix}")
    if manifest_sha256 and file_sha256(manifest_path) != manifest_sha256:
        raise ChecksumError(
            f"{label}: {MANIFEST} was modified (its sha256 differs from the registry's); {fix}"
        )
    expected = _manifest_files(manifest_path, label, fix)

    problems: list[str] = []
    files, links = walk(root)
    for rel in links:
        problems.append(f"{rel} is a symbolic link (bundles hold real files only)")
    for rel, entry in sorted(expected.items()):
        try:
            check_bundle_path(rel, f"{MANIFEST} entry")
        except BundlePathError as error:
            problems.append(str(error))
            continue
        path = root / rel
        if rel in links:
            continue
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{rel} changed size ({entry['size']} -> {path.stat().st_size} bytes)")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{rel} changed (sha256 differs from the manifest)")
    for rel in files:
        if rel not in expected and rel != MANIFEST:
            problems.append(f"{rel} is an unexpected file (not in the manifest)")
    # Everything the service loads must be covered: serving.json itself and every variant it names.
    if SERVING_SPEC not in expected:
        problems.append(f"{SERVING_SPEC} is not in the manifest")
    else:
        try:
            variants = serving_variants(root / SERVING_SPEC)
        except BundlePathError as error:
            problems.append(str(error))
        else:
            for variant, rel in sorted(variants.items()):
                if rel not in expected:
                    problems.append(
                        f"{SERVING_SPEC} variant {variant!r} loads {rel}, which is not in the manifest"
                    )
    if problems:
        raise ChecksumError(f"{label} failed verification at {root}: {'; '.join(problems)}; {fix}")


# ----------------------------------------------------------------------------------------------- stores
class ArtifactStore:
    """The interface the registry uses. ``rel`` is a version's folder relative to the root (``<name>/<v>-<token>``).

    ``location``: the root as users give it (a path or URL); ``staging``: the local folder where registrations
    assemble a version before :meth:`publish`.
    """

    location: str
    staging: Path
    remote = False

    def url(self, rel: str) -> str:
        """Where a version's files are stored (for people and logs)."""
        raise NotImplementedError

    def folder(self, rel: str, manifest_sha256: str | None) -> Path:
        """The local folder a reader loads the version from (it may not exist before :meth:`fetch`)."""
        raise NotImplementedError

    def publish(self, staged: Path, rel: str, progress: Callable[[str], None]) -> None:
        """Put the complete staged folder at ``rel``; ``staged`` may be consumed."""
        raise NotImplementedError

    def fetch(self, rel: str, manifest_sha256: str | None, label: str) -> Path:
        """A local folder with the version's files (see :meth:`folder`), downloaded and checked if needed."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Delete a version's stored files (nothing when they are absent)."""
        raise NotImplementedError

    def read(self, rel: str, name: str) -> bytes:
        """One stored file of a version, as stored: unchecked (the caller checks it against the manifest), and
        without fetching the rest of the version (a page showing a plot never downloads the weights).
        FileNotFoundError when it is absent; RegistryError when the store cannot be reached."""
        raise NotImplementedError

    def fix_hint(self, rel: str, manifest_sha256: str | None) -> str:
        return "re-register the bundle from its run, or restore the folder from a backup"


class LocalStore(ArtifactStore):
    """Versions as read-only folders under a local root (or a shared mount); staging under ``<root>/.staging``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.location = str(self.root)
        self.staging = self.root / STAGING_DIR

    def url(self, rel: str) -> str:
        return str(self.root / rel)

    def folder(self, rel: str, manifest_sha256: str | None) -> Path:
        return self.root / rel

    def publish(self, staged: Path, rel: str, progress: Callable[[str], None]) -> None:
        # The folder is this row's alone (its name holds the token): nothing else can be there or be lost.
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_path(final.parent.parent)
        os.replace(staged, final)
        fsync_path(final.parent)  # the rename is durable before the row says ready

    def fetch(self, rel: str, manifest_sha256: str | None, label: str) -> Path:
        return self.root / rel

    def remove(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)

    def read(self, rel: str, name: str) -> bytes:
        return (self.root / rel / name).read_bytes()


class FsspecStore(ArtifactStore):
    """Versions as objects under an fsspec URL (``s3://bucket/prefix``); readers load from a local cache.

    The cache (``cache_dir/<manifest sha256>/``) is filled by :meth:`fetch` only with complete, checked copies;
    registrations stage under ``cache_dir/.staging``. Nothing is evicted from the cache: delete old folders
    there when disk runs short (they are downloaded again when needed).
    """

    remote = True

    def __init__(self, location: str, cache_dir: str | Path):
        import fsspec

        protocol = location.split("://", 1)[0].lower()
        # Listings are never cached: other processes publish and remove versions under the same prefix.
        options: dict[str, Any] = (
            {"use_listings_cache": False, "skip_instance_cache": True} if protocol in ("s3", "s3a") else {}
        )
        try:
            self.fs, base = fsspec.core.url_to_fs(location, **options)
        except ImportError as error:
            raise RegistryError(
                f"DAPT_ARTIFACT_ROOT={location} needs the fsspec driver for {protocol}:// ({error}); "
                "for s3:// install s3fs (it is a dapt dependency: reinstall with `make setup`)"
            ) from error
        self.location = location.rstrip("/")
        self.base = base.rstrip("/")
        self.cache = Path(cache_dir).expanduser().resolve()
        self.staging = self.cache / STAGING_DIR

    def url(self, rel: str) -> str:
        return f"{self.location}/{rel}"

    def folder(self, rel: str, manifest_sha256: str | None) -> Path:
        return self.cache / (manifest_sha256 or "unknown")

    def _remote(self, rel: str, name: str = "") -> str:
        return f"{self.base}/{rel}/{name}" if name else f"{self.base}/{rel}"

    def _failed(self, what: str, error: Exception) -> RegistryError:
        return RegistryError(
            f"{what} failed: {type(error).__name__}: {error}. Check that the bucket exists and that "
            "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION reach it"
        )

    def publish(self, staged: Path, rel: str, progress: Callable[[str], None]) -> None:
        files, _links = walk(staged)
        # The manifest last: a prefix that has it has every file (readers still go by the row, not by this).
        ordered = [f for f in files if f != MANIFEST] + [MANIFEST]
        for name in ordered:
            try:
                self.fs.put_file(str(staged / name), self._remote(rel, name))
            except Exception as error:  # noqa: BLE001 - botocore, aiohttp and OS errors alike
                raise self._failed(f"uploading {name} to {self.url(rel)}", error) from error
            progress("uploading")

    def fetch(self, rel: str, manifest_sha256: str | None, label: str) -> Path:
        target = self.folder(rel, manifest_sha256)
        if target.is_dir():
            return target
        fix = f"re-register the bundle from its run, or restore {self.url(rel)} from a backup"
        work = self.cache / ".downloading" / uuid.uuid4().hex
        work.mkdir(parents=True)
        try:
            self._download(work, MANIFEST, rel)
            if manifest_sha256 and file_sha256(work / MANIFEST) != manifest_sha256:
                raise ChecksumError(
                    f"{label}: {self.url(rel)}/{MANIFEST} was modified (its sha256 differs from the "
                    f"registry's); {fix}"
                )
            for name, entry in sorted(_manifest_files(work / MANIFEST, label, fix).items()):
                try:
                    check_bundle_path(name, f"{MANIFEST} entry")
                except BundlePathError as error:
                    raise ChecksumError(f"{label}: {error}; {fix}") from error
                self._download(work, name, rel)
                path = work / name
                if path.stat().st_size != entry.get("size") or file_sha256(path) != entry.get("sha256"):
                    raise ChecksumError(
                        f"{label}: {self.url(rel)}/{name} differs from the manifest (size or sha256): the "
                        f"stored object is corrupted or was replaced, so it is not loaded; {fix}"
                    )
                os.chmod(path, 0o444)
            os.chmod(work / MANIFEST, 0o444)
            try:
                os.rename(work, target)
            except OSError:
                if not target.is_dir():  # another reader put the same checked copy there first: use it
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("%s: downloaded %s into the cache %s", label, self.url(rel), target)
        return target

    def _download(self, work: Path, name: str, rel: str) -> None:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(self._remote(rel, name), str(path))
        except FileNotFoundError as error:
            raise ChecksumError(
                f"{self.url(rel)}/{name} is missing from the object store; re-register the bundle from its run"
            ) from error
        except Exception as error:  # noqa: BLE001 - botocore, aiohttp and OS errors alike
            raise self._failed(f"downloading {self.url(rel)}/{name}", error) from error

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm(self._remote(rel), recursive=True)
        except FileNotFoundError:
            pass

    def read(self, rel: str, name: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._remote(rel, name)))
        except FileNotFoundError:
            raise
        except Exception as error:  # noqa: BLE001 - botocore, aiohttp and OS errors alike
            raise self._failed(f"reading {self.url(rel)}/{name}", error) from error

    def fix_hint(self, rel: str, manifest_sha256: str | None) -> str:
        return (
            f"delete the cached copy {self.folder(rel, manifest_sha256)} to download it again, or re-register "
            "the bundle from its run"
        )


def open_store(location: str | Path, cache_dir: str | Path) -> ArtifactStore:
    """The store for an artifact root: a URL with a scheme other than ``file://`` is an object store."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        return FsspecStore(text, cache_dir)
    return LocalStore(text.removeprefix("file://"))
