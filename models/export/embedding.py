"""The bundle's sentence-embedding model: the fine-tuned checkpoint's encoder, exported for ``/embed``.

    export_embedding(model_dir, bundle_dir, config=..., parity_texts=[...], max_length=64, pooling_from=base)

What happens, in order::

    model_dir's encoder ─► optimum main_export (task feature-extraction) ─► O2 ─► onnx/embedding/model.onnx
    pooling: sentence-transformers' Pooling config of model_dir, else of ``pooling_from`` (the base model the
             encoder was adapted from), else mean pooling; always L2-normalised
    parity: PyTorch encoder + the same pooling vs the serving predictor at ``config.parity_batch_sizes``
             ─► reports/embedding_parity.json; serving.json ``extra["embedding"]`` only when parity passed

The serving side (services/predictor.py) applies the pooling in numpy and never imports torch.
Heavy libraries (torch, transformers, optimum) are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from models.recipe import ExportConfig
from models.registry.bundle import ONNX_DIR, REPORTS_DIR, ServingSpec

logger = logging.getLogger(__name__)

EMBEDDING_DIR = f"{ONNX_DIR}/embedding"
EMBEDDING_REPORT = "embedding_parity.json"
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
# sentence-transformers' Pooling config keys, in the order it checks them
_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
MIN_COSINE = 0.9999  # every parity text's serving embedding against PyTorch's
# An fp32 graph against the same weights in PyTorch: a numerical check, which a few hundred texts settle; the
# classifier's label agreement is what needs the larger sample (export.parity_max_texts).
EMBEDDING_PARITY_TEXTS = 256


def read_pooling(*folders: Path | None) -> dict[str, Any]:
    """``{"mode", "source"}`` from the first folder with a sentence-transformers Pooling module config
    (``modules.json`` names its folder; ``1_Pooling/config.json`` otherwise), else mean pooling."""
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder)
        config_path = None
        modules = folder / "modules.json"
        if modules.is_file():
            try:
                for module in json.loads(modules.read_text(encoding="utf-8")):
                    if str(module.get("type", "")).endswith("models.Pooling"):
                        config_path = folder / module.get("path", "") / "config.json"
            except (json.JSONDecodeError, AttributeError, TypeError):
                config_path = None
        if config_path is None and (folder / "1_Pooling" / "config.json").is_file():
            config_path = folder / "1_Pooling" / "config.json"
        if config_path is None or not config_path.is_file():
            continue
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        modes = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
        if len(modes) == 1:
            return {"mode": modes[0], "source": f"{folder.name}/{config_path.relative_to(folder).as_posix()}"}
        logger.warning("%s names %s pooling modes; using mean pooling", config_path, modes or "no")
    return {"mode": "mean", "source": "default (no sentence-transformers pooling config found)"}


def pool(hidden, mask, mode: str):
    """Sentence vectors from PyTorch token vectors, as sentence-transformers' Pooling + Normalize compute them
    (the reference the served numpy pooling, services.predictor.pool_embeddings, is checked against)."""
    import torch

    mask = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    else:
        counts = mask.sum(dim=1).clamp(min=1e-9)
        pooled = (hidden * mask).sum(dim=1) / (counts.sqrt() if mode == "mean_sqrt_len" else counts)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def export_embedding(
    model_dir: Path,
    bundle_dir: Path,
    *,
    config: ExportConfig,
    parity_texts: Sequence[str],
    max_length: int,
    pooling_from: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export, check and register in serving.json the embedding model of ``model_dir`` into the bundle at
    ``bundle_dir`` (which already holds serving.json and tokenizer/). Returns the parity record; a model that
    fails parity is removed and named in serving.json ``extra["embedding_dropped"]``."""
    from models.export.common import _optimize, parity_sample

    def say(message: str) -> None:
        logger.info("export: %s", message)
        if progress is not None:
            progress(message)

    model_dir, bundle_dir = Path(model_dir), Path(bundle_dir)
    pooling = read_pooling(model_dir, pooling_from)
    target = bundle_dir / EMBEDDING_DIR
    say(f"embedding: exporting the encoder with Optimum (feature-extraction), {pooling['mode']} pooling")
    with tempfile.TemporaryDirectory(prefix=".embedding-", dir=bundle_dir) as work_name:
        work = Path(work_name)
        plain = _feature_extraction_export(model_dir, work / "plain", config.opset)
        optimized = _optimize(plain, work / "optimized", level="O2")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copy2(optimized / "model.onnx", target / "model.onnx")
        _write_encoder_config(model_dir / "config.json", target / "config.json")
    dimension = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("hidden_size")
    entry = {
        "path": f"{EMBEDDING_DIR}/model.onnx",
        "pooling": pooling["mode"],
        "pooling_source": pooling["source"],
        "normalize": True,
        "dimension": dimension,
    }
    spec = ServingSpec.read(bundle_dir)
    _write_spec(bundle_dir, spec, {**spec.extra, "embedding": entry})
    texts, _ = parity_sample(list(parity_texts), None, EMBEDDING_PARITY_TEXTS)
    record = embedding_parity(model_dir, bundle_dir, texts, max_length, pooling["mode"], config)
    (bundle_dir / REPORTS_DIR).mkdir(exist_ok=True)
    (bundle_dir / REPORTS_DIR / EMBEDDING_REPORT).write_text(
        json.dumps({**entry, **record}, indent=2), encoding="utf-8"
    )
    extra = {k: v for k, v in spec.extra.items() if k not in ("embedding", "embedding_dropped")}
    if record["passed"]:
        extra["embedding"] = entry
        say(
            f"embedding: parity ok (max |diff| {record['max_abs_diff']:.1e}, min cosine "
            f"{record['min_cosine']:.6f}); /embed serves {dimension}-dim vectors"
        )
    else:
        shutil.rmtree(target)
        extra["embedding_dropped"] = "; ".join(record["failures"])
        say(f"embedding: DROPPED ({extra['embedding_dropped']}); /embed will not be served")
    _write_spec(bundle_dir, spec, extra)
    return record


def _write_encoder_config(source: Path, target: Path) -> None:
    """The checkpoint's config.json as the bare encoder's: ``BertForSequenceClassification`` becomes
    ``BertModel`` and the task labels go, so tools reading the folder (Optimum, infinity) see an embedding model,
    not a classifier."""
    config = json.loads(source.read_text(encoding="utf-8"))
    config["architectures"] = [
        re.sub(r"For(SequenceClassification|TokenClassification|MaskedLM)$", "Model", name)
        for name in config.get("architectures") or []
    ]
    for key in ("id2label", "label2id", "problem_type", "finetuning_task"):
        config.pop(key, None)
    target.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_spec(bundle_dir: Path, spec: ServingSpec, extra: dict[str, Any]) -> None:
    ServingSpec(**{**spec.__dict__, "extra": extra}).write(bundle_dir)


def _feature_extraction_export(model_dir: Path, output: Path, opset: int | None) -> Path:
    import torch
    from optimum.exporters.onnx import main_export

    from models.export.common import ExportError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # A *ForSequenceClassification / *ForTokenClassification checkpoint loads as its bare encoder
            # (the task head is left out): the embedding model shares the classifier's encoder weights.
            main_export(
                str(model_dir),
                output=output,
                task="feature-extraction",
                opset=opset,
                device="cpu",
                do_validation=False,  # the parity check below compares pooled vectors on real texts
                local_files_only=True,
            )
    except Exception as exc:
        raise ExportError(
            f"Optimum could not export the encoder of {model_dir} for embeddings: {exc}"
        ) from exc
    if not (output / "model.onnx").is_file():
        raise ExportError(f"Optimum finished but wrote no embedding model.onnx in {output}")
    return output


def embedding_parity(
    model_dir: Path, bundle_dir: Path, texts: list[str], max_length: int, mode: str, config: ExportConfig
) -> dict[str, Any]:
    """PyTorch encoder + pooling vs the serving predictor's ``embed`` at each parity batch size."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from services.predictor import OnnxPredictor

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            batch = tokenizer(
                texts[start : start + 32],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            hidden = encoder(**batch).last_hidden_state
            reference.append(pool(hidden, batch["attention_mask"], mode).numpy())
    expected = np.concatenate(reference)
    predictor = OnnxPredictor(bundle_dir, providers=["CPUExecutionProvider"])
    by_batch = {}
    for batch_size in config.parity_batch_sizes:
        served = np.concatenate(
            [predictor.embed(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
        )
        by_batch[str(batch_size)] = {
            "max_abs_diff": float(np.abs(served - expected).max()),
            "min_cosine": float((served * expected).sum(axis=1).min()),
        }
    worst_diff = max(r["max_abs_diff"] for r in by_batch.values())
    worst_cosine = min(r["min_cosine"] for r in by_batch.values())
    failures = []
    if worst_diff > config.parity_atol:
        failures.append(f"max |embedding diff| {worst_diff:.2e} > {config.parity_atol:.0e}")
    if worst_cosine < MIN_COSINE:
        failures.append(f"min cosine to PyTorch {worst_cosine:.6f} < {MIN_COSINE}")
    return {
        "n_texts": len(texts),
        "max_abs_diff": worst_diff,
        "min_cosine": worst_cosine,
        "by_batch_size": by_batch,
        "passed": not failures,
        "failures": failures,
    }
