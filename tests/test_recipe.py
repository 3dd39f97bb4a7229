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
