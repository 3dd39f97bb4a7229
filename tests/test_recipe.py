"""The recipe is validated by pydantic: unknown or wrong fields are errors that name the field."""

from pathlib import Path

import pytest

from models.recipe import RecipeError, check_data_paths, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]


def _minimal(**overrides) -> dict:
    raw = {
        "name": "finsent",
        "data": {"corpus": "c.txt", "train": "t.csv", "labels": ["negative", "neutral", "positive"]},
    }
    raw.update(overrides)
    return raw


def test_demo_recipe_loads_and_resolves_paths_against_its_folder():
    recipe = load_recipe(REPO / "recipes" / "demo.yaml")
    assert recipe.name == "finsent"
    assert recipe.data.corpus == (REPO / "data" / "sample" / "corpus.txt").resolve()
    assert recipe.resolved_base_model().joinpath("config.json").is_file()


def test_unknown_field_is_named_in_the_error():
    with pytest.raises(RecipeError, match=r"adapt\.learning_rat: unknown field"):
        recipe_from_dict(_minimal(adapt={"learning_rat": 1e-4}))


def test_wrong_type_is_named_with_the_value():
    with pytest.raises(RecipeError, match=r"finetune\.epochs"):
        recipe_from_dict(_minimal(finetune={"epochs": "many"}))


def test_missing_required_field_is_named():
    raw = _minimal()
    del raw["data"]["train"]
    with pytest.raises(RecipeError, match=r"data\.train: required field is missing"):
        recipe_from_dict(raw)


@pytest.mark.parametrize("name", ["../etc", "Fin Sent", "", "a/b"])
def test_model_names_that_could_escape_a_folder_are_refused(name):
    with pytest.raises(RecipeError, match="not a valid model name"):
        recipe_from_dict(_minimal(name=name))


def test_missing_data_files_are_reported_by_field(tmp_path):
    recipe = recipe_from_dict(_minimal())
    problems = check_data_paths(recipe)
    assert any(p.startswith("data.corpus: file not found") for p in problems)


def test_yaml_that_is_not_a_mapping_is_a_readable_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(path)


def test_ner_may_declare_one_entity_type_but_a_classifier_needs_two_labels():
    recipe = recipe_from_dict(
        _minimal(task="ner", data={"corpus": "c.txt", "train": "t.conll", "labels": ["Disease"]})
    )
    assert recipe.data.labels == ["Disease"]
    with pytest.raises(RecipeError, match=r"classification needs at least 2 labels.*set task: ner"):
        recipe_from_dict(_minimal(data={"corpus": "c.txt", "train": "t.csv", "labels": ["positive"]}))
    with pytest.raises(RecipeError, match=r"data\.labels"):
        recipe_from_dict(_minimal(task="ner", data={"corpus": "c.txt", "train": "t.conll", "labels": []}))


def test_integer_class_ids_are_label_names_as_the_data_file_reads_them():
    recipe = recipe_from_dict(_minimal(data={"corpus": "c.txt", "train": "t.csv", "labels": [0, 1, 2]}))
    assert recipe.data.labels == ["0", "1", "2"]
    with pytest.raises(RecipeError, match=r"data\.labels"):  # a YAML yes/no is a mistake, not a class id
        recipe_from_dict(_minimal(data={"corpus": "c.txt", "train": "t.csv", "labels": [True, False]}))


def test_the_renamed_duplicate_threshold_says_what_replaced_it():
    with pytest.raises(RecipeError, match="max_duplicate_rate was replaced by max_dropped_rate"):
        recipe_from_dict(_minimal(validation={"max_duplicate_rate": 0.1}))


def test_int8_and_parity_settings_are_validated():
    recipe = recipe_from_dict(
        _minimal(export={"parity_batch_sizes": [32, 1, 32], "int8_fp32_last_layers": 1})
    )
    assert recipe.export.parity_batch_sizes == [1, 32] and recipe.export.int8_fp32_last_layers == 1
    with pytest.raises(RecipeError, match=r"export\.parity_batch_sizes"):
        recipe_from_dict(_minimal(export={"parity_batch_sizes": [0]}))
    with pytest.raises(RecipeError, match=r"export\.int8_operators"):
        recipe_from_dict(_minimal(export={"int8_operators": ["Conv"]}))
