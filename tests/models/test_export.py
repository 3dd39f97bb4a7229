"""Export to the serving bundle: ONNX parity with PyTorch, int8/fp16 variants, serving.json, clear errors."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from models.bundle import ServingSpec
from models.export import ExportError, ExportResult, _preferred_cpu_variant, export_bundle
from models.recipe import ExportConfig

LABELS = ["billing", "outage", "praise"]
TAGS = ["O", "B-DRUG", "I-DRUG", "B-DISEASE", "I-DISEASE"]
TEXTS = ["My invoice is wrong again", "The service has been down since noon", "Great support, thanks!", "hi"]


def _checkpoint(base: Path, out: Path, task: str, labels: list[str]) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(0)
    model_class = BertForSequenceClassification if task == "classification" else BertForTokenClassification
    model = model_class.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)},
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def classifier_dir(tiny_base_model, tmp_path_factory) -> Path:
    return _checkpoint(tiny_base_model, tmp_path_factory.mktemp("cls") / "ckpt", "classification", LABELS)


@pytest.fixture(scope="module")
def exported(classifier_dir, tmp_path_factory) -> ExportResult:
    messages: list[str] = []
    result = export_bundle(
        classifier_dir,
        tmp_path_factory.mktemp("bundle") / "out",
        name="tickets",
        task="classification",
        labels=LABELS,
        max_length=32,
        config=ExportConfig(variants=["fp32", "int8", "fp16"]),
        parity_texts=TEXTS,
        parity_labels=["billing", "outage", "praise", "praise"],
        progress=messages.append,
    )
    assert any("parity" in m for m in messages)  # long work reports progress
    return result


def test_fp32_onnx_matches_pytorch_logits(exported):
    fp32 = exported.parity["fp32"]
    assert fp32["passed"] is True
    assert fp32["max_abs_diff"] < 1e-4
    assert fp32["label_agreement"] == 1.0
    assert (exported.bundle_dir / "onnx" / "fp32" / "model.onnx").is_file()


def test_int8_and_fp16_variants_are_built_and_checked(exported):
    int8 = exported.parity["int8"]
    assert exported.variants["int8"].is_file()
    assert exported.variants["int8"].stat().st_size < exported.variants["fp32"].stat().st_size
    assert 0.0 <= int8["label_agreement"] <= 1.0 and "max_abs_diff" in int8 and "macro_f1" in int8
    fp16 = exported.parity["fp16"]
    assert exported.variants["fp16"].is_file()
    assert fp16["passed"] is not False  # checked on CPU when ORT can, else marked "not checked"
    report = json.loads((exported.bundle_dir / "reports" / "parity.json").read_text())
    assert set(report["variants"]) == {"fp32", "int8", "fp16"}


def test_serving_spec_and_bundle_files(exported):
    bundle = exported.bundle_dir
    spec = ServingSpec.read(bundle)
    assert spec.labels == LABELS and spec.task == "classification" and spec.max_length == 32
    assert spec.variants == {v: f"onnx/{v}/model.onnx" for v in ("fp32", "int8", "fp16")}
    assert spec.preferred_cpu_variant == exported.preferred_cpu_variant
    int8 = exported.parity["int8"]
    int8_ok = int8["passed"] and exported.parity["fp32"]["macro_f1"] - int8["macro_f1"] <= 0.005
    assert exported.preferred_cpu_variant == ("int8" if int8_ok else "fp32")
    assert spec.preferred_gpu_variant == "fp16"
    assert (bundle / "tokenizer" / "tokenizer.json").is_file()
    weights = bundle / "pytorch" / "model.safetensors"
    assert weights.is_file() and weights.stat().st_mode & stat.S_IROTH  # readable by a container user
    assert not list(bundle.glob(".export-*"))  # the work folder is cleaned up
    with pytest.raises(dataclasses.FrozenInstanceError):
        exported.preferred_cpu_variant = "fp16"


def test_ner_export_scores_entities_against_gold_tags(tiny_base_model, tmp_path):
    checkpoint = _checkpoint(tiny_base_model, tmp_path / "ner", "ner", TAGS)
    result = export_bundle(
        checkpoint,
        tmp_path / "bundle",
        name="drugs",
        task="ner",
        labels=TAGS,
        max_length=24,
        config=ExportConfig(),
        parity_texts=["aspirin treats migraine", "take ibuprofen"],
        parity_labels=["B-DRUG O B-DISEASE", ["O", "B-DRUG"]],
    )
    assert set(result.variants) == {"fp32", "int8"}
    assert result.parity["fp32"]["max_abs_diff"] < 1e-4
    for variant in ("fp32", "int8"):
        assert 0.0 <= result.parity[variant]["macro_f1"] <= 1.0
        assert 0.0 <= result.parity[variant]["label_agreement"] <= 1.0
    ort_config = json.loads((tmp_path / "bundle" / "onnx" / "int8" / "ort_config.json").read_text())
    assert ort_config["quantization"]["per_channel"] is True  # per-channel for token classification
    with pytest.raises(ExportError, match="one BIO tag per word"):
        export_bundle(
            checkpoint,
            tmp_path / "bad",
            name="drugs",
            task="ner",
            labels=TAGS,
            max_length=24,
            config=ExportConfig(),
            parity_texts=["aspirin treats migraine"],
            parity_labels=["B-DRUG O"],
        )


def test_int8_is_preferred_only_within_the_accuracy_budget():
    config = ExportConfig(max_accuracy_drop=0.01)
    fp32 = {"passed": True, "macro_f1": 0.90}
    assert (
        _preferred_cpu_variant({"fp32": fp32, "int8": {"passed": True, "macro_f1": 0.895}}, config) == "int8"
    )
    assert (
        _preferred_cpu_variant({"fp32": fp32, "int8": {"passed": True, "macro_f1": 0.85}}, config) == "fp32"
    )
    assert (
        _preferred_cpu_variant({"fp32": fp32, "int8": {"passed": False, "macro_f1": 0.9}}, config) == "fp32"
    )
    assert _preferred_cpu_variant({"fp32": {"passed": True}, "int8": {"passed": True}}, config) == "int8"
    assert _preferred_cpu_variant({"fp32": fp32}, config) == "fp32"


def _export(model_dir: Path, out: Path, **overrides):
    arguments = dict(
        name="x",
        task="classification",
        labels=LABELS,
        max_length=16,
        config=ExportConfig(),
        parity_texts=["hello"],
    )
    return export_bundle(model_dir, out, **{**arguments, **overrides})


def test_bad_model_dir_is_a_readable_error(tmp_path, tiny_base_model, classifier_dir):
    with pytest.raises(ExportError, match="does not exist"):
        _export(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="config.json is missing"):
        _export(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ExportError, match="ForSequenceClassification"):  # a bare encoder has no head
        _export(tiny_base_model, tmp_path / "out")
    with pytest.raises(ExportError, match="ForTokenClassification"):
        _export(classifier_dir, tmp_path / "out", task="ner")
    with pytest.raises(ExportError, match="do not match"):
        _export(classifier_dir, tmp_path / "out", labels=["a", "b", "c"])
    with pytest.raises(ExportError, match="parity_texts"):
        _export(classifier_dir, tmp_path / "out", parity_texts=[])
