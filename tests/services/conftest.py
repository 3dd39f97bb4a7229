"""Tiny exported bundles (classification and NER) shared by the service tests: built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

CLASS_LABELS = ["negative", "neutral", "positive"]
NER_TAGS = ["O", "B-DRUG", "I-DRUG", "B-DISEASE", "I-DISEASE"]
PARITY_TEXTS = ["Aspirin eased the headache.", "No adverse events were reported", "fine"]


def make_checkpoint(base: Path, out: Path, task: str, labels: list[str], favour: str | None = None) -> Path:
    """A fine-tuned-looking checkpoint from the tiny base: fresh head, id2label saved, tokenizer beside it.

    ``favour`` zeroes the head and biases it towards one label, so predictions are known in advance.
    """
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
    if favour is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            model.classifier.bias[labels.index(favour)] = 5.0
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def export_tiny(checkpoint: Path, out: Path, task: str, labels: list[str]) -> Path:
    from models.export.onnx import export_bundle
    from models.recipe import ExportConfig

    export_bundle(
        checkpoint,
        out,
        name=f"tiny-{task}",
        task=task,
        labels=labels,
        max_length=24,
        config=ExportConfig(int8_min_speedup=0),  # tiny int8 is slower than fp32; serve it anyway
        parity_texts=PARITY_TEXTS,
    )
    return out


@pytest.fixture(scope="session")
def classifier_bundle(tiny_base_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls_bundle")
    checkpoint = make_checkpoint(tiny_base_model, root / "checkpoint", "classification", CLASS_LABELS)
    return export_tiny(checkpoint, root / "bundle", "classification", CLASS_LABELS)


@pytest.fixture(scope="session")
def ner_bundle(tiny_base_model, tmp_path_factory) -> Path:
    """Every word is tagged B-DRUG, so each word is its own entity span."""
    root = tmp_path_factory.mktemp("ner_bundle")
    checkpoint = make_checkpoint(tiny_base_model, root / "checkpoint", "ner", NER_TAGS, favour="B-DRUG")
    return export_tiny(checkpoint, root / "bundle", "ner", NER_TAGS)


@pytest.fixture(scope="session")
def positive_bundle(tiny_base_model, tmp_path_factory) -> Path:
    """A second classifier version whose head always answers "positive" (tells the versions apart)."""
    root = tmp_path_factory.mktemp("positive_bundle")
    checkpoint = make_checkpoint(
        tiny_base_model, root / "checkpoint", "classification", CLASS_LABELS, favour="positive"
    )
    return export_tiny(checkpoint, root / "bundle", "classification", CLASS_LABELS)
