"""Evaluation of a fine-tuned model with plain PyTorch (batched inference, no Trainer).

Classification: accuracy, macro/weighted F1, per-class precision/recall/F1/support, per-slice scores, expected
calibration error (10 bins) and eval loss; plots: confusion matrix (counts + row-normalised) and a reliability
diagram. NER: entity-level precision/recall/F1 with seqeval (strict IOB2) overall and per type, token accuracy,
calibration of the first word-piece of each word. models/evaluation/report.py turns the metrics into deltas
against production and a markdown report; models/evaluation/plots.py draws the plots.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.evaluation.plots import plot_confusion_matrix, plot_multilabel_confusion, plot_reliability

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from models.recipe import Recipe

logger = logging.getLogger(__name__)

CALIBRATION_BINS = 10


class EvaluationError(ValueError):
    """Evaluation cannot run with these inputs; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class EvalResult:
    metrics: dict
    plots: list[Path]


# ------------------------------------------------------------------------------------------------ pure metrics


def expected_calibration_error(
    confidences, correct, bins: int = CALIBRATION_BINS
) -> tuple[float, list[dict]]:
    """ECE over equal-width confidence bins: sum_b (n_b / n) * |accuracy_b - confidence_b|.

    Returns the ECE and the bins (lower, upper, count, accuracy, confidence) for the reliability diagram.
    """
    import numpy as np

    confidences = np.asarray(confidences, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidences.size == 0:
        return 0.0, []
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin index: (lower, upper], with 0 in the first bin
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else None
        confidence = float(confidences[members].mean()) if count else None
        if count:
            ece += count / confidences.size * abs(accuracy - confidence)  # type: ignore[operator]  # count > 0
        table.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "accuracy": accuracy,
                "confidence": confidence,
            }
        )
    return float(ece), table


def per_class_table(labels: list[str], precision, recall, f1, support) -> dict:
    """``{label: {precision, recall, f1, support}}`` from sklearn's per-label arrays (in ``labels`` order)."""
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def classification_metrics(
    gold: list[int], predicted: list[int], labels: list[str], slices: list[str] | None = None
) -> dict:
    """Accuracy, macro/weighted F1, per-class P/R/F1/support and (with ``slices``) per-slice scores."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=ids, zero_division=0
    )
    metrics = {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, labels=ids, average="weighted", zero_division=0)),
        "per_class": per_class_table(labels, precision, recall, f1, support),
    }
    if slices is not None:
        per_slice = {}
        for name in sorted({str(s) for s in slices}):
            members = [i for i, s in enumerate(slices) if str(s) == name]
            g = [gold[i] for i in members]
            p = [predicted[i] for i in members]
            present = sorted(set(g) | set(p))
            per_slice[name] = {
                "accuracy": float(accuracy_score(g, p)),
                "macro_f1": float(f1_score(g, p, labels=present, average="macro", zero_division=0)),
                "n": len(members),
            }
        metrics["per_slice"] = per_slice
    return metrics


def ner_entity_metrics(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
    """Entity-level scores with seqeval (strict IOB2): overall micro P/R/F1, macro-F1 over types, per type,
    plus token (word) accuracy."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report(
        true_tags, predicted_tags, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
    )
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in report.items()
        if not name.endswith(" avg")
    }
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    macro = report.get("macro avg", {"f1-score": 0.0})
    words = sum(len(t) for t in true_tags)
    correct = sum(
        a == b for t, p in zip(true_tags, predicted_tags, strict=True) for a, b in zip(t, p, strict=True)
    )
    return {
        "entity_precision": float(micro["precision"]),
        "entity_recall": float(micro["recall"]),
        "entity_f1": float(micro["f1-score"]),
        "macro_f1": float(macro["f1-score"]),
        "per_type": per_type,
        "token_accuracy": correct / words if words else 0.0,
    }


# ---------------------------------------------------------------------------------------------------- inference


def _load(model_dir: Path, task: str):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise EvaluationError(
            f"{model_dir} is not a fine-tuned model directory (no config.json); run finetune first"
        )
    model_class = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    import torch

    model = model_class.from_pretrained(model_dir)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return AutoTokenizer.from_pretrained(model_dir), model


def _batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (less padding), in length order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def predict_classification(tokenizer, model, texts: list[str], max_length: int, batch_size: int = 64):
    """Logits (n, K) as numpy, in input order (batches of similar length, padded per batch)."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for batch in _batches_by_length(lengths, batch_size):
            features = tokenizer(
                [texts[i] for i in batch],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            features = {k: v.to(device) for k, v in features.items()}
            logits[batch] = model(**features).logits.float().cpu().numpy()
    return logits


def predict_ner(tokenizer, model, sentences: list[list[str]], max_length: int, batch_size: int = 64):
    """Per sentence, logits (n_words, K) of each word's first word-piece; words cut by truncation get None."""
    import torch

    device = next(model.parameters()).device
    sentences = [list(s) for s in sentences]
    lengths = [
        len(ids)
        for ids in tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)[
            "input_ids"
        ]
    ]
    results: list[list] = [[] for _ in sentences]
    with torch.inference_mode():
        for batch in _batches_by_length(lengths, batch_size):
            encoded = tokenizer(
                [sentences[i] for i in batch],
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**{k: v.to(device) for k, v in encoded.items()}).logits.float().cpu().numpy()
            for row, index in enumerate(batch):
                per_word: list = [None] * len(sentences[index])
                previous = None
                for position, word_id in enumerate(encoded.word_ids(row)):
                    if word_id is not None and word_id != previous:
                        per_word[word_id] = logits[row, position]
                    previous = word_id
                results[index] = per_word
    return results


def _softmax(logits: np.ndarray) -> np.ndarray:
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


# -------------------------------------------------------------------------------------------------- evaluation


def evaluate_model(
    recipe: Recipe, model_dir: Path, eval_df: pd.DataFrame, out_dir: Path, batch_size: int = 64
) -> EvalResult:
    """Score ``model_dir`` on ``eval_df``; write metrics.json and PNG plots into ``out_dir``."""
    if eval_df is None or len(eval_df) == 0:
        raise EvaluationError(
            "the evaluation set is empty; check data.eval or data.eval_fraction in the recipe"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from models.training.task_model import inference_max_length

    tokenizer, model = _load(model_dir, recipe.task)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    max_length = inference_max_length(recipe, model_dir)
    if recipe.task == "ner":
        metrics, plots = _evaluate_ner(tokenizer, model, labels, eval_df, max_length, batch_size, out_dir)
    elif model.config.problem_type == "multi_label_classification":
        metrics, plots = _evaluate_multi_label(
            tokenizer, model, labels, eval_df, max_length, batch_size, out_dir
        )
    else:
        metrics, plots = _evaluate_classification(
            tokenizer, model, labels, eval_df, max_length, batch_size, out_dir
        )
    metrics["model_dir"] = str(model_dir)
    metrics["task"] = recipe.task
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
    logger.info("evaluation: %s", {k: metrics.get(k) for k in ("accuracy", "macro_f1", "ece")})
    return EvalResult(metrics, plots)


def _label_ids(values, labels: list[str]) -> list[int]:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise EvaluationError(
            f"evaluation labels {unknown[:10]} are not among the model's labels {labels}; "
            "evaluate with data that uses the recipe's data.labels"
        )
    return [index[str(v)] for v in values]


def _evaluate_classification(tokenizer, model, labels, eval_df, max_length, batch_size, out_dir):
    import numpy as np

    missing = [c for c in ("text", "label") if c not in eval_df.columns]
    if missing:
        raise EvaluationError(f"the evaluation frame lacks column(s) {missing}; load it with models.data")
    gold = _label_ids(eval_df["label"], labels)
    logits = predict_classification(
        tokenizer, model, list(eval_df["text"].astype(str)), max_length, batch_size
    )
    probabilities = _softmax(logits)
    predicted = probabilities.argmax(-1).tolist()
    slices = list(eval_df["slice"]) if "slice" in eval_df.columns else None
    metrics = classification_metrics(gold, predicted, labels, slices)
    gold_array = np.asarray(gold)
    confidence = probabilities.max(-1)
    metrics["ece"], bins = expected_calibration_error(confidence, probabilities.argmax(-1) == gold_array)
    metrics["calibration_bins"] = bins
    picked = probabilities[np.arange(len(gold)), gold_array]
    metrics["eval_loss"] = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(gold, predicted, labels=list(range(len(labels))))
    metrics["confusion_matrix"] = matrix.tolist()
    plots = [
        plot_confusion_matrix(matrix, labels, out_dir / "confusion_matrix.png"),
        plot_reliability(bins, metrics["ece"], out_dir / "reliability.png"),
    ]
    return metrics, plots


def _evaluate_multi_label(tokenizer, model, labels, eval_df, max_length, batch_size, out_dir):
    import numpy as np
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    from models.training.task_model import split_multi_label

    index = {label: i for i, label in enumerate(labels)}
    gold = np.zeros((len(eval_df), len(labels)), dtype=int)
    for row, value in enumerate(eval_df["label"]):
        parts = split_multi_label(value)
        unknown = [p for p in parts if p not in index]
        if unknown:
            raise EvaluationError(f"row {row}: labels {unknown} are not among the model's labels {labels}")
        for part in parts:
            gold[row, index[part]] = 1
    logits = predict_classification(
        tokenizer, model, list(eval_df["text"].astype(str)), max_length, batch_size
    )
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    predicted = (probabilities > 0.5).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, zero_division=0)
    metrics = {
        "n": len(eval_df),
        "accuracy": float(accuracy_score(gold, predicted)),  # exact match of the whole label set
        "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, average="weighted", zero_division=0)),
        "micro_f1": float(f1_score(gold, predicted, average="micro", zero_division=0)),
        "per_class": per_class_table(labels, precision, recall, f1, support),
    }
    # each (row, label) decision is a binary prediction with confidence max(p, 1 - p)
    confidence = np.maximum(probabilities, 1 - probabilities).ravel()
    metrics["ece"], bins = expected_calibration_error(confidence, (predicted == gold).ravel())
    metrics["calibration_bins"] = bins
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    metrics["eval_loss"] = float(-(gold * np.log(clipped) + (1 - gold) * np.log(1 - clipped)).mean())
    matrices = multilabel_confusion_matrix(gold, predicted)
    plots = [
        plot_multilabel_confusion(matrices, labels, out_dir / "confusion_matrix.png"),
        plot_reliability(bins, metrics["ece"], out_dir / "reliability.png"),
    ]
    return metrics, plots


def _evaluate_ner(tokenizer, model, labels, eval_df, max_length, batch_size, out_dir):
    import numpy as np

    missing = [c for c in ("tokens", "tags") if c not in eval_df.columns]
    if missing:
        raise EvaluationError(f"the evaluation frame lacks column(s) {missing}; load it with models.data")
    sentences = [list(t) for t in eval_df["tokens"]]
    true_tags = [list(t) for t in eval_df["tags"]]
    unknown = sorted({t for tags in true_tags for t in tags} - set(labels))
    if unknown:
        raise EvaluationError(f"evaluation tags {unknown[:10]} are not among the model's tags {labels}")
    per_sentence = predict_ner(tokenizer, model, sentences, max_length, batch_size)
    predicted_tags, confidences, correct, losses = [], [], [], []
    truncated_words = 0
    gold_ids, pred_ids = [], []
    for tags, word_logits in zip(true_tags, per_sentence, strict=True):
        row = []
        for tag, logit in zip(tags, word_logits, strict=True):
            if logit is None:  # cut by max_length: counts as predicting O
                truncated_words += 1
                row.append("O")
                continue
            probabilities = _softmax(np.asarray(logit))
            choice = int(probabilities.argmax())
            row.append(labels[choice])
            confidences.append(float(probabilities[choice]))
            correct.append(labels[choice] == tag)
            losses.append(-math.log(max(float(probabilities[labels.index(tag)]), 1e-12)))
        predicted_tags.append(row)
        gold_ids += [labels.index(t) for t in tags]
        pred_ids += [labels.index(t) for t in row]
    metrics = {"n": len(eval_df), **ner_entity_metrics(true_tags, predicted_tags)}
    metrics["accuracy"] = metrics["token_accuracy"]
    metrics["truncated_words"] = truncated_words
    metrics["ece"], bins = expected_calibration_error(confidences, correct)
    metrics["calibration_bins"] = bins
    metrics["eval_loss"] = float(np.mean(losses)) if losses else float("nan")
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(gold_ids, pred_ids, labels=list(range(len(labels))))
    metrics["confusion_matrix"] = matrix.tolist()
    plots = [
        plot_confusion_matrix(matrix, labels, out_dir / "confusion_matrix.png"),
        plot_reliability(bins, metrics["ece"], out_dir / "reliability.png"),
    ]
    return metrics, plots
