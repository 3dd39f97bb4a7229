"""Package a registered bundle for BentoML: import it as a BentoML model, then build a bento (+ Dockerfile).

    tag = import_bundle_to_bentoml(bundle_dir, "demo", 3, {"metrics": {"macro_f1": 0.91}})   # "demo:3"
    bento_tag, dockerfile = build_bento(tag)   # runs `bentoml build` from the repo root

Only the files the service reads go into the BentoML model (not pytorch/). BentoML is imported inside the
functions; the store lives under BENTOML_HOME (default DAPT_HOME/bentoml, see models.settings).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from models.hashing import update_with_file
from models.registry.bundle import MANIFEST, ONNX_DIR, REPORTS_DIR, SERVING_SPEC, TOKENIZER_DIR, ServingSpec
from models.settings import BENTO_MODEL_ENV, stack_environment

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# What the service needs (plus the small evidence files that explain it); pytorch/ stays in the registry.
SERVING_FILES = (SERVING_SPEC, MANIFEST, "evidence.json", "README.md")
SERVING_DIRS = (TOKENIZER_DIR, ONNX_DIR)
BENTOML_NAME = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")


class BentoError(RuntimeError):
    """Packaging for BentoML failed; the message says why and what to do."""


def _serving_files(bundle_dir: Path) -> list[Path]:
    files = [bundle_dir / name for name in SERVING_FILES if (bundle_dir / name).is_file()]
    for folder in SERVING_DIRS:
        files += sorted(p for p in (bundle_dir / folder).rglob("*") if p.is_file())
    files += sorted((bundle_dir / REPORTS_DIR).glob("*.json"))
    return files


def _digest(bundle_dir: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(bundle_dir).as_posix().encode())
        update_with_file(digest, path)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """BentoML metadata accepts only plain JSON-like values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def import_bundle_to_bentoml(
    bundle_dir: str | Path, name: str, version: int | str, metadata: dict[str, Any] | None = None
) -> str:
    """Copy the bundle's serving files into the BentoML model store as ``name:version``; return the tag.

    Importing the same bundle again returns the existing tag; a different bundle under an existing tag is an
    error (registry versions are immutable; delete it with `bentoml models delete TAG` to replace it).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    bundle_dir = Path(bundle_dir)
    try:
        spec = ServingSpec.read(bundle_dir)
    except FileNotFoundError as exc:
        raise BentoError(str(exc)) from None
    version = str(version)
    for what, value in (("name", name), ("version", version)):
        if not BENTOML_NAME.match(value.lower()):
            raise BentoError(
                f"{what} {value!r} cannot be a BentoML tag part: use letters, digits, '-', '_', '.'"
            )
    tag = f"{name.lower()}:{version.lower()}"
    files = _serving_files(bundle_dir)
    missing = [p for p in spec.variants.values() if not (bundle_dir / p).is_file()]
    if missing or not (bundle_dir / TOKENIZER_DIR / "tokenizer.json").is_file():
        raise BentoError(
            f"{bundle_dir} is incomplete (missing {missing or 'tokenizer/tokenizer.json'}); re-export it"
        )
    digest = _digest(bundle_dir, files)

    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("bundle_sha256") == digest:
            logger.info("bentoml model %s already holds this bundle", tag)
            return str(existing.tag)
        raise BentoError(
            f"BentoML model {tag} already exists with different files; registry versions are immutable, so "
            f"import a new version (or remove the old one: `bentoml models delete {tag}`)"
        )

    model_metadata = _plain(
        {
            **(metadata or {}),
            "task": spec.task,
            "labels": spec.labels,
            "variants": sorted(spec.variants),
            "preferred_cpu_variant": spec.preferred_cpu_variant,
            "bundle_sha256": digest,
            "source": str(bundle_dir.resolve()),
        }
    )
    with bentoml.models.create(
        tag, labels={"name": name, "version": version}, metadata=model_metadata
    ) as model:
        target_root = Path(model.path)
        for path in files:
            target = target_root / path.relative_to(bundle_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    stored = bentoml.models.get(tag)  # the context's path was a temporary folder
    logger.info("imported %s (%d files) into the BentoML store at %s", stored.tag, len(files), stored.path)
    return str(stored.tag)


def _bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or stack_environment()["BENTOML_HOME"])


GPU_BENTOFILE = "bentofile.yaml"  # CUDA 12.8 + cuDNN 9 base, onnxruntime-gpu
CPU_BENTOFILE = "bentofile.cpu.yaml"  # python:3.11-slim base, onnxruntime (CPU build)


def build_bento(tag: str, *, cpu: bool = False, timeout_s: float = 600.0) -> tuple[str, Path]:
    """Run `bentoml build` (repo root) packing model ``tag``; return (bento tag, Dockerfile path).

    The image is the GPU one (bentofile.yaml) unless ``cpu`` asks for the CPU one (bentofile.cpu.yaml).
    """
    env = dict(os.environ)
    for key, value in stack_environment().items():
        env.setdefault(key, value)
    env[BENTO_MODEL_ENV] = tag
    env["BENTOML_HOME"] = str(_bentoml_home())
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "build",
        "--bentofile",
        str(REPO_ROOT / (CPU_BENTOFILE if cpu else GPU_BENTOFILE)),
        "--output",
        "tag",
        "--arg",
        f"bento_model={tag}",
        str(REPO_ROOT),
    ]
    logger.info("building bento for %s: %s", tag, " ".join(command))
    try:
        result = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise BentoError(f"`bentoml build` did not finish within {timeout_s:.0f} s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise BentoError("`bentoml build` failed:\n" + "\n".join(tail))
    found = re.search(r"__tag__:(\S+)", result.stdout)
    if not found:
        raise BentoError(f"`bentoml build` succeeded but printed no bento tag:\n{result.stdout[-2000:]}")
    bento_tag = found.group(1)
    bento_name, bento_version = bento_tag.split(":", 1)
    dockerfile = _bentoml_home() / "bentos" / bento_name / bento_version / "env" / "docker" / "Dockerfile"
    if not dockerfile.is_file():
        raise BentoError(f"bento {bento_tag} was built but has no Dockerfile at {dockerfile}")
    logger.info("built bento %s; Dockerfile at %s", bento_tag, dockerfile)
    return bento_tag, dockerfile
