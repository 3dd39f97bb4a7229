"""Domain adaptation of the encoder: continued masked-LM pretraining (DAPT / TAPT) or pretraining from scratch.

``adapt_encoder`` trains with the Hugging Face ``Trainer`` (accelerate underneath) and the library's MLM
collator (15% masking, 80/10/10; whole-word masking optional), dynamic padding and length-grouped batches.
A held-out share of the domain text is scored every evaluation interval; early stopping keeps the best
checkpoint. Forgetting is measured before and after on general text with fixed masks (models/training/forgetting.py).

A base that ships no MLM head (all-MiniLM-L6-v2) gets a random one; it is first trained alone, encoder frozen, on
domain + general text (``adapt.head_warmup_steps``, models/training/head_warmup.py), and only then is "before" measured,
so the forgetting delta compares two real heads and adaptation starts from useful gradients. ``scratch`` has no
pretrained model to forget: it reports general loss after only, and ``forgetting_delta`` is None.

Strategies: ``dapt`` (corpus), ``tapt`` (task texts), ``dapt+tapt`` (two phases, TAPT on top of DAPT), ``none``
(base model untouched, still measured), ``scratch`` (own WordPiece tokenizer + small random-init BERT).
Objectives: ``mlm`` (``AutoModelForMaskedLM``) or ``mlm+nsp`` (``BertForPreTraining`` with sentence pairs).

Layout under ``out_dir``::

    encoder/                     the adapted encoder (config, model.safetensors, tokenizer), mode 0644
    head_warmup/                 the warmed-up MLM head + its record, reused on resume (same "before")
    checkpoints/<phase>/         Trainer checkpoints (2 kept); a killed run resumes from the newest complete one
    .lock                        held while a run uses this folder: a second run with the same settings waits
    phases/<phase>/              output of a finished non-final phase (dapt+tapt keeps DAPT's result here)
    scratch_tokenizer/           the trained tokenizer (strategy scratch), reused on resume
    adapt_curves.png             training loss, held-out domain loss, general loss before/after

Devices: bf16 on CUDA when supported, else fp16; fp32 on CPU. Several GPUs: run the calling script with
``accelerate launch --multi_gpu --num_processes N script.py`` or ``torchrun --nproc_per_node N script.py``;
the Trainer then trains data-parallel (the batch size is per device), and only the main process writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.training.forgetting import MEASURE_LIMIT, masked_lm_loss, pseudo_perplexity, split_general
from models.training.head_warmup import (
    HeadWarmupError,
    HeadWarmupResult,
    head_parameter_names,
    load_head,
    save_head,
    warm_up_head,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from models.recipe import AdaptConfig, Recipe

logger = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
CHECKPOINTS_DIR = "checkpoints"
PHASES_DIR = "phases"
CURVES_PNG = "adapt_curves.png"
HEAD_WARMUP_DIR = "head_warmup"
PHASE_CONFIG = "phase_config.json"
PHASE_DONE = "phase_done.json"
EARLY_STOPPING_PATIENCE = 3  # evaluations without a better held-out loss before stopping
# Held-out domain text is scored at every evaluation: a few hundred texts estimate the loss well, while 10% of
# a 50k-line corpus would cost more than the training itself.
MAX_HELDOUT_TEXTS = 512
PSEUDO_PERPLEXITY_SENTENCES = 8
MIN_WORD_PIECES = 3  # vocabulary extension: words the tokenizer splits into at least this many pieces
MIN_WORD_COUNT = 2


class AdaptError(ValueError):
    """Adaptation cannot run as configured; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class AdaptResult:
    """What adaptation produced. ``encoder_dir`` loads with ``AutoModelFor*.from_pretrained``."""

    encoder_dir: Path
    metrics: dict
    curves_png: Path | None
    log_history: list[dict]
    strategy: str


@dataclass(frozen=True)
class _Phase:
    name: str
    train_texts: list[str]
    heldout_texts: list[str]


@dataclass
class _PhaseRun:
    name: str
    log_history: list[dict] = field(default_factory=list)
    train_tokens: int = 0
    train_seconds: float = 0.0
    global_step: int = 0
    resumed_from_step: int | None = None
    early_stopped: bool = False
    reused: bool = False


# ---------------------------------------------------------------------------------------------- text handling


def _clean(texts: list[str] | None) -> list[str]:
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


def _sha(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- model set-up


def _precision() -> dict[str, Any]:
    """TrainingArguments precision flags: bf16 where CUDA supports it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16, "use_cpu": False}
    return {"bf16": False, "fp16": False, "use_cpu": True}


def _model_class(objective: str, model_type: str):
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


def _collator(tokenizer, adapt: AdaptConfig, seed: int, pad_to_multiple_of: int | None):
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


def _encode(tokenizer, texts: list[str], adapt: AdaptConfig, seed: int) -> list[dict]:
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


def _callbacks(say: Callable[[str], None], phase: str):
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


def _deadline_callback(seconds: float, say: Callable[[str], None], phase: str):
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


# ---------------------------------------------------------------------------------------------- training


def _phase_fingerprint(recipe: Recipe, phase: _Phase, start: str, vocabulary_size: int) -> str:
    payload = {
        "adapt": recipe.adapt.model_dump(mode="json"),
        "seed": recipe.seed,
        "start": start,
        "phase": phase.name,
        "train": _sha(phase.train_texts),
        "heldout": _sha(phase.heldout_texts),
        "vocabulary_size": vocabulary_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _intervals(n_features: int, adapt: AdaptConfig, checkpoint_every: int | None) -> tuple[int, int, int]:
    """(total steps, eval/save interval, logging interval): evaluate once an epoch, and at least 4 times a run."""
    steps_per_epoch = max(1, math.ceil(n_features / adapt.batch_size))
    total = adapt.max_steps if adapt.max_steps > 0 else max(1, math.ceil(adapt.epochs * steps_per_epoch))
    interval = checkpoint_every or max(1, min(steps_per_epoch, math.ceil(total / 4)))
    logging_steps = max(1, min(interval, math.ceil(total / 20)))
    return total, interval, logging_steps


def _train_phase(
    phase: _Phase,
    model: PreTrainedModel,
    tokenizer,
    recipe: Recipe,
    fingerprint: str,
    checkpoints: Path,
    output_dir: Path,
    say: Callable[[str], None],
    checkpoint_every: int | None,
) -> tuple[PreTrainedModel, _PhaseRun]:
    """One Trainer run, resumed from its last checkpoint when the same configuration was interrupted."""
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments

    adapt = recipe.adapt
    done_file, config_file = checkpoints / PHASE_DONE, checkpoints / PHASE_CONFIG
    if done_file.is_file() and (output_dir / "config.json").is_file():
        done = json.loads(done_file.read_text())
        if done.get("fingerprint") == fingerprint:
            try:
                reused = type(model).from_pretrained(output_dir)
            except Exception as exc:  # noqa: BLE001 - a damaged result is trained again, never used
                say(
                    f"[adapt:{phase.name}] the finished result in {output_dir} does not load ({exc}); training again"
                )
                done_file.unlink()
            else:
                say(f"[adapt:{phase.name}] already finished with this configuration; reusing {output_dir}")
                run = _PhaseRun(**{k: v for k, v in done.items() if k != "fingerprint"})
                run.reused = True
                return reused, run
    if checkpoints.is_dir():
        previous = json.loads(config_file.read_text()).get("fingerprint") if config_file.is_file() else None
        if previous != fingerprint:
            say(
                f"[adapt:{phase.name}] configuration or data changed; discarding old checkpoints in {checkpoints}"
            )
            shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    _write_atomic(config_file, json.dumps({"fingerprint": fingerprint}))

    seed = recipe.seed
    train_features = _encode(tokenizer, phase.train_texts, adapt, seed)
    eval_features = _encode(tokenizer, phase.heldout_texts, adapt, seed + 1)
    if not train_features:
        raise AdaptError(
            f"phase {phase.name!r} has no training examples"
            + (" (mlm+nsp needs documents of several sentences)" if adapt.objective == "mlm+nsp" else "")
        )
    total, interval, logging_steps = _intervals(len(train_features), adapt, checkpoint_every)
    precision = _precision()
    has_eval = bool(eval_features)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=adapt.batch_size,
        per_device_eval_batch_size=adapt.batch_size,
        learning_rate=adapt.learning_rate,
        weight_decay=adapt.weight_decay,
        warmup_ratio=adapt.warmup_ratio,
        num_train_epochs=adapt.epochs,
        max_steps=adapt.max_steps if adapt.max_steps > 0 else -1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=interval,
        save_strategy="steps",
        save_steps=interval,
        save_total_limit=2,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=logging_steps,
        logging_first_step=True,
        group_by_length=True,
        prediction_loss_only=True,  # MLM logits are batch x length x vocabulary: never keep them
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # the collator needs special_tokens_mask / offsets
        label_names=["labels", "next_sentence_label"] if adapt.objective == "mlm+nsp" else ["labels"],
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **precision,
    )
    callbacks = [_callbacks(say, phase.name)]
    if adapt.time_budget_minutes is not None:
        callbacks.append(_deadline_callback(adapt.time_budget_minutes * 60 * 1.25, say, phase.name))
    if has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=EARLY_STOPPING_PATIENCE))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_features,
        eval_dataset=eval_features or None,
        data_collator=_collator(tokenizer, adapt, seed, None if precision["use_cpu"] else 8),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our progress callback reports instead of raw dict prints
    last = _last_complete_checkpoint(checkpoints, say, phase.name)
    run = _PhaseRun(name=phase.name)
    tokens_already_seen = 0
    if last:
        state = json.loads((Path(last) / "trainer_state.json").read_text())
        run.resumed_from_step = int(state.get("global_step", 0))
        tokens_already_seen = int(state.get("num_input_tokens_seen", 0))
        say(f"[adapt:{phase.name}] resumed from {Path(last).name} (step {run.resumed_from_step} of {total})")
    else:
        say(
            f"[adapt:{phase.name}] training {len(train_features)} sequences ({len(eval_features)} held out), "
            f"{total} steps, evaluating every {interval}"
        )
    with warnings.catch_warnings():
        # both are harmless library noise: checkpoint ordering on some filesystems, token counting
        warnings.filterwarnings("ignore", message="mtime may not be reliable")
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        output = trainer.train(resume_from_checkpoint=last)
    run.global_step = trainer.state.global_step
    run.train_tokens = int(trainer.state.num_input_tokens_seen) - tokens_already_seen
    run.train_seconds = float(output.metrics.get("train_runtime", 0.0))
    run.log_history = list(trainer.state.log_history)
    run.early_stopped = has_eval and trainer.state.global_step < trainer.state.max_steps
    model = trainer.model
    if trainer.is_world_process_zero():
        _save_pretrained(model, tokenizer, output_dir)
        done = {"fingerprint": fingerprint, **{k: v for k, v in run.__dict__.items() if k != "reused"}}
        _write_atomic(done_file, json.dumps(done))  # last: only a complete output_dir is ever marked done
        for stale in checkpoints.glob("checkpoint-*"):  # finished: the output dir replaces them
            shutil.rmtree(stale, ignore_errors=True)
    return model, run


def _last_complete_checkpoint(checkpoints: Path, say: Callable[[str], None], phase: str) -> str | None:
    """The newest checkpoint the Trainer finished writing, or None. The Trainer writes trainer_state.json last,
    so a checkpoint without a readable one was cut short by a kill: it is removed, not resumed from."""
    numbered = []
    for path in checkpoints.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            numbered.append((int(suffix), path))
    for _step, path in sorted(numbered, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
            complete = isinstance(state, dict) and "global_step" in state
        except (OSError, ValueError):
            complete = False
        if complete and any((path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
            return str(path)
        say(f"[adapt:{phase}] {path.name} is incomplete (interrupted while saving); removing it")
        shutil.rmtree(path, ignore_errors=True)
    return None


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, fsync it and rename it over ``path``: a kill leaves old or new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _save_pretrained(model, tokenizer, directory: Path) -> None:
    """Save into a temporary sibling folder and rename it into place: ``directory`` is complete or absent."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for path in tmp.rglob("*"):  # save_pretrained writes 0600; containers may run as another user
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp.chmod(0o755)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _carry_pooler(base: Path, encoder_dir: Path, prefix: str) -> bool:
    """Put the base model's pretrained pooler back into the saved encoder; True when the encoder has it.

    MLM models have no pooler, so saving them drops it, and a sequence classifier would start from a random
    one. MLM does not train the pooler, so the base's weights are exactly the right ones to keep.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    weights = encoder_dir / "model.safetensors"
    if not weights.is_file():
        return False
    state = load_file(weights)
    if any(".pooler." in key for key in state):
        return True  # already there (a finished run reused)
    pooler = getattr(AutoModel.from_pretrained(base), "pooler", None)
    if pooler is None:
        return False
    for name, tensor in pooler.state_dict().items():
        state[f"{prefix}.pooler.{name}"] = tensor.detach().contiguous()
    # Rewritten after the phase is marked done: a temporary file renamed over the old one, so a kill midway
    # leaves the complete encoder without the pooler (added on the next run), never a truncated file.
    tmp = weights.with_name(f".{weights.name}.tmp-{os.getpid()}")
    save_file(state, tmp, metadata={"format": "pt"})
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    tmp.chmod(0o644)
    os.replace(tmp, weights)
    return True


# ---------------------------------------------------------------------------------------------- budget

BUDGET_FILE = "budget.json"
BUDGET_SAFETY = 0.85  # share of the budget planned for; evaluation, checkpoints and measuring take the rest
CALIBRATION_STEPS = 3


def _training_tokens_per_second(model, tokenizer, texts: list[str], adapt: AdaptConfig, seed: int) -> float:
    """Forward + backward speed of this model on this machine, measured on a few real batches (no update)."""
    from models.training.calibration import time_forward_backward

    sample = random.Random(seed).sample(texts, min(len(texts), adapt.batch_size * (CALIBRATION_STEPS + 1)))
    features = _encode(tokenizer, sample, adapt, seed)
    collator = _collator(tokenizer, adapt, seed, None)
    chunks = [features[i : i + adapt.batch_size] for i in range(0, len(features), adapt.batch_size)]
    return time_forward_backward(model, (collator(rows) for rows in chunks)).tokens_per_second


def _fit_to_budget(
    phases: list[_Phase], model, tokenizer, recipe: Recipe, out_dir: Path, say: Callable[[str], None]
) -> tuple[list[_Phase], dict | None]:
    """Subsample each phase's training text so MLM training fits ``adapt.time_budget_minutes`` on this machine.

    The plan is kept in ``out_dir/budget.json`` so a resumed run trains on the very same texts.
    """
    adapt = recipe.adapt
    if adapt.time_budget_minutes is None or not phases or adapt.max_steps > 0:
        return phases, None
    key = hashlib.sha256(
        json.dumps(
            [adapt.model_dump(mode="json"), recipe.seed, [_sha(p.train_texts) for p in phases]],
            sort_keys=True,
        ).encode()
    ).hexdigest()
    plan_file = out_dir / BUDGET_FILE
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else {}
    if plan.get("key") != key:
        texts = [t for p in phases for t in p.train_texts]
        lengths = [min(len(ids), adapt.max_length) for ids in tokenizer(texts, truncation=False)["input_ids"]]
        needed = sum(lengths) * adapt.epochs
        speed = _training_tokens_per_second(model, tokenizer, texts, adapt, recipe.seed)
        affordable = speed * adapt.time_budget_minutes * 60 * BUDGET_SAFETY
        plan = {
            "key": key,
            "budget_minutes": adapt.time_budget_minutes,
            "tokens_per_second": round(speed, 1),
            "tokens_needed": int(needed),
            "tokens_affordable": int(min(affordable, needed)),
            "fraction": min(1.0, affordable / needed) if needed else 1.0,
        }
        if int(os.environ.get("RANK", "0")) == 0:
            plan_file.write_text(json.dumps(plan, indent=2))
    fraction = plan["fraction"]
    if fraction >= 1.0:
        say(
            f"[adapt] budget: {plan['tokens_needed']} training tokens fit {adapt.time_budget_minutes:g} min at "
            f"{plan['tokens_per_second']:.0f} tokens/s; using all the text"
        )
        return phases, plan
    rng = random.Random(recipe.seed + 7)
    trimmed = []
    for phase in phases:
        keep = max(1, round(len(phase.train_texts) * fraction))
        # the held-out share shrinks with the training text, so evaluations stay a small part of the budget
        heldout = phase.heldout_texts[: max(16, round(keep * recipe.adapt.heldout_fraction))]
        trimmed.append(_Phase(phase.name, rng.sample(phase.train_texts, keep), heldout))
    say(
        f"[adapt] budget: {adapt.time_budget_minutes:g} min at {plan['tokens_per_second']:.0f} tokens/s fits "
        f"{fraction:.0%} of the {plan['tokens_needed']} training tokens; training on a random "
        f"{fraction:.0%} of the text (raise adapt.time_budget_minutes, or set it to null, for more)"
    )
    return trimmed, plan


# ---------------------------------------------------------------------------------------------- measuring


def _measure(
    model, tokenizer, domain: list[str], general: list[str], adapt: AdaptConfig
) -> dict[str, float | None]:
    """Domain and general MLM loss (fixed masks) and general pseudo-perplexity; ``general=[]`` skips those."""
    options = {"max_length": adapt.max_length, "batch_size": max(adapt.batch_size, 16)}
    return {
        "domain_loss": masked_lm_loss(model, tokenizer, domain, **options),
        "general_loss": masked_lm_loss(model, tokenizer, general, **options),
        "general_pseudo_perplexity": pseudo_perplexity(
            model, tokenizer, general, max_length=min(adapt.max_length, 64), limit=PSEUDO_PERPLEXITY_SENTENCES
        ),
    }


def _head_warmup_fingerprint(
    recipe: Recipe, start: str, domain: list[str], general: list[str], names: list[str], vocabulary_size: int
) -> str:
    adapt = recipe.adapt
    payload = {
        "settings": adapt.model_dump(
            mode="json",
            include={
                "objective",
                "batch_size",
                "max_length",
                "mlm_probability",
                "whole_word_mask",
                "head_warmup_steps",
                "head_warmup_learning_rate",
            },
        ),
        "seed": recipe.seed,
        "start": start,
        "domain": _sha(domain),
        "general": _sha(general),
        "parameters": names,
        "vocabulary_size": vocabulary_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _warm_up_head(
    model,
    tokenizer,
    recipe: Recipe,
    names: list[str],
    domain: list[str],
    general: list[str],
    start: str,
    directory: Path,
    say: Callable[[str], None],
) -> HeadWarmupResult:
    """Warm the new head up (or reuse the one an interrupted run with the same settings warmed up)."""
    adapt = recipe.adapt
    fingerprint = _head_warmup_fingerprint(recipe, start, domain, general, names, len(tokenizer))
    reused = load_head(model, directory, fingerprint)
    if reused is not None:
        say(f"[adapt:head-warmup] reusing the head warmed up earlier with these settings ({directory})")
        return reused
    say(
        f"[adapt:head-warmup] the base has no pretrained MLM head: training only {', '.join(names)} "
        f"for {adapt.head_warmup_steps} steps (encoder frozen)"
    )
    try:
        result = warm_up_head(
            model,
            names,
            _encode(tokenizer, domain, adapt, recipe.seed + 2),
            _encode(tokenizer, general, adapt, recipe.seed + 3),
            _collator(tokenizer, adapt, recipe.seed + 2, None),
            steps=adapt.head_warmup_steps,
            learning_rate=adapt.head_warmup_learning_rate,
            batch_size=adapt.batch_size,
            seed=recipe.seed,
            progress=say,
        )
    except HeadWarmupError as exc:
        raise AdaptError(f"adapt.head_warmup_steps: {exc}") from None
    if int(os.environ.get("RANK", "0")) == 0:
        save_head(model, result, directory, fingerprint)
    return result


def _sample(texts: list[str], seed: int, limit: int = MEASURE_LIMIT) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return random.Random(seed).sample(texts, limit)


def _curves(
    runs: list[_PhaseRun],
    before: dict,
    after: dict,
    path: Path,
    strategy: str,
    head_warmup: HeadWarmupResult | None = None,
) -> Path:
    from models.evaluation.plots import plot_curves

    series: dict[str, list[tuple[float, float]]] = {}
    if head_warmup is not None:  # drawn before step 0: it happens before adaptation and before "before"
        series["MLM-head warm-up loss (encoder frozen)"] = [
            (step - head_warmup.steps, loss) for step, loss in head_warmup.loss_curve
        ]
    series.update({"training loss": [], "held-out domain loss": []})
    offset = 0
    for run in runs:
        for entry in run.log_history:
            step = offset + entry.get("step", 0)
            if "loss" in entry:
                series["training loss"].append((step, entry["loss"]))
            if "eval_loss" in entry:
                series["held-out domain loss"].append((step, entry["eval_loss"]))
        offset += run.global_step
    series["domain loss (fixed masks) before/after"] = [
        (0, before["domain_loss"]),
        (offset, after["domain_loss"]),
    ]
    series["general loss before"] = [(0, before["general_loss"])]
    series["general loss after"] = [(offset, after["general_loss"])]
    return plot_curves(series, f"Domain adaptation ({strategy}): MLM loss", path)


# ---------------------------------------------------------------------------------------------- entry point


def _plan(recipe: Recipe, corpus: list[str], task: list[str]) -> list[tuple[str, list[str]]]:
    strategy = recipe.adapt.strategy
    if strategy in ("dapt", "dapt+tapt", "scratch") and not corpus:
        raise AdaptError(
            f"adapt.strategy {strategy!r} needs domain text, but the corpus is empty; check data.corpus"
        )
    if strategy in ("tapt", "dapt+tapt") and not task:
        raise AdaptError(f"adapt.strategy {strategy!r} needs the task's training texts, but none were given")
    return {
        "dapt": [("dapt", corpus)],
        "tapt": [("tapt", task)],
        "dapt+tapt": [("dapt", corpus), ("tapt", task)],
        "scratch": [("scratch", corpus + task)],
        "none": [],
    }[strategy]


def _load_start(recipe: Recipe, out_dir: Path, corpus: list[str], task: list[str]):
    """(tokenizer, model, start description, names of the newly initialised head parameters) before training;
    for scratch every parameter is new and the names are empty (nothing to warm up against)."""
    from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM, BertForPreTraining

    adapt = recipe.adapt
    if adapt.strategy == "scratch":
        from models.training.scratch import ScratchConfigError, load_or_train_tokenizer, scratch_bert_config

        tokenizer = load_or_train_tokenizer(
            corpus + task,
            adapt.scratch_vocab_size,
            out_dir / "scratch_tokenizer",
            model_max_length=adapt.max_length,
        )
        try:
            config = scratch_bert_config(tokenizer, adapt)
        except ScratchConfigError as exc:
            raise AdaptError(str(exc)) from None
        model_class = BertForPreTraining if adapt.objective == "mlm+nsp" else BertForMaskedLM
        return tokenizer, model_class(config), f"scratch:{_sha(corpus + task)[:16]}", []
    base = Path(recipe.resolved_base_model())
    if not (base / "config.json").is_file():
        raise AdaptError(f"base_model {base} is not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if not tokenizer.is_fast or tokenizer.mask_token is None:
        raise AdaptError(
            f"the tokenizer in {base} must be a fast tokenizer with a mask token for MLM training"
        )
    model_class = _model_class(adapt.objective, AutoConfig.from_pretrained(base).model_type)
    model, info = model_class.from_pretrained(base, output_loading_info=True)
    return tokenizer, model, str(base.resolve()), head_parameter_names(model, info["missing_keys"])


def adapt_encoder(recipe: Recipe, out_dir: Path, **options: Any) -> AdaptResult:
    """Adapt the recipe's base encoder (arguments and behaviour: :func:`_adapt_encoder`) while holding an
    exclusive lock on ``out_dir``: a second run with the same folder (the flow's cache entry
    ``DAPT_HOME/adapt/<key>``) waits, then reuses what the first one finished."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = options.get("progress") or logger.info
    with _cache_lock(out_dir, say):
        return _adapt_encoder(recipe, out_dir, **options)


class _cache_lock:  # noqa: N801 - used as a context manager
    """``fcntl.flock`` on ``<folder>/.lock``; released by the kernel when the holder dies, so never stale."""

    def __init__(self, folder: Path, say: Callable[[str], None]):
        self.path, self.say, self.fd = folder / ".lock", say, -1

    def __enter__(self) -> _cache_lock:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text().strip() or "another process"
            self.say(f"[adapt] {self.path.parent} is in use by {holder}; waiting for it to finish")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock


def _adapt_encoder(
    recipe: Recipe,
    out_dir: Path,
    *,
    corpus: list[str],
    general: list[str],
    task_texts: list[str],
    progress: Callable[[str], None] | None = None,
    checkpoint_every: int | None = None,
) -> AdaptResult:
    """Adapt the recipe's base encoder to the domain as ``recipe.adapt`` says; see the module docstring.

    ``checkpoint_every`` overrides the evaluation/checkpoint interval in steps (default: once an epoch and
    at least four times a run). Running again with the same configuration resumes from the last checkpoint
    and skips finished phases.
    """
    import time

    import torch
    from transformers import set_seed

    say = progress or logger.info
    adapt = recipe.adapt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus, task = _clean(corpus), _clean(task_texts)
    plan = _plan(recipe, corpus, task)
    started = time.perf_counter()

    set_seed(recipe.seed)
    tokenizer, model, start, new_head = _load_start(recipe, out_dir, corpus, task)
    scratch = adapt.strategy == "scratch"
    warm_head = bool(new_head) and adapt.head_warmup_steps > 0
    # general text trained on (replay, head warm-up) is never measured; see split_general
    measured_general, general_pool = split_general(
        general, adapt.replay_fraction, recipe.seed, trained_on=warm_head
    )
    measured_general = _sample(measured_general, recipe.seed)
    replay_pool = general_pool
    phases: list[_Phase] = []
    rng = random.Random(recipe.seed)
    replayed = 0
    warmup_domain: list[str] = []  # the first phase's own training text, before replay is mixed in
    for name, texts in plan:
        train, heldout = split_heldout(texts, adapt.heldout_fraction, recipe.seed)
        heldout = heldout[:MAX_HELDOUT_TEXTS]  # already shuffled by split_heldout
        if not phases:
            warmup_domain = train
        if replay_pool and adapt.replay_fraction > 0:
            wanted = round(adapt.replay_fraction / (1 - adapt.replay_fraction) * len(train))
            extra = (
                rng.sample(replay_pool, wanted)
                if wanted <= len(replay_pool)
                else rng.choices(replay_pool, k=wanted)
            )
            train = train + extra
            replayed += len(extra)
        phases.append(_Phase(name, train, heldout))
    if adapt.strategy in ("tapt", "none") and corpus:
        domain_texts, domain_on = corpus, "corpus"  # never trained on by these strategies
    elif phases and phases[0].heldout_texts:
        domain_texts, domain_on = phases[0].heldout_texts, "heldout"
    elif phases:
        domain_texts, domain_on = phases[0].train_texts, "train"
    else:
        domain_texts, domain_on = task, "task"
    if warm_head and not phases:  # strategy none: warm up on one half of the domain text, measure the other
        warmup_domain, domain_texts = split_heldout(domain_texts, 0.5, recipe.seed)
    domain_texts = _sample(domain_texts, recipe.seed)

    added_tokens = extend_vocabulary(tokenizer, model, corpus, adapt.extend_vocab) if plan else []
    if added_tokens:
        say(
            f"[adapt] added {len(added_tokens)} domain words to the vocabulary: {', '.join(added_tokens[:10])}..."
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    head_warmup = None
    if warm_head:
        head_warmup = _warm_up_head(
            model,
            tokenizer,
            recipe,
            new_head,
            warmup_domain,
            general_pool,
            start,
            out_dir / HEAD_WARMUP_DIR,
            say,
        )
    elif new_head:
        say(
            "[adapt] warning: the MLM head is newly initialised and adapt.head_warmup_steps is 0, so the "
            "losses before adaptation measure a random head; forgetting is not reported"
        )
    frozen = freeze_lower_layers(model, adapt.freeze_layers) if plan else 0
    phases, budget = _fit_to_budget(phases, model, tokenizer, recipe, out_dir, say)
    # scratch: a random model knows no general text, so there is no "general before" to forget from
    general_before = [] if scratch else measured_general
    say(f"[adapt] measuring before: {len(domain_texts)} domain / {len(general_before)} general texts")
    before = _measure(model, tokenizer, domain_texts, general_before, adapt)

    runs: list[_PhaseRun] = []
    pooler_kept = False
    encoder_dir = out_dir / ENCODER_DIR
    if not plan:  # strategy none: the base model is the encoder
        encoder_dir, after = Path(recipe.resolved_base_model()), dict(before)
    else:
        vocabulary_size = len(tokenizer)
        for index, phase in enumerate(phases):
            last_phase = index == len(phases) - 1
            output_dir = encoder_dir if last_phase else out_dir / PHASES_DIR / phase.name
            fingerprint = _phase_fingerprint(recipe, phase, start, vocabulary_size)
            model, run = _train_phase(
                phase,
                model,
                tokenizer,
                recipe,
                fingerprint,
                out_dir / CHECKPOINTS_DIR / phase.name,
                output_dir,
                say,
                checkpoint_every,
            )
            freeze_lower_layers(model, adapt.freeze_layers)
            runs.append(run)
            start = fingerprint  # the next phase starts from this one's result
        if adapt.strategy != "scratch" and int(os.environ.get("RANK", "0")) == 0:
            pooler_kept = _carry_pooler(
                Path(recipe.resolved_base_model()), encoder_dir, model.base_model_prefix
            )
        model.to(device)
        say("[adapt] measuring after")
        after = _measure(model, tokenizer, domain_texts, measured_general, adapt)

    if scratch:
        forgetting_note = (
            "scratch: no pretrained model to forget; general loss is reported after training only"
        )
    elif new_head and not warm_head:
        forgetting_note = "MLM head was random when measured before (adapt.head_warmup_steps is 0)"
    elif not measured_general:
        forgetting_note = "no general text given (data.general)"
    else:
        forgetting_note = None
    train_tokens = sum(r.train_tokens for r in runs)
    train_seconds = sum(r.train_seconds for r in runs)
    log_history = [{"phase": r.name, **entry} for r in runs for entry in r.log_history]
    metrics = {
        "strategy": adapt.strategy,
        "objective": adapt.objective,
        "domain_loss_before": before["domain_loss"],
        "domain_loss_after": after["domain_loss"],
        "domain_loss_on": domain_on,
        "general_loss_before": before["general_loss"],
        "general_loss_after": after["general_loss"],
        "forgetting_delta": (
            after["general_loss"] - before["general_loss"]
            if before["general_loss"] is not None
            and after["general_loss"] is not None
            and not forgetting_note
            else None
        ),
        "forgetting_note": forgetting_note,
        "general_pseudo_perplexity_before": before["general_pseudo_perplexity"],
        "general_pseudo_perplexity_after": after["general_pseudo_perplexity"],
        "general_texts_measured": len(measured_general),
        "domain_texts_measured": len(domain_texts),
        "mlm_head_initialised": bool(new_head) or scratch,
        "head_warmup_steps": head_warmup.steps if head_warmup else 0,
        "head_warmup": head_warmup.to_metrics() if head_warmup else None,
        "train_tokens": train_tokens,
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(train_tokens / train_seconds, 1) if train_seconds > 0 else None,
        "added_tokens": added_tokens,
        "replay_examples": replayed,
        "budget": budget,
        "train_texts": sum(len(p.train_texts) for p in phases),
        "frozen_parameters": frozen,
        "base_pooler_kept": pooler_kept,
        "phases": [
            {
                "name": r.name,
                "steps": r.global_step,
                "resumed_from_step": r.resumed_from_step,
                "early_stopped": r.early_stopped,
                "reused": r.reused,
                "train_tokens": r.train_tokens,
            }
            for r in runs
        ],
        "resumed_from_step": next(
            (r.resumed_from_step for r in runs if r.resumed_from_step is not None), None
        ),
        "precision": "bf16" if _precision()["bf16"] else "fp16" if _precision()["fp16"] else "fp32",
        "device": device,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    curves_png = None
    if runs and int(os.environ.get("RANK", "0")) == 0:
        curves_png = _curves(runs, before, after, out_dir / CURVES_PNG, adapt.strategy, head_warmup)
    (out_dir / "adapt_metrics.json").write_text(json.dumps(metrics, indent=2))
    say(
        f"[adapt] done: domain loss {_fmt(before['domain_loss'])} -> {_fmt(after['domain_loss'])}, "
        f"general loss {_fmt(before['general_loss'])} -> {_fmt(after['general_loss'])}"
    )
    return AdaptResult(encoder_dir, metrics, curves_png, log_history, adapt.strategy)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
