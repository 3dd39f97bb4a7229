"""Export a fine-tuned checkpoint to the serving bundle: Optimum ONNX (fp32), int8 and fp16 variants, parity.

The bundle layout is described in :mod:`models.bundle`. What happens, in order::

    model_dir ─► optimum main_export (plain ONNX) ─► O2 graph optimisation ─► onnx/fp32
                                                  ─► dynamic int8 (ORTQuantizer) ─► onnx/int8
                                                  ─► O4 fp16 (GPU only)          ─► onnx/fp16
              ─► tokenizer/ (fast tokenizer), pytorch/ (safetensors copy)
              ─► parity: PyTorch vs every variant on the same batch ─► reports/parity.json, serving.json

The int8 variant quantizes the *plain* export: quantizing an O2/O3 graph fails in shape inference.
Heavy libraries (torch, transformers, optimum, onnxruntime) are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.bundle import (
    MANIFEST,
    ONNX_DIR,
    PYTORCH_DIR,
    REPORTS_DIR,
    SERVING_SPEC,
    TOKENIZER_DIR,
    ServingSpec,
)
from models.recipe import ExportConfig

logger = logging.getLogger(__name__)

ExportTask = Literal["classification", "ner"]
Progress = Callable[[str], None]

OPTIMUM_TASKS = {"classification": "text-classification", "ner": "token-classification"}
ARCHITECTURE_SUFFIX = {"classification": "ForSequenceClassification", "ner": "ForTokenClassification"}
PARITY_REPORT = "parity.json"
# Files an ONNX variant folder keeps next to model.onnx (Optimum also copies tokenizer files; we do not).
VARIANT_SIDE_FILES = ("config.json", "ort_config.json")
FP16_NOT_CHECKED = "not checked on this device"
PARITY_CHUNK = 32  # rows per forward pass: all texts share one padded length, memory stays bounded
# Every finished export writes both; a folder holding them is an earlier export that may be replaced.
EXPORT_MARKERS = (SERVING_SPEC, f"{REPORTS_DIR}/{PARITY_REPORT}")
# Written only by the registry into a version folder (models/registry.py); such a folder is never an --out.
REGISTRY_EVIDENCE = "evidence.json"


class ExportError(RuntimeError):
    """The checkpoint cannot be exported; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ExportResult:
    bundle_dir: Path
    parity: dict  # variant name -> parity record (see reports/parity.json)
    preferred_cpu_variant: str
    variants: dict[str, Path]  # variant name -> absolute path of its model.onnx


def export_bundle(
    model_dir: Path,
    out_dir: Path,
    *,
    name: str,
    task: ExportTask,
    labels: list[str],
    max_length: int,
    config: ExportConfig,
    parity_texts: list[str],
    parity_labels: Sequence[str] | Sequence[Sequence[str]] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the serving bundle for the fine-tuned checkpoint in ``model_dir`` into ``out_dir``.

    ``labels`` are the class names (classification) or BIO tags (NER) in logit order; they must match the
    checkpoint's ``id2label``. ``parity_labels`` (optional) are the gold labels of ``parity_texts``:
    one label per text for classification; for NER one tag per whitespace-separated word of the text
    (a list of tags or one space-separated string), scored with seqeval.
    """
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_export_target(out_dir)
    say = _reporter(progress)
    _check_arguments(model_dir, task, labels, max_length, parity_texts, parity_labels)
    model_config = _read_model_config(model_dir, task, labels)

    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_export(out_dir, say)
    variants_wanted = ["fp32"] + [v for v in ("int8", "fp16") if v in config.variants]
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as work_name:
        work = Path(work_name)
        say(f"exporting {model_dir} to ONNX with Optimum (task {OPTIMUM_TASKS[task]})")
        plain = _optimum_export(model_dir, work / "plain", task, config.opset)
        variant_dirs = {"fp32": _optimize(plain, work / "fp32", level="O2")}
        say("fp32: O2 graph optimisation done")
        if "int8" in variants_wanted:
            variant_dirs["int8"] = _quantize(plain, work / "int8", per_channel=task == "ner")
            say(f"int8: dynamic quantization done ({_quantization_isa()}, per-channel={task == 'ner'})")
        if "fp16" in variants_wanted:
            variant_dirs["fp16"] = _optimize(plain, work / "fp16", level="O4")
            say("fp16: O4 (fp16, GPU fusions) done")
        variant_paths = {}
        for variant, source in variant_dirs.items():
            target = out_dir / ONNX_DIR / variant
            target.mkdir(parents=True, exist_ok=True)
            for file_name in ("model.onnx", *VARIANT_SIDE_FILES):
                if (source / file_name).is_file():
                    shutil.copy2(source / file_name, target / file_name)
            variant_paths[variant] = target / "model.onnx"

    tokenizer, model = _save_tokenizer_and_checkpoint(model_dir, out_dir, task)
    say("tokenizer/ and pytorch/ written")

    say(f"parity: PyTorch vs {', '.join(variant_paths)} on {len(parity_texts)} texts")
    parity = _parity(
        model, tokenizer, variant_paths, task, labels, max_length, config, parity_texts, parity_labels
    )
    preferred_cpu = _preferred_cpu_variant(parity, config)
    fp16_ok = "fp16" in parity and parity["fp16"]["passed"] is not False
    report = {
        "task": task,
        "n_texts": len(parity_texts),
        "max_length": max_length,
        "parity_atol": config.parity_atol,
        "min_label_agreement": config.min_label_agreement,
        "max_accuracy_drop": config.max_accuracy_drop,
        "preferred_cpu_variant": preferred_cpu,
        "variants": parity,
    }
    (out_dir / REPORTS_DIR).mkdir(exist_ok=True)
    (out_dir / REPORTS_DIR / PARITY_REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")

    ServingSpec(
        name=name,
        task=task,
        labels=list(labels),
        max_length=max_length,
        variants={v: p.relative_to(out_dir).as_posix() for v, p in variant_paths.items()},
        preferred_cpu_variant=preferred_cpu,
        preferred_gpu_variant="fp16" if fp16_ok else "fp32",
        multi_label=model_config.get("problem_type") == "multi_label_classification",
        extra={
            "exported_from": str(model_dir),
            "opset": config.opset,
            "model_type": model_config["model_type"],
        },
    ).write(out_dir)
    _make_world_readable(out_dir)
    say(
        "export done in {:.1f}s: {}; CPU serves {}".format(
            time.perf_counter() - started,
            ", ".join(
                f"{v} {'ok' if r['passed'] else ('FAILED' if r['passed'] is False else r['note'])}"
                for v, r in parity.items()
            ),
            preferred_cpu,
        )
    )
    return ExportResult(
        bundle_dir=out_dir,
        parity=parity,
        preferred_cpu_variant=preferred_cpu,
        variants=variant_paths,
    )


# --------------------------------------------------------------------------- checks


def _reporter(progress: Progress | None) -> Progress:
    def say(message: str) -> None:
        logger.info("export: %s", message)
        if progress is not None:
            progress(message)

    return say


def check_export_target(out_dir: Path) -> None:
    """Refuse an ``out_dir`` the export would damage: it replaces onnx/, tokenizer/ and pytorch/ there.

    Allowed: a folder that does not exist yet, an empty one, or an earlier export (it holds serving.json and
    reports/parity.json). Never a registered version (a folder with the registry's evidence.json, or anything
    under the registry's artifact store): registered versions are immutable.
    """
    from dapt.settings import artifact_root

    out_dir = Path(out_dir).expanduser().resolve()
    store = artifact_root().expanduser().resolve()
    if out_dir == store or store in out_dir.parents:
        raise ExportError(
            f"--out {out_dir} is inside the registry's artifact store {store}: registered versions are never "
            "overwritten. Export to a new or empty folder outside it (`dapt run` registers a new version)"
        )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file, not a folder: give a new or empty folder")
    if not any(out_dir.iterdir()):
        return
    if (out_dir / REGISTRY_EVIDENCE).exists():
        raise ExportError(
            f"--out {out_dir} holds {REGISTRY_EVIDENCE}: it is a registered model version, which is never "
            "overwritten. Export to a new or empty folder"
        )
    if all((out_dir / marker).is_file() for marker in EXPORT_MARKERS):
        return
    raise ExportError(
        f"--out {out_dir} is not empty and holds no earlier export (no {' and '.join(EXPORT_MARKERS)}); "
        f"exporting would replace {ONNX_DIR}/, {TOKENIZER_DIR}/ and {PYTORCH_DIR}/ in it. Give a new or empty "
        "folder, or empty this one yourself if nothing in it is needed"
    )


def _check_arguments(model_dir, task, labels, max_length, parity_texts, parity_labels) -> None:
    if task not in OPTIMUM_TASKS:
        raise ExportError(f"task must be 'classification' or 'ner', got {task!r}")
    if not model_dir.is_dir():
        raise ExportError(
            f"model_dir {model_dir} does not exist or is not a directory; pass the fine-tuned checkpoint"
        )
    if not labels:
        raise ExportError("labels is empty: pass the class names (or BIO tags) in logit order")
    if max_length < 2:
        raise ExportError(f"max_length must be at least 2, got {max_length}")
    if not parity_texts or not all(isinstance(t, str) and t.strip() for t in parity_texts):
        raise ExportError("parity_texts must be a non-empty list of non-blank strings (a few eval texts)")
    if parity_labels is not None and len(parity_labels) != len(parity_texts):
        raise ExportError(
            f"parity_labels has {len(parity_labels)} items but parity_texts has {len(parity_texts)}; "
            "give one label (or tag sequence) per text"
        )


def _read_model_config(model_dir: Path, task: str, labels: list[str]) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ExportError(
            f"{model_dir} is not a Hugging Face checkpoint: config.json is missing "
            "(pass the folder that fine-tuning saved with save_pretrained)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path} is not valid JSON: {exc}") from None
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (model_dir / p).is_file()]
    if not weights and not list(model_dir.glob("model-*.safetensors")):
        raise ExportError(f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)")
    architectures = config.get("architectures") or []
    suffix = ARCHITECTURE_SUFFIX[task]
    if not any(a.endswith(suffix) for a in architectures):
        raise ExportError(
            f"{model_dir} holds {architectures or 'an unknown architecture'}, but task {task!r} needs a "
            f"*{suffix} checkpoint; fine-tune with the matching task first"
        )
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    if len(id2label) != len(labels):
        raise ExportError(
            f"{model_dir} has {len(id2label)} output labels but {len(labels)} labels were given: {labels}"
        )
    in_order = [id2label[i] for i in sorted(id2label)]
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(in_order))
    if not generic and in_order != list(labels):
        raise ExportError(
            f"labels {labels} do not match the checkpoint's id2label {in_order}; pass them in logit order"
        )
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "vocab.txt").is_file():
        raise ExportError(
            f"{model_dir} has no tokenizer (tokenizer.json or vocab.txt); save it with the model"
        )
    return config


def _clear_previous_export(out_dir: Path, say: Progress) -> None:
    for folder in (ONNX_DIR, TOKENIZER_DIR, PYTORCH_DIR):
        if (out_dir / folder).exists():
            shutil.rmtree(out_dir / folder)
    # A manifest from an earlier export no longer matches the new files; the registry writes a fresh one.
    if (out_dir / MANIFEST).exists():
        (out_dir / MANIFEST).unlink()
        say(f"removed stale {MANIFEST} (the registry writes a new one)")


# --------------------------------------------------------------------------- ONNX variants


def _optimum_export(model_dir: Path, output: Path, task: str, opset: int | None) -> Path:
    import torch
    from optimum.exporters.onnx import main_export

    try:
        with warnings.catch_warnings():
            # tracing BERT's attention mask warns about constants; harmless for these fixed-rank inputs
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            main_export(
                str(model_dir),
                output=output,
                task=OPTIMUM_TASKS[task],
                opset=opset,
                device="cpu",
                do_validation=False,  # our parity check below is stricter and on real texts
                local_files_only=True,
            )
    except Exception as exc:  # Optimum raises many types; the cause matters more than the class
        raise ExportError(f"Optimum could not export {model_dir} to ONNX: {exc}") from exc
    if not (output / "model.onnx").is_file():
        raise ExportError(f"Optimum finished but wrote no model.onnx in {output}")
    return output


def _optimize(plain: Path, output: Path, level: Literal["O2", "O4"]) -> Path:
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    optimization = AutoOptimizationConfig.with_optimization_level(level, for_gpu=level == "O4")
    with _quiet_onnxruntime():
        ORTOptimizer.from_pretrained(plain).optimize(optimization, save_dir=output, file_suffix=None)
    return output


def _quantization_isa() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "avx2"
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def _quantize(plain: Path, output: Path, per_channel: bool) -> Path:
    from optimum.onnxruntime import AutoQuantizationConfig, ORTQuantizer

    make_config = getattr(AutoQuantizationConfig, _quantization_isa())
    quantization = make_config(is_static=False, per_channel=per_channel)
    ORTQuantizer.from_pretrained(plain, file_name="model.onnx").quantize(
        quantization, save_dir=output, file_suffix=None
    )
    return output


class _quiet_onnxruntime:
    """Raise ORT's default log level while building sessions (fp16 on a CPU host logs loud CUDA errors)."""

    def __enter__(self):
        import onnxruntime as ort

        ort.set_default_logger_severity(4)

    def __exit__(self, *exc):
        import onnxruntime as ort

        ort.set_default_logger_severity(2)


# --------------------------------------------------------------------------- tokenizer + checkpoint


def _save_tokenizer_and_checkpoint(model_dir: Path, out_dir: Path, task: str):
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise ExportError(f"{model_dir}: the service needs a fast tokenizer (tokenizer.json); got a slow one")
    tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
    model_class = (
        AutoModelForSequenceClassification if task == "classification" else AutoModelForTokenClassification
    )
    model = model_class.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.save_pretrained(out_dir / PYTORCH_DIR, safe_serialization=True)
    tokenizer.save_pretrained(out_dir / PYTORCH_DIR)  # pytorch/ stays loadable for re-export
    return tokenizer, model


def _make_world_readable(root: Path) -> None:
    """save_pretrained writes 0600 files; a container running as another user must read the bundle."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
        if path.is_dir():
            extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
        os.chmod(path, mode | extra)


# --------------------------------------------------------------------------- parity


def _parity(
    model,
    tokenizer,
    variant_paths: dict[str, Path],
    task: str,
    labels: list[str],
    max_length: int,
    config: ExportConfig,
    texts: list[str],
    gold: Sequence[str] | Sequence[Sequence[str]] | None,
) -> dict[str, dict[str, Any]]:
    import numpy as np
    import torch

    batch = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="np",
        return_offsets_mapping=True,
    )
    offsets = batch.pop("offset_mapping")
    mask = batch["attention_mask"].astype(bool)
    rows = len(texts)
    with torch.inference_mode():
        reference = np.concatenate(
            [
                model(**{k: torch.from_numpy(v[i : i + PARITY_CHUNK]) for k, v in batch.items()})
                .logits.float()
                .numpy()
                for i in range(0, rows, PARITY_CHUNK)
            ]
        )

    gold_per_text = _gold_tags(texts, offsets, mask, gold, labels) if task == "ner" else gold
    records: dict[str, dict[str, Any]] = {}
    for variant, path in variant_paths.items():
        logits = _run_on_cpu(path, batch)
        if logits is None:
            records[variant] = {"passed": None, "note": FP16_NOT_CHECKED}
            continue
        logits = logits.astype(np.float32)
        diff = float(np.abs(logits - reference)[mask if task == "ner" else slice(None)].max())
        same = logits.argmax(-1) == reference.argmax(-1)
        agreement = float(same[mask].mean()) if task == "ner" else float(same.mean())
        passed = diff <= config.parity_atol if variant == "fp32" else agreement >= config.min_label_agreement
        record: dict[str, Any] = {
            "max_abs_diff": diff,
            "label_agreement": agreement,
            "passed": bool(passed),
            "file_mb": round(path.stat().st_size / 2**20, 2),
        }
        if gold is not None:
            record["macro_f1"] = _macro_f1(task, logits, mask, gold_per_text, labels, texts, offsets)
        records[variant] = record
    if gold is not None:
        pytorch_f1 = _macro_f1(task, reference, mask, gold_per_text, labels, texts, offsets)
        for record in records.values():
            if "macro_f1" in record:
                record["macro_f1_drop_vs_pytorch"] = pytorch_f1 - record["macro_f1"]
    return records


def _run_on_cpu(path: Path, batch: dict):
    """Logits of one ONNX file on the CPU provider, or None when ORT cannot run it there (fp16 kernels)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        feeds = {k: v.astype("int64") for k, v in batch.items() if k in wanted}
        rows = len(next(iter(feeds.values())))
        return np.concatenate(
            [
                session.run(None, {k: v[i : i + PARITY_CHUNK] for k, v in feeds.items()})[0]
                for i in range(0, rows, PARITY_CHUNK)
            ]
        )
    except Exception as exc:  # e.g. NOT_IMPLEMENTED: no fp16 kernel for an op on CPU
        logger.info("export: %s cannot run on the CPU provider: %s", path, exc)
        return None


def _word_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, char in enumerate(text + " "):
        if char.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    return spans


def _first_token_per_word(text: str, offsets, mask) -> list[int | None]:
    """Index of the first sub-token of each whitespace word (None when truncated away)."""
    firsts: list[int | None] = []
    for word_start, _ in _word_spans(text):
        index = next((t for t, (s, e) in enumerate(offsets) if mask[t] and e > s and s >= word_start), None)
        firsts.append(index if index is not None and offsets[index][0] == word_start else None)
    return firsts


def _gold_tags(texts, offsets, mask, gold, labels) -> list[list[str]] | None:
    if gold is None:
        return None
    result = []
    for i, (text, tags) in enumerate(zip(texts, gold, strict=True)):
        tags = tags.split() if isinstance(tags, str) else list(tags)
        words = _word_spans(text)
        if len(tags) != len(words):
            raise ExportError(
                f"parity_labels[{i}] has {len(tags)} tags but parity_texts[{i}] has {len(words)} "
                "whitespace-separated words; give one BIO tag per word"
            )
        unknown = sorted(set(tags) - set(labels))
        if unknown:
            raise ExportError(f"parity_labels[{i}] uses tags {unknown} that are not in labels {labels}")
        result.append(tags)
    return result


def _macro_f1(task, logits, mask, gold, labels, texts, offsets) -> float:
    predicted = logits.argmax(-1)
    if task == "classification":
        from sklearn.metrics import f1_score

        names = [labels[i] for i in predicted]
        return float(
            f1_score(
                list(gold), names, average="macro", labels=sorted(set(gold) | set(names)), zero_division=0
            )
        )
    from seqeval.metrics import f1_score as entity_f1

    y_true, y_pred = [], []
    for row, (text, tags) in enumerate(zip(texts, gold, strict=True)):
        firsts = _first_token_per_word(text, offsets[row], mask[row])
        y_true.append(list(tags))
        y_pred.append([labels[predicted[row, t]] if t is not None else "O" for t in firsts])
    return float(entity_f1(y_true, y_pred, average="macro", zero_division=0))


def _preferred_cpu_variant(parity: dict[str, dict[str, Any]], config: ExportConfig) -> str:
    int8 = parity.get("int8")
    if not int8 or not int8.get("passed"):
        return "fp32"
    fp32_f1, int8_f1 = parity["fp32"].get("macro_f1"), int8.get("macro_f1")
    if fp32_f1 is not None and int8_f1 is not None and fp32_f1 - int8_f1 > config.max_accuracy_drop:
        return "fp32"
    return "int8"
