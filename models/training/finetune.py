"""Task fine-tuning: an encoder directory plus a fresh head, trained with the Hugging Face Trainer.

What this adds on top of a plain ``Trainer.train()``:

- encoder and head get separate learning rates, with layer-wise decay down the encoder (custom optimizer);
- gradual unfreezing (top encoder layer first, one more per scheduled epoch) through a TrainerCallback;
- inverse-frequency class weights in the loss for imbalanced labels;
- early stopping on macro-F1 against a validation split carved out of train (the eval set is never used to
  pick a checkpoint, so reported metrics stay honest); by default for NER only, classification fits every
  training row and keeps the last epoch;
- NER label alignment (only the first word-piece of each word carries the tag);
- multi-label classification (labels written ``"a|b"``);
- optional MLM contextual augmentation (models/training/augment.py) and Optuna search (models/training/search.py).

The result is a Hugging Face directory (BertForSequenceClassification / BertForTokenClassification, with the
tokenizer) that models/evaluation/evaluate.py and models/export/onnx.py read.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.distributed import from_main
from models.settings import is_main_process, world_size
from models.training.task_model import (
    FinetuneError,
    check_encoder_dir,
    check_task_frame,
    resolve_max_length,
    resolve_task_defaults,
    task_labels,
)
from models.training.trainer import TrainRun, train_task_model

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import Recipe

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
HYPERPARAMETERS = (
    "epochs",
    "max_steps",
    "learning_rate",
    "head_learning_rate",
    "layer_lr_decay",
    "unfreeze_schedule",
    "batch_size",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "class_weights",
    "label_smoothing",
    "multi_label",
    "early_stopping_patience",
    "augment_fraction",
    "search_trials",
    "search_timeout_s",
    "time_budget_minutes",
    "min_epochs",
)
# eval rows watched each epoch for the learning curves when nothing is chosen on them: enough to see the curve;
# evaluating all 4,797 BC5CDR test sentences every epoch took a fifth of NER's time budget (benchmarks/README)
WATCHED_EVAL_ROWS = 1000


@dataclass(frozen=True)
class FinetuneResult:
    model_dir: Path  # HF directory: model weights, config with id2label/label2id, tokenizer
    history: list[dict]  # Trainer log_history (train loss per logging step, eval metrics per epoch)
    params: dict  # the hyperparameters actually used (after search) plus derived facts (device, groups, ...)
    curves_png: Path  # learning curves: train loss, eval loss, eval macro-F1 per epoch
    augmentation: dict | None = None  # models/training/augment.py report when augment_fraction > 0
    search: dict | None = None  # models/training/search.py report when search_trials > 0


def _chmod_tree(folder: Path) -> None:
    """save_pretrained writes 0600 files; a serving container running as another user must read them."""
    for path in Path(folder).rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    Path(folder).chmod(0o755)


def _searched_config(
    recipe: Recipe, encoder_dir: Path, train_df: pd.DataFrame, out_dir: Path, emit: Progress
):
    """The recipe's fine-tuning config, with the Optuna search's best values when it asks for a search."""
    config = recipe.finetune
    if config.search_trials <= 0:
        return config, None
    if world_size() > 1:
        # a trial's end depends on the clock (search_timeout_s): ranks could disagree on how many trials to run
        raise FinetuneError(
            f"finetune.search_trials {config.search_trials}: the hyperparameter search runs in one process; "
            "run it without torchrun / accelerate launch (or set search_trials 0 for the multi-process run)"
        )
    from models.training.search import search_hyperparameters

    search = search_hyperparameters(
        recipe, encoder_dir, train_df, out_dir / "search", train=train_task_model, progress=emit
    )
    return config.model_copy(update=search.best_params), search.report()


def _fit_and_monitor_rows(recipe: Recipe, config, train_df: pd.DataFrame, eval_df: pd.DataFrame):
    """Rows to fit, rows to watch, and which set those are. Early stopping picks its epoch on a validation split
    of train, so eval_df stays untouched; without early stopping eval_df (at most WATCHED_EVAL_ROWS of it, a
    seeded sample) is only watched for the learning curves."""
    from models.data import stratified_split

    if config.early_stopping_patience <= 0:
        if len(eval_df) <= WATCHED_EVAL_ROWS:
            return train_df, eval_df, "eval"
        return (
            train_df,
            eval_df.sample(n=WATCHED_EVAL_ROWS, random_state=recipe.seed).sort_index(),
            "eval_sample",
        )
    stratify = "label" if recipe.task == "classification" and not config.multi_label else None
    fit_rows, validation_rows = stratified_split(train_df, 0.1, recipe.seed, column=stratify)
    return fit_rows, validation_rows, "train_validation_split"


def _augmented(recipe: Recipe, config, encoder_dir: Path, fit_rows: pd.DataFrame, emit: Progress):
    """``fit_rows`` plus MLM-augmented copies when the recipe asks for them, and the augmentation report."""
    if config.augment_fraction <= 0:
        return fit_rows, None
    import pandas as pd

    from models.training.augment import augment_training_set

    # rank 0 makes the synthetic rows; every rank of a launch trains on the same ones
    augmented = from_main(
        lambda: augment_training_set(
            recipe, encoder_dir, fit_rows, fraction=config.augment_fraction, progress=emit
        )
    )
    return pd.concat([fit_rows, augmented.rows], ignore_index=True), augmented.report


def _save_model(run: TrainRun, max_length: int, model_dir: Path) -> None:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    run.trainer.save_model(str(model_dir))  # weights + config (id2label) + tokenizer (processing_class)
    run.tokenizer.model_max_length = int(max_length)  # read back by model_max_length()
    run.tokenizer.save_pretrained(str(model_dir))
    _chmod_tree(model_dir)


def _used_params(
    recipe: Recipe, config, encoder_dir: Path, run: TrainRun, augmentation: dict | None, monitor_set: str
) -> dict:
    """The hyperparameters actually used plus what the run measured (device, groups, budget, ...)."""
    params = {key: getattr(config, key) for key in HYPERPARAMETERS}
    params.update(run.details)
    params.update(
        {
            "seed": recipe.seed,
            "task": recipe.task,
            "labels": task_labels(recipe),
            "encoder_dir": str(encoder_dir),
            "monitor_set": monitor_set,
            "train_seconds": round(run.seconds, 1),
            "n_synthetic": augmentation["n_synthetic"] if augmentation else 0,
        }
    )
    return params


def finetune(
    recipe: Recipe,
    encoder_dir: Path,
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame,
    out_dir: Path,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Fine-tune ``encoder_dir`` on ``train_df`` and save the task model to ``out_dir/model``.

    ``eval_df`` is only watched (per-epoch loss and macro-F1 for the learning curves), never used to choose a
    checkpoint or hyperparameters: early stopping and the search use a split carved out of ``train_df``.
    Writes ``out_dir/model`` (HF dir), ``out_dir/learning_curves.png`` and ``out_dir/finetune.json``.
    """
    emit = progress or logger.info
    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    check_encoder_dir(encoder_dir)
    check_task_frame(recipe, train_df, "train")
    check_task_frame(recipe, eval_df, "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = resolve_max_length(recipe, encoder_dir, train_df)
    recipe = recipe.model_copy(update={"finetune": resolve_task_defaults(recipe, recipe.finetune)})
    emit(f"max_length {recipe.finetune.max_length} tokens")

    config, search_report = _searched_config(recipe, encoder_dir, train_df, out_dir, emit)
    fit_rows, monitor_rows, monitor_set = _fit_and_monitor_rows(recipe, config, train_df, eval_df)
    # augmented after the split: no near-copies of validation rows in training
    fit_rows, augmentation_report = _augmented(recipe, config, encoder_dir, fit_rows, emit)
    run = train_task_model(
        recipe,
        config,
        encoder_dir,
        fit_rows,
        monitor_rows,
        out_dir,
        emit,
        select_best=config.early_stopping_patience > 0,
        time_budget_minutes=config.time_budget_minutes,
    )

    model_dir = out_dir / "model"
    curves_png = out_dir / "learning_curves.png"
    params = _used_params(recipe, config, encoder_dir, run, augmentation_report, monitor_set)
    if not is_main_process():  # rank 0 of a data-parallel launch writes the model and its record
        return FinetuneResult(model_dir, run.history, params, curves_png, augmentation_report, search_report)
    _save_model(run, int(config.max_length), model_dir)
    plot_learning_curves(run.history, curves_png, title=f"{recipe.name}: fine-tuning")
    record = {
        "params": params,
        "history": run.history,
        "augmentation": augmentation_report,
        "search": search_report,
    }
    (out_dir / "finetune.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    emit(f"fine-tuned model saved to {model_dir} in {run.seconds:.0f} s")
    return FinetuneResult(model_dir, run.history, params, curves_png, augmentation_report, search_report)


# ---------------------------------------------------------------------------------------------------- curves


def epoch_curves(history: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per-epoch points from a Trainer log_history: mean train loss, eval loss and eval macro-F1."""
    train: dict[int, list[float]] = {}
    eval_loss, eval_f1 = [], []
    for entry in history:
        epoch = entry.get("epoch")
        if epoch is None:
            continue
        if "loss" in entry:
            train.setdefault(max(1, math.ceil(epoch - 1e-9)), []).append(entry["loss"])
        if "eval_loss" in entry:
            eval_loss.append((epoch, entry["eval_loss"]))
        if "eval_macro_f1" in entry:
            eval_f1.append((epoch, entry["eval_macro_f1"]))
    return {
        "train_loss": [(float(e), sum(v) / len(v)) for e, v in sorted(train.items())],
        "eval_loss": eval_loss,
        "eval_macro_f1": eval_f1,
    }


def plot_learning_curves(history: list[dict], path: Path, title: str = "fine-tuning") -> Path:
    """PNG with train/eval loss (left) and eval macro-F1 (right) per epoch."""
    from models.evaluation.plots import Panel, plot_panels

    curves = epoch_curves(history)
    losses = Panel(
        {"train loss": curves["train_loss"], "eval loss": curves["eval_loss"]},
        xlabel="epoch",
        ylabel="loss",
        styles={"train loss": "o-", "eval loss": "s--"},
    )
    f1 = Panel(
        {"eval macro-F1": curves["eval_macro_f1"]},
        xlabel="epoch",
        ylabel="eval macro-F1",
        ylim=(0.0, 1.0),
        empty_note="no evaluation",
        styles={"eval macro-F1": "o-"},
    )
    return plot_panels([losses, f1], title, path)


# -------------------------------------------------------------------------------------------- augmentation study


def measure_augmentation_effect(
    recipe: Recipe,
    encoder_dir: Path,
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame,
    out_dir: Path,
    progress: Progress | None = None,
) -> dict:
    """Train twice (without and with MLM augmentation at the recipe's fraction, default 0.2 when unset) and
    report final eval macro-F1 of both. Costs two trainings; only run when asked."""
    import pandas as pd

    from models.training.augment import augment_training_set

    emit = progress or logger.info
    config = recipe.finetune
    fraction = config.augment_fraction or 0.2
    augmented = augment_training_set(recipe, encoder_dir, train_df, fraction=fraction, progress=emit)
    results = {}
    for name, rows in (
        ("without", train_df),
        ("with", pd.concat([train_df, augmented.rows], ignore_index=True)),
    ):
        emit(f"augmentation study: training {name} augmentation ({len(rows)} rows)")
        run = train_task_model(
            recipe,
            config.model_copy(update={"augment_fraction": 0.0}),
            encoder_dir,
            rows,
            eval_df,
            Path(out_dir) / name,
            emit,
        )
        scores = run.trainer.evaluate()
        results[name] = {
            "macro_f1": scores.get("eval_macro_f1"),
            "accuracy": scores.get("eval_accuracy"),
            "n_train": len(rows),
            "seconds": round(run.seconds, 1),
        }
    delta = None
    if results["with"]["macro_f1"] is not None and results["without"]["macro_f1"] is not None:
        delta = results["with"]["macro_f1"] - results["without"]["macro_f1"]
    return {
        "fraction": fraction,
        "augmentation": augmented.report,
        "without": results["without"],
        "with": results["with"],
        "macro_f1_delta": delta,
    }
