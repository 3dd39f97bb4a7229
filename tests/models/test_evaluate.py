"""Evaluation: metrics on hand-made cases, and evaluate_model on tiny saved classifiers (no training needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from models.recipe import recipe_from_dict

torch.set_num_threads(1)

CLASSES = ["negative", "neutral", "positive"]
TAGS = ["O", "B-ORG", "I-ORG", "B-MONEY", "I-MONEY"]


def make_recipe(task: str = "classification", **finetune):
    return recipe_from_dict(
        {
            "name": "tiny",
            "task": task,
            "data": {
                "corpus": "corpus.txt",
                "train": "train.csv",
                "labels": CLASSES if task == "classification" else ["ORG", "MONEY"],
            },
            "finetune": {"max_length": 32, **finetune},
        }
    )


def save_task_model(base: Path, target: Path, labels: list[str], token_level: bool = False, **config) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification, BertForTokenClassification

    model_class = BertForTokenClassification if token_level else BertForSequenceClassification
    torch.manual_seed(0)
    model = model_class.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **config,
    )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target


def sentiment_frame() -> pd.DataFrame:
    texts = ["Profit rose to EUR 3 mn", "Sales fell 9 percent", "The report is due in May", "Orders grew"]
    return pd.DataFrame(
        {
            "text": texts * 3,
            "label": ["positive", "negative", "neutral", "positive"] * 3,
            "slice": ["newswire"] * 8 + ["press_release"] * 4,
        }
    )


def test_expected_calibration_error_on_a_hand_made_case():
    from models.evaluation.evaluate import expected_calibration_error

    # bin (0.8, 0.9]: confidence 0.9, accuracy 0.5; bin (0.5, 0.6]: confidence 0.6, accuracy 1.0
    ece, bins = expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1])

    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 4
    assert expected_calibration_error([1.0, 1.0], [1, 1])[0] == pytest.approx(0.0)


def test_ner_entity_metrics_follow_seqeval_strict_iob2():
    from models.evaluation.evaluate import ner_entity_metrics

    true = [["B-ORG", "I-ORG", "O", "B-MONEY", "I-MONEY"], ["B-ORG", "O", "O"]]
    # sentence 1: ORG right, MONEY cut short (wrong span); sentence 2: ORG right, a spurious MONEY
    predicted = [["B-ORG", "I-ORG", "O", "B-MONEY", "O"], ["B-ORG", "O", "B-MONEY"]]

    metrics = ner_entity_metrics(true, predicted)

    assert metrics["entity_precision"] == pytest.approx(2 / 4)
    assert metrics["entity_recall"] == pytest.approx(2 / 3)
    assert metrics["entity_f1"] == pytest.approx(2 * (0.5 * 2 / 3) / (0.5 + 2 / 3))
    assert metrics["per_type"]["ORG"]["f1"] == pytest.approx(1.0)
    assert metrics["per_type"]["MONEY"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["macro_f1"] == pytest.approx(0.5)
    assert metrics["token_accuracy"] == pytest.approx(6 / 8)


def test_strict_mode_rejects_an_entity_starting_with_i():
    from models.evaluation.evaluate import ner_entity_metrics

    metrics = ner_entity_metrics([["B-ORG", "I-ORG"]], [["I-ORG", "I-ORG"]])

    assert metrics["entity_f1"] == 0.0  # conlleval-style lenient scoring would count it


def test_classification_evaluation_reports_classes_slices_calibration_and_plots(tiny_base_model, tmp_path):
    from models.evaluation.evaluate import evaluate_model

    model_dir = save_task_model(tiny_base_model, tmp_path / "model", CLASSES)
    frame = sentiment_frame()

    result = evaluate_model(make_recipe(), model_dir, frame, tmp_path / "eval")

    metrics = result.metrics
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert set(metrics["per_class"]) == set(CLASSES)
    assert metrics["per_class"]["positive"]["support"] == 6
    assert metrics["per_slice"]["newswire"]["n"] == 8 and metrics["per_slice"]["press_release"]["n"] == 4
    assert 0.0 <= metrics["ece"] <= 1.0
    assert metrics["eval_loss"] > 0
    assert sum(map(sum, metrics["confusion_matrix"])) == len(frame)
    assert sorted(p.name for p in result.plots) == ["confusion_matrix.png", "reliability.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.plots)
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_batched_inference_matches_one_by_one(tiny_base_model, tmp_path):
    """Sorting by length and padding per batch must not change any row's logits."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models.evaluation.evaluate import predict_classification

    model_dir = save_task_model(tiny_base_model, tmp_path / "model", CLASSES)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    texts = list(sentiment_frame()["text"][:4]) + ["A much longer sentence about operating profit in 2007 ."]

    batched = predict_classification(tokenizer, model, texts, max_length=32, batch_size=3)
    single = [predict_classification(tokenizer, model, [t], max_length=32)[0] for t in texts]

    for row, expected in zip(batched, single, strict=True):
        assert row == pytest.approx(expected, abs=1e-5)


def test_evaluation_rejects_labels_the_model_does_not_know(tiny_base_model, tmp_path):
    from models.evaluation.evaluate import EvaluationError, evaluate_model

    model_dir = save_task_model(tiny_base_model, tmp_path / "model", CLASSES)
    frame = sentiment_frame()
    frame.loc[0, "label"] = "bullish"

    with pytest.raises(EvaluationError, match="bullish"):
        evaluate_model(make_recipe(), model_dir, frame, tmp_path / "eval")


def test_ner_evaluation_reports_entity_scores_and_token_accuracy(tiny_base_model, tmp_path):
    from models.evaluation.evaluate import evaluate_model

    model_dir = save_task_model(tiny_base_model, tmp_path / "model", TAGS, token_level=True)
    frame = pd.DataFrame(
        {
            "tokens": [["Ruskola", "Group", "sales", "rose", "to", "EUR", "12", "mn"]] * 3,
            "tags": [["B-ORG", "I-ORG", "O", "O", "O", "B-MONEY", "I-MONEY", "I-MONEY"]] * 3,
        }
    )

    result = evaluate_model(make_recipe("ner"), model_dir, frame, tmp_path / "eval")

    metrics = result.metrics
    for key in (
        "entity_precision",
        "entity_recall",
        "entity_f1",
        "macro_f1",
        "token_accuracy",
        "ece",
        "eval_loss",
    ):
        assert key in metrics
    assert set(metrics["per_type"]) <= {"ORG", "MONEY"} and "ORG" in metrics["per_type"]
    assert metrics["accuracy"] == metrics["token_accuracy"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 24  # one cell per word
    assert all(p.is_file() for p in result.plots)


def test_ner_reads_past_the_training_max_length_so_long_sentences_lose_no_words(tiny_base_model, tmp_path):
    from models.evaluation.evaluate import evaluate_model
    from models.training.task_model import inference_max_length

    model_dir = save_task_model(tiny_base_model, tmp_path / "model", TAGS, token_level=True)
    words = ["Ruskola", "Group", "sales", "rose", "to", "EUR", "12", "mn"] * 5  # ~60 word-pieces
    frame = pd.DataFrame({"tokens": [words], "tags": [["O"] * len(words)]})
    recipe = make_recipe("ner", max_length=16)  # trained on 16 tokens

    assert inference_max_length(recipe, model_dir) == 128  # the tiny encoder's positions
    assert inference_max_length(make_recipe(max_length=16), model_dir) == 16  # classification: as trained
    result = evaluate_model(recipe, model_dir, frame, tmp_path / "eval")

    assert result.metrics["truncated_words"] == 0
    assert sum(map(sum, result.metrics["confusion_matrix"])) == len(words)


def test_multi_label_evaluation(tiny_base_model, tmp_path):
    from models.evaluation.evaluate import evaluate_model

    model_dir = save_task_model(
        tiny_base_model, tmp_path / "model", CLASSES, problem_type="multi_label_classification"
    )
    frame = sentiment_frame()
    frame.loc[0, "label"] = "positive|neutral"

    result = evaluate_model(make_recipe(multi_label=True), model_dir, frame, tmp_path / "eval")

    assert result.metrics["per_class"]["neutral"]["support"] == 4
    assert 0.0 <= result.metrics["ece"] <= 1.0
    assert all(p.is_file() for p in result.plots)


def test_compare_with_production_gives_signed_deltas():
    from models.evaluation.report import compare_with_production

    candidate = {"accuracy": 0.9, "macro_f1": 0.85, "ece": 0.05, "per_class": {}}
    production = {"accuracy": 0.88, "macro_f1": 0.86, "ece": 0.08}

    comparison = compare_with_production(candidate, production)

    rows = comparison["metrics"]
    assert comparison["has_production"] is True
    assert rows["accuracy"]["delta"] == pytest.approx(0.02) and rows["accuracy"]["improved"] is True
    assert rows["macro_f1"]["delta"] == pytest.approx(-0.01) and rows["macro_f1"]["improved"] is False
    assert rows["ece"]["improved"] is True  # lower calibration error is better
    first = compare_with_production(candidate, None)
    assert first["has_production"] is False and first["metrics"]["accuracy"]["delta"] is None


def test_report_holds_the_tables_and_relative_plot_links(tiny_base_model, tmp_path):
    from models.evaluation.evaluate import evaluate_model
    from models.evaluation.report import compare_with_production, write_report

    model_dir = save_task_model(tiny_base_model, tmp_path / "model", CLASSES)
    result = evaluate_model(make_recipe(), model_dir, sentiment_frame(), tmp_path / "eval")
    comparison = compare_with_production(result.metrics, {"accuracy": 0.5, "macro_f1": 0.4})

    report = write_report(
        tmp_path / "report.md",
        result.metrics,
        comparison=comparison,
        plots=result.plots,
        params={"learning_rate": 1e-4},
    )

    text = report.read_text()
    assert "| macro_f1 |" in text and "## Per class" in text and "## Per slice" in text
    assert "| press_release | 4 |" in text
    assert "## Candidate vs production" in text and "| accuracy |" in text
    assert "](eval/confusion_matrix.png)" in text
    assert "| learning_rate | 0.0001 |" in text
