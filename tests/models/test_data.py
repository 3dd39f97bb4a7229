"""models/data.py: labelled data as the stages see it."""

from __future__ import annotations

from pathlib import Path

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


def test_corpus_cleaning_drops_empties_fragments_and_repeats_and_counts_them():
    from models.data import clean_corpus, corpus_drop_reasons

    lines = ["Rates rose in March.", "R .", "", "rates  rose in MARCH.", "Inflation eased slightly.", "   "]
    assert corpus_drop_reasons(lines, min_chars=10) == ["", "too_short", "empty", "repeat", "", "empty"]
    kept, cleaning = clean_corpus(lines, min_chars=10)
    assert kept == ["Rates rose in March.", "Inflation eased slightly."]
    assert cleaning.to_dict() == {"rows": 6, "kept": 2, "empty": 2, "too_short": 1, "repeats": 1}
    assert cleaning.summary() == "corpus: kept 2 of 6 lines; dropped 4 (2 empty, 1 too short, 1 repeats)"


def test_adaptation_trains_on_the_cleaned_corpus(tmp_path, tiny_base_model):
    from models.data import clean_corpus
    from models.recipe import load_recipe
    from models.stages import adapt_stage
    from tests.tiny_recipe import write_tiny_recipe

    sample = Path(__file__).resolve().parents[2] / "data" / "sample"
    path = write_tiny_recipe(tmp_path / "r", sample, tiny_base_model, adapt={"max_steps": 1})
    corpus = (tmp_path / "r" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert clean_corpus(corpus, 10)[1].kept == len(corpus)  # the sample slice itself is clean
    (tmp_path / "r" / "corpus.txt").write_text(
        "\n".join(corpus + ["R .", "", corpus[0]]) + "\n", encoding="utf-8"
    )
    recipe = load_recipe(path)
    messages: list[str] = []
    adapt_stage(recipe, tmp_path / "adapt", progress=messages.append)
    n = len(corpus)
    assert f"corpus: kept {n} of {n + 3} lines; dropped 3 (1 empty, 1 too short, 1 repeats)" in messages


def test_a_split_too_small_to_stratify_falls_back_to_random_instead_of_failing():
    import pandas as pd

    from models.data import stratified_split

    frame = pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": ["a", "b", "c"] * 4})
    train, held = stratified_split(frame, 0.1, seed=1)  # 2 held-out rows cannot hold 3 classes
    assert len(train) + len(held) == 12 and len(held) == 2
    train, held = stratified_split(frame, 0.5, seed=1)  # room for every class: stratified
    assert sorted(held["label"]) == ["a", "a", "b", "b", "c", "c"]


def test_bare_bio_tags_take_the_only_entity_type_and_bioes_becomes_iob2():
    from models.data import read_ner_tags

    bare = [["B", "I", "O", "B"], ["O"]]
    tags, reading = read_ner_tags(bare, ["Disease"])
    assert tags == [["B-Disease", "I-Disease", "O", "B-Disease"], ["O"]]
    assert (reading.tags, reading.untyped, reading.rewritten) == (5, 3, 0)
    assert reading.summary(["Disease"]) == "3 bare B/I tags read as Disease (of 5 tags)"

    bioes = [["S-Chemical", "O", "B-Disease", "I-Disease", "E-Disease"], ["U-Chemical", "L-Chemical"]]
    tags, reading = read_ner_tags(bioes, ["Chemical", "Disease"])
    assert tags == [["B-Chemical", "O", "B-Disease", "I-Disease", "I-Disease"], ["B-Chemical", "I-Chemical"]]
    assert (reading.untyped, reading.rewritten) == (0, 4)


def test_tags_that_cannot_be_read_unambiguously_are_left_for_validation():
    from models.data import read_ner_tags

    # two declared types: a bare B could be either; an undeclared type is not this recipe's to rename
    tags, reading = read_ner_tags([["B", "I", "S-Gene", "B-Disease"]], ["Chemical", "Disease"])
    assert tags == [["B", "I", "S-Gene", "B-Disease"]]
    assert not reading.changed


def test_a_headerless_tsv_is_read_as_conll_and_a_headed_one_as_a_table(tmp_path):
    from models.data import read_ner

    conll_tsv = tmp_path / "train.tsv"
    conll_tsv.write_text("Selegiline\tO\ninduced\tO\nhypotension\tB\n\nR\tO\n.\tO\n", encoding="utf-8")
    frame = read_ner(conll_tsv)
    assert frame["tokens"].tolist() == [["Selegiline", "induced", "hypotension"], ["R", "."]]
    assert frame["tags"].tolist() == [["O", "O", "B"], ["O", "O"]]

    import pytest

    from models.data import DataError

    table = tmp_path / "table.tsv"
    table.write_text("tokens\ttags\nSelegiline\tO\n", encoding="utf-8")
    # a headed .tsv is a table; its cells are strings, not token lists, and the error says so
    with pytest.raises(DataError, match="must hold lists of strings"):
        read_ner(table)


def test_load_task_data_trains_on_tags_read_as_iob2(tmp_path):
    (tmp_path / "train.tsv").write_text(
        "\n\n".join(f"Word{i}\tO\nfever\tB\nlike\tI\nsymptoms\tO" for i in range(8)) + "\n", encoding="utf-8"
    )
    (tmp_path / "corpus.txt").write_text("Fever like symptoms.\n", encoding="utf-8")
    data_section = {
        "corpus": str(tmp_path / "corpus.txt"),
        "train": str(tmp_path / "train.tsv"),
        "labels": ["Disease"],
        "eval_fraction": 0.25,
    }
    recipe = recipe_from_dict({"name": "bare", "task": "ner", "data": data_section})
    data = load_task_data(recipe)
    assert {tag for tags in data.train["tags"] for tag in tags} == {"O", "B-Disease", "I-Disease"}
    assert len(data.train) + len(data.eval) == 8


def test_an_iob1_file_is_read_as_iob2_and_a_broken_iob2_file_is_not_rewritten():
    from models.data import read_ner_tags

    # IOB1 (CoNLL-2003's original): entities start with I-; B- only splits two adjacent entities of a type
    iob1 = [["I-ORG", "I-ORG", "O", "I-LOC", "B-LOC"], ["O", "I-PER"]]
    tags, reading = read_ner_tags(iob1, ["ORG", "LOC", "PER"])
    assert tags == [["B-ORG", "I-ORG", "O", "B-LOC", "B-LOC"], ["O", "B-PER"]]
    assert reading.iob1_starts == 3 and reading.summary(["ORG"]).startswith("3 IOB1 entity starts")

    # IOB2 with one broken span: B- follows O elsewhere, so it is not IOB1 and validation reports the span
    broken = [["B-ORG", "I-ORG", "O"], ["O", "I-ORG"]]
    tags, reading = read_ner_tags(broken, ["ORG"])
    assert tags == broken and not reading.changed
