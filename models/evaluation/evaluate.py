"""Evaluation of a fine-tuned model with plain PyTorch (batched inference, no Trainer).

Classification: accuracy, macro/weighted F1, per-class precision/recall/F1/support, per-slice scores, expected
calibration error (10 bins) and eval loss; plots: confusion matrix (counts + row-normalised) and a reliability
diagram. NER: entity-level precision/recall/F1 with seqeval (strict IOB2) overall and per type, token accuracy,
calibration of the first word-piece of each word. ``compare_with_production`` and ``write_report`` turn the
metrics into deltas and a markdown report.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from models.recipe import Recipe

logger = logging.getLogger(__name__)

CALIBRATION_BINS = 10
COMPARED_METRICS = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "ece",
    "eval_loss",
    "entity_f1",
    "entity_precision",
    "entity_recall",
    "token_accuracy",
)
LOWER_IS_BETTER = {"ece", "eval_loss"}


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
    from models.training.task_model import model_max_length

    tokenizer, model = _load(model_dir, recipe.task)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    max_length = model_max_length(recipe, model_dir)
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


# ------------------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix, labels: list[str], path: Path) -> Path:
    """Counts (left) and row-normalised rates (right): rows are the true labels."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for axis, values, title, fmt in (
        (axes[0], matrix, "counts", "d"),
        (axes[1], normalised, "row-normalised", ".2f"),
    ):
        image = axis.imshow(values, cmap="Blues", vmin=0)
        axis.set_title(title)
        axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        limit = values.max() if values.size else 0
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                axis.text(
                    j,
                    i,
                    format(values[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if limit and values[i, j] > 0.6 * limit else "black",
                )
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_multilabel_confusion(matrices, labels: list[str], path: Path) -> Path:
    """One 2x2 matrix (no/yes) per label for multi-label models."""
    plt = _pyplot()
    columns = min(4, len(labels))
    rows = math.ceil(len(labels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        if index >= len(labels):
            axis.axis("off")
            continue
        matrix = matrices[index]
        axis.imshow(matrix, cmap="Blues", vmin=0)
        axis.set_title(labels[index])
        axis.set_xticks([0, 1], ["no", "yes"])
        axis.set_yticks([0, 1], ["no", "yes"])
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        for i in range(2):
            for j in range(2):
                axis.text(j, i, str(matrix[i, j]), ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_reliability(bins: list[dict], ece: float, path: Path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, plus the bin counts."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 1.0 / max(len(bins), 1)
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    top.bar(
        centres,
        [b["accuracy"] or 0.0 for b in bins],
        width=width * 0.95,
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"reliability (ECE {ece:.3f})")
    top.legend(loc="upper left")
    bottom.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="tab:orange")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


# ----------------------------------------------------------------------------------------- comparison + report


def compare_with_production(candidate_metrics: dict, production_metrics: dict | None) -> dict:
    """Per-metric deltas (candidate - production) for the scalar metrics both have.

    ``improved`` says whether the change is for the better (ECE and loss: lower is better). Without a
    production model every delta is None and ``has_production`` is False.
    """
    deltas = {}
    for name in COMPARED_METRICS:
        value = candidate_metrics.get(name)
        if not isinstance(value, (int, float)):
            continue
        baseline = (production_metrics or {}).get(name)
        baseline = baseline if isinstance(baseline, (int, float)) else None
        delta = None if baseline is None else float(value) - float(baseline)
        improved = None if delta is None else (delta < 0 if name in LOWER_IS_BETTER else delta > 0)
        deltas[name] = {
            "candidate": float(value),
            "production": baseline,
            "delta": delta,
            "improved": improved,
        }
    return {"has_production": production_metrics is not None, "metrics": deltas}


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_report(
    path: Path,
    metrics: dict,
    *,
    title: str = "Evaluation report",
    comparison: dict | None = None,
    plots: list[Path] | None = None,
    params: dict | None = None,
) -> Path:
    """A markdown report: headline metrics, per-class (or per-type), per-slice, comparison with production,
    the hyperparameters, and links to the plots (relative to the report)."""
    path = Path(path)
    lines = [f"# {title}", ""]
    headline = [
        k
        for k in (
            "n",
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "micro_f1",
            "entity_precision",
            "entity_recall",
            "entity_f1",
            "token_accuracy",
            "ece",
            "eval_loss",
        )
        if k in metrics
    ]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_number(metrics[k])} |" for k in headline]
    lines.append("")
    for key, heading in (("per_class", "Per class"), ("per_type", "Per entity type")):
        if metrics.get(key):
            lines += [
                f"## {heading}",
                "",
                "| label | precision | recall | f1 | support |",
                "|---|---|---|---|---|",
            ]
            for name, row in metrics[key].items():
                lines.append(
                    f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | "
                    f"{row['support']} |"
                )
            lines.append("")
    if metrics.get("per_slice"):
        lines += ["## Per slice", "", "| slice | n | accuracy | macro_f1 |", "|---|---|---|---|"]
        for name, row in metrics["per_slice"].items():
            lines.append(f"| {name} | {row['n']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} |")
        lines.append("")
    if comparison is not None:
        lines += ["## Candidate vs production", ""]
        if not comparison.get("has_production"):
            lines += ["No production model yet: nothing to compare with.", ""]
        else:
            lines += ["| metric | candidate | production | delta | better |", "|---|---|---|---|---|"]
            for name, row in comparison["metrics"].items():
                delta = "–" if row["delta"] is None else f"{row['delta']:+.4f}"
                better = {True: "yes", False: "no", None: "–"}[row["improved"]]
                lines.append(
                    f"| {name} | {_number(row['candidate'])} | {_number(row['production'])} | {delta} | "
                    f"{better} |"
                )
            lines.append("")
    if params:
        lines += ["## Hyperparameters", "", "| name | value |", "|---|---|"]
        lines += [
            f"| {k} | {v} |"
            for k, v in params.items()
            if not isinstance(v, (list, dict)) or k in ("unfreeze_schedule", "labels")
        ]
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            plot = Path(plot)
            try:
                target = plot.resolve().relative_to(path.parent.resolve())
            except ValueError:
                target = plot
            lines.append(f"![{plot.stem}]({target.as_posix()})")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
