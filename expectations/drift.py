"""Data profiles and drift: has the data moved away from what the production model was trained on?

A profile is plain JSON (stored with a registered model as its reference). ``compare_profiles`` turns two
profiles into one distance in [0, 1]: the largest of the label-distribution total-variation distance, the
length-histogram total-variation distance, the normalised shift of length quantiles and the change of the
out-of-vocabulary rate, over every section (``corpus``, ``task``) both profiles have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from expectations.derived import TokenCounter

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PROFILE_VERSION = 1
OOV_SAMPLE_ROWS = 20_000


def profile_data(
    texts: Sequence[str],
    labels: Sequence[str] | None = None,
    tokenizer_file: Path | None = None,
    *,
    counter: TokenCounter | None = None,
    lengths: Sequence[int] | None = None,
) -> dict:
    """Profile one set of texts: row count, length quantiles and histogram, label shares, OOV rate.

    Lengths are subword tokens of the base model's tokenizer (``tokenizer_file`` or ``counter``), or
    whitespace words without one (``length_unit`` says which); pass ``lengths`` when already counted. The
    OOV rate is the share of words the tokenizer splits into [UNK] or 3+ pieces, measured on up to
    OOV_SAMPLE_ROWS evenly spaced texts: high values mean the vocabulary fits the domain poorly.
    """
    import numpy as np
    import pandas as pd

    from expectations.derived import LENGTH_BIN_EDGES, TokenCounter

    counter = counter or TokenCounter(tokenizer_file)
    series = pd.Series(list(texts), dtype=object).fillna("").astype(str)
    counted = counter.count(series).tokens if lengths is None else lengths
    lengths_array = np.asarray(counted, dtype=float)
    oov_rate = None
    if counter.tokenizer is not None:
        step = max(1, len(series) // OOV_SAMPLE_ROWS)
        sample = counter.count(series.iloc[::step])
        oov_rate = float(sample.oov_words.sum() / sample.words.sum()) if sample.words.sum() else 0.0
    edges = [*LENGTH_BIN_EDGES, np.inf]
    histogram = np.histogram(lengths_array, bins=edges)[0] if len(lengths_array) else np.zeros(len(edges) - 1)
    shares = histogram / max(len(lengths_array), 1)
    profile = {
        "version": PROFILE_VERSION,
        "rows": len(series),
        "length_unit": counter.unit,
        "length": {
            "mean": float(lengths_array.mean()) if len(lengths_array) else 0.0,
            "quantiles": {
                f"p{round(q * 100):02d}": float(np.quantile(lengths_array, q)) if len(lengths_array) else 0.0
                for q in QUANTILES
            },
            "histogram": {"edges": list(LENGTH_BIN_EDGES), "shares": [round(float(s), 6) for s in shares]},
        },
        "oov_rate": oov_rate,
        "labels": None,
    }
    if labels is not None:
        label_counts = pd.Series(list(labels), dtype=object).value_counts(normalize=True)
        profile["labels"] = {str(k): round(float(v), 6) for k, v in sorted(label_counts.items())}
    return profile


def _sections(profile: dict) -> dict[str, dict]:
    """A single profile is its own section; a mapping of profiles (as the runner stores) has several."""
    if "length" in profile:
        return {"data": profile}
    return {name: p for name, p in profile.items() if isinstance(p, dict) and "length" in p}


def _tvd(p: dict[Any, float], q: dict[Any, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def compare_profiles(current: dict, reference: dict, warn: float, fail: float) -> dict:
    """Distance in [0, 1] between two profiles and a status: ``ok`` below ``warn``, ``fail`` at ``fail``."""
    components: dict[str, float] = {}
    notes: list[str] = []
    cur_sections, ref_sections = _sections(current), _sections(reference)
    for name in sorted(set(cur_sections) & set(ref_sections)):
        cur, ref = cur_sections[name], ref_sections[name]
        if cur.get("labels") and ref.get("labels"):
            components[f"{name}.labels_tvd"] = _tvd(cur["labels"], ref["labels"])
        if cur.get("length_unit") != ref.get("length_unit"):
            notes.append(
                f"{name}: lengths measured in {cur.get('length_unit')} vs {ref.get('length_unit')}; skipped"
            )
        else:
            cur_hist, ref_hist = cur["length"]["histogram"], ref["length"]["histogram"]
            if cur_hist["edges"] == ref_hist["edges"]:
                components[f"{name}.length_histogram_tvd"] = _tvd(
                    dict(enumerate(cur_hist["shares"])), dict(enumerate(ref_hist["shares"]))
                )
            shifts = [
                abs(cur["length"]["quantiles"][q] - ref["length"]["quantiles"][q])
                / max(cur["length"]["quantiles"][q], ref["length"]["quantiles"][q], 1.0)
                for q in cur["length"]["quantiles"]
                if q in ref["length"]["quantiles"]
            ]
            if shifts:
                components[f"{name}.length_quantile_shift"] = sum(shifts) / len(shifts)
        if cur.get("oov_rate") is not None and ref.get("oov_rate") is not None:
            components[f"{name}.oov_rate_change"] = abs(cur["oov_rate"] - ref["oov_rate"])
    missing = sorted(set(ref_sections) - set(cur_sections))
    if missing:
        notes.append(f"sections only in the reference: {missing}")
    components = {k: round(min(max(v, 0.0), 1.0), 6) for k, v in components.items()}
    worst = max(components, key=lambda k: components[k]) if components else None
    distance = components[worst] if worst else 0.0
    worst = worst if distance > 0 else None
    # A zero distance is never drift, even with a zero threshold.
    status = "ok" if distance <= 0 else "fail" if distance >= fail else "warn" if distance >= warn else "ok"
    return {
        "distance": distance,
        "status": status,
        "worst": worst,
        "warn": warn,
        "fail": fail,
        "components": components,
        "notes": notes,
    }
