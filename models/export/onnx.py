"""Export a fine-tuned checkpoint to the serving bundle: Optimum ONNX (fp32), int8 and fp16 variants, parity.

The bundle layout is described in :mod:`models.registry.bundle`. What happens, in order::

    model_dir ─► optimum main_export (plain ONNX) ─► O2 graph optimisation ─► onnx/fp32
                                                  ─► O4 fp16 (GPU only)          ─► onnx/fp16
              ─► tokenizer/ (fast tokenizer), pytorch/ (safetensors copy)
              ─► parity: PyTorch vs every variant through the serving predictor (services/predictor.py) at
                 each of ``export.parity_batch_sizes``
              ─► int8 of the plain export, scheme by scheme (``export.int8_schemes``), each judged the same
                 way until one holds (models/export/int8.py) ─► onnx/int8
              ─► reports/parity.json; a variant that fails parity is dropped from serving.json (its numbers
                 stay in the report)

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from models.export.common import ExportError, _optimize, _quiet_onnxruntime, parity_sample  # noqa: F401 - re-exported
from models.export.int8 import (  # noqa: F401 - int8_exclusions, int8_settings_for, quantize_int8 re-exported
    first_int8_that_holds,
    int8_exclusions,
    int8_settings_for,
    quantize_int8,
)
from models.export.parity import (
    compare_variants,
    int8_speed_by_batch,
    int8_speedup,
    preferred_cpu_variant,
    pytorch_reference,
)
from models.recipe import ExportConfig
from models.registry.bundle import (
    MANIFEST,
    ONNX_DIR,
    PYTORCH_DIR,
    REPORTS_DIR,
    SERVING_SPEC,
    TOKENIZER_DIR,
    ServingSpec,
)

logger = logging.getLogger(__name__)

ExportTask = Literal["classification", "ner"]
Progress = Callable[[str], None]

OPTIMUM_TASKS = {"classification": "text-classification", "ner": "token-classification"}
ARCHITECTURE_SUFFIX = {"classification": "ForSequenceClassification", "ner": "ForTokenClassification"}
PARITY_REPORT = "parity.json"
# Files an ONNX variant folder keeps next to model.onnx (Optimum also copies tokenizer files; we do not).
VARIANT_SIDE_FILES = ("config.json", "ort_config.json")
# Every finished export writes both; a folder holding them is an earlier export that may be replaced.
EXPORT_MARKERS = (SERVING_SPEC, f"{REPORTS_DIR}/{PARITY_REPORT}")
# Written only by the registry into a version folder (models/registry/store.py); such a folder is never an --out.
REGISTRY_EVIDENCE = "evidence.json"


@dataclass(frozen=True)
class ExportResult:
    bundle_dir: Path
    parity: dict  # variant name -> parity record (see reports/parity.json), dropped variants included
    preferred_cpu_variant: str
    variants: dict[str, Path]  # variants that serve -> absolute path of their model.onnx
    dropped: dict[str, str] = field(default_factory=dict)  # variant -> why it does not serve


def _export_variants(
    model_dir: Path, out_dir: Path, work: Path, task: ExportTask, config: ExportConfig, say: Progress
) -> tuple[Path, dict[str, Path]]:
    """The plain export (in ``work``) and the fp32 and fp16 variants in ``out_dir/onnx/<variant>`` (variant ->
    model.onnx). int8 comes later, scheme by scheme as parity judges it (models/export/int8.py)."""
    say(f"exporting {model_dir} to ONNX with Optimum (task {OPTIMUM_TASKS[task]})")
    plain = _optimum_export(model_dir, work / "plain", task, config.opset)
    variant_dirs = {"fp32": _optimize(plain, work / "fp32", level="O2")}
    say("fp32: O2 graph optimisation done")
    if "fp16" in config.variants:
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
    return plain, variant_paths


@dataclass(frozen=True)
class _SpecBase:
    """What the serving spec says besides its variants (the same before and after parity)."""

    name: str
    task: ExportTask
    labels: list[str]
    max_length: int
    out_dir: Path
    extra: dict[str, Any]
    multi_label: bool

    def with_int8(self, summary: dict[str, Any]) -> _SpecBase:
        """The same, with the int8 quantization summary the predictor reads (its fp32 fallback margin)."""
        return replace(self, extra={**self.extra, "int8": summary})

    def spec(self, variants: dict[str, Path], cpu: str, gpu: str, dropped: dict[str, str]) -> ServingSpec:
        return ServingSpec(
            name=self.name,
            task=self.task,
            labels=list(self.labels),
            max_length=self.max_length,
            variants={v: p.relative_to(self.out_dir).as_posix() for v, p in variants.items()},
            preferred_cpu_variant=cpu,
            preferred_gpu_variant=gpu,
            multi_label=self.multi_label,
            extra={**self.extra, **({"dropped_variants": dropped} if dropped else {})},
        )


def _drop_failed(parity: dict, variant_paths: dict[str, Path], say: Progress) -> tuple[dict, dict]:
    """(variant -> why it may not serve, the variants that serve); the dropped ones' folders are removed."""
    dropped = {v: "; ".join(r["failures"]) for v, r in parity.items() if v != "fp32" and r["passed"] is False}
    for variant in dropped:
        # Dropped from what serves: the service can never load it; its numbers stay in reports/parity.json.
        # (absent when int8 could not be built)
        shutil.rmtree(variant_paths[variant].parent, ignore_errors=True)
        say(f"{variant}: dropped from serving ({dropped[variant]})")
    return dropped, {v: p for v, p in variant_paths.items() if v not in dropped}


def _write_parity_report(
    out_dir: Path, task: str, max_length: int, config: ExportConfig, **facts: Any
) -> None:
    report = {
        "task": task,
        "n_texts": facts["n_texts"],
        "max_length": max_length,
        "parity_atol": config.parity_atol,
        "min_label_agreement": config.min_label_agreement,
        "max_accuracy_drop": config.max_accuracy_drop,
        "batch_sizes": list(config.parity_batch_sizes),
        "preferred_cpu_variant": facts["preferred_cpu"],
        "preferred_gpu_variant": facts["preferred_gpu"],
        "served": sorted(facts["served"]),
        "dropped": facts["dropped"],
        "int8": facts["quantization"] or None,
        "int8_attempts": facts["attempts"],
        # fp32 over int8 ms per text, worst parity batch size: int8 serves only at >= int8_min_speedup
        "int8_speedup": int8_speedup(facts["parity"]),
        "int8_min_speedup": config.int8_min_speedup,
        "variants": facts["parity"],
    }
    (out_dir / REPORTS_DIR).mkdir(exist_ok=True)
    (out_dir / REPORTS_DIR / PARITY_REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")


def _done_line(seconds: float, parity: dict, preferred_cpu: str, config: ExportConfig) -> str:
    verdicts = ", ".join(
        f"{v} {'ok' if r['passed'] else ('DROPPED' if r['passed'] is False else r['note'])}"
        for v, r in parity.items()
    )
    speed = ""
    ratios = int8_speed_by_batch(parity)  # the parity passes' own timings
    if preferred_cpu == "int8" and ratios:
        batch = max(ratios, key=int)
        speed = f" ({ratios[batch]:.1f}x fp32's speed at batch {batch} in parity)"
    elif (parity.get("int8") or {}).get("passed") and (slowest := int8_speedup(parity)) is not None:
        if slowest < config.int8_min_speedup:  # the serving rule's own figure (preferred_cpu_variant)
            speed = (
                f" (int8 held parity but ran at {slowest:.2f}x fp32's speed, under "
                f"export.int8_min_speedup {config.int8_min_speedup:g})"
            )
    return f"export done in {seconds:.1f}s: {verdicts}; CPU serves {preferred_cpu}{speed}"


@dataclass(frozen=True)
class _Judged:
    """What parity decided: every variant's record, the dropped ones, what serves and what each device prefers."""

    parity: dict[str, dict[str, Any]]
    dropped: dict[str, str]
    served: dict[str, Path]
    preferred_cpu: str
    preferred_gpu: str
    base: _SpecBase  # with the int8 summary of the scheme that was judged last


def _judge_variants(
    model,
    tokenizer,
    base: _SpecBase,
    variant_paths: dict[str, Path],
    plain: Path,
    config: ExportConfig,
    parity_texts: list[str],
    parity_labels,
    say: Progress,
) -> _Judged:
    """Parity of every variant (int8 scheme by scheme), the failed ones dropped, the preferred variants chosen,
    reports/parity.json written."""
    sizes = ", ".join(str(b) for b in config.parity_batch_sizes)
    parity_texts, parity_labels = parity_sample(parity_texts, parity_labels, config.parity_max_texts)
    wanted = [v for v in ("fp32", "int8", "fp16") if v in variant_paths or v in config.variants]
    say(f"parity: PyTorch vs {', '.join(wanted)} on {len(parity_texts)} texts, serving batches of {sizes}")
    reference = pytorch_reference(model, tokenizer, parity_texts, base.max_length, base.task)

    def compare(paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
        return compare_variants(
            reference, base.out_dir, paths, base.task, base.labels, config, parity_texts, parity_labels
        )

    parity = compare(variant_paths)
    paths = dict(variant_paths)
    attempts: list[dict[str, Any]] = []
    if "int8" in config.variants:

        def judge(int8_path: Path, summary: dict[str, Any]) -> dict[str, Any]:
            candidate = base.with_int8(summary)
            candidate.spec({**variant_paths, "int8": int8_path}, "fp32", "fp32", {}).write(base.out_dir)
            return compare({"int8": int8_path})["int8"]

        target = base.out_dir / ONNX_DIR / "int8"
        parity["int8"], summary, attempts = first_int8_that_holds(
            plain, target, plain.parent, config, base.task, base.multi_label, judge, say
        )
        base = base.with_int8(summary)
        paths["int8"] = target / "model.onnx"
    parity = {v: parity[v] for v in wanted}
    dropped, served = _drop_failed(parity, paths, say)
    preferred_cpu = preferred_cpu_variant(parity, config) if "int8" in served else "fp32"
    preferred_gpu = "fp16" if "fp16" in served else "fp32"
    _write_parity_report(
        base.out_dir,
        base.task,
        base.max_length,
        config,
        n_texts=len(parity_texts),
        preferred_cpu=preferred_cpu,
        preferred_gpu=preferred_gpu,
        served=served,
        dropped=dropped,
        quantization=base.extra.get("int8"),
        attempts=attempts,
        parity=parity,
    )
    return _Judged(parity, dropped, served, preferred_cpu, preferred_gpu, base)


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
    embedding: bool = True,
    pooling_from: Path | None = None,
) -> ExportResult:
    """Write the serving bundle for the fine-tuned checkpoint in ``model_dir`` into ``out_dir``.

    ``labels`` are the class names (classification) or BIO tags (NER) in logit order; they must match the
    checkpoint's ``id2label``. ``parity_labels`` (optional) are the gold labels of ``parity_texts``:
    one label per text for classification; for NER one tag per whitespace-separated word of the text
    (a list of tags or one space-separated string), scored with seqeval. ``embedding`` adds the encoder as a
    sentence-embedding model for ``/embed`` (models/export/embedding.py), pooled as the sentence-transformers
    config in ``model_dir`` or ``pooling_from`` (the base model) says.
    """
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_export_target(out_dir)
    say = _reporter(progress)
    _check_arguments(model_dir, task, labels, max_length, parity_texts, parity_labels)
    model_config = _read_model_config(model_dir, task, labels)

    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_export(out_dir, say)
    base = _SpecBase(
        name=name,
        task=task,
        labels=list(labels),
        max_length=max_length,
        out_dir=out_dir,
        extra={
            "exported_from": str(model_dir),
            "opset": config.opset,
            "model_type": model_config["model_type"],
        },
        multi_label=model_config.get("problem_type") == "multi_label_classification",
    )
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as work:
        plain, variant_paths = _export_variants(model_dir, out_dir, Path(work), task, config, say)
        tokenizer, model = _save_tokenizer_and_checkpoint(model_dir, out_dir, task)
        say("tokenizer/ and pytorch/ written")
        # Parity runs the serving predictor on the bundle itself, so the spec must exist first.
        base.spec(variant_paths, "fp32", "fp32", {}).write(out_dir)
        judged = _judge_variants(
            model, tokenizer, base, variant_paths, plain, config, parity_texts, parity_labels, say
        )
    judged.base.spec(judged.served, judged.preferred_cpu, judged.preferred_gpu, judged.dropped).write(out_dir)
    if embedding:
        from models.export.embedding import export_embedding

        export_embedding(
            model_dir,
            out_dir,
            config=config,
            parity_texts=parity_texts,
            max_length=max_length,
            pooling_from=pooling_from,
            progress=say,
        )
    _make_world_readable(out_dir)
    say(_done_line(time.perf_counter() - started, judged.parity, judged.preferred_cpu, config))
    return ExportResult(
        bundle_dir=out_dir,
        parity=judged.parity,
        preferred_cpu_variant=judged.preferred_cpu,
        variants=judged.served,
        dropped=judged.dropped,
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
    from models.settings import artifact_root

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
