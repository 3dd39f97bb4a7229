"""Issue 13: max_length from the data, an adaptation budget, and an adapted encoder that must earn its place.

Tiny BERTs and tiny frames: these pin behaviour (what is measured, decided and recorded), not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.recipe import recipe_from_dict
from tests.models.test_adapt import CORPUS, run_adapt
from tests.models.test_finetune import CLASSES, classification_frame, make_recipe, ner_frame


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ max_length


def test_auto_max_length_covers_99_percent_rounded_up_to_a_multiple_of_8_within_limits():
    from models.training.task_model import choose_max_length

    lengths = [10] * 990 + [100] * 10  # 99% are 10 tokens: the long tail is cut, the bulk is not
    assert choose_max_length(lengths, 512) == 16  # 10 -> 16 (the floor)
    assert choose_max_length([30] * 100 + [37] * 100, 512) == 40
    assert choose_max_length([700] * 50, 512) == 512
    assert choose_max_length([700] * 50, 128) == 128


def test_auto_max_length_is_measured_on_train_recorded_with_the_model_and_used_by_evaluate(
    tiny_base_model, tmp_path
):
    from models.evaluation.evaluate import evaluate_model
    from models.training.finetune import finetune
    from models.training.task_model import model_max_length

    recipe = make_recipe(tiny_base_model, max_length="auto", max_steps=2)
    frame = classification_frame(70)  # 210 rows
    frame.loc[0, "text"] = " ".join(["word"] * 300)  # one long outlier (0.5%) must not set the length
    result = finetune(recipe, tiny_base_model, frame, classification_frame(2), tmp_path / "ft")
    chosen = result.params["max_length"]
    assert isinstance(chosen, int) and 16 <= chosen < 64
    assert model_max_length(recipe, result.model_dir) == chosen
    evaluation = evaluate_model(recipe, result.model_dir, classification_frame(2), tmp_path / "ev")
    assert evaluation.metrics["accuracy"] >= 0.0
    # an explicit number in the recipe always wins
    assert model_max_length(make_recipe(tiny_base_model, max_length=24), result.model_dir) == 24


def test_model_without_a_recorded_length_is_a_clear_error_under_auto(tiny_base_model, tmp_path):
    from models.training.task_model import FinetuneError, model_max_length

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 1000000000000000019884624838656})
    )
    with pytest.raises(FinetuneError, match="finetune.max_length"):
        model_max_length(make_recipe(tiny_base_model, max_length="auto"), folder)


def test_auto_max_length_for_ner_counts_word_pieces_of_the_sentences(tiny_base_model):
    from transformers import AutoTokenizer

    from models.training.task_model import token_lengths

    recipe = make_recipe(tiny_base_model, task="ner", max_length="auto")
    lengths = token_lengths(recipe, AutoTokenizer.from_pretrained(tiny_base_model), ner_frame(3))
    assert lengths == [lengths[0]] * 3 and lengths[0] >= 9 + 2  # 9 words + [CLS] [SEP]


# ------------------------------------------------------------------------------------------- adaptation budget


def test_time_budget_subsamples_the_corpus_to_what_fits_and_reuses_the_plan(tiny_base_model, tmp_path):
    corpus = CORPUS * 20  # 720 documents
    lines: list[str] = []
    # max_steps would bypass the budget; epochs-based training with a budget far below the corpus' cost
    result = run_adapt(
        tiny_base_model,
        tmp_path / "a",
        corpus=corpus,
        lines=lines,
        max_steps=-1,
        epochs=1.0,
        time_budget_minutes=0.0005,
    )
    budget = result.metrics["budget"]
    assert budget["fraction"] < 1.0 and budget["tokens_per_second"] > 0
    assert result.metrics["train_texts"] < len(corpus)
    assert any("budget" in line and "random" in line for line in lines)
    plan = json.loads((tmp_path / "a" / "budget.json").read_text())
    assert plan["fraction"] == budget["fraction"]
    # the same settings again (a resumed run) read the stored plan instead of timing the machine anew
    again = run_adapt(
        tiny_base_model,
        tmp_path / "a",
        corpus=corpus,
        max_steps=-1,
        epochs=1.0,
        time_budget_minutes=0.0005,
    )
    assert again.metrics["budget"] == budget
    assert all(phase["reused"] for phase in again.metrics["phases"])


def test_budget_times_whole_steps_on_length_grouped_batches_as_training_runs_them(
    tiny_base_model, monkeypatch
):
    """Random batches padded to their longest text, timed without the optimizer update, read about half the
    tokens per second adaptation then trained at (training groups texts by length): the budget went half used."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    import models.training.calibration as calibration
    from models.training.adapt_phase import CALIBRATION_STEPS, _training_tokens_per_second

    seen: dict = {}

    def record(model, batches, *, bf16=False, update=False):
        seen["batches"] = [batch["attention_mask"] for batch in batches]
        seen["update"] = update
        return calibration.Timing(seconds=1.0, batches=len(seen["batches"]) - 1, tokens=100)

    monkeypatch.setattr(calibration, "time_training_steps", record)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    model = AutoModelForMaskedLM.from_pretrained(tiny_base_model)
    words = "the quarterly margin of the group rose while costs fell".split()
    texts = [" ".join(words[i % 10] for i in range(n)) for n in range(1, 60)] * 4
    adapt = make_recipe(tiny_base_model).adapt
    assert _training_tokens_per_second(model, tokenizer, texts, adapt, seed=0) == 100.0
    assert seen["update"] is True  # clipping and AdamW are part of a step's cost
    masks = seen["batches"]
    assert len(masks) == CALIBRATION_STEPS + 1  # a warm-up batch, then the timed ones
    lengths = [mask.sum(dim=1) for mask in masks[1:]]
    # near-equal lengths in a batch (random ones here spread over 1..60 tokens), as group_by_length trains
    assert all(int(batch.max() - batch.min()) <= 4 for batch in lengths)
    longest = [int(batch.max()) for batch in lengths]
    assert longest == sorted(longest) and longest[0] + 20 < longest[-1]  # spread over the length distribution


UNIQUE_CORPUS = [f"{text} Filing number {n}." for n, text in enumerate(CORPUS * 20)]  # 720 distinct documents


def _adapt_with_a_plan_for(
    fraction: float, budget_seconds: float, epochs: float, tmp_path, base, monkeypatch
):
    """Adaptation of the corpus whose budget plan reads whatever speed makes ``fraction`` of the text fit;
    (phase metrics, progress lines, budget plan)."""
    import models.training.adapt_phase as adapt_phase

    def speed(model, tokenizer, texts, adapt, seed):  # stands in for the timed steps
        tokens = sum(min(len(ids), adapt.max_length) for ids in tokenizer(texts)["input_ids"])
        return tokens * adapt.epochs * fraction / (budget_seconds * adapt_phase.BUDGET_SAFETY)

    monkeypatch.setattr(adapt_phase, "_training_tokens_per_second", speed)
    lines: list[str] = []
    result = run_adapt(
        base,
        tmp_path / "a",
        corpus=UNIQUE_CORPUS,
        lines=lines,
        max_steps=-1,
        epochs=epochs,
        time_budget_minutes=budget_seconds / 60,
    )
    return result.metrics["phases"][0], lines, result.metrics["budget"]


def test_adaptation_steps_faster_than_timed_grow_into_the_room_the_plan_left(
    tiny_base_model, tmp_path, monkeypatch
):
    """The plan is a few timed steps; whole runs then trained 0.7-1.3x the planned time. Each phase is given more
    text than planned, and the watch grows the step count when the real steps run faster than timed."""
    phase, lines, budget = _adapt_with_a_plan_for(0.3, 20.0, 1.0, tmp_path, tiny_base_model, monkeypatch)
    assert budget["fraction"] == pytest.approx(0.3, abs=0.02)
    planned, grown = phase["planned_steps"], phase["replanned"]
    # 45 % of the text given (1.5x the plan), 30 % planned: the tiny model's steps take milliseconds, so the
    # watch grows the count to the end of the text it was given
    assert grown and grown[0]["max_steps_before"] == planned and grown[-1]["max_steps"] > planned
    assert phase["steps"] == grown[-1]["max_steps"] >= 1.3 * planned  # the room holds 1.5x, rounded per batch
    assert any(
        "[adapt:dapt] budget: steps take" in line and f"(planned {planned}) fit" in line for line in lines
    )
    assert any("up to 45% if the steps run faster than timed" in line for line in lines)


def test_adaptation_steps_slower_than_timed_are_cut_to_keep_the_time_budget(
    tiny_base_model, tmp_path, monkeypatch
):
    import time

    from transformers import Trainer

    original_step = Trainer.training_step

    def slow_step(self, *args, **kwargs):
        time.sleep(0.1)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", slow_step)
    # the plan believes every step of three epochs fits 8 s; each real step then takes at least 0.1 s
    phase, lines, _ = _adapt_with_a_plan_for(5.0, 8.0, 3.0, tmp_path, tiny_base_model, monkeypatch)
    cuts = phase["replanned"]
    assert cuts, lines
    assert phase["planned_steps"] == cuts[0]["max_steps_before"] == 240  # all the text, 3 epochs
    assert all(cut["schedule_reaimed"] for cut in cuts)
    # at most 8 s of >= 0.1-s steps (0.95 of the budget, less the evaluations and checkpoints), stopped by the
    # watch's count rather than by the deadline at 1.25x the budget
    assert 10 <= phase["steps"] == cuts[-1]["max_steps"] <= 76
    assert not phase["early_stopped"] and not any("time budget spent" in line for line in lines)


def test_no_budget_trains_on_all_the_text(tiny_base_model, tmp_path):
    result = run_adapt(tiny_base_model, tmp_path / "a", max_steps=2, time_budget_minutes=None)
    assert result.metrics["budget"] is None
    assert result.metrics["train_texts"] > 0


# ------------------------------------------------------------------------------------------- adaptation gain


def _gain_recipe(base: Path, task: str = "classification", **adapt):
    return recipe_from_dict(
        {
            "name": "gain",
            "task": task,
            "base_model": str(base),
            "data": {
                "corpus": "c.txt",
                "train": "t.csv",
                "labels": CLASSES if task == "classification" else ["ORG", "MONEY"],
            },
            "adapt": adapt,
            "finetune": {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-2, "head_learning_rate": 5e-2},
        }
    )


@pytest.fixture(scope="module")
def adapted_encoder(tiny_base_model, tmp_path_factory) -> Path:
    return run_adapt(tiny_base_model, tmp_path_factory.mktemp("adapted"), max_steps=4).encoder_dir


@pytest.mark.parametrize("task", ["classification", "ner"])
def test_probe_scores_both_encoders_on_a_split_of_train_and_keeps_by_min_gain(
    task, tiny_base_model, adapted_encoder, tmp_path
):
    from models.evaluation.adaptation_gain import measure_adaptation_gain

    frame = classification_frame(10) if task == "classification" else ner_frame(20)
    lenient = measure_adaptation_gain(
        _gain_recipe(tiny_base_model, task, gain_check="probe", min_gain=-1.0),
        tiny_base_model,
        adapted_encoder,
        frame,
        tmp_path,
    )
    assert lenient.method == "probe" and lenient.kept == "adapted"
    assert lenient.metric == ("entity_f1" if task == "ner" else "macro_f1")
    assert 0.0 <= lenient.base <= 1.0 and 0.0 <= lenient.adapted <= 1.0
    assert lenient.gain == pytest.approx(lenient.adapted - lenient.base, abs=1e-6)
    assert lenient.n_fit + lenient.n_validation == len(frame) and lenient.n_validation > 0
    strict = measure_adaptation_gain(
        _gain_recipe(tiny_base_model, task, gain_check="probe", min_gain=2.0),
        tiny_base_model,
        adapted_encoder,
        frame,
        tmp_path,
    )
    assert strict.kept == "base" and "did not help" in strict.sentence()
    assert strict.base == lenient.base  # same split, same probe: deterministic


def test_probe_features_come_back_in_the_callers_order_although_batched_by_length(
    tiny_base_model, monkeypatch
):
    import numpy as np

    from models.evaluation import adaptation_gain

    monkeypatch.setattr(adaptation_gain, "EMBED_BATCH_SIZE", 2)  # several batches, each of similar lengths
    texts = [
        "revenue rose sharply in the third quarter",
        "ok",
        "shares fell",
        "the bank cut its rate again today",
    ]
    together = adaptation_gain.sentence_features(tiny_base_model, texts, 32)
    alone = np.concatenate([adaptation_gain.sentence_features(tiny_base_model, [t], 32) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    sentences = [t.split() for t in texts]
    words = adaptation_gain.word_features(tiny_base_model, sentences, 32)
    assert [len(v) for v in words] == [len(s) for s in sentences]
    for sentence, vectors in zip(sentences, words, strict=True):
        np.testing.assert_allclose(
            vectors, adaptation_gain.word_features(tiny_base_model, [sentence], 32)[0], atol=1e-5
        )


def test_finetune_gain_check_trains_from_both_encoders(tiny_base_model, adapted_encoder, tmp_path):
    from models.evaluation.adaptation_gain import measure_adaptation_gain

    result = measure_adaptation_gain(
        _gain_recipe(tiny_base_model, gain_check="finetune"),
        tiny_base_model,
        adapted_encoder,
        classification_frame(6),
        tmp_path,
    )
    assert result.method == "finetune"
    assert result.stderr is not None and result.noise_margin == 3.0
    assert (tmp_path / "base").is_dir() and (tmp_path / "adapted").is_dir()


@pytest.mark.parametrize("task", ["classification", "ner"])
def test_short_finetune_is_the_default_check_one_epoch_from_each_encoder_on_capped_rows(
    task, tiny_base_model, adapted_encoder, tmp_path, monkeypatch
):
    from models.evaluation import adaptation_gain

    monkeypatch.setattr(adaptation_gain, "SHORT_FINETUNE_MAX_ROWS", 16)
    recipe = _gain_recipe(tiny_base_model, task, min_gain=-1.0)
    # no fixed step count: one epoch of the fit rows (16 rows at batch 8: 2 steps), not the recipe's 5 epochs
    recipe = recipe.model_copy(update={"finetune": recipe.finetune.model_copy(update={"max_steps": -1})})
    assert recipe.adapt.gain_check == "short_finetune" and recipe.finetune.epochs == 5
    frame = classification_frame(10) if task == "classification" else ner_frame(30)
    lines: list[str] = []
    result = adaptation_gain.measure_adaptation_gain(
        recipe, tiny_base_model, adapted_encoder, frame, tmp_path, progress=lines.append
    )
    assert result.method == "short_finetune" and result.kept == "adapted"  # min_gain -1 keeps any gain
    assert result.n_fit == 16 and result.n_validation == len(frame) // 5
    assert 0.0 <= result.base <= 1.0 and 0.0 <= result.adapted <= 1.0
    assert result.gain == pytest.approx(result.adapted - result.base, abs=1e-6)
    assert result.stderr is not None and result.stderr >= 0.0
    trained = [line for line in lines if line.startswith("fine-tuning ")]
    assert len(trained) == 2 and all("on 16 rows, 2 steps/epoch" in line for line in trained)
    assert [line for line in lines if "step 2/2" in line] and not [
        line for line in lines if "step 3/" in line
    ]
    assert "one epoch" in " ".join(lines)


def test_short_finetune_check_scores_a_multi_label_task(tiny_base_model, adapted_encoder, tmp_path):
    from models.evaluation.adaptation_gain import measure_adaptation_gain

    recipe = _gain_recipe(tiny_base_model, min_gain=-1.0)
    recipe = recipe.model_copy(update={"finetune": recipe.finetune.model_copy(update={"multi_label": True})})
    frame = classification_frame(10)
    frame.loc[frame.index[::4], "label"] = "negative|neutral"
    result = measure_adaptation_gain(recipe, tiny_base_model, adapted_encoder, frame, tmp_path)
    assert result.method == "short_finetune" and result.metric == "macro_f1"
    assert 0.0 <= result.base <= 1.0 and result.stderr is not None


def test_gain_stage_is_skipped_when_there_is_nothing_to_compare(tiny_base_model, adapted_encoder, tmp_path):
    from models.stages import adaptation_gain_stage

    assert (
        adaptation_gain_stage(_gain_recipe(tiny_base_model, strategy="none"), tiny_base_model, tmp_path)
        is None
    )
    off = _gain_recipe(tiny_base_model, keep_only_if_helps=False)
    assert adaptation_gain_stage(off, adapted_encoder, tmp_path) is None


# ------------------------------------------------------------------------------------------------------ gate


def test_gate_can_require_a_minimum_adaptation_gain():
    from models.recipe import GateConfig
    from models.registry.gate import decide
    from tests.models.test_gate import evidence

    gate = GateConfig(min_adaptation_gain=0.01)
    kept = evidence() | {"adaptation_gain": {"gain": 0.02, "kept": "adapted", "method": "probe"}}
    assert decide(kept, None, gate).passed
    small = evidence() | {"adaptation_gain": {"gain": 0.005, "kept": "adapted", "method": "probe"}}
    assert any("below the required" in f for f in decide(small, None, gate).failures)
    reverted = evidence() | {"adaptation_gain": {"gain": -0.03, "kept": "base", "method": "probe"}}
    assert any("not kept" in f for f in decide(reverted, None, gate).failures)
    assert any("not measured" in f for f in decide(evidence(), None, gate).failures)
    assert decide(evidence(), None, GateConfig()).passed  # off by default


# ------------------------------------------------------------------------------------------- head warm-up


def test_head_warmup_encodes_more_sequences_for_short_texts():
    from models.training.head_warmup import (
        HEAD_WARMUP_MAX_SEQUENCES,
        HEAD_WARMUP_SEQUENCE_CAP,
        _sequence_count,
    )

    assert _sequence_count([{"input_ids": [0] * 60}] * 10) == HEAD_WARMUP_MAX_SEQUENCES  # demo-like windows
    short = _sequence_count([{"input_ids": [0] * 20}] * 10)  # tweets and headlines
    assert HEAD_WARMUP_MAX_SEQUENCES < short <= HEAD_WARMUP_SEQUENCE_CAP


def test_head_warmup_scores_held_out_targets_and_keeps_its_best_head(tiny_base_model):
    from transformers import DataCollatorForLanguageModeling

    from models.training.head_warmup import warm_up_head
    from tests.models.test_adapt import GENERAL, _features, _tiny_mlm

    model, tokenizer, names = _tiny_mlm(tiny_base_model)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=3, return_tensors="pt")
    result = warm_up_head(
        model,
        names,
        _features(tokenizer, CORPUS * 4),
        _features(tokenizer, GENERAL * 4),
        collator,
        steps=60,
        learning_rate=3e-2,  # high on purpose: the head overfits its few targets and held-out loss turns up
        batch_size=8,
        seed=1,
    )
    assert len(result.heldout_curve) >= 10
    best_step, best_loss = min(result.heldout_curve, key=lambda point: point[1])
    assert result.best_step == best_step
    assert result.to_metrics()["heldout_loss_best"] == pytest.approx(best_loss, abs=1e-4)


def test_paired_bootstrap_stderr_is_zero_for_identical_predictions_and_near_the_binomial_value_otherwise():
    from models.evaluation.adaptation_gain import (
        classification_counts,
        macro_f1_from_counts,
        paired_bootstrap_stderr,
    )

    gold = ["a"] * 400
    same = ["a"] * 200 + ["b"] * 200
    base = classification_counts(["a"], gold, same)

    def recall_of_a(totals):  # one class: tp / (tp + fn), a proportion with a known standard error
        return totals[..., 0] / (totals[..., 0] + totals[..., 2])

    assert paired_bootstrap_stderr(recall_of_a, base, base.copy(), seed=1) == 0.0
    # the adapted encoder fixes 40 of the base's errors and breaks none: the gain is 0.1 with a paired standard
    # error of sqrt(p(1-p)/n) for the 10% of rows that differ
    better = classification_counts(["a"], gold, ["a"] * 240 + ["b"] * 160)
    stderr = paired_bootstrap_stderr(recall_of_a, base, better, seed=1)
    assert stderr == pytest.approx((0.1 * 0.9 / 400) ** 0.5, rel=0.25)
    # the summed counts give sklearn's macro-F1
    from sklearn.metrics import f1_score

    two = ["a", "b", "b", "a", "b"], ["a", "b", "a", "a", "a"]
    totals = classification_counts(["a", "b", "c"], *two).sum(axis=0)
    assert macro_f1_from_counts(totals) == pytest.approx(
        f1_score(*two, average="macro", labels=["a", "b", "c"], zero_division=0)
    )


def test_entity_counts_sum_to_seqeval_entity_f1():
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    from models.evaluation.adaptation_gain import entity_counts, entity_f1_from_counts

    gold = [["B-D", "I-D", "O", "B-D"], ["O", "B-D"], ["O", "O"]]
    predicted = [["B-D", "I-D", "O", "O"], ["B-D", "I-D"], ["B-D", "O"]]
    totals = entity_counts(gold, predicted).sum(axis=0)
    assert entity_f1_from_counts(totals) == pytest.approx(
        f1_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0)
    )


def test_a_probe_gain_must_clear_min_gain_by_the_noise_margin(tiny_base_model, adapted_encoder, tmp_path):
    from models.evaluation.adaptation_gain import measure_adaptation_gain

    frame = classification_frame(10)
    measured = measure_adaptation_gain(
        _gain_recipe(tiny_base_model, gain_check="probe", min_gain=-1.0, gain_noise_margin=0.0),
        tiny_base_model,
        adapted_encoder,
        frame,
        tmp_path,
    )
    assert measured.stderr is not None and measured.stderr >= 0.0
    # a min_gain the gain meets exactly keeps the adapted encoder without a margin...
    exact = _gain_recipe(tiny_base_model, gain_check="probe", min_gain=measured.gain, gain_noise_margin=0.0)
    assert measure_adaptation_gain(exact, tiny_base_model, adapted_encoder, frame, tmp_path).kept == "adapted"
    # ...and with a margin only when the standard error is 0; the sentence names the threshold's parts
    margined = measure_adaptation_gain(
        _gain_recipe(tiny_base_model, gain_check="probe", min_gain=measured.gain, gain_noise_margin=1.0),
        tiny_base_model,
        adapted_encoder,
        frame,
        tmp_path,
    )
    assert margined.kept == ("adapted" if measured.stderr == 0.0 else "base")
    assert margined.threshold == pytest.approx(measured.gain + measured.stderr)
    assert "x stderr" in margined.sentence()


def test_cpu_adaptation_trains_in_bf16_where_fine_tuning_does(tiny_base_model, tmp_path, bf16_linear_outputs):
    import torch

    result = run_adapt(
        tiny_base_model,
        tmp_path / "a",
        corpus=CORPUS * 20,
        max_steps=-1,
        epochs=1.0,
        time_budget_minutes=0.0005,
    )

    assert torch.bfloat16 in bf16_linear_outputs  # the MLM steps ran in autocast
    assert result.metrics["precision"] == "bf16"
    assert result.metrics["budget"]["tokens_per_second"] > 0 and result.metrics["train_texts"] > 0
