"""Masked-LM building blocks for adaptation: text handling (held-out split, sentences, NSP pairs), the model
class per objective, layer freezing, vocabulary extension, the MLM collator, encoding and Trainer callbacks.

models/training/adapt_phase.py trains one phase with them; models/training/adapt.py drives the whole run.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from models.recipe import AdaptConfig

logger = logging.getLogger(__name__)

MIN_WORD_PIECES = 3  # vocabulary extension: words the tokenizer splits into at least this many pieces
MIN_WORD_COUNT = 2


class AdaptError(ValueError):
    """Adaptation cannot run as configured; the message says what is missing and how to fix it."""


# ---------------------------------------------------------------------------------------------- text handling


def clean_texts(texts: list[str] | None) -> list[str]:
    return [t.strip() for t in (texts or []) if t and t.strip()]


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, heldout) by document, seeded; no held-out set when the fraction is 0 or there is one document."""
    if fraction <= 0 or len(texts) < 2:
        return list(texts), []
    shuffled = texts[:]
    random.Random(seed).shuffle(shuffled)
    held = min(len(shuffled) - 1, max(1, round(len(shuffled) * fraction)))
    return shuffled[held:], shuffled[:held]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
# A period after these ends a word, not a sentence ("Mr. Smith", "Acme Corp. said", "Jan. 5").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt ft no nos vs etc inc corp co ltd plc llc bros dept est approx fig figs vol "
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun".split()
)
# Initials and dotted acronyms: "J.", "U.S.", "e.g.", "i.e.", "a.m."
_INITIALS = re.compile(r"(?:^|\s)(?:[A-Za-z]\.)+$")


def _ends_with_abbreviation(chunk: str) -> bool:
    last_word = chunk.rsplit(None, 1)[-1]
    if not last_word.endswith("."):
        return False
    return last_word.rstrip(".").lower() in _ABBREVIATIONS or bool(_INITIALS.search(chunk))


def split_sentences(document: str) -> list[str]:
    """Sentences of a document; a one-sentence document of 6+ words is cut in half so it still yields a pair.

    Rule-based: a break after ., ! or ? before a capital or digit, except after a known abbreviation or an
    initial/dotted acronym ("U.S. sales rose" stays one sentence).
    """
    sentences: list[str] = []
    for chunk in (c.strip() for c in _SENTENCE_END.split(document)):
        if not chunk:
            continue
        if sentences and _ends_with_abbreviation(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {chunk}"
        else:
            sentences.append(chunk)
    if len(sentences) == 1:
        words = sentences[0].split()
        if len(words) >= 6:
            middle = len(words) // 2
            return [" ".join(words[:middle]), " ".join(words[middle:])]
    return sentences


def build_nsp_pairs(documents: list[str], seed: int) -> list[tuple[str, str, int]]:
    """(A, B, next_sentence_label) per adjacent sentence pair: half keep the true next sentence (label 0), half
    take a sentence from another document (label 1), as in BERT's NSP."""
    rng = random.Random(seed)
    docs = [s for s in (split_sentences(d) for d in documents) if s]
    pairs = []
    for index, sentences in enumerate(docs):
        for i in range(len(sentences) - 1):
            if rng.random() < 0.5 or len(docs) < 2:
                pairs.append((sentences[i], sentences[i + 1], 0))
            else:
                other = rng.choice(
                    [j for j in range(len(docs)) if j != index] if len(docs) < 64 else range(len(docs))
                )
                if other == index:
                    other = (index + 1) % len(docs)
                pairs.append((sentences[i], rng.choice(docs[other]), 1))
    return pairs


def texts_sha256(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- model set-up


def precision_flags() -> dict[str, Any]:
    """TrainingArguments precision flags, chosen as for fine-tuning (``precision.device_and_precision``): bf16
    where CUDA supports it, fp16 on older GPUs; on the CPU bf16 autocast where ``DAPT_CPU_BF16`` allows, else
    fp32."""
    from models.training.precision import device_and_precision

    device, precision = device_and_precision()
    return {
        "bf16": bool(precision.get("bf16")),
        "fp16": bool(precision.get("fp16")),
        "use_cpu": device == "cpu",
    }


def mlm_model_class(objective: str, model_type: str):
    from transformers import AutoModelForMaskedLM, BertForPreTraining

    if objective == "mlm+nsp":
        if model_type != "bert":
            raise AdaptError(
                f"adapt.objective 'mlm+nsp' needs a BERT model (next-sentence head), but the base model is "
                f"{model_type!r}; use objective 'mlm'"
            )
        return BertForPreTraining
    return AutoModelForMaskedLM


def freeze_lower_layers(model: PreTrainedModel, layers: int) -> int:
    """Freeze the embeddings and the first ``layers`` encoder layers; returns how many parameters were frozen.

    With a tied MLM decoder the output projection shares the word embeddings, so it stays fixed too.
    """
    if layers <= 0:
        return 0
    base = model.base_model
    encoder_layers = getattr(getattr(base, "encoder", None), "layer", None)
    if encoder_layers is None or not hasattr(base, "embeddings"):
        raise AdaptError(
            f"adapt.freeze_layers: cannot find embeddings/encoder layers in {type(base).__name__}"
        )
    if layers > len(encoder_layers):
        raise AdaptError(
            f"adapt.freeze_layers is {layers} but the model has only {len(encoder_layers)} layers; "
            f"use at most {len(encoder_layers)}"
        )
    frozen = 0
    for module in [base.embeddings, *encoder_layers[:layers]]:
        for parameter in module.parameters():
            parameter.requires_grad = False
            frozen += parameter.numel()
    return frozen


def extend_vocabulary(
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    texts: list[str],
    max_new: int,
    *,
    min_pieces: int = MIN_WORD_PIECES,
    min_count: int = MIN_WORD_COUNT,
) -> list[str]:
    """Add up to ``max_new`` frequent words that the tokenizer splits into ``min_pieces``+ pieces.

    New embedding rows start as the mean of the word's old pieces (a better start than a random row).
    The words are matched as whole words only. Returns the added words, most frequent first.
    """
    import torch
    from tokenizers import AddedToken

    if max_new <= 0:
        return []
    backend = tokenizer.backend_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
        words = (
            backend.pre_tokenizer.pre_tokenize_str(normalized)
            if backend.pre_tokenizer
            else normalized.split()
        )
        counts.update(w for w, _ in words if len(w) >= 4 and any(c.isalpha() for c in w))  # type: ignore[str-unpack]
    vocabulary = tokenizer.get_vocab()
    chosen: list[tuple[str, list[int]]] = []
    for word, count in counts.most_common():
        if count < min_count or len(chosen) >= max_new:
            break
        if word in vocabulary:
            continue
        pieces = tokenizer.tokenize(word)
        if len(pieces) >= min_pieces:
            chosen.append((word, tokenizer.convert_tokens_to_ids(pieces)))
    if not chosen:
        return []
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w, _ in chosen])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings: Any = model.get_input_embeddings().weight
    with torch.no_grad():
        for word, piece_ids in chosen:
            embeddings[tokenizer.convert_tokens_to_ids(word)] = embeddings[piece_ids].mean(dim=0)
    return [w for w, _ in chosen]


def mlm_collator(tokenizer, adapt: AdaptConfig, seed: int, pad_to_multiple_of: int | None):
    """The library's MLM collator, extended to pass ``next_sentence_label`` through and to pad offsets for
    whole-word masking (which the 4.57 collator needs but cannot pad itself)."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    class DomainMLMCollator(DataCollatorForLanguageModeling):
        def create_rng(self):
            # The library refuses to seed outside the main process unless inside a DataLoader worker; a
            # Prefect runner executes flows in a child process with no DataLoader workers, where one seeded
            # generator is exactly right.
            import torch.utils.data

            if torch.utils.data.get_worker_info() is None:
                self.generator = self.get_generator(self.seed)
            else:
                super().create_rng()

        def torch_call(self, examples):
            examples = [dict(e) for e in examples]
            nsp = (
                [e.pop("next_sentence_label") for e in examples]
                if "next_sentence_label" in examples[0]
                else None
            )
            offsets = [e.pop("offset_mapping") for e in examples] if "offset_mapping" in examples[0] else None
            if offsets is None:
                batch = super().torch_call(examples)
            else:
                if self.seed and self.generator is None:
                    self.create_rng()
                batch = self.tokenizer.pad(
                    examples, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of
                )
                padded = torch.zeros((len(offsets), batch["input_ids"].shape[1], 2), dtype=torch.long)
                for row, pairs in enumerate(offsets):
                    padded[row, : len(pairs)] = torch.tensor(pairs, dtype=torch.long)
                special = batch.pop("special_tokens_mask")
                batch["input_ids"], batch["labels"] = self.torch_mask_tokens(
                    batch["input_ids"], special_tokens_mask=special, offset_mapping=padded
                )
            self._ensure_a_target(batch)
            if nsp is not None:
                batch["next_sentence_label"] = torch.tensor(nsp, dtype=torch.long)
            return batch

        def _ensure_a_target(self, batch) -> None:
            # A batch of one or two short windows (an epoch's last, or the held-out set's) can draw no masked
            # token at all; its loss is then NaN, which poisons the averaged eval_loss (and with it early
            # stopping and best-checkpoint choice) or, in training, the weights. Mask one token instead.
            labels = batch["labels"]
            if (labels != -100).any():
                return
            special = torch.tensor(self.tokenizer.all_special_ids)
            candidates = (batch["attention_mask"] == 1) & ~torch.isin(batch["input_ids"], special)
            positions = candidates.nonzero()
            if not len(positions):
                return
            row, column = positions[torch.randint(len(positions), (1,), generator=self.generator)][0].tolist()
            labels[row, column] = batch["input_ids"][row, column]
            batch["input_ids"][row, column] = self.tokenizer.mask_token_id

    # whole-word masking in 4.57 supports [MASK] replacement only (and warns with a crash otherwise)
    probabilities: dict[str, Any] = (
        {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if adapt.whole_word_mask else {}
    )
    return DomainMLMCollator(
        tokenizer,
        mlm=True,
        mlm_probability=adapt.mlm_probability,
        whole_word_mask=adapt.whole_word_mask,
        pad_to_multiple_of=pad_to_multiple_of,
        seed=seed or None,
        return_tensors="pt",
        **probabilities,
    )


def encode_texts(tokenizer, texts: list[str], adapt: AdaptConfig, seed: int) -> list[dict]:
    """Features for training: long documents become several max_length windows (nothing is cut off);
    ``mlm+nsp`` turns documents into sentence pairs instead."""
    if not texts:
        return []
    common = {"return_special_tokens_mask": True, "return_offsets_mapping": adapt.whole_word_mask}
    if adapt.objective == "mlm+nsp":
        pairs = build_nsp_pairs(texts, seed)
        if not pairs:
            return []
        encoded = tokenizer(
            [a for a, _, _ in pairs],
            [b for _, b, _ in pairs],
            truncation="longest_first",
            max_length=adapt.max_length,
            **common,
        )
        labels = [label for _, _, label in pairs]
    else:
        encoded = tokenizer(
            texts, truncation=True, max_length=adapt.max_length, return_overflowing_tokens=True, **common
        )
        labels = None
    keys = [k for k in encoded.keys() if k != "overflow_to_sample_mapping"]
    features = []
    for i in range(len(encoded["input_ids"])):
        feature = {k: encoded[k][i] for k in keys}
        if labels is not None:
            feature["next_sentence_label"] = labels[i]
        features.append(feature)
    return features


def progress_callback(say: Callable[[str], None], phase: str):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            import time

            self.started, self.first_step = time.monotonic(), state.global_step  # a resumed run starts later

        def on_log(self, args, state, control, logs=None, **kwargs):
            import time

            from models.progress import eta

            if not logs or not state.is_world_process_zero:
                return
            shown = [
                f"{key} {logs[key]:.4g}" for key in ("loss", "eval_loss", "learning_rate") if key in logs
            ]
            if shown:
                done, total = state.global_step - self.first_step, state.max_steps - self.first_step
                left = eta(time.monotonic() - self.started, done, total)
                say(f"[adapt:{phase}] step {state.global_step}/{state.max_steps} " + ", ".join(shown) + left)

        def on_step_end(self, args, state, control, **kwargs):
            from models.progress import advance

            if state.is_world_process_zero:
                advance(f"[adapt:{phase}] steps", state.global_step, state.max_steps)

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                say(f"[adapt:{phase}] checkpoint saved at step {state.global_step}")

    return ProgressCallback()


def deadline_callback(seconds: float, say: Callable[[str], None], phase: str):
    """Stops training once ``seconds`` have passed: the budget plan assumed a speed this machine did not keep
    (another job took the cores, say). The best checkpoint so far is kept as usual."""
    import time

    from transformers import TrainerCallback

    class Deadline(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.ends = time.monotonic() + seconds

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() > self.ends and not control.should_training_stop:
                say(f"[adapt:{phase}] time budget spent at step {state.global_step}; stopping")
                control.should_training_stop = True
                control.should_evaluate = control.should_save = True

    return Deadline()
