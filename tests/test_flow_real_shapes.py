"""Real data shapes through the real flow (tiny models): one entity type, a corpus with fragments and repeats,
classes stored as integer ids, and an int8 variant that fails parity (dropped from serving, reported, and the
version still promoted)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.tiny_recipe import write_tiny_ner_recipe, write_tiny_recipe

pytestmark = pytest.mark.integration


def _one_type_bare_tsv(conll: Path, keep: str) -> Path:
    """The CoNLL file as BioBERT-style one-type sets ship: a header-less .tsv (``token<TAB>tag``) whose tags
    carry no type (``B`` / ``I`` for ``keep``; every other type becomes ``O``)."""
    lines = []
    for line in conll.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            tag = parts[-1]
            parts = [parts[0], tag[0] if tag.endswith(f"-{keep}") else "O"]
        lines.append("\t".join(parts))
    tsv = conll.with_suffix(".tsv")
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tsv


def test_ner_with_one_entity_type_and_a_corpus_with_fragments_trains_and_serves(
    tmp_path, sample_dir, tiny_base_model, prefect_harness
):
    from dapt.cli.app import run_recipe
    from models.registry.store import Registry
    from services.predictor import OnnxPredictor

    # its own model name: other tests register "tinyner" with four types, whose label profile would drift
    path = write_tiny_ner_recipe(
        tmp_path / "ner",
        sample_dir,
        tiny_base_model,
        name="tinyner-org",
        data={"labels": ["ORG"], "train": "ner.tsv"},
    )
    _one_type_bare_tsv(tmp_path / "ner" / "ner.conll", "ORG")
    corpus = tmp_path / "ner" / "corpus.txt"
    lines = corpus.read_text(encoding="utf-8").splitlines()
    # 3 fragments and 2 repeats in 65 lines: over the 1 % that used to stop the run, now dropped and counted
    corpus.write_text("\n".join(lines + ["R .", "1 .", "2 .", lines[0], lines[1]]) + "\n", encoding="utf-8")

    summary = run_recipe(path)

    assert summary["gate"]["passed"] is True, summary["gate"]
    stored = Registry().get_version("tinyner-org", alias="production")
    validation = stored.evidence["validation"]
    assert validation["success"] is True
    assert validation["cleaning"]["corpus"] == {
        "rows": 65,
        "kept": 60,
        "empty": 0,
        "too_short": 3,
        "repeats": 2,
    }
    assert {c["name"]: c["status"] for c in validation["checks"] if c["suite"] == "corpus"}[
        "too_short"
    ] == "warn"
    # the bare B / I tags were read as ORG, counted, and nothing else was rewritten
    tags_read = validation["cleaning"]["ner_tags"]
    assert tags_read["entity_types"] == ["ORG"]
    assert tags_read["train"]["untyped"] > 0 and tags_read["train"]["rewritten"] == 0
    # int8 is judged on the eval set's entity F1 as well as on agreement (the drop is measured, not skipped)
    assert isinstance(stored.evidence["parity"]["int8"]["macro_f1_drop_vs_pytorch"], float)
    bundle = Registry().load_path("tinyner-org", alias="production", verify=True)
    predictor = OnnxPredictor(bundle, providers=["CPUExecutionProvider"])
    assert predictor.spec.labels == ["O", "B-ORG", "I-ORG"]
    text = "Nokia reported net sales of EUR 1.2 mn in 2008 ."
    for span in predictor.entities([text])[0]:
        assert span["label"] == "ORG" and text[span["start"] : span["end"]] == span["text"]


def test_int8_failing_parity_is_dropped_reported_and_does_not_block_promotion(
    tmp_path, sample_dir, tiny_base_model, prefect_harness, monkeypatch
):
    import models.export.parity as parity
    from dapt.cli.app import run_recipe
    from models.registry.store import Registry
    from services.predictor import OnnxPredictor

    real = parity.parity_failures

    def int8_fails(variant, worst, config):  # what a real MiniLM on real tweets showed: agreement 0.955
        return ["label agreement 0.9550 < 0.99"] if variant == "int8" else real(variant, worst, config)

    monkeypatch.setattr(parity, "parity_failures", int8_fails)
    summary = run_recipe(
        write_tiny_recipe(tmp_path / "cls", sample_dir, tiny_base_model, name="tiny-int8drop")
    )

    assert summary["gate"]["passed"] is True, summary["gate"]
    assert (
        "variant 'int8' was dropped from serving (label agreement 0.9550 < 0.99" in summary["gate"]["summary"]
    )
    assert summary["variants"]["served"] == ["fp32"]
    dropped = summary["variants"]["dropped"]["int8"]
    assert dropped["why"] == "label agreement 0.9550 < 0.99" and 0.0 <= dropped["label_agreement"] <= 1.0
    version = Registry().get_version("tiny-int8drop", alias="production")
    assert version.version == summary["version"]
    assert version.evidence["parity"]["int8"]["passed"] is False  # kept in the record
    assert version.evidence["serving"]["dropped"]["int8"]["why"] == dropped["why"]
    bundle = Registry().load_path("tiny-int8drop", alias="production", verify=True)
    assert not (bundle / "onnx" / "int8").exists()
    assert OnnxPredictor(bundle, providers=["CPUExecutionProvider"]).variant == "fp32"
    run_summary = json.loads((Path(summary["files"]["run"]) / "summary.json").read_text(encoding="utf-8"))
    assert run_summary["variants"]["dropped"]["int8"]["why"] == dropped["why"]


def test_classes_stored_as_integer_ids_train_and_serve_under_those_ids(
    tmp_path, sample_dir, tiny_base_model, prefect_harness
):
    """Public sets often ship classes as 0 / 1 / 2; ``labels: [0, 1, 2]`` (YAML integers) names them."""
    from dapt.cli.app import run_recipe
    from models.registry.store import Registry
    from services.predictor import OnnxPredictor

    recipe = write_tiny_recipe(
        tmp_path / "ids", sample_dir, tiny_base_model, name="tiny-ids", data={"labels": [0, 1, 2]}
    )
    assert "- 0" in recipe.read_text(encoding="utf-8")  # integers in the YAML, as a user writes them
    train = recipe.parent / "train.csv"
    ids = {"negative": "0", "neutral": "1", "positive": "2"}
    with train.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with train.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([row | {"label": ids[row["label"]]} for row in rows])

    summary = run_recipe(recipe)

    assert summary["gate"]["passed"] is True, summary["gate"]
    bundle = Registry().load_path("tiny-ids", alias="production", verify=True)
    predictor = OnnxPredictor(bundle, providers=["CPUExecutionProvider"])
    assert predictor.spec.labels == ["0", "1", "2"]
    [answer] = predictor.classify(["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."])
    assert answer["label"] in ("0", "1", "2") and set(answer["scores"]) == {"0", "1", "2"}
