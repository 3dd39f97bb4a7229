"""The quality benchmark's parts: the FPB-scale generator options, the data-only recipe and its overrides.

The full benchmark (``benchmarks/quality.py``) runs ``dapt run`` end to end; its ``--quick`` mode takes over a
minute on 2 shared cores, so it is not run here (``test_quick_run_prints_targets`` is opt-in, marked
integration). These tests pin the pieces it is built from.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate():
    return _load("sample_generate", SAMPLE / "generate.py")


@pytest.fixture(scope="module")
def quality():
    sys.path.insert(0, str(REPO))
    return _load("benchmarks.quality", REPO / "benchmarks" / "quality.py")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- generator


def test_write_sentiment_with_defaults_reproduces_the_committed_sample(generate, tmp_path):
    counts = generate.write_sentiment(tmp_path / "sentiment.csv")
    assert (tmp_path / "sentiment.csv").read_bytes() == (SAMPLE / "sentiment.csv").read_bytes()
    assert counts == {"neutral": 580, "positive": 285, "negative": 140}


def test_more_rows_keep_the_sample_class_mix(generate, tmp_path):
    counts = generate.write_sentiment(tmp_path / "big.csv", rows=1500, seed=7)
    rows = _rows(tmp_path / "big.csv")
    assert len(rows) == 1500 and sum(counts.values()) == 1500
    assert len({r["text"].lower() for r in rows}) == 1500  # no duplicate sentences
    shares = {label: count / 1500 for label, count in Counter(r["label"] for r in rows).items()}
    for label, sample_count in generate.SENTIMENT_COUNTS.items():
        assert shares[label] == pytest.approx(sample_count / 1005, abs=0.002), label
    assert {r["source"] for r in rows} == {"newswire", "press_release"}


def test_label_noise_flips_exactly_that_share_and_keeps_the_texts(generate):
    clean = generate.sentiment_rows(600, seed=3)
    noisy = generate.sentiment_rows(600, seed=3, label_noise=0.05)
    assert [r[0] for r in clean] == [r[0] for r in noisy]  # noise has its own random stream
    changed = [(a[1], b[1]) for a, b in zip(clean, noisy, strict=True) if a[1] != b[1]]
    assert len(changed) == 30
    assert all(new in {"negative", "neutral", "positive"} and new != old for old, new in changed)
    # Disagreement is mostly neutral vs polar, like real annotators'.
    polar_swaps = sum(1 for old, new in changed if "neutral" not in (old, new))
    assert polar_swaps < len(changed) / 3


def test_no_generated_row_occurs_inside_an_excluded_text(generate):
    corpus = (SAMPLE / "corpus.txt").read_text(encoding="utf-8").splitlines()
    joined = "\n".join(corpus).lower()
    assert any(r[0].lower() in joined for r in generate.sentiment_rows(2000, seed=7))  # overlap is possible
    rows = generate.sentiment_rows(2000, seed=7, exclude=corpus)
    assert len(rows) == 2000 and not any(r[0].lower() in joined for r in rows)


def test_bad_generator_arguments_say_what_is_wrong(generate):
    with pytest.raises(ValueError, match="label noise"):
        generate.sentiment_rows(100, label_noise=0.7)
    with pytest.raises(ValueError, match="at least 3"):
        generate.sentiment_counts(2)


def test_cli_writes_only_the_sentiment_file_and_refuses_to_overwrite_the_sample(tmp_path):
    script = str(SAMPLE / "generate.py")
    out = tmp_path / "fpb"
    done = subprocess.run(
        [
            sys.executable,
            script,
            "--out",
            str(out),
            "--only",
            "sentiment",
            "--sentiment-rows",
            "90",
            "--label-noise",
            "0.1",
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sentiment.csv"]
    assert len(_rows(out / "sentiment.csv")) == 90

    refused = subprocess.run(
        [sys.executable, script, "--only", "sentiment", "--sentiment-rows", "90"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--out" in refused.stderr
    assert (
        subprocess.run(
            ["git", "diff", "--quiet", "--", "data/sample/sentiment.csv"], cwd=REPO, timeout=30
        ).returncode
        == 0
    )


# --------------------------------------------------------------------------- recipe and overrides


def test_overrides_parse_numbers_lists_and_booleans(quality):
    parsed = quality.parse_overrides(
        [
            "finetune.learning_rate=1e-4",
            "finetune.epochs=4",
            "finetune.unfreeze_schedule=[1, 2]",
            "finetune.class_weights=false",
            "adapt.strategy=none",
        ]
    )
    assert parsed == {
        "finetune.learning_rate": 1e-4,
        "finetune.epochs": 4,
        "finetune.unfreeze_schedule": [1, 2],
        "finetune.class_weights": False,
        "adapt.strategy": "none",
    }
    assert isinstance(parsed["finetune.learning_rate"], float)
    for bad in ("finetune.learning_rate", "=3", "Finetune.lr=1"):
        with pytest.raises(quality.BenchmarkError, match="dotted recipe key"):
            quality.parse_overrides([bad])


def test_recipe_names_only_the_data_so_every_other_field_is_the_default(quality, tmp_path):
    from models.recipe import FinetuneConfig, Recipe, load_recipe

    train = tmp_path / "train.csv"
    train.write_text("text,label,source\n", encoding="utf-8")
    raw = quality.build_recipe(train)
    assert set(raw) == {"name", "task", "data"}
    recipe = load_recipe(quality.write_recipe(tmp_path / "recipe.yaml", raw))
    assert recipe.finetune == FinetuneConfig() and recipe.adapt == Recipe.model_fields["adapt"].default
    assert recipe.base_model is None and recipe.data.train == train.resolve()
    assert recipe.data.slice_column == "source" and recipe.data.eval_fraction == 0.2

    tuned = load_recipe(
        quality.write_recipe(
            tmp_path / "tuned.yaml",
            quality.build_recipe(train, quality.parse_overrides(["finetune.learning_rate=1e-4", "seed=1"])),
        )
    )
    assert tuned.finetune.learning_rate == 1e-4 and tuned.seed == 1
    assert tuned.finetune.epochs == FinetuneConfig().epochs


def test_a_misspelt_override_fails_before_the_run_and_names_the_field(quality, tmp_path):
    raw = quality.build_recipe(tmp_path / "train.csv", {"finetune.learning_rat": 1e-4})
    with pytest.raises(quality.BenchmarkError, match="finetune.learning_rat"):
        quality.write_recipe(tmp_path / "recipe.yaml", raw)


def test_targets_are_judged_against_issue_5(quality):
    results = {
        "accuracy": 0.87,
        "macro_f1": 0.83,
        "int8": {"accuracy_drop_points": 0.2, "macro_f1_drop_points": 0.6},
    }
    verdict = quality.judge(results, wall_seconds=14 * 60)
    assert verdict["accuracy"]["met"] and not verdict["macro_f1"]["met"]
    assert not verdict["int8_within_half_point"]["met"]  # the worse of the two drops counts
    assert verdict["wall_minutes"]["met"] and not quality.judge(results, 16 * 60)["wall_minutes"]["met"]


@pytest.mark.integration
@pytest.mark.skipif(
    not os.environ.get("DAPT_RUN_QUALITY_QUICK"), reason="~80 s: set DAPT_RUN_QUALITY_QUICK=1"
)
@pytest.mark.timeout(300)
def test_quick_run_prints_targets(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--quick", "--out", str(tmp_path / "q")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=290,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert set(report["meets_target"]) == {
        "accuracy",
        "macro_f1",
        "int8_within_half_point",
        "within_15_minutes",
    }
    assert report["data"]["rows"] == 300 and 0.0 <= report["macro_f1"] <= 1.0
    assert report["wall_seconds"]["stages"]["fine-tune"] > 0


# --------------------------------------------------------------------------- real-data mode (issue 13)


@pytest.fixture(scope="module")
def real():
    sys.path.insert(0, str(REPO))
    import benchmarks.quality_real as module

    return module


def test_missing_real_data_says_where_it_looked_and_what_to_pass(real, tmp_path, monkeypatch):
    from benchmarks.common import BenchmarkError

    monkeypatch.setenv("DAPT_REAL_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(real, "REPO", tmp_path / "repo")
    with pytest.raises(BenchmarkError, match="--data-dir") as error:
        real.find_data_dir(tmp_path / "given")
    assert str(tmp_path / "given") in str(error.value) and "--synthetic" in str(error.value)


def test_stratified_sample_keeps_the_class_mix(real):
    rows = [{"text": f"t{i}", "label": "neutral" if i % 4 else "negative"} for i in range(400)]
    picked = real.stratified_sample(rows, 100, seed=1)
    assert len(picked) == 100 and Counter(r["label"] for r in picked) == {"neutral": 75, "negative": 25}
    assert real.stratified_sample(rows, 1000, seed=1) == rows


def test_ner_types_outside_the_kept_ones_become_o_and_conll_round_trips(real, tmp_path):
    tags = ["B-Chemical", "I-Chemical", "O", "B-Disease", "I-Disease"]
    assert real.keep_types(tags, ["Disease"]) == ["O", "O", "O", "B-Disease", "I-Disease"]
    sentences = [
        (["Aspirin", "causes", "ulcers"], ["B-Chemical", "O", "B-Disease"]),
        (["Fine", "."], ["O", "O"]),
    ]
    real.write_conll(tmp_path / "x.conll", sentences)
    assert real.read_conll(tmp_path / "x.conll") == sentences


def test_comparison_in_points_and_whether_the_gain_check_agreed(real):
    gain = {"method": "probe", "gain": 0.004, "min_gain": 0.0, "kept": "adapted"}
    results = {
        "default": {"metrics": {"macro_f1": 0.84}, "adaptation_gain": gain},
        "plain": {"metrics": {"macro_f1": 0.82}},
        "none": {"metrics": {"macro_f1": 0.845}},
    }
    comparison = real.compare("sentiment", results)
    assert comparison["default_minus_plain_points"] == 2.0
    assert comparison["default_minus_none_points"] == -0.5
    # the default run kept the adapted encoder, so it is the adapted run: fine-tuning shows a loss, the check a gain
    assert comparison["adapted_run"] == "default" and comparison["finetune_gain_of_adaptation_points"] == -0.5
    assert comparison["gain_check"] == "probe" and comparison["check_gain_points"] == 0.4
    assert comparison["check_agrees_with_finetune"] is False


def test_seeds_parse_into_integers_and_a_bad_list_says_what_to_pass(quality):
    from benchmarks.common import BenchmarkError

    assert quality.parse_seeds(None) is None
    assert quality.parse_seeds("42, 7") == [42, 7]
    for bad in ("42,x", "", "7,7"):
        with pytest.raises(BenchmarkError, match="--seeds 42,7"):
            quality.parse_seeds(bad)


def test_over_seeds_gives_each_runs_mean_and_range_and_default_minus_plain_per_seed(real):
    by_seed = {
        "42": {"default": {"metrics": {"macro_f1": 0.797}}, "plain": {"metrics": {"macro_f1": 0.790}}},
        "7": {"default": {"metrics": {"macro_f1": 0.806}}, "plain": {"metrics": {"macro_f1": 0.810}}},
    }
    summary = real.over_seeds("sentiment", by_seed)
    assert summary["seeds"] == ["42", "7"]
    assert summary["runs"]["default"] == {
        "per_seed": [0.797, 0.806],
        "mean": 0.8015,
        "min": 0.797,
        "max": 0.806,
    }
    assert summary["runs"]["plain"]["mean"] == 0.8
    assert summary["default_minus_plain_points"] == {"per_seed": [0.7, -0.4], "mean": 0.15}


def test_each_run_is_repeated_per_seed_with_that_seed_in_the_recipe_and_the_plain_trainer(
    real, tmp_path, monkeypatch
):
    import argparse

    calls = []
    prepared = {"recipe": {"task": "classification", "data": {"corpus": "c", "labels": ["a", "b"]}}}
    prepared |= {"train": [("t", "a")], "test": [{"text": "t", "label": "a"}]}
    monkeypatch.setattr(real, "prepare_sentiment", lambda *a: prepared)

    def dapt_run(name, recipe, out):
        calls.append(("dapt", name, recipe["seed"]))
        return {"metrics": {"macro_f1": 0.8 + recipe["seed"] / 1000}, "wall_seconds": 1}

    def plain_run(task, prepared, out, base, seed):
        calls.append(("plain", out.name, seed))
        return {"metrics": {"macro_f1": 0.8}, "wall_seconds": 1}

    monkeypatch.setattr(real, "dapt_run", dapt_run)
    monkeypatch.setattr(real, "plain_run", plain_run)
    args = argparse.Namespace(runs=["default", "plain"], overrides={}, seeds=[42, 7], train_rows=1)
    args.corpus, args.seed = "headlines", 7
    report = real.run_task("sentiment", args, tmp_path, tmp_path)
    assert calls == [
        ("dapt", "default-seed42", 42),
        ("plain", "plain-seed42", 42),
        ("dapt", "default-seed7", 7),
        ("plain", "plain-seed7", 7),
    ]
    assert report["over_seeds"]["default_minus_plain_points"] == {"per_seed": [4.2, 0.7], "mean": 2.45}
    assert report["by_seed"]["7"]["comparison"]["default_minus_plain_points"] == 0.7


def test_served_scores_come_from_the_serving_predictor_and_its_decoding(real, tiny_base_model, tmp_path):
    from tests.services.conftest import NER_TAGS, export_tiny, make_checkpoint

    # the tiny tagger tags every word B-DRUG: each word is its own DRUG span
    checkpoint = make_checkpoint(tiny_base_model, tmp_path / "ckpt", "ner", NER_TAGS, favour="B-DRUG")
    bundle = export_tiny(checkpoint, tmp_path / "bundle", "ner", NER_TAGS)
    conll = tmp_path / "test.conll"
    real.write_conll(
        conll,
        [
            (["Aspirin", "helps", "migraine"], ["B-DRUG", "O", "B-DISEASE"]),
            (["ibuprofen", "tablets"], ["B-DRUG", "I-DRUG"]),
        ],
    )
    served = real.served_scores(
        bundle, {"task": "ner", "data": {"eval": str(conll), "labels": ["DRUG", "DISEASE"]}}
    )
    # 5 spans served, 3 gold, 1 exact match (Aspirin): precision 1/5, recall 1/3
    assert served["metrics"]["entity_f1"] == pytest.approx(2 * (1 / 5) * (1 / 3) / (1 / 5 + 1 / 3), abs=1e-4)
    assert served["texts"] == 2 and served["variant"] in ("int8", "fp32")

    assert real._gold_spans(["ibuprofen", "tablets", "help"], ["B-DRUG", "I-DRUG", "O"]) == {(0, 17, "DRUG")}


# ---------------------------------------------------------------- offline search of the defaults (issue 13)


def _fake_real_data(folder: Path) -> Path:
    tweets = folder / "fin_sentiment_tfns"
    tweets.mkdir(parents=True)
    for name, count in (("train.csv", 60), ("test.csv", 9)):
        with (tweets / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label"])
            writer.writeheader()
            labels = ("negative", "neutral", "positive")
            writer.writerows({"text": f"{name} tweet {i}", "label": labels[i % 3]} for i in range(count))
    ner = folder / "bc5cdr_ner"
    ner.mkdir()
    for name in ("train", "dev", "test"):
        (ner / f"{name}.conll").write_text(
            f"{name} O\naspirin B-Chemical\nulcers B-Disease\n\nnausea B-Disease\n", encoding="utf-8"
        )
    return folder


def test_the_search_scores_trials_on_rows_that_are_neither_trained_on_nor_the_test_split(real, tmp_path):
    sys.path.insert(0, str(REPO))
    import benchmarks.search_defaults as search

    data = _fake_real_data(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    prepared = real.prepare_sentiment(data, out, 30, "headlines", 7)
    tuning = search.tuning_set("sentiment", data, out, prepared)
    with tuning.open(encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    trained = {text for text, _ in prepared["train"]}
    assert len(texts) == 30 and not trained & set(texts)  # the train tweets outside the subsample
    assert all(text.startswith("train.csv") for text in texts)  # never the test split

    prepared = real.prepare_ner(data, out, ["Disease"])
    sentences = real.read_conll(search.tuning_set("ner", data, out, prepared))
    assert sentences[0] == (
        ["dev", "aspirin", "ulcers"],
        ["O", "O", "B-Disease"],
    )  # the dev split, types kept


def test_the_search_without_real_data_says_where_it_looked_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "search_defaults.py"), "--task", "ner"]
        + ["--data-dir", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DAPT_REAL_DATA": str(tmp_path / "nowhere-either")},
    )
    assert result.returncode == 2, result.stderr
    assert str(tmp_path / "nowhere") in result.stderr and "--data-dir" in result.stderr
