"""Contextual data augmentation with a masked language model (the adapted encoder).

For a sampled training row, about 15% of its words are replaced by ``[MASK]`` and refilled with a word sampled
from the MLM's top-k predictions; the label is kept. For NER only words tagged ``O`` are replaced, so entity
spans and their tags stay aligned. Synthetic rows are capped at ``fraction`` of the training set.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import Recipe

logger = logging.getLogger(__name__)

_WORD = re.compile(
    r"^[A-Za-z][A-Za-z'-]*$"
)  # only plain words are replaced: numbers and tickers carry meaning


class AugmentationError(ValueError):
    """Augmentation cannot run with these inputs; the message says what to change."""


@dataclass(frozen=True)
class AugmentationResult:
    rows: pd.DataFrame  # synthetic rows only, same columns as the training frame
    report: dict  # n_source, n_synthetic, fraction, mlm_head_trained, examples (original -> synthetic)


def load_mlm(model_dir: Path):
    """(tokenizer, BertForMaskedLM, head_trained): loads what the directory holds; a plain encoder
    gets a fresh MLM head, reported as ``head_trained=False`` (its fills are then close to random)."""
    from transformers import AutoTokenizer, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, loading = BertForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    head_trained = not any(key.startswith("cls.") for key in loading["missing_keys"])
    model.eval()
    return AutoTokenizer.from_pretrained(model_dir), model, head_trained


def _candidate_positions(words: list[str], tags: list[str] | None) -> list[int]:
    return [
        i
        for i, word in enumerate(words)
        if _WORD.match(word) and len(word) > 2 and (tags is None or tags[i] == "O")
    ]


def _fill_masks(
    tokenizer,
    model,
    masked_texts: list[str],
    originals: list[list[str]],
    top_k: int,
    rng: random.Random,
    max_length: int,
    batch_size: int = 32,
) -> list[list[str]]:
    """For every text, one sampled word per [MASK] (in order), never the original word or a word-piece."""
    import torch

    special = set(tokenizer.all_special_ids)
    fills: list[list[str]] = []
    for start in range(0, len(masked_texts), batch_size):
        batch = masked_texts[start : start + batch_size]
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**encoded).logits
        for row, original_words in enumerate(originals[start : start + batch_size]):
            positions = (encoded["input_ids"][row] == tokenizer.mask_token_id).nonzero().flatten().tolist()
            chosen = []
            for position, original in zip(positions, original_words, strict=False):
                top = torch.topk(logits[row, position], top_k * 3).indices.tolist()
                words = [tokenizer.convert_ids_to_tokens(i) for i in top if i not in special]
                words = [w for w in words if _WORD.match(w) and w.lower() != original.lower()][:top_k]
                chosen.append(rng.choice(words) if words else original)
            # masks cut off by truncation keep their original word
            chosen += original_words[len(chosen) :]
            fills.append(chosen)
    return fills


def _check_inputs(recipe: Recipe, mlm_dir: Path, train_df: pd.DataFrame, fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise AugmentationError(f"fraction must be between 0 and 1, got {fraction}")
    if not (Path(mlm_dir) / "config.json").is_file():
        raise AugmentationError(f"{mlm_dir} is not a Hugging Face model directory (no config.json)")
    needed = ["tokens", "tags"] if recipe.task == "ner" else ["text", "label"]
    missing = [c for c in needed if c not in train_df.columns]
    if missing:
        raise AugmentationError(f"the training frame lacks column(s) {missing}; load it with models.data")


def _mask_rows(train_df: pd.DataFrame, is_ner: bool, cap: int, mask_fraction: float, mask_token: str, rng):
    """Up to ``cap`` rows in random order with some maskable words masked: (row indices, masked texts,
    original words, masked positions)."""
    order = list(range(len(train_df)))
    rng.shuffle(order)
    sources: list[int] = []
    masked_texts: list[str] = []
    originals: list[Any] = []
    positions_per_row: list[Any] = []
    for index in order:
        if len(sources) == cap:
            break
        row = train_df.iloc[index]
        words = list(row["tokens"]) if is_ner else str(row["text"]).split()
        candidates = _candidate_positions(words, list(row["tags"]) if is_ner else None)
        if not candidates:
            continue
        count = max(1, round(mask_fraction * len(words)))
        positions = sorted(rng.sample(candidates, min(count, len(candidates))))
        masked = [mask_token if i in positions else w for i, w in enumerate(words)]
        sources.append(index)
        masked_texts.append(" ".join(masked))
        originals.append([words[i] for i in positions])
        positions_per_row.append(positions)
    return sources, masked_texts, originals, positions_per_row


def _synthetic_rows(train_df: pd.DataFrame, is_ner: bool, sources, positions_per_row, fills, n_examples: int):
    """The source rows with their masked words replaced (rows left unchanged dropped), and a few examples."""
    synthetic: list[Any] = []
    examples: list[Any] = []
    for index, positions, chosen in zip(sources, positions_per_row, fills, strict=True):
        row = train_df.iloc[index].copy()
        words = list(row["tokens"]) if is_ner else str(row["text"]).split()
        new_words = list(words)
        for position, word in zip(positions, chosen, strict=True):
            new_words[position] = word
        if new_words == words:
            continue
        if is_ner:
            row["tokens"] = new_words
        else:
            row["text"] = " ".join(new_words)
        synthetic.append(row)
        if len(examples) < n_examples:
            examples.append(
                {
                    "original": " ".join(words),
                    "synthetic": " ".join(new_words),
                    "label": None if is_ner else str(row["label"]),
                }
            )
    return synthetic, examples


def augment_training_set(
    recipe: Recipe,
    mlm_dir: Path,
    train_df: pd.DataFrame,
    fraction: float | None = None,
    *,
    mask_fraction: float = 0.15,
    top_k: int = 10,
    n_examples: int = 5,
    progress: Callable[[str], None] | None = None,
) -> AugmentationResult:
    """Synthetic rows (at most ``fraction * len(train_df)``) made by MLM refilling of masked words."""
    import pandas as pd

    emit = progress or logger.info
    fraction = recipe.finetune.augment_fraction if fraction is None else fraction
    _check_inputs(recipe, mlm_dir, train_df, fraction)
    is_ner = recipe.task == "ner"
    cap = int(fraction * len(train_df))
    empty = train_df.iloc[0:0].copy()
    if cap == 0:
        return AugmentationResult(
            empty,
            {
                "n_source": len(train_df),
                "n_synthetic": 0,
                "fraction": fraction,
                "mlm_head_trained": None,
                "examples": [],
            },
        )

    rng = random.Random(recipe.seed)
    tokenizer, model, head_trained = load_mlm(Path(mlm_dir))
    if not head_trained:
        emit(
            f"augmentation: {mlm_dir} has no trained MLM head; fills come from a fresh head and will be noisy"
        )
    sources, masked_texts, originals, positions_per_row = _mask_rows(
        train_df, is_ner, cap, mask_fraction, tokenizer.mask_token, rng
    )
    emit(f"augmentation: refilling {len(sources)} rows with MLM predictions (top-{top_k})")
    # masked copies are longer than their source in word-pieces; 'auto' leaves the length to the data
    limit = 512 if recipe.finetune.max_length == "auto" else min(512, recipe.finetune.max_length * 2)
    fills = _fill_masks(tokenizer, model, masked_texts, originals, top_k, rng, limit)
    synthetic, examples = _synthetic_rows(train_df, is_ner, sources, positions_per_row, fills, n_examples)
    rows = pd.DataFrame(synthetic, columns=train_df.columns).reset_index(drop=True) if synthetic else empty
    report = {
        "n_source": len(train_df),
        "n_synthetic": len(rows),
        "fraction": fraction,
        "cap": cap,
        "mask_fraction": mask_fraction,
        "top_k": top_k,
        "mlm_dir": str(mlm_dir),
        "mlm_head_trained": head_trained,
        "examples": examples,
    }
    emit(f"augmentation: {len(rows)} synthetic rows (cap {cap})")
    return AugmentationResult(rows, report)
