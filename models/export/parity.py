"""Parity of the exported ONNX variants with PyTorch, measured through the serving predictor
(services/predictor.py) exactly as the service runs them; which variants may serve and which one the CPU prefers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.export.common import ExportError
from models.recipe import ExportConfig

logger = logging.getLogger(__name__)

FP16_NOT_CHECKED = "not checked on this device"
PARITY_CHUNK = 32  # rows per PyTorch forward pass for the reference logits: memory stays bounded


@dataclass(frozen=True)
class Reference:
    """PyTorch's per-text logits on the parity texts, with the token counts and offsets to line them up."""

    logits: list  # per text: (labels,) or (tokens, labels) for NER
    lengths: list[int]
    offsets: list


def pytorch_reference(model, tokenizer, texts: list[str], max_length: int, task: str) -> Reference:
    import torch

    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")
    lengths = [len(ids) for ids in encoded["input_ids"]]
    logits: list = []
    with torch.inference_mode():
        for start in range(0, len(texts), PARITY_CHUNK):
            chunk = {key: values[start : start + PARITY_CHUNK] for key, values in encoded.items()}
            batch = model(**tokenizer.pad(chunk, return_tensors="pt")).logits.float().numpy()
            logits += _per_text(batch, lengths[start : start + PARITY_CHUNK], task)
    return Reference(logits, lengths, offsets)


def compare_variants(
    reference: Reference,
    bundle_dir: Path,
    variant_paths: dict[str, Path],
    task: str,
    labels: list[str],
    config: ExportConfig,
    texts: list[str],
    gold: Sequence[str] | Sequence[Sequence[str]] | None,
) -> dict[str, dict[str, Any]]:
    """Parity records of the bundle's variants against PyTorch's ``reference``, each run the way the service
    runs it: the serving predictor, its tokenizer and dynamic padding, at each batch size in
    ``config.parity_batch_sizes``. The worst batch size counts."""
    texts = list(texts)
    lengths, offsets = reference.lengths, reference.offsets
    gold_per_text = _gold_tags(texts, gold, labels) if task == "ner" else gold
    pytorch_f1 = (
        _macro_f1(task, reference.logits, gold_per_text, labels, texts, offsets) if gold is not None else None
    )
    served = (
        [_first_token_per_word(t, o) for t, o in zip(texts, offsets, strict=True)] if task == "ner" else None
    )
    records: dict[str, dict[str, Any]] = {}
    for variant, path in variant_paths.items():
        by_batch: dict[str, dict[str, Any]] = {}
        for batch_size in config.parity_batch_sizes:
            served_run = _serving_logits(bundle_dir, variant, texts, batch_size, lengths, task)
            if served_run is None:
                break
            outputs, ms_per_text = served_run
            diffs = [float(abs(o - r).max()) for o, r in zip(outputs, reference.logits, strict=True)]
            same = [o.argmax(-1) == r.argmax(-1) for o, r in zip(outputs, reference.logits, strict=True)]
            if (
                served is not None
            ):  # NER: the service reads a word's tag off its first sub-token only: judge those
                same = [
                    s[[t for t in firsts if t is not None]] for s, firsts in zip(same, served, strict=True)
                ]
            record = {
                "max_abs_diff": max(diffs),
                "label_agreement": float(sum(s.sum() for s in same) / sum(s.size for s in same)),
                "ms_per_text": round(ms_per_text, 3),  # this machine, this moment: a hint, not a benchmark
            }
            if gold is not None:
                record["macro_f1"] = _macro_f1(task, outputs, gold_per_text, labels, texts, offsets)
            by_batch[str(batch_size)] = record
        if not by_batch:
            records[variant] = {"passed": None, "note": FP16_NOT_CHECKED}
            continue
        worst = {
            "max_abs_diff": max(r["max_abs_diff"] for r in by_batch.values()),
            "label_agreement": min(r["label_agreement"] for r in by_batch.values()),
        }
        if gold is not None:
            worst["macro_f1"] = min(r["macro_f1"] for r in by_batch.values())
            worst["macro_f1_drop_vs_pytorch"] = pytorch_f1 - worst["macro_f1"]
        failures = parity_failures(variant, worst, config)
        records[variant] = {
            **worst,
            "passed": not failures,
            "failures": failures,
            "by_batch_size": by_batch,
            "file_mb": round(path.stat().st_size / 2**20, 2),
        }
    return records


def parity_failures(variant: str, worst: dict[str, Any], config: ExportConfig) -> list[str]:
    """Why a variant may not serve (empty when it may): fp32 must match PyTorch's logits; the others must
    agree on labels and keep macro-F1 (entity F1 for NER) within the budget."""
    if variant == "fp32":
        if worst["max_abs_diff"] > config.parity_atol:
            return [f"max |logit diff| {worst['max_abs_diff']:.2e} > {config.parity_atol:.0e}"]
        return []
    failures = []
    if worst["label_agreement"] < config.min_label_agreement:
        failures.append(f"label agreement {worst['label_agreement']:.4f} < {config.min_label_agreement}")
    drop = worst.get("macro_f1_drop_vs_pytorch")
    if drop is not None and drop > config.max_accuracy_drop:
        failures.append(f"macro-F1 drop {100 * drop:.2f} points > {100 * config.max_accuracy_drop:.2f}")
    return failures


def _per_text(logits, lengths: list[int], task: str) -> list:
    """One row per text: (labels,) for classification, (its own tokens, labels) for NER (padding cut off)."""
    if task == "classification":
        return [logits[row] for row in range(len(lengths))]
    return [logits[row, :n] for row, n in enumerate(lengths)]


def _serving_logits(bundle_dir: Path, variant: str, texts: list[str], batch_size: int, lengths, task: str):
    """Per-text logits of one variant through the serving predictor at ``batch_size`` texts per call and the
    milliseconds per text that took (tokenizing included), or None when ONNX Runtime cannot run it on the CPU
    (fp16 kernels)."""
    from services.predictor import OnnxPredictor

    try:
        predictor = OnnxPredictor(bundle_dir, variant=variant, providers=["CPUExecutionProvider"])
        served = [sum(e.attention_mask) for e in predictor.tokenizer.encode_batch(texts[:batch_size])]
        if served != lengths[: len(served)]:
            raise ExportError(
                f"the serving tokenizer splits texts into {served[:5]} tokens, the checkpoint's into "
                f"{lengths[:5]}; the bundle's tokenizer.json does not match the model"
            )
        outputs: list = []
        started = time.perf_counter()
        for start in range(0, len(texts), batch_size):
            logits = predictor.logits(texts[start : start + batch_size])
            outputs += _per_text(logits, lengths[start : start + batch_size], task)
        return outputs, 1000 * (time.perf_counter() - started) / len(texts)
    except ExportError:
        raise
    except Exception as exc:  # e.g. NOT_IMPLEMENTED: no fp16 kernel for an op on CPU
        logger.info("export: %s cannot run on the CPU provider: %s", variant, exc)
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


def _first_token_per_word(text: str, offsets) -> list[int | None]:
    """Index of the first sub-token of each whitespace word (None when truncated away)."""
    firsts: list[int | None] = []
    for word_start, _ in _word_spans(text):
        index = next((t for t, (s, e) in enumerate(offsets) if e > s and s >= word_start), None)
        firsts.append(index if index is not None and offsets[index][0] == word_start else None)
    return firsts


def _gold_tags(texts, gold, labels) -> list[list[str]] | None:
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


def _macro_f1(task, per_text_logits, gold, labels, texts, offsets) -> float:
    """Macro-F1 of the argmax labels (classification), or seqeval entity F1 over first sub-tokens (NER)."""
    if task == "classification":
        from sklearn.metrics import f1_score

        names = [labels[int(logits.argmax())] for logits in per_text_logits]
        return float(
            f1_score(
                list(gold), names, average="macro", labels=sorted(set(gold) | set(names)), zero_division=0
            )
        )
    from seqeval.metrics import f1_score as entity_f1
    from seqeval.scheme import IOB2

    y_true, y_pred = [], []
    for logits, text, tags, text_offsets in zip(per_text_logits, texts, gold, offsets, strict=True):
        predicted = logits.argmax(-1)
        firsts = _first_token_per_word(text, text_offsets)
        y_true.append(list(tags))
        y_pred.append([labels[predicted[t]] if t is not None else "O" for t in firsts])
    # strict IOB2, as evaluation scores and the service decodes: an I-X that continues no X span is no entity
    return float(entity_f1(y_true, y_pred, average="macro", mode="strict", scheme=IOB2, zero_division=0))


def int8_speed_by_batch(parity: dict[str, dict[str, Any]]) -> dict[str, float]:
    """fp32's ms per text over int8's at each parity batch size both were timed at."""
    fp32 = (parity.get("fp32") or {}).get("by_batch_size") or {}
    int8 = (parity.get("int8") or {}).get("by_batch_size") or {}
    return {
        batch: fp32[batch]["ms_per_text"] / int8[batch]["ms_per_text"]
        for batch in fp32
        if (fp32[batch].get("ms_per_text") or 0) > 0 and ((int8.get(batch) or {}).get("ms_per_text") or 0) > 0
    }


def int8_speedup(parity: dict[str, dict[str, Any]]) -> float | None:
    """fp32's ms per text over int8's, at the parity batch size where int8 gains least; None without timings."""
    ratios = int8_speed_by_batch(parity)
    return min(ratios.values()) if ratios else None


def preferred_cpu_variant(parity: dict[str, dict[str, Any]], config: ExportConfig) -> str:
    int8 = parity.get("int8")
    if not int8 or not int8.get("passed"):
        return "fp32"
    fp32_f1, int8_f1 = parity["fp32"].get("macro_f1"), int8.get("macro_f1")
    if fp32_f1 is not None and int8_f1 is not None and fp32_f1 - int8_f1 > config.max_accuracy_drop:
        return "fp32"
    speedup = int8_speedup(parity)
    if config.int8_min_speedup > 0 and speedup is not None and speedup < config.int8_min_speedup:
        return "fp32"  # int8 only trades exactness for speed: slower than fp32 it buys nothing
    return "int8"
