"""The data contracts end to end: each kind of broken data fails its named check and the whole report.

Data files are written in code (a few dozen rows); the base tokenizer is MiniLM's real tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from expectations import DataValidationError, ValidationReport, validate_recipe_data
from models.recipe import Recipe, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
TOPICS = ["invoice", "shipment", "contract", "warranty", "refund", "account", "delivery", "payment"]


def clean_corpus(n: int = 40) -> list[str]:
    return [
        f"Document {i} describes the {TOPICS[i % 8]} process for customer case number {i * 7}."
        for i in range(n)
    ]


def clean_labelled(n_per_class: int = 25, offset: int = 0) -> pd.DataFrame:
    rows = []
    for i in range(offset, offset + n_per_class):
        rows.append(
            {"text": f"The {TOPICS[i % 8]} for order {i} arrived early and works great.", "label": "pos"}
        )
        rows.append(
            {"text": f"The {TOPICS[i % 8]} for order {i} was late and arrived broken.", "label": "neg"}
        )
    return pd.DataFrame(rows)


def clean_ner(n: int = 20) -> list[tuple[list[str], list[str]]]:
    return [
        ([f"Alice{i}", "Smith", "visited", "Paris", "today"], ["B-PER", "I-PER", "O", "B-LOC", "O"])
        for i in range(n)
    ]


def write_ner(path: Path, sentences) -> str:
    path.write_text(
        "\n".join(json.dumps({"tokens": t, "tags": g}) for t, g in sentences) + "\n", encoding="utf-8"
    )
    return str(path)


@pytest.fixture()
def make_recipe(tmp_path):
    """Write the given data (clean defaults) under tmp_path and return a recipe pointing at it."""

    def build(
        corpus=None,
        train=None,
        evaluation=None,
        task="classification",
        labels=None,
        validation=None,
        general=None,
    ) -> Recipe:
        corpus_path = tmp_path / "corpus.txt"
        corpus_path.write_text(
            "\n".join(clean_corpus() if corpus is None else corpus) + "\n", encoding="utf-8"
        )
        data: dict = {"corpus": str(corpus_path)}
        if general is not None:
            (tmp_path / "general.txt").write_text("\n".join(general) + "\n", encoding="utf-8")
            data["general"] = str(tmp_path / "general.txt")
        if task == "classification":
            (clean_labelled() if train is None else train).to_csv(tmp_path / "train.csv", index=False)
            data["train"] = str(tmp_path / "train.csv")
            if evaluation is not None:
                evaluation.to_csv(tmp_path / "eval.csv", index=False)
                data["eval"] = str(tmp_path / "eval.csv")
            data["labels"] = labels or ["pos", "neg"]
        else:
            data["train"] = write_ner(tmp_path / "train.jsonl", clean_ner() if train is None else train)
            if evaluation is not None:
                data["eval"] = write_ner(tmp_path / "eval.jsonl", evaluation)
            data["labels"] = labels or ["PER", "LOC"]
        return recipe_from_dict(
            {"name": "contract-test", "task": task, "data": data, "validation": validation or {}}
        )

    return build


def assert_failed(report: ValidationReport, name: str, suite: str | None = None):
    result = report.check(name, suite)
    assert not result.success, f"{name} should fail: {result}"
    assert result.status == "fail"
    assert result.failing_count >= 1
    assert report.success is False
    others = [f"{c.suite}.{c.name}" for c in report.failures if c.name != name]
    return result, others


# --- clean data passes -------------------------------------------------------------------------------------


def test_clean_data_passes_and_writes_json_and_data_docs(make_recipe, tmp_path):
    report = validate_recipe_data(
        make_recipe(general=["The weather is mild and sunny in the valley today."] * 3), tmp_path / "out"
    )
    assert report.success, report.summary()
    assert {c.suite for c in report.checks} >= {"corpus", "general", "classification"}
    assert all(c.success for c in report.checks)
    saved = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert saved["success"] is True and len(saved["checks"]) == len(report.checks)
    assert report.data_docs == tmp_path / "out" / "data_docs" / "index.html"
    assert report.data_docs.is_file()
    validation_pages = list((tmp_path / "out" / "data_docs" / "validations").rglob("*.html"))
    assert len(validation_pages) >= 3  # corpus, general, classification rows, classification classes
    assert report.profile["corpus"]["rows"] == 40 and report.profile["task"]["labels"] == {
        "neg": 0.5,
        "pos": 0.5,
    }


@pytest.mark.parametrize("recipe_file", ["demo.yaml", "ner.yaml"])
def test_shipped_sample_data_passes(recipe_file, tmp_path):
    recipe_path = REPO / "recipes" / recipe_file
    if not recipe_path.is_file():
        pytest.skip(f"{recipe_path} not written yet")
    report = validate_recipe_data(load_recipe(recipe_path), tmp_path)
    assert report.success, report.summary()


# --- corpus failures -----------------------------------------------------------------------------------------


def test_cleanable_corpus_lines_are_dropped_and_counted_with_a_warning(make_recipe, tmp_path):
    corpus = clean_corpus()
    corpus[3] = "   "  # empty
    corpus += ["R .", "1 .", corpus[0].upper(), "  " + corpus[1]]  # 2 fragments, 2 repeats (case, space)
    report = validate_recipe_data(make_recipe(corpus=corpus), tmp_path / "out")
    assert report.success, report.summary()  # cleanable problems never stop the run under their cap
    empty, short, repeats = (
        report.check(n, "corpus") for n in ("text_not_empty", "too_short", "duplicate_rate")
    )
    assert (empty.status, empty.failing_count, empty.examples[0]["row"]) == ("warn", 1, 4)
    assert (short.status, short.failing_count) == ("warn", 2)
    assert [e["value"] for e in short.examples] == ["R .", "1 ."]
    assert (repeats.status, repeats.failing_count, repeats.examples[0]["row"]) == ("warn", 2, 43)
    assert report.cleaning == {"corpus": {"rows": 44, "kept": 39, "empty": 1, "too_short": 2, "repeats": 2}}
    assert "corpus cleaned: 5 of 44 lines dropped (1 empty, 2 too short, 2 repeats)" in report.summary()
    assert report.profile["corpus"]["rows"] == 39  # the profile describes what adaptation trains on
    saved = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert saved["cleaning"] == report.cleaning


def test_a_corpus_mostly_dropped_still_stops_the_run(make_recipe, tmp_path):
    corpus = clean_corpus(10) + ["R ."] * 5 + [clean_corpus(1)[0]] * 16  # 16 repeats of 31 lines: over 50 %
    report = validate_recipe_data(make_recipe(corpus=corpus), tmp_path / "out")
    result, others = assert_failed(report, "duplicate_rate", "corpus")
    assert result.failing_count == 16 and others == []
    assert report.check("too_short", "corpus").status == "warn"  # 5 of 31 stays a warning
    relaxed = make_recipe(corpus=corpus, validation={"max_dropped_rate": 0.6})
    assert validate_recipe_data(relaxed, tmp_path / "relaxed").success


def test_too_long_document_fails_length_checks(make_recipe, tmp_path):
    corpus = clean_corpus()
    corpus[7] = "word " * 1300  # 6500 characters, 1300 tokens
    report = validate_recipe_data(make_recipe(corpus=corpus), tmp_path / "out")
    result, _ = assert_failed(report, "length_chars", "corpus")
    assert result.examples[0]["row"] == 8
    tokens, _ = assert_failed(report, "length_tokens", "corpus")
    assert tokens.failing_count == 1


def test_mojibake_and_replacement_chars_fail_bad_chars_rate(make_recipe, tmp_path):
    corpus = clean_corpus()
    corpus[1] = "The cafÃ© said it wonâ€™t reopen until spring."
    corpus[2] = "Broken decode \ufffd in the middle of this sentence."
    report = validate_recipe_data(make_recipe(corpus=corpus), tmp_path / "out")
    result, _ = assert_failed(report, "bad_chars_rate", "corpus")
    assert result.failing_count == 2 and [e["row"] for e in result.examples] == [2, 3]


def test_pii_fails_pii_rate_without_leaking_it_into_the_report(make_recipe, tmp_path):
    corpus = clean_corpus()
    corpus[0] = "Contact jane.doe@example.com about the refund request today."
    corpus[5] = "Card 4111 1111 1111 1111 was charged twice for the invoice."
    report = validate_recipe_data(make_recipe(corpus=corpus), tmp_path / "out")
    result, _ = assert_failed(report, "pii_rate", "corpus")
    assert result.failing_count == 2
    shown = " ".join(e["value"] for e in result.examples)
    assert "[EMAIL]" in shown and "jane.doe@example.com" not in shown and "4111 1111" not in shown


# --- classification failures ---------------------------------------------------------------------------------


def test_label_outside_declared_set_fails(make_recipe, tmp_path):
    train = clean_labelled()
    train.loc[4, "label"] = "postive"
    report = validate_recipe_data(make_recipe(train=train), tmp_path / "out")
    result, _ = assert_failed(report, "labels_in_declared_set")
    assert result.examples[0]["row"] == 5 and "postive" in result.examples[0]["value"]


def test_conflicting_labels_name_the_offending_rows(make_recipe, tmp_path):
    train = clean_labelled()
    clash = pd.DataFrame([{"text": train.loc[0, "text"].upper(), "label": "neg"}])
    train = pd.concat([train, clash], ignore_index=True)  # row 51 repeats row 1 with the other label
    report = validate_recipe_data(make_recipe(train=train), tmp_path / "out")
    result, others = assert_failed(report, "conflicting_labels")
    assert result.failing_count == 2
    assert sorted(e["row"] for e in result.examples) == [1, 51]
    assert others == []


def test_a_few_conflicts_and_length_outliers_are_tolerated_like_real_annotated_data(make_recipe, tmp_path):
    """Real labelled sets (e.g. financial sentiment with annotator disagreement) repeat a sentence under another
    label now and then, and hold a few very short lines: under 1% of rows each passes, and is still counted."""
    train = clean_labelled(n_per_class=200)  # 400 rows
    clash = pd.DataFrame([{"text": train.loc[0, "text"], "label": "neg"}, {"text": "Ok.", "label": "pos"}])
    train = pd.concat([train, clash], ignore_index=True)  # 2 conflicting rows + 1 short row in 402
    report = validate_recipe_data(make_recipe(train=train), tmp_path / "out")
    assert report.success, [f"{c.suite}.{c.name}" for c in report.failures]
    assert report.check("conflicting_labels").failing_count == 2
    assert report.check("length_chars", "classification").failing_count == 1


def test_too_few_examples_per_class_fails(make_recipe, tmp_path):
    report = validate_recipe_data(make_recipe(train=clean_labelled(n_per_class=5)), tmp_path / "out")
    result, _ = assert_failed(report, "min_examples_per_class")
    assert result.failing_count == 2 and result.total == 2


def test_declared_class_without_examples_fails(make_recipe, tmp_path):
    report = validate_recipe_data(make_recipe(labels=["pos", "neg", "mixed"]), tmp_path / "out")
    result, _ = assert_failed(report, "min_examples_per_class")
    assert result.examples[0]["value"].startswith("mixed: 0")


def test_class_imbalance_over_limit_fails(make_recipe, tmp_path):
    train = clean_labelled(n_per_class=30)
    train = pd.concat([train[train.label == "pos"], train[train.label == "neg"].head(5)], ignore_index=True)
    report = validate_recipe_data(
        make_recipe(train=train, validation={"max_class_imbalance": 3, "min_examples_per_class": 2}),
        tmp_path / "o",
    )
    result, others = assert_failed(report, "class_balance")
    assert result.examples[0]["value"].startswith("neg: 5") and others == []


def test_text_shared_by_train_and_eval_is_leakage(make_recipe, tmp_path):
    train, evaluation = clean_labelled(), clean_labelled(n_per_class=5, offset=100)
    evaluation.loc[2, "text"] = train.loc[7, "text"]
    evaluation.loc[2, "label"] = train.loc[7, "label"]
    report = validate_recipe_data(make_recipe(train=train, evaluation=evaluation), tmp_path / "out")
    result, _ = assert_failed(report, "train_eval_leakage")
    assert {(e["split"], e["row"]) for e in result.examples} == {("train", 8), ("eval", 3)}


def test_a_rare_repeated_boilerplate_row_is_within_max_leakage_rate_and_still_shown(make_recipe, tmp_path):
    # real corpora repeat boilerplate ("1 .", "Results :") across splits: 2 of 300 rows here
    train, evaluation = clean_labelled(n_per_class=100), clean_labelled(n_per_class=50, offset=500)
    evaluation.loc[2, "text"] = train.loc[7, "text"]
    evaluation.loc[2, "label"] = train.loc[7, "label"]

    lenient = validate_recipe_data(make_recipe(train=train, evaluation=evaluation), tmp_path / "a")
    check = lenient.check("train_eval_leakage")
    assert check.success and {(e["split"], e["row"]) for e in check.examples} == {("train", 8), ("eval", 3)}

    strict = validate_recipe_data(
        make_recipe(train=train, evaluation=evaluation, validation={"max_leakage_rate": 0.0}), tmp_path / "b"
    )
    assert_failed(strict, "train_eval_leakage")


def test_no_eval_file_means_no_leakage_check(make_recipe, tmp_path):
    report = validate_recipe_data(make_recipe(), tmp_path / "out")
    with pytest.raises(KeyError):
        report.check("train_eval_leakage")


# --- NER failures --------------------------------------------------------------------------------------------


def test_tag_outside_bio_set_fails(make_recipe, tmp_path):
    sentences = clean_ner()
    sentences[2] = (["Bob", "bought", "shares"], ["B-PERSON", "O", "O"])
    report = validate_recipe_data(make_recipe(task="ner", train=sentences), tmp_path / "out")
    result, _ = assert_failed(report, "tags_in_declared_set")
    assert result.examples[0]["row"] == 3 and "B-PERSON" in result.examples[0]["value"]


def test_tokens_and_tags_of_different_length_fail(make_recipe, tmp_path):
    sentences = clean_ner()
    sentences[4] = (["Carol", "went", "home"], ["B-PER", "O"])
    report = validate_recipe_data(make_recipe(task="ner", train=sentences), tmp_path / "out")
    result, _ = assert_failed(report, "tokens_tags_same_length")
    assert result.examples[0]["row"] == 5 and "3 tokens, 2 tags" in result.examples[0]["value"]


def test_inside_tag_after_outside_fails_bio_transitions(make_recipe, tmp_path):
    sentences = clean_ner()
    sentences[1] = (["We", "met", "Smith"], ["O", "O", "I-PER"])
    report = validate_recipe_data(make_recipe(task="ner", train=sentences), tmp_path / "out")
    result, others = assert_failed(report, "bio_transitions_valid")
    assert result.examples[0]["row"] == 2 and "I-PER after O" in result.examples[0]["value"]
    assert others == []


# --- severities, unreadable data, drift, rendering -----------------------------------------------------------


def test_warn_severity_reports_but_does_not_fail(make_recipe, tmp_path):
    corpus = clean_corpus()
    corpus[3] = "word " * 1300  # over max_chars and max_tokens
    recipe = make_recipe(
        corpus=corpus, validation={"severity": {"corpus.length_chars": "warn", "length_tokens": "warn"}}
    )
    report = validate_recipe_data(recipe, tmp_path / "out")
    assert report.success, report.summary()
    assert report.check("length_chars", "corpus").status == "warn"
    assert report.check("length_chars", "corpus").failing_count == 1
    assert "1 warnings" not in report.summary() and "2 warnings" in report.summary()


def test_unknown_severity_key_is_reported(make_recipe, tmp_path):
    report = validate_recipe_data(
        make_recipe(validation={"severity": {"duplicates": "warn"}}), tmp_path / "o"
    )
    result, _ = assert_failed(report, "severity_keys_known", "config")
    assert result.examples[0]["value"] == "duplicates"


def test_missing_file_and_wrong_column_give_a_failed_report_not_an_exception(make_recipe, tmp_path):
    recipe = make_recipe()
    missing = recipe.model_copy(
        update={"data": recipe.data.model_copy(update={"corpus": tmp_path / "nope.txt"})}
    )
    report = validate_recipe_data(missing, tmp_path / "a")
    result, _ = assert_failed(report, "data_readable", "corpus")
    assert "nope.txt" in result.examples[0]["value"]
    assert report.check("labels_in_declared_set").success  # the readable files were still validated

    wrong = recipe.model_copy(update={"data": recipe.data.model_copy(update={"text_column": "sentence"})})
    report = validate_recipe_data(wrong, tmp_path / "b")
    result, _ = assert_failed(report, "data_readable", "classification")
    assert "sentence" in result.examples[0]["value"]


def test_drift_against_a_reference_warns_or_fails(make_recipe, tmp_path):
    recipe = make_recipe()
    reference = validate_recipe_data(recipe, tmp_path / "ref").profile
    same = validate_recipe_data(recipe, tmp_path / "same", reference_profile=reference)
    assert same.drift["status"] == "ok" and same.drift["distance"] == 0 and same.success

    shifted = clean_labelled()
    shifted = pd.concat([shifted[shifted.label == "pos"], shifted[shifted.label == "neg"].head(8)])
    loose = {"min_examples_per_class": 5, "drift_warn": 0.1, "drift_fail": 0.5}
    warned = validate_recipe_data(
        make_recipe(train=shifted, validation=loose), tmp_path / "warn", reference_profile=reference
    )
    assert warned.drift["status"] == "warn" and warned.drift["worst"] == "task.labels_tvd"
    assert warned.check("profile_drift").status == "warn" and warned.success

    strict = {**loose, "drift_warn": 0.01, "drift_fail": 0.05}
    failed = validate_recipe_data(
        make_recipe(train=shifted, validation=strict), tmp_path / "fail", reference_profile=reference
    )
    assert failed.drift["status"] == "fail"
    assert_failed(failed, "profile_drift", "drift")


def test_render_table_and_error_name_the_failing_check(make_recipe, tmp_path):
    from rich.console import Console

    train = clean_labelled()
    train.loc[0, "label"] = "unknown"
    report = validate_recipe_data(make_recipe(train=train), tmp_path / "out")
    console = Console(record=True, width=200)
    report.render(console)
    text = console.export_text()
    assert "labels_in_declared_set" in text and "FAIL" in text and "data validation FAILED" in text
    assert report.summary().startswith("data validation FAILED") and "\n" not in report.summary()
    error = DataValidationError(report)
    assert error.report is report and "classification.labels_in_declared_set" in str(error)
    json.dumps(report.to_dict())  # plain JSON


def test_ner_sentence_in_train_and_eval_is_leakage(make_recipe, tmp_path):
    evaluation = [(["Bob", "Jones", "left", "Oslo"], ["B-PER", "I-PER", "O", "B-LOC"]), clean_ner()[3]]
    report = validate_recipe_data(make_recipe(task="ner", evaluation=evaluation), tmp_path / "out")
    result, others = assert_failed(report, "train_eval_leakage", "ner")
    assert ("eval", 2) in {(e["split"], e["row"]) for e in result.examples} and others == []


def test_report_round_trips_through_its_json(make_recipe, tmp_path):
    from rich.console import Console

    from expectations.runner import render_report_dict

    corpus = clean_corpus()
    corpus[0] = "word " * 1300
    report = validate_recipe_data(make_recipe(corpus=corpus + [""]), tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "validation.json").read_text())
    rebuilt = ValidationReport.from_dict(saved)
    assert rebuilt.success is False and rebuilt.check("length_chars", "corpus").examples[0]["row"] == 1
    assert rebuilt.cleaning == report.cleaning and rebuilt.cleaning["corpus"]["empty"] == 1
    console = Console(record=True, width=200)
    render_report_dict(saved, console)
    assert "length_chars" in console.export_text() and report.summary() == rebuilt.summary()
