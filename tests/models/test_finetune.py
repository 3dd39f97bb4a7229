"""Fine-tuning on a tiny BERT (2 layers, hidden 32) and tiny frames: behaviour, not accuracy."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from models.recipe import RecipeError, recipe_from_dict

torch.set_num_threads(1)

CLASSES = ["negative", "neutral", "positive"]
TEXTS = {
    "positive": [
        "Operating profit rose to EUR 13.1 mn",
        "Net sales grew by 12 percent",
        "Orders increased sharply",
    ],
    "negative": [
        "Pre-tax loss widened to EUR 2 mn",
        "The company will cut 200 jobs",
        "Sales fell by 9 percent",
    ],
    "neutral": [
        "The report will be published in May",
        "The company is based in Helsinki",
        "Sales totalled EUR 4 mn",
    ],
}


def classification_frame(rows_per_class: int = 8) -> pd.DataFrame:
    rows = []
    for label, texts in TEXTS.items():
        for i in range(rows_per_class):
            rows.append(
                {"text": f"{texts[i % 3]} in {2000 + i}", "label": label, "slice": "wire" if i % 2 else "pr"}
            )
    return pd.DataFrame(rows)


def ner_frame(n: int = 12) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append(
            {
                "tokens": ["Ruskola", "Group", "sales", "rose", "to", "EUR", str(10 + i), "mn", "."],
                "tags": ["B-ORG", "I-ORG", "O", "O", "O", "B-MONEY", "I-MONEY", "I-MONEY", "O"],
            }
        )
    return pd.DataFrame(rows)


def make_recipe(base: Path, task: str = "classification", **finetune) -> object:
    settings = {
        "learning_rate": 1e-2,
        "head_learning_rate": 5e-2,
        "batch_size": 8,
        "max_length": 32,
        "early_stopping_patience": 0,  # tests of other behaviour train on the whole frame and keep the last epoch
        **finetune,
    }
    return recipe_from_dict(
        {
            "name": "tiny",
            "task": task,
            "base_model": str(base),
            "data": {
                "corpus": "corpus.txt",
                "train": "train.csv",
                "labels": CLASSES if task == "classification" else ["ORG", "MONEY"],
            },
            "finetune": settings,
        }
    )


def save_masked_lm(base: Path, target: Path) -> Path:
    """An 'adapted' encoder dir: BertForMaskedLM (no pooler) with a recognisable tensor."""
    from transformers import AutoTokenizer, BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(base)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.fill_(0.125)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target


def test_classification_finetune_writes_loadable_model_with_recipe_label_order(tiny_base_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models.training.finetune import finetune

    frame = classification_frame()
    lines: list[str] = []
    result = finetune(
        make_recipe(tiny_base_model, max_steps=4), tiny_base_model, frame, frame, tmp_path, lines.append
    )

    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert model.config.id2label == dict(enumerate(CLASSES))
    assert model.config.label2id == {label: i for i, label in enumerate(CLASSES)}
    assert AutoTokenizer.from_pretrained(result.model_dir)("profit rose")["input_ids"]
    for path in result.model_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert result.curves_png.read_bytes()[:4] == b"\x89PNG"
    assert result.params["global_steps"] == 4
    assert any("loss" in entry for entry in result.history)
    assert any(line.startswith("epoch") and "loss" in line for line in lines)
    assert any("macro-F1" in line for line in lines)  # per-epoch evaluation is reported
    assert (tmp_path / "finetune.json").is_file()
    assert result.augmentation is None and result.search is None


def test_ner_finetune_uses_o_then_bio_tags_per_entity_type(tiny_base_model, tmp_path):
    from transformers import AutoModelForTokenClassification

    from models.training.finetune import finetune

    frame = ner_frame()
    result = finetune(
        make_recipe(tiny_base_model, task="ner", max_steps=2), tiny_base_model, frame, frame, tmp_path
    )

    model = AutoModelForTokenClassification.from_pretrained(result.model_dir)
    assert list(model.config.id2label.values()) == ["O", "B-ORG", "I-ORG", "B-MONEY", "I-MONEY"]


def test_ner_alignment_labels_only_the_first_word_piece(tiny_base_model):
    from transformers import AutoTokenizer

    from models.training.task_model import IGNORE_INDEX, align_ner_labels

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    words, tags = ["Ruskola", "profit", "rose"], ["B-ORG", "O", "O"]
    encoded = tokenizer(words, is_split_into_words=True)
    word_ids = encoded.word_ids()
    assert word_ids.count(0) > 1, "test needs a word split into several pieces"

    labels = align_ner_labels(word_ids, tags, {"O": 0, "B-ORG": 1, "I-ORG": 2})

    first_pieces = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    assert [labels[i] for i in first_pieces] == [1, 0, 0]
    assert all(labels[i] == IGNORE_INDEX for i in range(len(labels)) if i not in first_pieces)
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # [CLS] and [SEP]


def test_masked_lm_encoder_weights_are_loaded_and_pooler_comes_from_base(tiny_base_model, tmp_path):
    from models.training.task_model import load_task_model

    adapted = save_masked_lm(tiny_base_model, tmp_path / "adapted")

    model, info = load_task_model(make_recipe(tiny_base_model), adapted)

    query = model.bert.encoder.layer[0].attention.self.query.weight
    assert torch.all(query == 0.125)
    assert not [key for key in info["newly_initialized"] if key.startswith("bert.")]
    assert info["pooler"] == "base"


def test_encoder_dir_without_encoder_weights_is_rejected(tiny_base_model, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from models.training.finetune import finetune
    from models.training.task_model import FinetuneError

    empty = tmp_path / "empty"
    shutil.copytree(tiny_base_model, empty)
    save_file({"unrelated.weight": torch.zeros(2)}, str(empty / "model.safetensors"))
    frame = classification_frame(2)
    with pytest.raises(FinetuneError, match="encoder weights"):
        finetune(make_recipe(tiny_base_model, max_steps=1), empty, frame, frame, tmp_path / "out")
    with pytest.raises(FinetuneError, match="no config.json"):
        finetune(
            make_recipe(tiny_base_model, max_steps=1), tmp_path / "missing", frame, frame, tmp_path / "out"
        )


def test_unknown_labels_are_named_in_the_error(tiny_base_model, tmp_path):
    from models.training.finetune import finetune
    from models.training.task_model import FinetuneError

    frame = classification_frame(2)
    frame.loc[0, "label"] = "bullish"
    with pytest.raises(FinetuneError, match="bullish"):
        finetune(make_recipe(tiny_base_model, max_steps=1), tiny_base_model, frame, frame, tmp_path)


def test_head_and_encoder_learning_rates_differ_with_layer_decay(tiny_base_model):
    from models.training.task_model import load_task_model, optimizer_param_groups

    recipe = make_recipe(tiny_base_model, learning_rate=1e-4, head_learning_rate=2e-3, layer_lr_decay=0.5)
    model, _ = load_task_model(recipe, tiny_base_model)

    groups = optimizer_param_groups(model, recipe.finetune)

    lr = {g["name"].removesuffix("_no_decay"): g["lr"] for g in groups}
    assert lr["head"] == pytest.approx(2e-3)
    assert lr["layer_1"] == pytest.approx(1e-4)  # top layer
    assert lr["layer_0"] == pytest.approx(5e-5)
    assert lr["embeddings"] == pytest.approx(2.5e-5)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("_no_decay"))


def test_unfreezing_callback_unfreezes_one_more_block_per_scheduled_epoch(tiny_base_model):
    from transformers import TrainerControl, TrainerState

    from models.training.task_model import load_task_model
    from models.training.trainer import gradual_unfreezing_callback

    model, _ = load_task_model(make_recipe(tiny_base_model), tiny_base_model)
    callback = gradual_unfreezing_callback([1, 2])
    state, control = TrainerState(), TrainerControl()

    def trainable(module) -> bool:
        return all(p.requires_grad for p in module.parameters())

    callback.on_train_begin(None, state, control, model=model)
    assert trainable(model.bert.encoder.layer[1]) and not trainable(model.bert.encoder.layer[0])
    assert not trainable(model.bert.embeddings) and trainable(model.classifier)
    state.epoch = 1.0
    callback.on_epoch_end(None, state, control, model=model)
    assert trainable(model.bert.encoder.layer[0]) and not trainable(model.bert.embeddings)
    state.epoch = 2.0
    callback.on_epoch_end(None, state, control, model=model)
    assert trainable(model.bert.embeddings)
    assert [len(entry["trainable_units"]) for entry in callback.log] == [1, 2, 3]


def test_gradual_unfreezing_in_training_keeps_frozen_blocks_at_encoder_weights(tiny_base_model, tmp_path):
    """Schedule [1] over 2 epochs: the top layer trains from the start, layer 0 after epoch 1, embeddings never."""
    from safetensors.torch import load_file

    from models.training.finetune import finetune

    adapted = save_masked_lm(tiny_base_model, tmp_path / "adapted")
    frame = classification_frame(4)  # 12 rows, batch 8: 2 steps per epoch
    recipe = make_recipe(tiny_base_model, epochs=2, unfreeze_schedule=[1], warmup_ratio=0.0)

    result = finetune(recipe, adapted, frame, frame, tmp_path / "run")

    before = load_file(str(adapted / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    embedding = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(after[embedding], before[embedding])  # frozen all along, carried over exactly
    top = "bert.encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(after[top], before[top])
    bottom = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(after[bottom], before[bottom])  # unfrozen after epoch 1
    assert [entry["epoch"] for entry in result.params["unfreezing"]] == [0.0, 1.0]


def test_class_weights_are_inverse_frequency_and_used_in_the_loss(tiny_base_model, tmp_path):
    import torch.nn.functional as F
    from transformers import TrainingArguments

    from models.training.task_model import class_weight_vector, load_task_model, optimizer_param_groups
    from models.training.trainer import _trainer_class

    recipe = make_recipe(tiny_base_model, class_weights=True)
    encoded = [{"labels": 0}] * 2 + [{"labels": 1}] * 6 + [{"labels": 2}] * 4
    weights = class_weight_vector(recipe, recipe.finetune, encoded)
    assert weights[0] > weights[2] > weights[1]
    assert weights[1] == pytest.approx(12 / (3 * 6))

    model, _ = load_task_model(recipe, tiny_base_model)
    model.eval()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = _trainer_class()(
        model=model,
        args=args,
        param_groups=optimizer_param_groups(model, recipe.finetune),
        class_weights=[1.0, 1.0, 10.0],
        multi_label=False,
    )
    batch = {"input_ids": torch.tensor([[101, 2000, 102], [101, 3000, 102]]), "labels": torch.tensor([2, 0])}
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"]).logits
    expected = F.cross_entropy(logits, batch["labels"], weight=torch.tensor([1.0, 1.0, 10.0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, batch["labels"]).item(), rel=1e-3)


def test_label_smoothing_softens_the_loss_with_or_without_class_weights_and_must_stay_below_one(
    tiny_base_model, tmp_path
):
    import torch.nn.functional as F
    from transformers import TrainingArguments

    from models.training.task_model import load_task_model, optimizer_param_groups
    from models.training.trainer import _trainer_class

    recipe = make_recipe(tiny_base_model, class_weights=False, label_smoothing=0.1)
    model, _ = load_task_model(recipe, tiny_base_model)
    model.eval()
    # confident logits and a confidently right label: a fresh head's near-uniform logits barely feel the
    # smoothing, and a confidently wrong label cancels a right one
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([3.0, 0.0, -3.0]))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    batch = {"input_ids": torch.tensor([[101, 2000, 102], [101, 3000, 102]]), "labels": torch.tensor([0, 1])}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    for weights in (None, [1.0, 10.0, 1.0]):
        trainer = _trainer_class()(
            model=model,
            args=args,
            param_groups=optimizer_param_groups(model, recipe.finetune),
            class_weights=weights,
            multi_label=False,
            label_smoothing=recipe.finetune.label_smoothing,
        )
        with torch.no_grad():
            loss = trainer.compute_loss(model, dict(batch))
        weight = None if weights is None else torch.tensor(weights)
        smoothed = F.cross_entropy(logits, batch["labels"], weight=weight, label_smoothing=0.1)
        assert loss.item() == pytest.approx(smoothed.item(), rel=1e-5)
        assert loss.item() != pytest.approx(
            F.cross_entropy(logits, batch["labels"], weight=weight).item(), rel=1e-3
        )
    with pytest.raises(RecipeError, match="label_smoothing"):
        make_recipe(tiny_base_model, label_smoothing=1.0)


def test_class_weights_default_to_classification_only_since_they_cost_ner_its_precision(tiny_base_model):
    from models.training.task_model import uses_class_weights

    classification, ner = make_recipe(tiny_base_model), make_recipe(tiny_base_model, task="ner")
    assert classification.finetune.class_weights == ner.finetune.class_weights == "auto"
    assert uses_class_weights(classification, classification.finetune)
    assert not uses_class_weights(ner, ner.finetune)
    forced = make_recipe(tiny_base_model, task="ner", class_weights=True)
    assert uses_class_weights(forced, forced.finetune)
    off = make_recipe(tiny_base_model, class_weights=False)
    assert not uses_class_weights(off, off.finetune)


def test_auto_learning_rate_batch_size_and_patience_are_chosen_per_task_and_explicit_values_win(
    tiny_base_model,
):
    from models.training.task_model import resolve_task_defaults

    # both tasks: batch 16 and every training row fitted (no early stopping, the last epoch kept); NER trains its
    # encoder at twice classification's rate
    for task, rate, batch, patience in (("classification", 1e-4, 16, 0), ("ner", 2e-4, 16, 0)):
        recipe = recipe_from_dict(
            {
                "name": "tiny",
                "task": task,
                "base_model": str(tiny_base_model),
                "data": {"corpus": "c.txt", "train": "t.csv", "labels": ["A", "B"]},
            }
        )
        assert recipe.finetune.learning_rate == "auto"
        assert recipe.finetune.batch_size == "auto" and recipe.finetune.early_stopping_patience == "auto"
        resolved = resolve_task_defaults(recipe, recipe.finetune)
        assert (resolved.learning_rate, resolved.batch_size, resolved.early_stopping_patience) == (
            rate,
            batch,
            patience,
        )
    fixed = make_recipe(
        tiny_base_model, task="ner", learning_rate=3e-5, batch_size=8, early_stopping_patience=2
    )
    resolved = resolve_task_defaults(fixed, fixed.finetune)
    assert (resolved.learning_rate, resolved.batch_size, resolved.early_stopping_patience) == (3e-5, 8, 2)


def test_classification_by_default_fits_every_training_row_and_only_watches_eval(tiny_base_model, tmp_path):
    from models.training.finetune import finetune

    frame = classification_frame(10)  # 30 rows, all fitted
    recipe = make_recipe(tiny_base_model, epochs=1, batch_size=10, early_stopping_patience="auto")

    result = finetune(recipe, tiny_base_model, frame, frame.iloc[:3], tmp_path)

    assert result.params["early_stopping_patience"] == 0
    assert result.params["monitor_set"] == "eval"
    assert result.params["global_steps"] == 3  # 30 rows / 10 per step: no validation rows held back


def test_without_early_stopping_a_large_eval_set_is_watched_through_a_seeded_sample(
    tiny_base_model, tmp_path, monkeypatch
):
    from models.training import finetune as finetune_module

    monkeypatch.setattr(finetune_module, "WATCHED_EVAL_ROWS", 12)
    frame = classification_frame(10)  # 30 rows
    recipe = make_recipe(tiny_base_model, epochs=2, batch_size=10)

    result = finetune_module.finetune(recipe, tiny_base_model, frame, frame, tmp_path)

    assert result.params["monitor_set"] == "eval_sample"
    assert result.params["n_monitor"] == 12 and result.params["n_train"] == 30
    assert len([h for h in result.history if "eval_macro_f1" in h]) == 2  # the curve still has every epoch
    _, watched, _ = finetune_module._fit_and_monitor_rows(recipe, recipe.finetune, frame, frame)
    assert list(watched.index) == sorted(watched.index) and len(set(watched.index)) == 12
    _, again, _ = finetune_module._fit_and_monitor_rows(recipe, recipe.finetune, frame, frame)
    assert list(again.index) == list(watched.index)  # the same rows every run of the seed


def test_early_stopping_selects_on_a_split_of_train_not_on_eval(tiny_base_model, tmp_path):
    from models.training.finetune import finetune

    frame = classification_frame(10)  # 30 rows: 27 fit, 3 validation
    recipe = make_recipe(tiny_base_model, epochs=3, early_stopping_patience=1)

    result = finetune(recipe, tiny_base_model, frame, frame.iloc[:3], tmp_path)

    assert result.params["monitor_set"] == "train_validation_split"
    assert result.params["n_train"] == 27 and result.params["n_monitor"] == 3
    assert result.params["best_metric"] is not None
    assert not (tmp_path / "checkpoints").exists()


def test_multi_label_finetune_sets_problem_type(tiny_base_model, tmp_path):
    from transformers import AutoConfig

    from models.training.finetune import finetune

    frame = classification_frame(2)
    frame.loc[0, "label"] = "negative|neutral"
    result = finetune(
        make_recipe(tiny_base_model, multi_label=True, max_steps=2), tiny_base_model, frame, frame, tmp_path
    )

    assert AutoConfig.from_pretrained(result.model_dir).problem_type == "multi_label_classification"


def test_augmentation_adds_capped_synthetic_rows_that_keep_their_labels(tiny_base_model, tmp_path):
    from models.training.augment import augment_training_set

    adapted = save_masked_lm(tiny_base_model, tmp_path / "adapted")
    frame = classification_frame()  # 24 rows
    recipe = make_recipe(tiny_base_model)

    result = augment_training_set(recipe, adapted, frame, fraction=0.25)

    assert 0 < result.report["n_synthetic"] == len(result.rows) <= 6
    originals = {row.text: row.label for row in frame.itertuples()}
    for row in result.rows.itertuples():
        assert row.text not in originals
        closest = max(originals, key=lambda text: len(set(text.split()) & set(row.text.split())))
        assert len(closest.split()) == len(row.text.split())  # words replaced one for one
        assert originals[closest] == row.label
    assert result.report["examples"] and result.report["mlm_head_trained"] is True


def test_ner_augmentation_replaces_only_words_outside_entities(tiny_base_model, tmp_path):
    from models.training.augment import augment_training_set

    frame = ner_frame(8)
    result = augment_training_set(
        make_recipe(tiny_base_model, task="ner"), tiny_base_model, frame, fraction=0.5
    )

    assert 0 < len(result.rows) <= 4
    for tokens, tags in zip(result.rows["tokens"], result.rows["tags"], strict=True):
        assert tags == frame["tags"][0]
        assert tokens[:2] == ["Ruskola", "Group"] and tokens[5] == "EUR"


def test_finetune_with_augmentation_reports_it(tiny_base_model, tmp_path):
    from models.training.finetune import finetune

    frame = classification_frame()
    result = finetune(
        make_recipe(tiny_base_model, augment_fraction=0.25, max_steps=2),
        tiny_base_model,
        frame,
        frame,
        tmp_path,
    )

    assert result.augmentation is not None
    assert result.params["n_train"] == len(frame) + result.augmentation["n_synthetic"]


def test_search_runs_the_trial_budget_and_uses_the_best_params(tiny_base_model, tmp_path):
    from models.training.finetune import finetune

    frame = classification_frame()
    recipe = make_recipe(tiny_base_model, search_trials=2, max_steps=2)

    result = finetune(recipe, tiny_base_model, frame, frame, tmp_path)

    assert result.search["n_trials"] == 2
    assert result.search["n_fit"] + result.search["n_validation"] == len(frame)  # eval set never used
    best = result.search["best_params"]
    assert set(best) == {"learning_rate", "epochs", "batch_size", "warmup_ratio"}
    assert result.params["learning_rate"] == best["learning_rate"]
    assert result.params["batch_size"] == best["batch_size"]


def test_measure_augmentation_effect_trains_both_variants(tiny_base_model, tmp_path):
    from models.training.finetune import measure_augmentation_effect

    frame = classification_frame()
    recipe = make_recipe(tiny_base_model, augment_fraction=0.25, max_steps=2)

    study = measure_augmentation_effect(recipe, tiny_base_model, frame, frame, tmp_path)

    assert study["with"]["n_train"] == len(frame) + study["augmentation"]["n_synthetic"]
    assert study["without"]["n_train"] == len(frame)
    assert study["macro_f1_delta"] == pytest.approx(study["with"]["macro_f1"] - study["without"]["macro_f1"])


def test_step_timing_includes_the_update_and_leaves_the_weights_and_gradients_untouched(tiny_base_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from models.training.calibration import time_training_steps

    model = AutoModelForSequenceClassification.from_pretrained(tiny_base_model, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    collate = DataCollatorWithPadding(tokenizer)
    rows = [dict(tokenizer(text), labels=i % 3) for i, text in enumerate(TEXTS["positive"] * 4)]
    batches = [collate(rows[i : i + 4]) for i in range(0, 12, 4)]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    timing = time_training_steps(model, batches, update=True)

    assert timing.batches == 2 and timing.rows == 8  # the first batch (one-off costs) is not counted
    assert 0 < timing.forward_seconds < timing.seconds
    assert timing.forward_seconds_per_row == pytest.approx(timing.forward_seconds / 8)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name  # the AdamW steps were undone
        assert param.grad is None


def test_calibration_batches_span_the_length_distribution_in_tight_batches_after_a_warm_up_batch():
    from models.training.step_budget import calibration_batches

    rows = [{"input_ids": [0] * length} for length in range(1, 101)]

    batches = calibration_batches(rows, size=4, count=5)

    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    lengths = [[len(row["input_ids"]) for row in batch] for batch in batches[1:]]
    assert all(max(b) - min(b) == 3 for b in lengths)  # neighbours in length, as group_by_length batches them
    assert lengths[0][0] < 15 and lengths[-1][-1] > 85  # short and long rows both timed
    mean = sum(map(sum, lengths)) / 20
    assert mean == pytest.approx(50.5, abs=1)  # the mean length, not a lucky draw
    assert batches[0] == batches[3]  # the warm-up (untimed) is the middle batch


def test_time_budget_that_fits_less_than_all_epochs_plans_fewer_steps_but_never_under_min_epochs(
    tiny_base_model, tmp_path
):
    from models.training.finetune import finetune

    frame = classification_frame(10)  # 30 rows: 27 fit (4 steps of 8), 3 validation
    recipe = make_recipe(
        tiny_base_model, epochs=3, min_epochs=2, early_stopping_patience=1, time_budget_minutes=1e-6
    )
    lines: list[str] = []

    result = finetune(recipe, tiny_base_model, frame, frame.iloc[:3], tmp_path, lines.append)

    budget = result.params["time_budget"]
    assert budget["steps_wanted"] == 12 and budget["steps_affordable"] == 0
    assert budget["planned_steps"] == budget["min_steps"] == 8  # two epochs: finetune.min_epochs
    assert budget["seconds_per_step"] > 0
    assert budget["evaluation_seconds"] > 0  # the 3 validation rows are evaluated after each epoch
    assert budget["trained_seconds"] > 0  # what the plan really took, beside budget["planned_seconds"]
    assert result.params["global_steps"] == 8
    assert result.params["best_metric"] is not None  # the shortened run still picks its checkpoint
    budget_lines = [line for line in lines if line.startswith("[finetune] budget")]
    assert len(budget_lines) == 1 and "fits 0 of 12 steps" in budget_lines[0]
    assert "finetune.min_epochs 2 keeps 8 steps" in budget_lines[0] and "training 8 steps" in budget_lines[0]
    # the budget may be the run's, cut by earlier stages, so the line blames neither the machine nor one knob
    assert "over the budget" in budget_lines[0] and "slower" not in budget_lines[0]
    assert "finetune.time_budget_minutes and the run's time_budget_minutes" in budget_lines[0]


def test_time_budget_that_fits_every_epoch_changes_nothing(tiny_base_model, tmp_path):
    from models.training.finetune import finetune

    frame = classification_frame(10)
    recipe = make_recipe(tiny_base_model, epochs=2, early_stopping_patience=0, time_budget_minutes=60)

    result = finetune(recipe, tiny_base_model, frame, frame.iloc[:3], tmp_path)

    assert result.params["time_budget"]["planned_steps"] == result.params["time_budget"]["steps_wanted"] == 8
    assert result.params["time_budget"]["replanned"] == []  # the real steps kept to the plan: nothing cut
    assert result.params["global_steps"] == 8


def test_steps_that_fit_follow_the_measured_pace_but_never_under_the_minimum_or_over_the_most():
    from models.training.step_budget import steps_that_fit

    pace = {"steps_done": 10, "step_seconds": 5.0, "boundaries_left": 2, "seconds_per_boundary": 2.5}

    # 0.5 s a step; 20 s left less two epoch ends of 2.5 s: 30 more steps
    assert steps_that_fit(**pace, seconds_left=20, most_steps=100, min_steps=20) == 40
    assert steps_that_fit(**pace, seconds_left=20, most_steps=100, min_steps=50) == 50  # min_epochs' floor
    assert (
        steps_that_fit(**pace, seconds_left=20, most_steps=30, min_steps=20) == 30
    )  # never more than the most allowed
    assert (
        steps_that_fit(**pace, seconds_left=-5, most_steps=100, min_steps=5) == 10
    )  # past the deadline: stop now


def test_step_watch_takes_epoch_ends_apart_from_step_time_and_gives_steps_back_when_the_pace_recovers(
    monkeypatch,
):
    from models.training import step_budget

    clock = [0.0]
    monkeypatch.setattr(step_budget.time, "monotonic", lambda: clock[0])
    watch = step_budget.StepWatch(seconds=100, min_steps=10, steps_per_epoch=50, planned_boundary_seconds=5)
    watch.begin(200)

    def steps(first: int, last: int, seconds_each: float) -> None:
        for _ in range(first, last + 1):
            watch.step_begins()
            clock[0] += seconds_each

    steps(1, 10, 1.0)  # a slow start: 1 s a step
    assert not watch.due(9, 200) and watch.due(10, 200) and not watch.due(10, 200)  # each check once
    # 90 s left: 2 epoch ends of 5 s ahead of step 90, 80 s of 1-s steps
    assert watch.replan(10) == 90
    steps(11, 30, 0.25)
    assert watch.due(30, 90)
    # 0.5 s a step on average now, 85 s left, 4 epoch ends: back to the whole plan
    assert watch.replan(30) == 160
    steps(31, 50, 0.5)
    watch.epoch_ended()
    clock[0] += 20.0  # a slow evaluation
    steps(51, 60, 0.5)
    assert watch.step_seconds() == pytest.approx(30.0)  # the evaluation is not step time
    assert watch.boundaries == 1 and watch.boundary_seconds == pytest.approx(20.0)


def test_step_watch_grows_a_plan_that_timed_steps_too_slow_to_the_end_of_its_last_epoch(monkeypatch):
    from models.training import step_budget

    clock = [0.0]
    monkeypatch.setattr(step_budget.time, "monotonic", lambda: clock[0])
    # 2.4 of 4 epochs planned: the Trainer will start 3 epochs, so at most 150 steps can be trained
    watch = step_budget.StepWatch(
        seconds=100, min_steps=50, steps_per_epoch=50, planned_boundary_seconds=0, wanted_steps=200
    )
    watch.begin(120)
    for _ in range(12):
        watch.step_begins()
        clock[0] += 0.1  # 0.1 s a step: 1,000 steps would fit
    assert watch.replan(12) == 150
    unbounded = step_budget.StepWatch(
        seconds=100, min_steps=50, steps_per_epoch=50, planned_boundary_seconds=0
    )
    unbounded.begin(120)
    assert unbounded.most_steps == 120  # without the epochs wanted it keeps to the plan


@pytest.mark.parametrize(("save_strategy", "saves"), [("no", False), ("steps", True)])
def test_a_count_cut_to_the_step_just_taken_stops_training_at_that_step(monkeypatch, save_strategy, saves):
    """The Trainer's flow callback compares the step with the count before the watch re-plans; a busy machine
    once made a run cut to 12 steps train 13."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from models.training import step_budget

    clock = [0.0]
    monkeypatch.setattr(step_budget.time, "monotonic", lambda: clock[0])
    watches = [
        step_budget._watch_callback_class()(
            step_budget.StepWatch(seconds=10, min_steps=1, steps_per_epoch=100, planned_boundary_seconds=0),
            lambda line: None,
        ),
        step_budget.interval_budget_watch(
            10,
            most_steps=100,
            boundary_every=1000,
            label="adapt:x",
            extent=str,
            emit=print,
        ),
    ]
    for callback in watches:
        args, state, control = SimpleNamespace(save_strategy=save_strategy), TrainerState(), TrainerControl()
        state.max_steps = 100
        callback.on_train_begin(args, state, control)
        for step in range(1, 11):  # 1 s a step: the 10-s budget is spent at the first check (step 10)
            callback.on_step_begin(args, state, control)
            clock[0] += 1.0
            state.global_step = step
            callback.on_step_end(args, state, control)
        assert state.max_steps == 10 and control.should_training_stop
        assert (
            control.should_save is saves
        )  # as the Trainer ends training: a checkpoint only when saving by steps


def test_a_plan_from_pessimistic_timing_is_grown_while_training_to_use_the_budget(
    tiny_base_model, tmp_path, monkeypatch
):
    from models.training import calibration
    from models.training.finetune import finetune
    from models.training.step_budget import BUDGET_SAFETY

    # the plan times a step at 0.1 s, so 1.5 s fit 15 steps (1.5 of 4 epochs); the tiny model's real steps are
    # much faster, so the watch grows the count to the end of the second epoch
    monkeypatch.setattr(
        calibration, "time_training_steps", lambda *a, **k: calibration.Timing(0.1, 1, 10, 1e-6, 8)
    )
    frame = classification_frame(10)  # 30 rows: 10 steps of 3 an epoch
    recipe = make_recipe(
        tiny_base_model, epochs=4, min_epochs=1, batch_size=3, time_budget_minutes=1.5 / 60 / BUDGET_SAFETY
    )
    lines: list[str] = []

    result = finetune(recipe, tiny_base_model, frame, frame.iloc[:3], tmp_path, lines.append)

    budget = result.params["time_budget"]
    assert budget["steps_wanted"] == 40 and 10 < budget["planned_steps"] < 20
    grown = budget["replanned"]
    assert grown and grown[-1]["max_steps"] == 20 and grown[0]["max_steps_before"] == budget["planned_steps"]
    assert result.params["global_steps"] == 20
    assert any(f"20 steps (planned {budget['planned_steps']}) fit" in line for line in lines)


def test_reaimed_schedule_decays_to_zero_at_the_new_last_step_and_keeps_its_warm_up():
    from transformers import get_linear_schedule_with_warmup

    from models.training.step_budget import reaim_schedule

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=100)
    for _ in range(20):
        optimizer.step()
        schedule.step()
    before = schedule.get_last_lr()[0]  # 80 of 90 decay steps left

    assert reaim_schedule(schedule, 60)

    assert schedule.lr_lambdas[0](5) == pytest.approx(0.5)  # warm-up unchanged
    assert schedule.lr_lambdas[0](20) == pytest.approx(40 / 50) and before == pytest.approx(80 / 90)
    assert schedule.lr_lambdas[0](60) == 0.0
    assert not reaim_schedule(
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=5), 60
    )  # another kind: untouched


def test_steps_slower_in_training_than_timed_are_cut_to_keep_the_time_budget(
    tiny_base_model, tmp_path, monkeypatch
):
    from transformers import Trainer

    from models.training import calibration
    from models.training.finetune import finetune
    from models.training.step_budget import BUDGET_SAFETY

    # the plan times steps as nearly free, then each real step takes at least 50 ms: the plan overruns 4 s
    monkeypatch.setattr(
        calibration, "time_training_steps", lambda *a, **k: calibration.Timing(1e-4, 1, 10, 1e-5, 8)
    )
    original_step = Trainer.training_step

    def slow_step(self, *args, **kwargs):
        time.sleep(0.05)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", slow_step)
    frame = classification_frame(10)  # 30 rows: 4 steps of 8 an epoch
    seconds = 1.5
    recipe = make_recipe(
        tiny_base_model, epochs=20, min_epochs=1, time_budget_minutes=seconds / 60 / BUDGET_SAFETY
    )
    lines: list[str] = []

    result = finetune(recipe, tiny_base_model, frame, frame.iloc[:3], tmp_path, lines.append)

    budget = result.params["time_budget"]
    assert budget["planned_steps"] == budget["steps_wanted"] == 80  # the plan believed everything fits
    cuts = budget["replanned"]
    assert cuts and cuts[0]["at_step"] == 10 and cuts[0]["max_steps_before"] == 80
    assert all(cut["schedule_reaimed"] for cut in cuts)
    assert 10 <= result.params["global_steps"] == cuts[-1]["max_steps"] <= 30  # 1.5 s at >= 50 ms a step
    assert cuts[0]["seconds_per_step"] >= 0.05
    watch_lines = [line for line in lines if "fit the 2 s the budget gives them" in line]
    assert len(watch_lines) == len(cuts)
    assert f"{cuts[0]['max_steps']} steps (planned 80) fit the 2 s the budget gives them" in watch_lines[0]


def test_cpu_bf16_follows_the_hardware_unless_forced_and_a_bad_value_is_named(monkeypatch):
    from models.training.precision import cpu_trains_in_bf16
    from models.training.task_model import FinetuneError

    def hardware(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    monkeypatch.setenv("DAPT_CPU_BF16", "auto")
    hardware(False, False)
    assert not cpu_trains_in_bf16()  # emulated bf16 is slower than fp32
    hardware(True, False)
    assert cpu_trains_in_bf16()
    hardware(False, True)
    assert cpu_trains_in_bf16()
    monkeypatch.setenv("DAPT_CPU_BF16", "off")
    assert not cpu_trains_in_bf16()
    hardware(False, False)
    monkeypatch.setenv("DAPT_CPU_BF16", "on")
    assert cpu_trains_in_bf16()
    monkeypatch.setenv("DAPT_CPU_BF16", "sometimes")
    with pytest.raises(FinetuneError, match=r"DAPT_CPU_BF16 must be one of auto, on, off; got 'sometimes'"):
        cpu_trains_in_bf16()


def test_bf16_on_the_cpu_trains_and_times_the_budget_in_autocast_keeps_fp32_weights_and_says_so(
    tiny_base_model, tmp_path, bf16_linear_outputs
):
    from transformers import AutoModelForSequenceClassification

    from models.training.finetune import finetune

    frame = classification_frame(10)
    recipe = make_recipe(tiny_base_model, epochs=2, early_stopping_patience=0, time_budget_minutes=60)
    lines: list[str] = []

    result = finetune(recipe, tiny_base_model, frame, frame.iloc[:3], tmp_path, lines.append)

    assert torch.bfloat16 in bf16_linear_outputs  # the steps ran in autocast
    assert result.params["precision"] == "bf16" and result.params["global_steps"] == 8
    assert any("device cpu (bf16)" in line for line in lines)
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # autocast leaves the weights in fp32
