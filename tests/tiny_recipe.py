"""A recipe over a small slice of data/sample/ and a tiny BERT, so the whole flow runs in seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml


def write_tiny_recipe(folder: Path, sample: Path, base_model: Path, **sections) -> Path:
    """A recipe over a small slice of data/sample/ and the tiny BERT, so the whole flow takes seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = sample.joinpath("corpus.txt").read_text(encoding="utf-8").splitlines()[:80]
    folder.joinpath("corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    general = sample.joinpath("general.txt").read_text(encoding="utf-8").splitlines()[:30]
    folder.joinpath("general.txt").write_text("\n".join(general) + "\n", encoding="utf-8")
    with sample.joinpath("sentiment.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picked = []
    for label in ("negative", "neutral", "positive"):
        picked += [r for r in rows if r["label"] == label][:20]
    with folder.joinpath("train.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(picked)
    recipe = {
        "name": "tiny",
        "task": "classification",
        "base_model": str(base_model),
        "data": {
            "corpus": "corpus.txt",
            "general": "general.txt",
            "train": "train.csv",
            "slice_column": "source",
            "labels": ["negative", "neutral", "positive"],
            "eval_fraction": 0.25,
        },
        "validation": {"min_examples_per_class": 5},
        "adapt": {
            "strategy": "dapt",
            "max_steps": 3,
            "batch_size": 8,
            "max_length": 32,
            "head_warmup_steps": 5,
        },
        "finetune": {"max_steps": 6, "batch_size": 8, "max_length": 32},
        "export": {"variants": ["fp32", "int8"], "min_label_agreement": 0.5, "int8_min_speedup": 0},
        "gate": {"min_value": 0.0, "tolerance": 1.0},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def write_tiny_ner_recipe(folder: Path, sample: Path, base_model: Path, **sections) -> Path:
    """The NER variant: a slice of data/sample/ner.conll with ORG, MONEY, PERCENT, DATE."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = sample.joinpath("corpus.txt").read_text(encoding="utf-8").splitlines()[:60]
    folder.joinpath("corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    general = sample.joinpath("general.txt").read_text(encoding="utf-8").splitlines()[:30]
    folder.joinpath("general.txt").write_text("\n".join(general) + "\n", encoding="utf-8")
    sentences = sample.joinpath("ner.conll").read_text(encoding="utf-8").split("\n\n")[:60]
    folder.joinpath("ner.conll").write_text(
        "\n\n".join(s.strip() for s in sentences) + "\n", encoding="utf-8"
    )
    recipe = {
        "name": "tinyner",
        "task": "ner",
        "base_model": str(base_model),
        "data": {
            "corpus": "corpus.txt",
            "general": "general.txt",
            "train": "ner.conll",
            "labels": ["ORG", "MONEY", "PERCENT", "DATE"],
            "eval_fraction": 0.25,
        },
        "adapt": {
            "strategy": "dapt",
            "max_steps": 2,
            "batch_size": 8,
            "max_length": 48,
            "head_warmup_steps": 5,
        },
        "finetune": {"max_steps": 6, "batch_size": 8, "max_length": 48},
        "export": {"variants": ["fp32", "int8"], "min_label_agreement": 0.5, "int8_min_speedup": 0},
        "gate": {"metric": "entity_f1", "min_value": 0.0, "tolerance": 1.0},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path
