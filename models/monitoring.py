"""Live drift against a version's training profile, and the prediction log's layout: pure computation.

The service (services/drift.py, services/prediction_log.py) and the `monitor` flow (flows/monitor.py) share
what is here, so a drift figure in ``/metadata`` and in the flow's report mean the same thing. Standard
library and numpy only at import (the serving process reads this module); matplotlib inside ``plot_drift``.

Each live text is summarised as :data:`TextStats` ``(tokens, words, oov_words)``, counted as the training
profile counts them (``expectations/drift.py``: subword tokens without special tokens; a word is out of
vocabulary when the tokenizer splits it into [UNK] or 3+ pieces). The reference is the ``task`` section of
the profile a version is registered with (``evidence["profile"]["task"]``): its length histogram edges and
shares, its OOV rate and its label shares (classes, or entity types for NER).

Prediction log: JSON lines under ``<root>/<model>/``: the file being written is ``predictions.jsonl``;
rotated files are ``predictions-<UTC time>.jsonl``. One record per logged text::

    {"time": "2026-11-30T20:00:00.123+00:00", "model": "finsent", "version": "3", "task": "classification",
     "latency_ms": 12.5, "label": "positive", "score": 0.93, "tokens": 17, "words": 12, "oov_words": 0,
     "text_sha256": "…"}                 # or "text": "…" in text mode
    # NER: "entities": [{"label", "start", "end", "score"}] instead of label/score (span texts only in text mode)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TextStats = tuple[int, int, int]  # (subword tokens, words, out-of-vocabulary words)
STATISTICS = ("length", "oov_rate", "labels")
LEVELS = ("ok", "warn", "fail")
LOG_FILE = "predictions.jsonl"
ROTATED_PREFIX = "predictions-"


# ---------------------------------------------------------------------------------------------- reference


def reference_profile(evidence: dict[str, Any] | None) -> dict[str, Any] | None:
    """The profile live inputs are compared with: the ``task`` section of the version's data profile (what the
    model was fine-tuned on), else the corpus section; None when the version has no profile."""
    profile = (evidence or {}).get("profile")
    if not isinstance(profile, dict):
        return None
    if "length" in profile:
        return profile
    for section in ("task", "corpus"):
        if isinstance(profile.get(section), dict) and "length" in profile[section]:
            return profile[section]
    return None


def monitor_settings(evidence: dict[str, Any] | None) -> Any:
    """The version's ``monitor`` recipe section (models.recipe.MonitorConfig); defaults for versions trained
    before the section existed."""
    from models.recipe import MonitorConfig

    recipe = (evidence or {}).get("recipe")
    raw = recipe.get("monitor") if isinstance(recipe, dict) else None
    return MonitorConfig.model_validate(raw or {})


# ---------------------------------------------------------------------------------------------- statistics


def _tvd(p: dict[Any, float], q: dict[Any, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def length_shares(tokens: Sequence[int], edges: Sequence[float]) -> list[float]:
    """Share of texts per length bin: [edges[i], edges[i+1]), the last bin open-ended (as the profile bins)."""
    import numpy as np

    bins = [*edges, math.inf]
    counts = np.histogram(np.asarray(tokens, dtype=float), bins=bins)[0]
    return [float(c) / max(len(tokens), 1) for c in counts]


def label_shares(labels: Iterable[str]) -> dict[str, float]:
    counts = Counter(labels)
    total = sum(counts.values())
    return {label: n / total for label, n in sorted(counts.items())} if total else {}


def drift_statistics(
    stats: Sequence[TextStats], labels: Sequence[str], reference: dict[str, Any]
) -> dict[str, float | None]:
    """Each statistic's distance in [0, 1] between live texts and the reference profile (None when it cannot
    be measured: no texts, no OOV rate or labels in the profile, no predicted labels)."""
    result: dict[str, float | None] = dict.fromkeys(STATISTICS)
    if not stats:
        return result
    tokens = [s[0] for s in stats]
    histogram = (reference.get("length") or {}).get("histogram") or {}
    if histogram.get("edges") and histogram.get("shares"):
        live = length_shares(tokens, histogram["edges"])
        result["length"] = _tvd(dict(enumerate(live)), dict(enumerate(histogram["shares"])))
    words = sum(s[1] for s in stats)
    if reference.get("oov_rate") is not None and words:
        result["oov_rate"] = abs(sum(s[2] for s in stats) / words - float(reference["oov_rate"]))
    if reference.get("labels") and labels:
        result["labels"] = _tvd(label_shares(labels), reference["labels"])
    return {k: None if v is None else round(min(max(v, 0.0), 1.0), 6) for k, v in result.items()}


def assess(
    statistics: dict[str, float | None], config: Any, texts: int, labelled: int | None = None
) -> dict[str, Any]:
    """Statistics with their thresholds and levels; the worst level overall. A statistic is judged only with
    ``config.min_texts`` texts behind it (``labelled`` predicted labels for ``labels``); until then it is
    ``"waiting"``, and so is the overall status when nothing could be judged yet."""
    judged: dict[str, dict[str, Any]] = {}
    worst = None
    for name in STATISTICS:
        threshold = getattr(config, name)
        value = statistics.get(name)
        behind = labelled if name == "labels" and labelled is not None else texts
        if value is None:
            status = "unmeasured"
        elif behind < config.min_texts:
            status = "waiting"
        else:
            status = "fail" if value >= threshold.fail else "warn" if value >= threshold.warn else "ok"
            if worst is None or LEVELS.index(status) > LEVELS.index(worst):
                worst = status
        judged[name] = {"value": value, "warn": threshold.warn, "fail": threshold.fail, "status": status}
    return {"status": worst or "waiting", "texts": texts, "statistics": judged}


def reaches(status: str, level: str) -> bool:
    """Whether a drift status is at ``level`` (warn or fail) or worse; ``never`` is never reached."""
    return level in LEVELS and status in LEVELS and LEVELS.index(status) >= LEVELS.index(level)


# ---------------------------------------------------------------------------------------------- the log


def log_folder(root: Path, name: str) -> Path:
    return Path(root) / name


def log_files(root: Path, name: str) -> list[Path]:
    """The model's log files, oldest first (rotated ones by their time stamp, then the one being written)."""
    folder = log_folder(root, name)
    if not folder.is_dir():
        return []
    rotated = sorted(folder.glob(f"{ROTATED_PREFIX}*.jsonl"))
    current = folder / LOG_FILE
    return rotated + ([current] if current.is_file() else [])


def read_prediction_log(
    root: Path, name: str, version: str | int | None = None, last: int | None = None
) -> list[dict[str, Any]]:
    """Records of ``name`` (of ``version`` only, when given), oldest first; the ``last`` N when given. A line
    cut short by a crash (the writer appends whole lines, but a disk can fill) is skipped."""
    records: list[dict[str, Any]] = []
    for path in log_files(root, name):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(record, dict):
                    continue
                if version is not None and str(record.get("version")) != str(version):
                    continue
                records.append(record)
    return records[-last:] if last else records


def record_labels(record: dict[str, Any]) -> list[str]:
    """The predicted labels of one record: its class, or the type of each entity found."""
    if record.get("label") is not None:
        return [str(record["label"])]
    return [str(e["label"]) for e in record.get("entities") or [] if isinstance(e, dict) and "label" in e]


def drift_from_records(
    records: Sequence[dict[str, Any]], reference: dict[str, Any], config: Any
) -> dict[str, Any]:
    """The drift report of logged records (the ``config.window`` most recent) against the reference."""
    window = list(records)[-config.window :]
    stats = [
        (int(r["tokens"]), int(r["words"]), int(r["oov_words"]))
        for r in window
        if all(isinstance(r.get(k), int) for k in ("tokens", "words", "oov_words"))
    ]
    labels = [label for r in window for label in record_labels(r)]
    report = assess(drift_statistics(stats, labels, reference), config, len(stats), len(labels))
    histogram = (reference.get("length") or {}).get("histogram") or {}
    report["distributions"] = {
        "length_edges": histogram.get("edges"),
        "length_live": length_shares([s[0] for s in stats], histogram["edges"])
        if histogram.get("edges")
        else None,
        "length_reference": histogram.get("shares"),
        "labels_live": label_shares(labels),
        "labels_reference": reference.get("labels") or {},
        "oov_live": (sum(s[2] for s in stats) / max(sum(s[1] for s in stats), 1)) if stats else None,
        "oov_reference": reference.get("oov_rate"),
    }
    return report


def plot_drift(report: dict[str, Any], title: str, path: Path) -> Path:
    """Three panels: token-length shares and label shares (training vs live), and each statistic against its
    warn and fail levels. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = report.get("distributions") or {}
    figure, (lengths, labels, levels) = plt.subplots(1, 3, figsize=(15, 4.5))
    try:
        edges = shapes.get("length_edges") or []
        names = [f"{int(a)}-{int(b) - 1}" for a, b in zip(edges, edges[1:], strict=False)]
        names += [f"{int(edges[-1])}+"] if edges else []
        x = np.arange(len(names))
        for offset, (key, label) in enumerate((("length_reference", "training"), ("length_live", "live"))):
            values = shapes.get(key) or [0.0] * len(names)
            lengths.bar(x + (offset - 0.5) * 0.4, values, width=0.4, label=label)
        lengths.set_xticks(x, names, rotation=45, fontsize=8)
        lengths.set_xlabel("tokens per text")
        lengths.set_ylabel("share of texts")
        lengths.legend()
        classes = sorted(set(shapes.get("labels_reference") or {}) | set(shapes.get("labels_live") or {}))
        x = np.arange(len(classes))
        for offset, (key, label) in enumerate(
            (("labels_reference", "training"), ("labels_live", "predicted"))
        ):
            shares = shapes.get(key) or {}
            labels.bar(
                x + (offset - 0.5) * 0.4, [shares.get(c, 0.0) for c in classes], width=0.4, label=label
            )
        labels.set_xticks(x, classes, rotation=45, fontsize=8)
        labels.set_ylabel("share")
        labels.legend()
        judged = report.get("statistics") or {}
        x = np.arange(len(judged))
        values = [(judged[k]["value"] or 0.0) for k in judged]
        colours = {"fail": "tab:red", "warn": "tab:orange", "ok": "tab:green"}
        levels.bar(x, values, color=[colours.get(judged[k]["status"], "tab:gray") for k in judged])
        for i, name in enumerate(judged):
            levels.hlines(judged[name]["warn"], i - 0.4, i + 0.4, colors="tab:orange", linestyles="--")
            levels.hlines(judged[name]["fail"], i - 0.4, i + 0.4, colors="tab:red")
        levels.set_xticks(x, list(judged))
        levels.set_ylabel("distance (dashed: warn, solid: fail)")
        figure.suptitle(title)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path
