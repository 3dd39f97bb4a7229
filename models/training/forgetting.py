"""Measuring what an encoder knows of a text: masked-LM loss with fixed masks, and pseudo-perplexity.

Forgetting is the rise of the MLM loss on general (non-domain) text after adaptation. To compare two models the
masked positions must be the same: :func:`masked_lm_loss` builds the masks with the library's MLM collator and
its own seeded generator (every position chosen for prediction becomes ``[MASK]``, no random replacement), so the
same tokenizer and texts give the same masks on every call, whatever the global RNG did in between.

:func:`split_general` keeps the measured general sentences apart from those replayed during training.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MASKING_SEED = 1234  # must be non-zero: the collator treats seed=0 as "use the global RNG"
# Texts per measurement (each of the domain and general sets); before and after use the very same masks, so the
# delta is a paired difference. More texts cost proportionally more time (benchmarks/README.md).
MEASURE_LIMIT = 160


def split_general(
    general: list[str], replay_fraction: float, seed: int, *, trained_on: bool = False
) -> tuple[list[str], list[str]]:
    """(measured, training_pool): when any general text is trained on, half of it is kept for measuring only.

    General text is trained on by replay (``replay_fraction`` > 0) and by the MLM-head warm-up
    (``trained_on=True``); measuring on trained sentences would hide forgetting. The split depends on the seed
    only, not on the replay share, so runs that differ in their curbs are measured on the same sentences.
    Otherwise every general sentence is measured and the pool is empty.
    """
    texts = [t.strip() for t in general if t and t.strip()]
    if (replay_fraction <= 0 and not trained_on) or len(texts) < 2:
        return texts, []
    shuffled = texts[:]
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    return shuffled[:half], shuffled[half:]


def _logits(output):
    # BertForMaskedLM returns .logits, BertForPreTraining returns .prediction_logits
    logits = getattr(output, "logits", None)
    return output.prediction_logits if logits is None else logits


def mlm_head(model):
    """The module mapping encoder hidden states to vocabulary logits (BERT ``cls.predictions``, RoBERTa-style
    ``lm_head``), or None for an architecture this does not know."""
    cls = getattr(model, "cls", None)
    return getattr(cls, "predictions", None) if cls is not None else getattr(model, "lm_head", None)


def _masked_logits(model, inputs: dict, selected):
    """Vocabulary logits at the ``selected`` positions only.

    The MLM decoder (hidden × vocabulary) costs about as much as the whole MiniLM encoder per token, so running
    it on the ~15% masked positions alone roughly halves the cost of a measurement.
    """
    head = mlm_head(model)
    if head is None:  # unknown architecture: full logits, then pick
        return _logits(model(**inputs))[selected]
    hidden = model.base_model(**inputs)[0]
    return head(hidden[selected])


def _model_inputs(batch: dict, device) -> dict:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {k: batch[k].to(device) for k in keys if k in batch}


def masked_lm_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    seed: int = MASKING_SEED,
    mlm_probability: float = 0.15,
    max_length: int = 128,
    batch_size: int = 16,
    limit: int = MEASURE_LIMIT,
) -> float | None:
    """Mean cross-entropy over masked tokens (one number for the whole text set); None when there is no text.

    The masks depend only on ``seed``, the tokenizer and the texts, so a model before and after training is
    scored on exactly the same masked positions.
    """
    import torch
    from transformers import DataCollatorForLanguageModeling

    texts = [t for t in texts if t and t.strip()][:limit]
    if not texts:
        return None
    if not seed:
        raise ValueError("masked_lm_loss needs a non-zero seed (0 makes the collator use the global RNG)")
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm=True,
        mlm_probability=mlm_probability,
        mask_replace_prob=1.0,
        random_replace_prob=0.0,
        seed=seed,
        return_tensors="pt",
    )
    # Seed the generator here: the library refuses to outside the main process (a Prefect runner's child).
    collator.generator = collator.get_generator(seed)
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    features = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
    was_training = model.training
    model.eval()
    total_loss, total_masked = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                batch = collator(features[start : start + batch_size])
                labels = batch["labels"].to(model.device)
                selected = labels != -100
                if not selected.any():
                    continue
                logits = _masked_logits(model, _model_inputs(batch, model.device), selected).float()
                loss = torch.nn.functional.cross_entropy(logits, labels[selected], reduction="sum")
                total_loss += loss.item()
                total_masked += int(selected.sum())
    finally:
        model.train(was_training)
    return total_loss / total_masked if total_masked else None


def pseudo_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    *,
    max_length: int = 64,
    limit: int = 8,
) -> float | None:
    """exp(mean −log p(token | rest)) masking one token at a time (Salazar et al. 2020); None without text.

    Costs one forward pass per token, hence the small default ``limit``.
    """
    import torch

    sentences = [s for s in sentences if s and s.strip()][:limit]
    if not sentences:
        return None
    mask_id = tokenizer.mask_token_id
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for sentence in sentences:
                encoded = tokenizer(sentence, truncation=True, max_length=max_length, return_tensors="pt")
                ids = encoded["input_ids"][0]
                positions = [i for i, t in enumerate(ids.tolist()) if t not in tokenizer.all_special_ids]
                if not positions:
                    continue
                batch_ids = ids.repeat(len(positions), 1)
                batch_ids[torch.arange(len(positions)), positions] = mask_id
                inputs = {"input_ids": batch_ids.to(model.device)}
                if "token_type_ids" in encoded:
                    inputs["token_type_ids"] = (
                        encoded["token_type_ids"].repeat(len(positions), 1).to(model.device)
                    )
                rows = torch.arange(len(positions))
                selected = torch.zeros(batch_ids.shape, dtype=torch.bool)
                selected[rows, positions] = True
                log_probs = torch.log_softmax(
                    _masked_logits(model, inputs, selected.to(model.device)).float(), dim=-1
                )
                picked = log_probs[rows, ids[positions].to(model.device)]
                total_nll -= picked.sum().item()
                total_tokens += len(positions)
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens) if total_tokens else None
