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
