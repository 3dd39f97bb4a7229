"""int8 schemes (export.int8_schemes): 'dynamic' (MatMulInteger, per-tensor activation scales) and 'blockwise'
(8-bit MatMulNBits, one scale per block of inputs); the export keeps the first scheme whose parity holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from models.export.onnx import export_bundle
from models.recipe import ExportConfig
from models.registry.bundle import ServingSpec
from services.predictor import OnnxPredictor
from tests.models.test_export import LABELS, TEXTS, _checkpoint, _op_types

GOLD = ["billing", "outage", "praise", "praise"]


@pytest.fixture(scope="module")
def classifier_dir(tiny_base_model, tmp_path_factory) -> Path:
    return _checkpoint(tiny_base_model, tmp_path_factory.mktemp("cls") / "ckpt", "classification", LABELS)


def _export(checkpoint: Path, out: Path, messages: list[str] | None = None, **config):
    return export_bundle(
        checkpoint,
        out,
        name="int8-schemes",
        task="classification",
        labels=LABELS,
        max_length=32,
        config=ExportConfig(**{"int8_min_speedup": 0, **config}),
        parity_texts=TEXTS,
        parity_labels=GOLD,
        progress=None if messages is None else messages.append,
        embedding=False,
    )


def test_blockwise_int8_is_8_bit_matmulnbits_and_serves_through_the_predictor(classifier_dir, tmp_path):
    result = _export(classifier_dir, tmp_path / "out", int8_schemes=["blockwise"], int8_block_size=16)
    assert result.parity["int8"]["passed"] is True and result.preferred_cpu_variant == "int8"
    ops = _op_types(result.variants["int8"])
    # the 6 weight MatMuls of each of the 2 layers; attention's activation MatMuls and the head stay fp32
    assert ops.count("MatMulNBits") == 12 and "MatMulInteger" not in ops
    import onnx

    nbits = [n for n in onnx.load(str(result.variants["int8"])).graph.node if n.op_type == "MatMulNBits"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attributes["bits"] == 8 and attributes["block_size"] == 16 and attributes["accuracy_level"] == 4
    spec = ServingSpec.read(tmp_path / "out")
    assert spec.extra["int8"]["scheme"] == "blockwise" and spec.extra["int8"]["block_size"] == 16
    predictor = OnnxPredictor(tmp_path / "out", providers=["CPUExecutionProvider"])
    fp32 = OnnxPredictor(tmp_path / "out", variant="fp32", providers=["CPUExecutionProvider"])
    assert predictor.variant == "int8"
    # int8 moves the logits a little, not a lot (the tiny model's logits are within +-1)
    assert np.abs(predictor.logits(TEXTS) - fp32.logits(TEXTS)).max() < 0.05


def test_when_dynamic_int8_fails_parity_blockwise_is_tried_and_serves(classifier_dir, tmp_path, monkeypatch):
    import models.export.parity as parity

    real = parity.parity_failures
    int8_judged: list[int] = []

    def first_int8_fails(variant, worst, config):
        if variant != "int8":
            return real(variant, worst, config)
        int8_judged.append(1)
        return ["label agreement 0.9800 < 0.99"] if len(int8_judged) == 1 else real(variant, worst, config)

    monkeypatch.setattr(parity, "parity_failures", first_int8_fails)
    messages: list[str] = []
    result = _export(
        classifier_dir, tmp_path / "out", messages, min_label_agreement=0.5, max_accuracy_drop=1.0
    )
    assert ExportConfig().int8_schemes == ["dynamic", "blockwise"]  # the default ladder this test walks
    assert result.dropped == {} and result.preferred_cpu_variant == "int8"
    assert result.parity["int8"]["scheme"] == "blockwise"  # the evidence and model card name what serves
    assert "MatMulNBits" in _op_types(result.variants["int8"])  # the served file is the blockwise one
    report = json.loads((tmp_path / "out" / "reports" / "parity.json").read_text())
    assert [(a["scheme"], a["passed"]) for a in report["int8_attempts"]] == [
        ("dynamic", False),
        ("blockwise", True),
    ]
    assert report["int8_attempts"][0]["failures"] == ["label agreement 0.9800 < 0.99"]
    assert report["int8"]["scheme"] == "blockwise" and report["served"] == ["fp32", "int8"]
    assert ServingSpec.read(tmp_path / "out").extra["int8"]["scheme"] == "blockwise"
    assert any(
        "int8 (dynamic) failed (label agreement 0.9800" in m and "trying blockwise" in m for m in messages
    )
    # the parity passes' own timings say what int8 buys on this machine (no claim about the figure itself)
    assert all(
        r["ms_per_text"] > 0
        for v in ("fp32", "int8")
        for r in report["variants"][v]["by_batch_size"].values()
    )
    assert "CPU serves int8 (" in messages[-1] and "x fp32's speed at batch 32" in messages[-1]


def test_the_first_scheme_that_holds_is_kept_without_trying_the_rest(classifier_dir, tmp_path):
    result = _export(classifier_dir, tmp_path / "out", min_label_agreement=0.5, max_accuracy_drop=1.0)
    report = json.loads((tmp_path / "out" / "reports" / "parity.json").read_text())
    assert [a["scheme"] for a in report["int8_attempts"]] == ["dynamic"]
    assert "MatMulInteger" in _op_types(result.variants["int8"])
    assert not list((tmp_path / "out").glob(".export-*"))  # the work folder (plain export) is gone


def test_a_scheme_that_cannot_quantize_the_graph_is_a_failed_attempt_not_a_failed_export(
    classifier_dir, tmp_path, monkeypatch
):
    import models.export.int8 as int8

    def cannot(plain, output, config):
        raise RuntimeError("unsupported node /bert/encoder/layer.0/attention/self/query/MatMul")

    monkeypatch.setitem(int8.QUANTIZERS, "blockwise", cannot)
    messages: list[str] = []
    result = _export(
        classifier_dir, tmp_path / "only", messages, int8_schemes=["blockwise"], min_label_agreement=0.5
    )
    why = "blockwise quantization failed: unsupported node /bert/encoder/layer.0/attention/self/query/MatMul"
    assert result.dropped == {"int8": why} and set(result.variants) == {"fp32"}
    assert result.preferred_cpu_variant == "fp32" and any(why in m for m in messages)
    report = json.loads((tmp_path / "only" / "reports" / "parity.json").read_text())
    assert report["int8_attempts"][0]["failures"] == [why] and report["served"] == ["fp32"]
    # first in the ladder, it hands over to the next scheme
    result = _export(
        classifier_dir,
        tmp_path / "ladder",
        int8_schemes=["blockwise", "dynamic"],
        min_label_agreement=0.5,
        max_accuracy_drop=1.0,
    )
    assert result.dropped == {} and result.parity["int8"]["scheme"] == "dynamic"
    assert "MatMulInteger" in _op_types(result.variants["int8"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"int8_block_size": 100}, "power of two"),
        ({"int8_block_size": 8}, "power of two"),
        ({"int8_schemes": ["blockwise", "blockwise"]}, "at most once"),
        ({"int8_schemes": []}, "at least 1"),
        ({"int8_schemes": ["static"]}, "dynamic"),
    ],
)
def test_bad_int8_scheme_settings_are_refused_with_the_reason(fields, message):
    with pytest.raises(ValidationError, match=message):
        ExportConfig(**fields)
