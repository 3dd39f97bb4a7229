"""The task model and its data: labels, input checks, max_length, encoding, class weights, the model with a
fresh head on an encoder, and the optimizer's parameter groups (separate LRs, layer-wise decay).

models/training/trainer.py trains it; models/training/finetune.py drives a whole fine-tuning.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.data import ner_tag_set

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import FinetuneConfig, Recipe

MULTI_LABEL_SEPARATOR = "|"
IGNORE_INDEX = -100  # label id the loss skips: special tokens and non-first word-pieces


class FinetuneError(ValueError):
    """Fine-tuning cannot start with these inputs; the message says what is wrong and how to fix it."""


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
                "add the entity types to data.labels (without B-/I-) or fix the tags (IOB2: B-TYPE, I-TYPE, O; "
                "bare B / I tags are read as the entity type only when data.labels names exactly one)"
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


# Each value and the figure that chose it: benchmarks/README.md ("Defaults and the figures that chose them").
AUTO_BATCH_SIZE = {"classification": 16, "ner": 16}
AUTO_EARLY_STOPPING_PATIENCE = {"classification": 0, "ner": 0}
AUTO_LEARNING_RATE = {"classification": 1e-4, "ner": 2e-4}


def resolve_task_defaults(recipe: Recipe, config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with ``learning_rate``, ``batch_size`` and ``early_stopping_patience`` numbers ('auto' chosen
    by task)."""
    update: dict[str, float] = {}
    if config.learning_rate == "auto":
        update["learning_rate"] = AUTO_LEARNING_RATE[recipe.task]
    if config.batch_size == "auto":
        update["batch_size"] = AUTO_BATCH_SIZE[recipe.task]
    if config.early_stopping_patience == "auto":
        update["early_stopping_patience"] = AUTO_EARLY_STOPPING_PATIENCE[recipe.task]
    return config.model_copy(update=update) if update else config


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


def inference_max_length(recipe: Recipe, model_dir: Path) -> int:
    """Tokens per text when the fine-tuned model predicts (evaluation, export, serving).

    Classification reads what it was trained on. NER labels every word, and a word cut off is a word predicted
    'O' (a lost entity), so it reads as far as the encoder's positions go: training at the 99th percentile of
    lengths keeps fine-tuning cheap, and the few long sentences still get every word labelled.
    """
    if recipe.task == "ner":
        return max(model_max_length(recipe, model_dir), position_limit(model_dir))
    return model_max_length(recipe, model_dir)


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


def uses_class_weights(recipe: Recipe, config: FinetuneConfig) -> bool:
    """Whether the loss is class-weighted: as set, or under 'auto' only for classification (benchmarks/README)."""
    if config.class_weights == "auto":
        return recipe.task == "classification"
    return bool(config.class_weights)


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
    top_lr = float(config.learning_rate)  # resolved from 'auto' by train_task_model
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not name.startswith(f"{prefix}.") or (fresh_pooler and ".pooler." in name):
            group_name, lr = "head", config.head_learning_rate
        elif ".embeddings." in name:
            group_name, lr = "embeddings", top_lr * config.layer_lr_decay**num_layers
        elif match := _LAYER_PATTERN.search(name):
            depth = num_layers - 1 - int(match.group(1))
            group_name, lr = f"layer_{match.group(1)}", top_lr * config.layer_lr_decay**depth
        else:  # pooler and anything else on top of the encoder
            group_name, lr = "encoder_top", top_lr
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
