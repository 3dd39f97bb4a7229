"""models/data.py: labelled data as the stages see it."""

from __future__ import annotations

import pandas as pd

from models.data import load_task_data
from models.recipe import recipe_from_dict


def test_repeated_rows_are_trained_on_once_and_never_straddle_the_split(tmp_path):
    rows = [{"text": f"Sales of unit {i} rose.", "label": "positive"} for i in range(30)]
    rows += [{"text": f"Sales of unit {i} fell.", "label": "negative"} for i in range(30)]
    repeated = rows[:10] * 3  # ten sentences three more times each, as scraped news often has
    pd.DataFrame(rows + repeated).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "corpus.txt").write_text("Some domain text.\n", encoding="utf-8")
    recipe = recipe_from_dict(
        {
            "name": "dups",
            "data": {
                "corpus": str(tmp_path / "corpus.txt"),
                "train": str(tmp_path / "train.csv"),
                "labels": ["negative", "positive"],
                "eval_fraction": 0.25,
            },
        }
    )
    data = load_task_data(recipe)
    assert len(data.train) + len(data.eval) == 60  # the 30 repeats are gone
    assert not set(data.train["text"]) & set(data.eval["text"])
    assert sorted(data.eval["label"].value_counts().tolist()) == [7, 8]  # stratified


def test_a_latin1_csv_is_refused_with_the_fix(tmp_path):
    import pytest

    from models.data import DataError, read_classification

    path = tmp_path / "fpb.csv"
    path.write_bytes(
        "text,label\nThe company's net sales in 2008 totalled EUR 36.5 mn \u00e0 Espoo.,neutral\n".encode(
            "latin-1"
        )
    )
    with pytest.raises(DataError, match=r"not UTF-8.*iconv -f latin1 -t utf-8 fpb.csv"):
        read_classification(path)
