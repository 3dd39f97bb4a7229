"""The serving bundle: the folder a registered version holds and the service loads.

Layout (paths relative to the bundle root)::

    serving.json                 ServingSpec below: task, labels, max_length, variants
    tokenizer/tokenizer.json     fast tokenizer (plus tokenizer_config.json, special_tokens_map.json, vocab.txt)
    onnx/<variant>/model.onnx    one folder per ONNX variant (fp32, int8, fp16), each with its config.json
    pytorch/                     the fine-tuned PyTorch checkpoint (safetensors), kept for lineage and re-export
    reports/                     metrics.json, parity.json, validation.json, PNG plots, Data Docs
    manifest.json                sha256 of every other file (written by the registry)
    evidence.json, README.md     evidence and model card (written by the registry)

Only the standard library is imported here: the serving process reads this module.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

SERVING_SPEC = "serving.json"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
ONNX_DIR = "onnx"
PYTORCH_DIR = "pytorch"
REPORTS_DIR = "reports"

Task = Literal["classification", "ner"]


class BundlePathError(ValueError):
    """A path in a bundle (serving.json variant, manifest entry) could lead outside the bundle folder."""


def check_bundle_path(rel: object, what: str = "path") -> str:
    """Return ``rel`` when it is a plain relative POSIX path inside the bundle, else raise BundlePathError.

    Refused: empty, absolute, backslashes, ``.``/``..`` parts and doubled slashes, so that ``bundle / rel`` can
    only name a file below the bundle root and exactly one manifest key names it.
    """
    if not isinstance(rel, str) or not rel:
        raise BundlePathError(f"{what} must be a non-empty relative path, got {rel!r}")
    parts = rel.split("/")
    if (
        rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or (len(rel) > 1 and rel[1] == ":")
        or any(part in ("", ".", "..") for part in parts)
        or posixpath.normpath(rel) != rel
    ):
        raise BundlePathError(
            f"{what} {rel!r} is not a plain path inside the bundle: use a relative path such as "
            "'onnx/fp32/model.onnx', without '..', leading '/', backslashes or empty parts"
        )
    return rel


def resolve_in_bundle(bundle_dir: str | Path, rel: str, what: str = "path") -> Path:
    """``bundle_dir / rel`` after :func:`check_bundle_path`, refusing any symbolic link on the way (a link could
    point outside the bundle, at a file no manifest covers)."""
    root = Path(bundle_dir)
    check_bundle_path(rel, what)
    current = root
    for part in rel.split("/"):
        current = current / part
        if current.is_symlink():
            raise BundlePathError(
                f"{what} {rel!r}: {current} is a symbolic link; bundles hold real files only"
            )
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(current)]) != real_root:
        raise BundlePathError(f"{what} {rel!r} resolves outside the bundle {root}")
    return current


@dataclass(frozen=True)
class ServingSpec:
    """What the service needs to know to load and run a bundle."""

    name: str
    task: Task
    labels: list[str]  # classification: class names in logit order; NER: BIO tags in logit order
    max_length: int
    variants: dict[str, str]  # variant name -> ONNX file path relative to the bundle root
    preferred_cpu_variant: str = "fp32"  # int8 when its accuracy stayed within the recipe's budget
    preferred_gpu_variant: str = "fp32"  # fp16 when exported
    multi_label: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every variant must name a file inside the bundle: the registry's manifest only covers those.
        if not isinstance(self.variants, dict) or not self.variants:
            raise BundlePathError(f"{SERVING_SPEC}: variants must map variant names to ONNX paths")
        for variant, rel in self.variants.items():
            check_bundle_path(rel, f"{SERVING_SPEC} variant {variant!r}")

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / SERVING_SPEC
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True), encoding="utf-8")
        return path

    @classmethod
    def read(cls, bundle_dir: Path) -> ServingSpec:
        path = Path(bundle_dir) / SERVING_SPEC
        if not path.is_file():
            raise FileNotFoundError(f"{bundle_dir} is not a serving bundle: {SERVING_SPEC} is missing")
        return cls(**json.loads(path.read_text(encoding="utf-8")))
