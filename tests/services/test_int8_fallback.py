"""int8 with an fp32 fallback for near-ties (export.int8_fp32_fallback_margin): dynamic int8 moves logits a little,
which flips only texts whose top two classes are close, so the predictor answers those with fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from services.predictor import OnnxPredictor
from tests.services.conftest import CLASS_LABELS, make_checkpoint

TEXTS = [
    "Aspirin eased the headache.",
    "No adverse events were reported",
    "fine",
    "shares fell sharply today",
]


def _export(checkpoint: Path, out: Path, margin: float) -> Path:
    from models.export.onnx import export_bundle
    from models.recipe import ExportConfig

    export_bundle(
        checkpoint,
        out,
        name="tiny-fallback",
        task="classification",
        labels=CLASS_LABELS,
        max_length=24,
        config=ExportConfig(int8_fp32_fallback_margin=margin, int8_min_speedup=0),
        parity_texts=TEXTS,
        embedding=False,
    )
    return out


def test_near_ties_are_answered_by_fp32_and_counted(tiny_base_model, tmp_path):
    checkpoint = make_checkpoint(tiny_base_model, tmp_path / "checkpoint", "classification", CLASS_LABELS)
    every = _export(checkpoint, tmp_path / "every", margin=1.0)  # every text counts as a near-tie
    spec = json.loads((every / "serving.json").read_text(encoding="utf-8"))
    assert spec["extra"]["int8"]["fp32_fallback_margin"] == 1.0
    int8 = OnnxPredictor(every, variant="int8")
    fp32 = OnnxPredictor(every, variant="fp32")
    np.testing.assert_allclose(int8.logits(TEXTS), fp32.logits(TEXTS), atol=1e-6)
    assert [a["label"] for a in int8.classify(TEXTS)] == [a["label"] for a in fp32.classify(TEXTS)]
    fallback = int8.info()["runtime"]["int8_fp32_fallback"]
    assert fallback["margin"] == 1.0 and fallback["texts_answered_by_fp32"] == 2 * len(TEXTS)
    parity = json.loads((every / "reports" / "parity.json").read_text(encoding="utf-8"))
    assert parity["variants"]["int8"]["passed"] and "int8" in parity["served"]

    off = _export(checkpoint, tmp_path / "off", margin=0.0)
    plain_int8 = OnnxPredictor(off, variant="int8")
    assert plain_int8.fallback_session is None and "int8_fp32_fallback" not in plain_int8.info()["runtime"]


def test_confident_texts_stay_on_int8(tiny_base_model, tmp_path):
    """A head biased hard towards one label: every text is far from a tie, so fp32 is never asked."""
    checkpoint = make_checkpoint(
        tiny_base_model, tmp_path / "checkpoint", "classification", CLASS_LABELS, favour="positive"
    )
    bundle = _export(checkpoint, tmp_path / "bundle", margin=0.3)
    int8 = OnnxPredictor(bundle, variant="int8")
    assert {a["label"] for a in int8.classify(TEXTS)} == {"positive"}
    assert int8.info()["runtime"]["int8_fp32_fallback"]["texts_answered_by_fp32"] == 0
