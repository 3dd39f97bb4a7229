"""Benchmark: data validation of 100k corpus rows + 100k labelled rows, against a plain pandas pass.

Both sides compute the same derived columns (lengths, token counts, duplicate / bad-character / PII flags,
conflicting labels, class counts) from the same files; the full validation adds reading, the Great
Expectations runs, the profile, validation.json and Data Docs. Data is synthetic, built here in code.

    .venv/bin/python benchmarks/validate.py [--rows 100000]

Prints one JSON object on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COMPANIES = [
    "Fjellstad",
    "Oravala",
    "Ilvento",
    "Polaris Cable",
    "Lumora",
    "Nordkap",
    "Vantaa Steel",
    "Kestrel",
]
METRICS = ["net sales", "operating profit", "order intake", "pre-tax loss", "turnover", "cash flow", "margin"]
MOVES = {
    "positive": ["rose", "climbed", "improved"],
    "negative": ["fell", "dropped", "declined"],
    "neutral": ["totalled", "stood at", "amounted to"],
}
PERIODS = [
    "the first quarter",
    "the second half",
    "July-September",
    "the financial year",
    "the review period",
]


def sentence(rng: random.Random, label: str) -> str:
    amount = f"EUR {rng.uniform(0.5, 900):.1f} mn"
    return (
        f"{rng.choice(COMPANIES)} said its {rng.choice(METRICS)} {rng.choice(MOVES[label])} to {amount} "
        f"in {rng.choice(PERIODS)} of {rng.randint(1995, 2025)}, compared with EUR {rng.uniform(0.5, 900):.1f} "
        f"mn a year earlier, ref {rng.randint(10_000, 99_999)}."
    )


def build_data(directory: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """A corpus of 1-3 sentence documents and a 3-class labelled CSV, with a sprinkle of realistic noise."""
    import pandas as pd

    rng = random.Random(seed)
    labels = list(MOVES)
    corpus = [
        " ".join(sentence(rng, rng.choice(labels)) for _ in range(rng.randint(1, 3))) for _ in range(rows)
    ]
    for i in rng.sample(range(rows), rows // 200):  # 0.5% duplicates, 0.2% mojibake, 0.1% e-mails
        corpus[i] = corpus[rng.randrange(rows)]
    for i in rng.sample(range(rows), rows // 500):
        corpus[i] = corpus[i].replace("compared", "comparedâ€™")
    for i in rng.sample(range(rows), rows // 1000):
        corpus[i] += " Contact investor.relations@example.com."
    corpus_path = directory / "corpus.txt"
    corpus_path.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    label_column = [labels[i % 3] for i in range(rows)]
    train = pd.DataFrame({"text": [sentence(rng, label) for label in label_column], "label": label_column})
    train_path = directory / "train.csv"
    train.to_csv(train_path, index=False)
    return corpus_path, train_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="rows of corpus and of labelled data (each)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    from models.settings import stack_environment

    started = time.perf_counter()
    import great_expectations  # noqa: F401  -- import cost reported apart: paid once per process

    import_s = time.perf_counter() - started
    import pandas as pd

    from expectations import validate_recipe_data
    from expectations.derived import TokenCounter, corpus_frame, labelled_frames
    from models.data import read_classification, read_corpus
    from models.recipe import recipe_from_dict

    for key, value in stack_environment(Path(tempfile.gettempdir()) / "dapt-bench-home").items():
        if key in ("TOKENIZERS_PARALLELISM", "GX_ANALYTICS_ENABLED", "HF_HUB_OFFLINE"):
            os.environ.setdefault(key, value)  # the validation-relevant part of the stack's environment

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        corpus_path, train_path = build_data(tmp_dir, args.rows)
        labels = list(MOVES)
        recipe = recipe_from_dict(
            {
                "name": "bench",
                "data": {"corpus": str(corpus_path), "train": str(train_path), "labels": labels},
            }
        )

        # Baseline: the same derived columns with pandas alone (fresh tokenizer cache, same files).
        started, cpu_started = time.perf_counter(), time.process_time()
        counter = TokenCounter.for_model(recipe.resolved_base_model())
        corpus_frame(read_corpus(corpus_path), counter)
        labelled_frames(read_classification(train_path), None, labels, counter)
        baseline_s, baseline_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

        started, cpu_started = time.perf_counter(), time.process_time()
        report = validate_recipe_data(recipe, tmp_dir / "out")
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        docs_files = sum(1 for _ in (tmp_dir / "out" / "data_docs").rglob("*.html"))

    total_rows = 2 * args.rows
    print(
        json.dumps(
            {
                "rows": total_rows,
                "corpus_rows": args.rows,
                "labelled_rows": args.rows,
                "seconds": round(seconds, 2),
                "rows_per_s": round(total_rows / seconds),
                "baseline": round(baseline_s, 2),
                "baseline_rows_per_s": round(total_rows / baseline_s),
                "overhead_vs_baseline": round(seconds / baseline_s, 2),
                "cpu_seconds": round(cpu_s, 2),  # less sensitive than wall time to other load on the machine
                "baseline_cpu_seconds": round(baseline_cpu_s, 2),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "gx_import_s": round(import_s, 2),
                "checks": len(report.checks),
                "failed_checks": [f"{c.suite}.{c.name}" for c in report.failures],
                "success": report.success,
                "data_docs_pages": docs_files,
                "length_unit": report.profile["length_unit"],
                "pandas": pd.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
