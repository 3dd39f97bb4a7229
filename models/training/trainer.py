"""One training run of a task model with the Hugging Face Trainer: the callbacks (gradual unfreezing,
progress lines), the Trainer with our optimizer and weighted loss, metrics; the time budget's step plan and its
watch come from models/training/step_budget.py.

Used by models/training/finetune.py, the search and the adaptation-gain check.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.distributed import barrier, from_main
from models.settings import is_main_process, world_size
from models.training.precision import device_and_precision, precision_name
from models.training.step_budget import budget_watch, plan_steps_for_budget
from models.training.task_model import (
    IGNORE_INDEX,
    class_weight_vector,
    encode_frame,
    encoder_units,
    load_task_model,
    optimizer_param_groups,
    resolve_max_length,
    resolve_task_defaults,
    task_labels,
    uses_class_weights,
)

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import FinetuneConfig, Recipe

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class TrainRun:
    """What one training run leaves behind (used by finetune, the search and the augmentation study)."""

    trainer: Any
    model: Any
    tokenizer: Any
    history: list[dict]
    details: dict
    seconds: float
    config: FinetuneConfig  # as trained: 'auto' max_length, batch size and patience resolved


@functools.cache
def _callbacks():
    """TrainerCallback subclasses, defined lazily so importing this module stays light."""
    from transformers import TrainerCallback

    class GradualUnfreezing(TrainerCallback):
        """Start with only the top encoder layer (plus head) trainable; after each epoch listed in
        ``schedule`` unfreeze the next block down (layers, then embeddings)."""

        def __init__(self, schedule: list[int], initially_trainable: int = 1):
            self.schedule = sorted(int(e) for e in schedule)
            self.initially_trainable = initially_trainable
            self.trainable_units = initially_trainable
            self.log: list[dict] = []

        def apply(self, model, epoch: float) -> None:
            units = encoder_units(model)
            for index, (_, module) in enumerate(units):
                for parameter in module.parameters():
                    parameter.requires_grad = index < self.trainable_units
            self.log.append(
                {
                    "epoch": round(float(epoch), 3),
                    "trainable_units": [name for name, _ in units[: self.trainable_units]],
                    "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                }
            )

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.trainable_units = self.initially_trainable
            self.apply(model, 0.0)

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            finished = int(round(state.epoch or 0))
            due = sum(1 for e in self.schedule if e == finished)
            if due:
                self.trainable_units = min(self.trainable_units + due, len(encoder_units(model)))
                self.apply(model, state.epoch or finished)

    class ProgressLines(TrainerCallback):
        """One readable line per training log (epoch, step, loss) and per evaluation (loss, macro-F1)."""

        def __init__(self, emit: Progress):
            self.emit = emit
            self.started = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            from models.progress import advance

            advance("[fine-tune] steps", state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            from models.progress import eta

            logs = logs or {}
            epoch = logs.get("epoch", state.epoch or 0.0)
            if "loss" in logs:
                left = eta(time.monotonic() - self.started, state.global_step, state.max_steps)
                self.emit(
                    f"epoch {epoch:.2f} step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}{left}"
                )
            if "eval_macro_f1" in logs:
                self.emit(
                    f"epoch {epoch:.2f} step {state.global_step}/{state.max_steps} eval loss "
                    f"{logs.get('eval_loss', float('nan')):.4f} macro-F1 {logs['eval_macro_f1']:.4f} "
                    f"accuracy {logs.get('eval_accuracy', float('nan')):.4f}"
                )

    return GradualUnfreezing, ProgressLines


def gradual_unfreezing_callback(schedule: list[int], initially_trainable: int = 1):
    """A TrainerCallback doing gradual unfreezing (see ``_callbacks``); its ``log`` records each change."""
    return _callbacks()[0](schedule, initially_trainable)


@functools.cache
def _trainer_class():
    import torch
    from transformers import Trainer

    class TaskTrainer(Trainer):
        """Trainer with our parameter groups (separate LRs, layer decay) and an optional weighted loss."""

        def __init__(
            self,
            *args,
            param_groups: list[dict],
            class_weights: list[float] | None,
            multi_label: bool,
            label_smoothing: float = 0.0,
            **kwargs,
        ):
            super().__init__(*args, **kwargs)
            self.param_groups = param_groups
            self.class_weights = class_weights
            self.multi_label = multi_label
            self.label_smoothing = 0.0 if multi_label else label_smoothing
            if self._own_loss:
                self.model_accepts_loss_kwargs = False  # our loss averages itself per batch

        @property
        def _own_loss(self) -> bool:
            return self.class_weights is not None or self.label_smoothing > 0

        def create_optimizer(self):
            if self.optimizer is None:
                self.optimizer = torch.optim.AdamW(self.param_groups, betas=(0.9, 0.999), eps=1e-8)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._own_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.float()
            weights = (
                None
                if self.class_weights is None
                else torch.tensor(self.class_weights, device=logits.device, dtype=torch.float32)
            )
            if self.multi_label:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, labels.float(), pos_weight=weights
                )
            else:
                loss = torch.nn.functional.cross_entropy(
                    logits.view(-1, logits.shape[-1]),
                    labels.view(-1),
                    weight=weights,
                    ignore_index=IGNORE_INDEX,
                    label_smoothing=self.label_smoothing,
                )
            return (loss, outputs) if return_outputs else loss

    return TaskTrainer


# ------------------------------------------------------------------------------------------------------ metrics


def prediction_logits(prediction):
    """The logits of the Trainer's ``prediction`` (the first of its outputs when the model returns several)."""
    outputs = prediction.predictions
    return outputs[0] if isinstance(outputs, tuple) else outputs


def tag_sequences(labels: list[str], prediction) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tags of a token-classification ``prediction`` (the Trainer's output), row by row, at the
    positions that carry a gold label (each word's first word-piece)."""
    gold, predicted = [], []
    for guess, truth in zip(prediction_logits(prediction).argmax(-1), prediction.label_ids, strict=True):
        keep = truth != IGNORE_INDEX
        gold.append([labels[i] for i in truth[keep]])
        predicted.append([labels[i] for i in guess[keep]])
    return gold, predicted


def _metrics_function(recipe: Recipe, multi_label: bool):
    """compute_metrics for the Trainer: accuracy and macro-F1 (entity-level for NER)."""
    labels = task_labels(recipe)

    def classification(prediction) -> dict:
        from sklearn.metrics import accuracy_score, f1_score

        logits, gold = prediction_logits(prediction), prediction.label_ids
        if multi_label:
            predicted = (logits > 0).astype(int)
            gold = gold.astype(int)
            return {
                "accuracy": float(accuracy_score(gold, predicted)),
                "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
            }
        predicted = logits.argmax(-1)
        return {
            "accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(
                f1_score(gold, predicted, average="macro", labels=list(range(len(labels))), zero_division=0)
            ),
        }

    def ner(prediction) -> dict:
        from seqeval.metrics import f1_score
        from seqeval.scheme import IOB2

        true_tags, pred_tags = tag_sequences(labels, prediction)
        correct = sum(
            t == p
            for gold, guess in zip(true_tags, pred_tags, strict=True)
            for t, p in zip(gold, guess, strict=True)
        )
        return {
            "accuracy": correct / max(sum(map(len, true_tags)), 1),
            "macro_f1": float(
                f1_score(true_tags, pred_tags, average="macro", mode="strict", scheme=IOB2, zero_division=0)
            ),
            "entity_f1": float(f1_score(true_tags, pred_tags, mode="strict", scheme=IOB2, zero_division=0)),
        }

    return ner if recipe.task == "ner" else classification


# ------------------------------------------------------------------------------------------------------ training


@dataclass
class _Inputs:
    """The model, tokenizer and encoded rows one training run starts from."""

    tokenizer: Any
    model: Any
    load_info: dict
    train_rows: list[dict]
    monitor_rows: list[dict] | None
    weights: list[float] | None
    multi_label: bool
    collator: Any


def _prepare_inputs(
    recipe: Recipe,
    config: FinetuneConfig,
    encoder_dir: Path,
    train_df: pd.DataFrame,
    monitor_df: pd.DataFrame | None,
) -> _Inputs:
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, DataCollatorWithPadding

    multi_label = bool(config.multi_label and recipe.task == "classification")
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model, load_info = load_task_model(recipe, encoder_dir, multi_label=multi_label)
    train_rows = encode_frame(recipe, config, tokenizer, train_df)
    monitor_rows = encode_frame(recipe, config, tokenizer, monitor_df) if monitor_df is not None else None
    weights = class_weight_vector(recipe, config, train_rows) if uses_class_weights(recipe, config) else None
    collator = (
        DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)
        if recipe.task == "ner"
        else DataCollatorWithPadding(tokenizer)
    )
    return _Inputs(tokenizer, model, load_info, train_rows, monitor_rows, weights, multi_label, collator)


def _plan_max_steps(
    recipe: Recipe,
    config: FinetuneConfig,
    inputs: _Inputs,
    steps_per_epoch: int,
    time_budget_minutes: float | None,
    emit: Progress,
    precision: dict,
) -> tuple[int, dict | None]:
    """``config.max_steps``, or with a time budget (and no fixed step count) the steps that fit it here."""
    if time_budget_minutes is None or config.max_steps > 0:
        return config.max_steps, None
    budget = plan_steps_for_budget(
        inputs.model,
        inputs.collator,
        inputs.train_rows,
        config,
        steps_per_epoch,
        time_budget_minutes,
        monitor_rows=len(inputs.monitor_rows or []),
        bf16=bool(precision.get("bf16")),  # timed as it will train
    )
    if budget["planned_steps"] >= budget["steps_wanted"]:
        emit(
            f"[finetune] budget: all {budget['steps_wanted']} steps fit {time_budget_minutes:g} min at "
            f"{budget['seconds_per_step']:.2f} s/step"
        )
        return config.max_steps, budget
    max_steps = budget["planned_steps"]
    over = (
        f"; finetune.min_epochs {config.min_epochs:g} keeps {max_steps} steps, about "
        f"{max_steps * budget['seconds_per_step'] / 60:.1f} min, over the budget"
        if budget["steps_affordable"] < max_steps
        else ""
    )
    emit(
        f"[finetune] budget: {time_budget_minutes:g} min at {budget['seconds_per_step']:.2f} s/step fits "
        f"{budget['steps_affordable']} of {budget['steps_wanted']} steps{over}; training {max_steps} steps "
        f"({max_steps / steps_per_epoch:.1f} of {config.epochs:g} epochs) with the learning-rate schedule "
        "planned for them (to train every epoch, raise finetune.time_budget_minutes and the run's "
        "time_budget_minutes, or set them to null)"
    )
    return max_steps, budget


def _training_arguments(
    recipe: Recipe,
    config: FinetuneConfig,
    checkpoints: Path,
    *,
    max_steps: int,
    steps_per_epoch: int,
    monitored: bool,
    early_stopping: bool,
    precision: dict,
):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=max_steps,
        per_device_train_batch_size=int(config.batch_size),
        per_device_eval_batch_size=max(64, int(config.batch_size)),
        learning_rate=float(
            config.learning_rate
        ),  # per-group LRs come from our optimizer; this one is unused
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy="epoch" if monitored else "no",
        save_strategy="epoch" if early_stopping else "no",
        save_total_limit=1 if early_stopping else None,
        save_only_model=True,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="macro_f1" if early_stopping else None,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 4),
        group_by_length=True,  # batches of similar length: dynamic padding then wastes little compute
        dataloader_num_workers=0,
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to="none",
        disable_tqdm=True,
        **precision,
    )


def _training_callbacks(
    config: FinetuneConfig, emit: Progress, early_stopping: bool, watch=None
) -> tuple[list, Any]:
    """Progress lines, the budget watch, gradual unfreezing and early stopping as configured; also the
    unfreezing callback."""
    from transformers import EarlyStoppingCallback

    _, progress_class = _callbacks()
    callbacks = [progress_class(emit)]
    if watch is not None:
        callbacks.append(watch)
    unfreezing = None
    if config.unfreeze_schedule:
        unfreezing = gradual_unfreezing_callback(config.unfreeze_schedule)
        callbacks.append(unfreezing)
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(config.early_stopping_patience)))
    return callbacks, unfreezing


def _build_trainer(recipe: Recipe, config: FinetuneConfig, inputs: _Inputs, args, callbacks: list):
    """The Trainer with our parameter groups; also the groups' summary (name, lr, weight decay, size)."""
    groups = optimizer_param_groups(inputs.model, config, fresh_pooler=inputs.load_info["pooler"] == "fresh")
    # summarised now: the scheduler rewrites each group's "lr" in place while training
    group_summary = [
        {"name": g["name"], "lr": g["lr"], "weight_decay": g["weight_decay"], "n_params": len(g["params"])}
        for g in groups
    ]
    trainer = _trainer_class()(
        model=inputs.model,
        args=args,
        train_dataset=inputs.train_rows,
        eval_dataset=inputs.monitor_rows,
        data_collator=inputs.collator,
        processing_class=inputs.tokenizer,
        compute_metrics=_metrics_function(recipe, inputs.multi_label) if inputs.monitor_rows else None,
        callbacks=callbacks,
        param_groups=groups,
        class_weights=inputs.weights,
        multi_label=inputs.multi_label,
        label_smoothing=config.label_smoothing,
    )
    return trainer, group_summary


def _train(trainer, checkpoints: Path) -> float:
    """Train, then remove the checkpoints (rank 0, once every rank of a launch has loaded the best one); the
    seconds training took (evaluations and checkpoints included)."""
    with warnings.catch_warnings():
        # checkpoint rotation on some filesystems; harmless and noisy in the progress output
        warnings.filterwarnings("ignore", message="mtime may not be reliable")
        output = trainer.train()
    barrier()
    if is_main_process():
        shutil.rmtree(checkpoints, ignore_errors=True)
    return float(output.metrics.get("train_runtime", 0.0))


def _resolved_config(
    recipe: Recipe, config: FinetuneConfig, encoder_dir: Path, train_df: pd.DataFrame
) -> FinetuneConfig:
    """``config`` with its 'auto' max_length, batch size and early-stopping patience turned into numbers."""
    if config.max_length == "auto":
        config = config.model_copy(
            update={"max_length": resolve_max_length(recipe, encoder_dir, train_df).finetune.max_length}
        )
    return resolve_task_defaults(recipe, config)


def train_task_model(
    recipe: Recipe,
    config: FinetuneConfig,
    encoder_dir: Path,
    train_df: pd.DataFrame,
    monitor_df: pd.DataFrame | None,
    work_dir: Path,
    progress: Progress | None = None,
    *,
    select_best: bool = False,
    time_budget_minutes: float | None = None,
) -> TrainRun:
    """Train once with ``config``; evaluate on ``monitor_df`` every epoch (loss, accuracy, macro-F1).

    With ``select_best`` (and patience > 0) the best epoch by macro-F1 on ``monitor_df`` is restored and
    training stops after ``early_stopping_patience`` epochs without gain. With ``time_budget_minutes`` the
    steps are planned to fit that time on this machine and re-planned from the real steps' pace while training
    (models/training/step_budget.py). Checkpoints live in ``work_dir/checkpoints`` and are deleted afterwards.
    """
    from transformers import PrinterCallback, set_seed

    emit = progress or logger.info
    started = time.perf_counter()
    set_seed(recipe.seed)
    config = _resolved_config(recipe, config, encoder_dir, train_df)
    inputs = _prepare_inputs(recipe, config, encoder_dir, train_df, monitor_df)
    train_rows, monitor_rows = inputs.train_rows, inputs.monitor_rows
    device, precision = device_and_precision()
    # the batch size is per process: a data-parallel launch takes fewer steps per epoch
    steps_per_epoch = max(1, math.ceil(len(train_rows) / (int(config.batch_size) * world_size())))
    early_stopping = bool(select_best and int(config.early_stopping_patience) > 0 and monitor_rows)
    checkpoints = Path(work_dir) / "checkpoints"
    # rank 0 times the steps; every rank of a launch trains the same number (or they wait on each other)
    max_steps, budget = from_main(
        lambda: _plan_max_steps(recipe, config, inputs, steps_per_epoch, time_budget_minutes, emit, precision)
    )
    args = _training_arguments(
        recipe,
        config,
        checkpoints,
        max_steps=max_steps,
        steps_per_epoch=steps_per_epoch,
        monitored=bool(monitor_rows),
        early_stopping=early_stopping,
        precision=precision,
    )
    watch = budget_watch(budget, steps_per_epoch, emit)
    callbacks, unfreezing = _training_callbacks(config, emit, early_stopping, watch)
    trainer, group_summary = _build_trainer(recipe, config, inputs, args, callbacks)
    trainer.remove_callback(PrinterCallback)  # ProgressLines replaces the raw dict printing
    emit(
        f"fine-tuning {recipe.task} on {len(train_rows)} rows, {steps_per_epoch} steps/epoch, device {device} "
        f"({precision_name(precision)})"
    )
    trained_seconds = _train(trainer, checkpoints)
    if budget is not None:  # what the plan cost in fact, beside what it expected, and what the watch changed
        budget.update(trained_seconds=round(trained_seconds, 1), replanned=watch.watch.log)
    details = {
        "device": device,
        "processes": trainer.args.world_size,  # data-parallel processes that trained (the Trainer's world size)
        "precision": precision_name(precision),
        "n_train": len(train_rows),
        "n_monitor": len(monitor_rows) if monitor_rows else 0,
        "steps_per_epoch": steps_per_epoch,
        "global_steps": trainer.state.global_step,
        "best_metric": trainer.state.best_metric,
        "optimizer_groups": group_summary,
        "class_weight_values": inputs.weights,
        "unfreezing": unfreezing.log if unfreezing else None,
        "time_budget": budget,
        "encoder_loading": inputs.load_info,
    }
    history = list(trainer.state.log_history)
    elapsed = time.perf_counter() - started
    return TrainRun(trainer, trainer.model, inputs.tokenizer, history, details, elapsed, config)
