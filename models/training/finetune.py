"""Task fine-tuning: an encoder directory plus a fresh head, trained with the Hugging Face Trainer.

What this adds on top of a plain ``Trainer.train()``:

- encoder and head get separate learning rates, with layer-wise decay down the encoder (custom optimizer);
- gradual unfreezing (top encoder layer first, one more per scheduled epoch) through a TrainerCallback;
- inverse-frequency class weights in the loss for imbalanced labels;
- early stopping on macro-F1 against a validation split carved out of train (the eval set is never used to
  pick a checkpoint, so reported metrics stay honest);
- NER label alignment (only the first word-piece of each word carries the tag);
- multi-label classification (labels written ``"a|b"``);
- optional MLM contextual augmentation (models/training/augment.py) and Optuna search (models/training/search.py).

The result is a Hugging Face directory (BertForSequenceClassification / BertForTokenClassification, with the
tokenizer) that models/evaluation/evaluate.py and models/export/onnx.py read.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.data import ner_tag_set

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import FinetuneConfig, Recipe

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
MULTI_LABEL_SEPARATOR = "|"
IGNORE_INDEX = -100  # label id the loss skips: special tokens and non-first word-pieces
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
    "multi_label",
    "early_stopping_patience",
    "augment_fraction",
    "search_trials",
    "search_timeout_s",
    "time_budget_minutes",
)
BUDGET_SAFETY = (
    0.85  # share of the fine-tuning budget planned for steps; evaluation and checkpoints take the rest
)
CALIBRATION_STEPS = 3


class FinetuneError(ValueError):
    """Fine-tuning cannot start with these inputs; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class FinetuneResult:
    model_dir: Path  # HF directory: model weights, config with id2label/label2id, tokenizer
    history: list[dict]  # Trainer log_history (train loss per logging step, eval metrics per epoch)
    params: dict  # the hyperparameters actually used (after search) plus derived facts (device, groups, ...)
    curves_png: Path  # learning curves: train loss, eval loss, eval macro-F1 per epoch
    augmentation: dict | None = None  # models/training/augment.py report when augment_fraction > 0
    search: dict | None = None  # models/training/search.py report when search_trials > 0


@dataclass
class TrainRun:
    """What one training run leaves behind (used by finetune, the search and the augmentation study)."""

    trainer: Any
    model: Any
    tokenizer: Any
    history: list[dict]
    details: dict
    seconds: float


# --------------------------------------------------------------------------------------------------------- labels


def task_labels(recipe: Recipe) -> list[str]:
    """Output labels in logit order: the recipe's classes, or the BIO tags of its entity types."""
    if recipe.task == "ner":
        return ner_tag_set(list(recipe.data.labels))
    return list(recipe.data.labels)


def split_multi_label(value: str) -> list[str]:
    return [part.strip() for part in str(value).split(MULTI_LABEL_SEPARATOR) if part.strip()]


def check_task_frame(recipe: Recipe, df: pd.DataFrame, name: str) -> None:
    """Raise FinetuneError when a data frame cannot be trained on: missing columns, unknown labels, empty."""
    if df is None or len(df) == 0:
        raise FinetuneError(f"the {name} set is empty; check data.train / data.eval in the recipe")
    labels = task_labels(recipe)
    if recipe.task == "ner":
        missing = [c for c in ("tokens", "tags") if c not in df.columns]
        if missing:
            raise FinetuneError(
                f"the {name} set lacks column(s) {missing}; load it with models.data.load_task_data"
            )
        unknown: set[str] = set()
        for index, (tokens, tags) in enumerate(zip(df["tokens"], df["tags"], strict=True)):
            if len(tokens) != len(tags):
                raise FinetuneError(
                    f"{name} row {index}: {len(tokens)} tokens but {len(tags)} tags; every token needs one tag"
                )
            unknown.update(t for t in tags if t not in labels)
        if unknown:
            raise FinetuneError(
                f"the {name} set has tags {sorted(unknown)[:10]} outside the recipe's BIO tag set {labels}; "
                "add the entity types to data.labels (without B-/I-) or fix the tags (IOB2: B-TYPE, I-TYPE, O)"
            )
        return
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        raise FinetuneError(
            f"the {name} set lacks column(s) {missing}; load it with models.data.load_task_data"
        )
    if recipe.finetune.multi_label:
        seen = {part for value in df["label"] for part in split_multi_label(value)}
    else:
        seen = set(df["label"].astype(str))
    unknown_labels = sorted(seen - set(labels))
    if unknown_labels:
        hint = (
            f" (multi-label rows separate labels with '{MULTI_LABEL_SEPARATOR}')"
            if recipe.finetune.multi_label
            else ""
        )
        raise FinetuneError(
            f"the {name} set has labels {unknown_labels[:10]} that are not in data.labels {labels}; "
            f"add them to the recipe or fix the data{hint}"
        )


def check_encoder_dir(encoder_dir: Path) -> None:
    encoder_dir = Path(encoder_dir)
    if not (encoder_dir / "config.json").is_file():
        raise FinetuneError(
            f"{encoder_dir} is not a Hugging Face model directory (no config.json); pass the adapted encoder "
            "folder or the base model folder"
        )
    if not any(
        (encoder_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        raise FinetuneError(f"{encoder_dir} has no tokenizer files; save the tokenizer next to the model")


# --------------------------------------------------------------------------------------------------- max_length

AUTO_LENGTH_QUANTILE = 0.99  # share of training texts that 'auto' leaves uncut
AUTO_LENGTH_MIN = 16


def token_lengths(recipe: Recipe, tokenizer, df: pd.DataFrame) -> list[int]:
    """Tokens per row with special tokens, as the model would see them uncut."""
    if recipe.task == "ner":
        encoded = tokenizer([list(t) for t in df["tokens"]], is_split_into_words=True)
    else:
        encoded = tokenizer(list(df["text"].astype(str)))
    return [len(ids) for ids in encoded["input_ids"]]


def choose_max_length(lengths: list[int], limit: int) -> int:
    """The length covering ``AUTO_LENGTH_QUANTILE`` of ``lengths``, rounded up to a multiple of 8, within
    ``AUTO_LENGTH_MIN..limit``. Batches are padded to their own longest row, so a generous cap costs only the
    few long texts, while a fixed short cap silently cuts them."""
    if not lengths:
        return min(limit, 64)
    ordered = sorted(lengths)
    covered = ordered[min(len(ordered) - 1, math.ceil(AUTO_LENGTH_QUANTILE * len(ordered)) - 1)]
    return max(min(AUTO_LENGTH_MIN, limit), min(limit, 8 * math.ceil(covered / 8)))


def position_limit(encoder_dir: Path) -> int:
    """Longest input the encoder takes: its position embeddings, at most 512."""
    config = json.loads((Path(encoder_dir) / "config.json").read_text(encoding="utf-8"))
    return min(512, int(config.get("max_position_embeddings", 512)))


def resolve_max_length(recipe: Recipe, encoder_dir: Path, df: pd.DataFrame) -> Recipe:
    """The recipe with ``finetune.max_length`` fixed to a number ('auto' measured on ``df``)."""
    if recipe.finetune.max_length != "auto":
        return recipe
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    length = choose_max_length(token_lengths(recipe, tokenizer, df), position_limit(encoder_dir))
    return recipe.model_copy(update={"finetune": recipe.finetune.model_copy(update={"max_length": length})})


def model_max_length(recipe: Recipe, model_dir: Path) -> int:
    """The max_length a fine-tuned model was trained with: the recipe's number, or for 'auto' the one
    ``finetune`` saved as the tokenizer's ``model_max_length``."""
    if recipe.finetune.max_length != "auto":
        return int(recipe.finetune.max_length)
    config_file = Path(model_dir) / "tokenizer_config.json"
    saved = (
        json.loads(config_file.read_text(encoding="utf-8")).get("model_max_length")
        if config_file.is_file()
        else None
    )
    if not isinstance(saved, int) or saved > 512:
        raise FinetuneError(
            f"{model_dir} does not record the max_length it was trained with (finetune.max_length is 'auto'); "
            "fine-tune it with this version of dapt or set finetune.max_length to a number"
        )
    return saved


# ------------------------------------------------------------------------------------------------------- encoding


def align_ner_labels(
    word_ids: list[int | None], word_tags: list[str], tag_to_id: dict[str, int]
) -> list[int]:
    """Label only the first word-piece of each word; other pieces and special tokens get IGNORE_INDEX."""
    aligned = []
    previous = None
    for word_id in word_ids:
        if word_id is None or word_id == previous:
            aligned.append(IGNORE_INDEX)
        else:
            aligned.append(tag_to_id[word_tags[word_id]])
        previous = word_id
    return aligned


def encode_frame(recipe: Recipe, config: FinetuneConfig, tokenizer, df: pd.DataFrame) -> list[dict]:
    """Tokenised rows (no padding: the collator pads each batch to its own longest row)."""
    labels = task_labels(recipe)
    label_to_id = {label: i for i, label in enumerate(labels)}
    rows: list[dict] = []
    if recipe.task == "ner":
        encoded = tokenizer(
            [list(t) for t in df["tokens"]],
            is_split_into_words=True,
            truncation=True,
            max_length=config.max_length,
        )
        for index, tags in enumerate(df["tags"]):
            row = {key: encoded[key][index] for key in encoded.keys()}
            row["labels"] = align_ner_labels(encoded.word_ids(index), list(tags), label_to_id)
            rows.append(row)
        return rows
    encoded = tokenizer(list(df["text"].astype(str)), truncation=True, max_length=config.max_length)
    for index, value in enumerate(df["label"]):
        row = {key: encoded[key][index] for key in encoded.keys()}
        if config.multi_label:
            target = [0.0] * len(labels)
            for part in split_multi_label(value):
                target[label_to_id[part]] = 1.0
            row["labels"] = target
        else:
            row["labels"] = label_to_id[str(value)]
        rows.append(row)
    return rows


def class_weight_vector(recipe: Recipe, config: FinetuneConfig, encoded: list[dict]) -> list[float]:
    """Inverse-frequency weights n / (K * n_c), normalised so a balanced set gets 1.0 for every class.

    Multi-label: per-label positive weights (negatives / positives) for BCE.
    """
    num_labels = len(task_labels(recipe))
    if config.multi_label and recipe.task == "classification":
        positives = [0.0] * num_labels
        for row in encoded:
            for i, v in enumerate(row["labels"]):
                positives[i] += v
        total = len(encoded)
        return [max(total - p, 1.0) / max(p, 1.0) for p in positives]
    counts = [0] * num_labels
    for row in encoded:
        targets = row["labels"] if isinstance(row["labels"], list) else [row["labels"]]
        for t in targets:
            if t != IGNORE_INDEX:
                counts[t] += 1
    total = sum(counts)
    return [total / (num_labels * max(c, 1)) for c in counts]


# --------------------------------------------------------------------------------------------------------- model


def load_task_model(recipe: Recipe, encoder_dir: Path, *, multi_label: bool | None = None):
    """The task model with the encoder weights of ``encoder_dir`` and a fresh head.

    ``encoder_dir`` may hold a BertModel, BertForMaskedLM or BertForPreTraining checkpoint. Masked-LM
    checkpoints have no pooler; then the pooler is copied from the recipe's base model when shapes match (it was
    pretrained), else it stays freshly initialised and is trained at the head learning rate.
    Returns ``(model, info)`` where info lists what was newly initialised.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    encoder_dir = Path(encoder_dir)
    labels = task_labels(recipe)
    multi_label = recipe.finetune.multi_label if multi_label is None else multi_label
    config = AutoConfig.from_pretrained(
        encoder_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    if recipe.task == "classification" and multi_label:
        config.problem_type = "multi_label_classification"
    elif recipe.task == "classification":
        config.problem_type = "single_label_classification"
    model_class = (
        AutoModelForTokenClassification if recipe.task == "ner" else AutoModelForSequenceClassification
    )
    # The "newly initialized" warning is expected for the head; we check the encoder ourselves below.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, loading = model_class.from_pretrained(encoder_dir, config=config, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    prefix = model.base_model_prefix
    base = getattr(model, prefix, None)
    if not hasattr(getattr(base, "encoder", None), "layer") or not hasattr(base, "embeddings"):
        raise FinetuneError(
            f"{encoder_dir} holds a {config.model_type!r} model; fine-tuning needs a BERT-style encoder "
            "(embeddings + encoder.layer), e.g. the base MiniLM or an adapted BERT checkpoint"
        )
    missing = list(loading["missing_keys"])
    encoder_missing = [k for k in missing if k.startswith(f"{prefix}.") and ".pooler." not in k]
    if encoder_missing:
        raise FinetuneError(
            f"{encoder_dir} does not hold the encoder weights the task model needs (missing e.g. "
            f"{encoder_missing[:3]}); pass a BERT checkpoint (BertModel, BertForMaskedLM or BertForPreTraining)"
        )
    pooler_missing = [k for k in missing if ".pooler." in k]
    pooler_source = "checkpoint"
    if pooler_missing:
        pooler_source = _fill_pooler_from_base(recipe, model, encoder_dir)
    info = {
        "newly_initialized": missing
        if pooler_source == "fresh"
        else [k for k in missing if ".pooler." not in k],
        "pooler": pooler_source,
        "unused_checkpoint_weights": len(loading["unexpected_keys"]),
    }
    return model, info


def _fill_pooler_from_base(recipe: Recipe, model, encoder_dir: Path) -> str:
    """Copy pretrained pooler weights from the base model; 'base' on success, 'fresh' when impossible."""
    if getattr(getattr(model, "bert", None), "pooler", None) is None:
        return "none"
    base_dir = recipe.resolved_base_model()
    if Path(base_dir).resolve() == Path(encoder_dir).resolve():
        return "fresh"
    try:
        from safetensors.torch import load_file

        weights_file = Path(base_dir) / "model.safetensors"
        state = load_file(str(weights_file)) if weights_file.is_file() else {}
    except (OSError, RuntimeError):  # unreadable base weights: keep the fresh pooler
        return "fresh"
    pooler = model.bert.pooler.dense
    for name, target in (("weight", pooler.weight), ("bias", pooler.bias)):
        source = state.get(f"pooler.dense.{name}", state.get(f"bert.pooler.dense.{name}"))
        if source is None or tuple(source.shape) != tuple(target.shape):
            return "fresh"
    import torch

    with torch.no_grad():
        pooler.weight.copy_(state.get("pooler.dense.weight", state.get("bert.pooler.dense.weight")))
        pooler.bias.copy_(state.get("pooler.dense.bias", state.get("bert.pooler.dense.bias")))
    return "base"


_LAYER_PATTERN = re.compile(r"\.layer\.(\d+)\.")


def optimizer_param_groups(model, config: FinetuneConfig, *, fresh_pooler: bool = False) -> list[dict]:
    """AdamW parameter groups: head at ``head_learning_rate``; encoder layer i (of L) at
    ``learning_rate * layer_lr_decay ** (L - 1 - i)``; embeddings one step below the bottom layer.

    Every parameter is included, trainable or not, so gradual unfreezing needs no new optimizer (AdamW skips
    parameters without a gradient). Bias and LayerNorm weights get no weight decay.
    """
    prefix = model.base_model_prefix
    num_layers = model.config.num_hidden_layers
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not name.startswith(f"{prefix}.") or (fresh_pooler and ".pooler." in name):
            group_name, lr = "head", config.head_learning_rate
        elif ".embeddings." in name:
            group_name, lr = "embeddings", config.learning_rate * config.layer_lr_decay**num_layers
        elif match := _LAYER_PATTERN.search(name):
            depth = num_layers - 1 - int(match.group(1))
            group_name, lr = f"layer_{match.group(1)}", config.learning_rate * config.layer_lr_decay**depth
        else:  # pooler and anything else on top of the encoder
            group_name, lr = "encoder_top", config.learning_rate
        no_decay = name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name
        key = (group_name, no_decay)
        if key not in groups:
            groups[key] = {
                "name": group_name + ("_no_decay" if no_decay else ""),
                "params": [],
                "lr": lr,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
            }
        groups[key]["params"].append(parameter)
    return list(groups.values())


def encoder_units(model) -> list[tuple[str, Any]]:
    """Encoder blocks from the top down (top layer first, embeddings last): the order of gradual unfreezing."""
    base = getattr(model, model.base_model_prefix)
    layers = list(base.encoder.layer)
    units = [(f"layer_{i}", layers[i]) for i in range(len(layers) - 1, -1, -1)]
    units.append(("embeddings", base.embeddings))
    return units


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
            **kwargs,
        ):
            super().__init__(*args, **kwargs)
            self.param_groups = param_groups
            self.class_weights = class_weights
            self.multi_label = multi_label
            if class_weights is not None:
                self.model_accepts_loss_kwargs = False  # our loss averages itself per batch

        def create_optimizer(self):
            if self.optimizer is None:
                self.optimizer = torch.optim.AdamW(self.param_groups, betas=(0.9, 0.999), eps=1e-8)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.class_weights is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.float()
            weights = torch.tensor(self.class_weights, device=logits.device, dtype=torch.float32)
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
                )
            return (loss, outputs) if return_outputs else loss

    return TaskTrainer


# ------------------------------------------------------------------------------------------------------ metrics


def _metrics_function(recipe: Recipe, multi_label: bool):
    """compute_metrics for the Trainer: accuracy and macro-F1 (entity-level for NER)."""
    import numpy as np

    labels = task_labels(recipe)

    def classification(prediction) -> dict:
        from sklearn.metrics import accuracy_score, f1_score

        logits, gold = prediction.predictions, prediction.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
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

        logits, gold = prediction.predictions, prediction.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        predicted = logits.argmax(-1)
        true_tags, pred_tags = [], []
        correct = total = 0
        for p_row, g_row in zip(predicted, gold, strict=True):
            keep = g_row != IGNORE_INDEX
            true_tags.append([labels[i] for i in g_row[keep]])
            pred_tags.append([labels[i] for i in p_row[keep]])
            correct += int(np.sum(p_row[keep] == g_row[keep]))
            total += int(np.sum(keep))
        return {
            "accuracy": correct / max(total, 1),
            "macro_f1": float(
                f1_score(true_tags, pred_tags, average="macro", mode="strict", scheme=IOB2, zero_division=0)
            ),
            "entity_f1": float(f1_score(true_tags, pred_tags, mode="strict", scheme=IOB2, zero_division=0)),
        }

    return ner if recipe.task == "ner" else classification


# ------------------------------------------------------------------------------------------------------ training


def _device_and_precision() -> tuple[str, dict]:
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "cuda", {"bf16": True}
        return "cuda", {"fp16": True}
    return "cpu", {"use_cpu": True}


def plan_steps_for_budget(
    model, collator, rows: list[dict], config: FinetuneConfig, steps_per_epoch: int, minutes: float, seed: int
) -> dict:
    """How many optimizer steps fit ``minutes`` here: forward + backward timed on a few real batches.

    The timed batches are random rows grouped by length, as training batches are. At least one epoch is
    always planned: a model that has not seen its data once is no model.
    """
    import random

    from models.training.calibration import time_forward_backward

    rng = random.Random(seed)
    sample = rng.sample(rows, min(len(rows), config.batch_size * (CALIBRATION_STEPS + 1)))
    # training groups rows of similar length (group_by_length), so the timed batches do too
    sample.sort(key=lambda row: len(row["input_ids"]))
    batches = [sample[i : i + config.batch_size] for i in range(0, len(sample), config.batch_size)]
    rng.shuffle(batches)
    per_step = time_forward_backward(model, (collator(b) for b in batches)).seconds_per_batch
    wanted = max(1, math.ceil(config.epochs * steps_per_epoch))
    affordable = int(minutes * 60 * BUDGET_SAFETY / per_step) if per_step > 0 else wanted
    planned = min(wanted, max(steps_per_epoch, affordable))
    return {
        "minutes": minutes,
        "seconds_per_step": round(per_step, 4),
        "steps_wanted": wanted,
        "steps_affordable": affordable,
        "planned_steps": planned,
        "epochs_planned": round(planned / steps_per_epoch, 2),
    }


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
    steps are planned to fit that time on this machine (see ``plan_steps_for_budget``). Checkpoints live in
    ``work_dir/checkpoints`` and are deleted afterwards.
    """
    from transformers import (
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        PrinterCallback,
        TrainingArguments,
        set_seed,
    )

    emit = progress or logger.info
    started = time.perf_counter()
    set_seed(recipe.seed)
    if config.max_length == "auto":
        config = config.model_copy(
            update={"max_length": resolve_max_length(recipe, encoder_dir, train_df).finetune.max_length}
        )
    multi_label = bool(config.multi_label and recipe.task == "classification")
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model, load_info = load_task_model(recipe, encoder_dir, multi_label=multi_label)
    train_rows = encode_frame(recipe, config, tokenizer, train_df)
    monitor_rows = encode_frame(recipe, config, tokenizer, monitor_df) if monitor_df is not None else None
    weights = class_weight_vector(recipe, config, train_rows) if config.class_weights else None

    device, precision = _device_and_precision()
    steps_per_epoch = max(1, math.ceil(len(train_rows) / config.batch_size))
    early_stopping = bool(select_best and config.early_stopping_patience > 0 and monitor_rows)
    strategy = "epoch" if monitor_rows else "no"
    checkpoints = Path(work_dir) / "checkpoints"
    collator = (
        DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)
        if recipe.task == "ner"
        else DataCollatorWithPadding(tokenizer)
    )
    budget = None
    max_steps = config.max_steps
    if time_budget_minutes is not None and config.max_steps <= 0:
        budget = plan_steps_for_budget(
            model, collator, train_rows, config, steps_per_epoch, time_budget_minutes, recipe.seed
        )
        if budget["planned_steps"] < budget["steps_wanted"]:
            max_steps = budget["planned_steps"]
            emit(
                f"[finetune] budget: {time_budget_minutes:g} min at {budget['seconds_per_step']:.2f} s/step fits "
                f"{max_steps} of {budget['steps_wanted']} steps ({max_steps / steps_per_epoch:.1f} of "
                f"{config.epochs:g} epochs); the learning-rate schedule is planned for {max_steps} steps "
                "(raise finetune.time_budget_minutes, or set it to null, to train every epoch)"
            )
        else:
            emit(
                f"[finetune] budget: all {budget['steps_wanted']} steps fit {time_budget_minutes:g} min at "
                f"{budget['seconds_per_step']:.2f} s/step"
            )
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(64, config.batch_size),
        learning_rate=config.learning_rate,  # per-group LRs come from our optimizer; this one is unused
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy=strategy,
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
    _, progress_class = _callbacks()
    callbacks = [progress_class(emit)]
    unfreezing = None
    if config.unfreeze_schedule:
        unfreezing = gradual_unfreezing_callback(config.unfreeze_schedule)
        callbacks.append(unfreezing)
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    groups = optimizer_param_groups(model, config, fresh_pooler=load_info["pooler"] == "fresh")
    # summarised now: the scheduler rewrites each group's "lr" in place while training
    group_summary = [
        {"name": g["name"], "lr": g["lr"], "weight_decay": g["weight_decay"], "n_params": len(g["params"])}
        for g in groups
    ]
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=monitor_rows,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=_metrics_function(recipe, multi_label) if monitor_rows else None,
        callbacks=callbacks,
        param_groups=groups,
        class_weights=weights,
        multi_label=multi_label,
    )
    trainer.remove_callback(PrinterCallback)  # ProgressLines replaces the raw dict printing
    emit(
        f"fine-tuning {recipe.task} on {len(train_rows)} rows, {steps_per_epoch} steps/epoch, device {device}"
        + (f" ({next(iter(precision))})" if device == "cuda" else "")
    )
    with warnings.catch_warnings():
        # checkpoint rotation on some filesystems; harmless and noisy in the progress output
        warnings.filterwarnings("ignore", message="mtime may not be reliable")
        trainer.train()
    shutil.rmtree(checkpoints, ignore_errors=True)
    details = {
        "device": device,
        "precision": next(iter(precision)) if device == "cuda" else "fp32",
        "n_train": len(train_rows),
        "n_monitor": len(monitor_rows) if monitor_rows else 0,
        "steps_per_epoch": steps_per_epoch,
        "global_steps": trainer.state.global_step,
        "best_metric": trainer.state.best_metric,
        "optimizer_groups": group_summary,
        "class_weight_values": weights,
        "unfreezing": unfreezing.log if unfreezing else None,
        "time_budget": budget,
        "encoder_loading": load_info,
    }
    return TrainRun(
        trainer,
        trainer.model,
        tokenizer,
        list(trainer.state.log_history),
        details,
        time.perf_counter() - started,
    )


def _chmod_tree(folder: Path) -> None:
    """save_pretrained writes 0600 files; a serving container running as another user must read them."""
    for path in Path(folder).rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    Path(folder).chmod(0o755)


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
    import pandas as pd

    from models.data import stratified_split

    emit = progress or logger.info
    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    check_encoder_dir(encoder_dir)
    check_task_frame(recipe, train_df, "train")
    check_task_frame(recipe, eval_df, "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = resolve_max_length(recipe, encoder_dir, train_df)
    config = recipe.finetune
    emit(f"max_length {config.max_length} tokens")

    search_report = None
    if config.search_trials > 0:
        from models.training.search import search_hyperparameters

        search = search_hyperparameters(
            recipe, encoder_dir, train_df, out_dir / "search", train=train_task_model, progress=emit
        )
        config = config.model_copy(update=search.best_params)
        search_report = search.report()

    # Early stopping picks its epoch on a validation split of train, so eval_df stays untouched.
    select_best = config.early_stopping_patience > 0
    if select_best:
        stratify = "label" if recipe.task == "classification" and not config.multi_label else None
        fit_rows, monitor_rows = stratified_split(train_df, 0.1, recipe.seed, column=stratify)
    else:
        fit_rows, monitor_rows = train_df, eval_df

    augmentation_report = None
    if config.augment_fraction > 0:  # after the split: no near-copies of validation rows in training
        from models.training.augment import augment_training_set

        augmented = augment_training_set(
            recipe, encoder_dir, fit_rows, fraction=config.augment_fraction, progress=emit
        )
        augmentation_report = augmented.report
        fit_rows = pd.concat([fit_rows, augmented.rows], ignore_index=True)
    run = train_task_model(
        recipe,
        config,
        encoder_dir,
        fit_rows,
        monitor_rows,
        out_dir,
        emit,
        select_best=select_best,
        time_budget_minutes=config.time_budget_minutes,
    )

    model_dir = out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    run.trainer.save_model(str(model_dir))  # weights + config (id2label) + tokenizer (processing_class)
    run.tokenizer.model_max_length = int(config.max_length)  # read back by model_max_length()
    run.tokenizer.save_pretrained(str(model_dir))
    _chmod_tree(model_dir)

    curves_png = plot_learning_curves(
        run.history, out_dir / "learning_curves.png", title=f"{recipe.name}: fine-tuning"
    )
    params = {key: getattr(config, key) for key in HYPERPARAMETERS}
    params.update(run.details)
    params.update(
        {
            "seed": recipe.seed,
            "task": recipe.task,
            "labels": task_labels(recipe),
            "encoder_dir": str(encoder_dir),
            "monitor_set": "train_validation_split" if select_best else "eval",
            "train_seconds": round(run.seconds, 1),
            "n_synthetic": augmentation_report["n_synthetic"] if augmentation_report else 0,
        }
    )
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
