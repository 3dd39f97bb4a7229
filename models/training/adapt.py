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

Devices: bf16 on CUDA when supported, else fp16; on the CPU bf16 autocast where fine-tuning uses it
(``DAPT_CPU_BF16``), else fp32. Several GPUs: run the calling script with
``accelerate launch --multi_gpu --num_processes N script.py`` or ``torchrun --nproc_per_node N script.py``;
the Trainer then trains data-parallel (the batch size is per device), and only the main process writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.distributed import from_main, main_first
from models.settings import is_main_process
from models.training.adapt_phase import (
    Phase,
    PhaseRun,
    carry_pooler,
    fit_to_budget,
    phase_fingerprint,
    train_phase,
)
from models.training.adapt_report import RunFacts, adapt_metrics, forgetting_note, plot_adapt_curves
from models.training.forgetting import MEASURE_LIMIT, masked_lm_loss, pseudo_perplexity, split_general
from models.training.head_warmup import (
    HeadWarmupError,
    HeadWarmupResult,
    head_parameter_names,
    load_head,
    save_head,
    warm_up_head,
)
from models.training.mlm import (
    AdaptError,
    clean_texts,
    encode_texts,
    extend_vocabulary,
    freeze_lower_layers,
    mlm_collator,
    mlm_model_class,
    split_heldout,
    texts_sha256,
)

if TYPE_CHECKING:
    from models.recipe import AdaptConfig, Recipe

logger = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
CHECKPOINTS_DIR = "checkpoints"
PHASES_DIR = "phases"
CURVES_PNG = "adapt_curves.png"
HEAD_WARMUP_DIR = "head_warmup"
# Held-out domain text is scored at every evaluation: a few hundred texts estimate the loss well, while 10% of
# a 50k-line corpus would cost more than the training itself.
MAX_HELDOUT_TEXTS = 512
PSEUDO_PERPLEXITY_SENTENCES = 8


@dataclass(frozen=True)
class AdaptResult:
    """What adaptation produced. ``encoder_dir`` loads with ``AutoModelFor*.from_pretrained``."""

    encoder_dir: Path
    metrics: dict
    curves_png: Path | None
    log_history: list[dict]
    strategy: str


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
        "domain": texts_sha256(domain),
        "general": texts_sha256(general),
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
    reused = load_head(model, directory, fingerprint) if is_main_process() else None
    # the saved head is reused by every rank or by none: the other ranks of a launch follow rank 0's answer
    if from_main(lambda: reused is not None) and reused is None:
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
            encode_texts(tokenizer, domain, adapt, recipe.seed + 2),
            encode_texts(tokenizer, general, adapt, recipe.seed + 3),
            mlm_collator(tokenizer, adapt, recipe.seed + 2, None),
            steps=adapt.head_warmup_steps,
            learning_rate=adapt.head_warmup_learning_rate,
            batch_size=adapt.batch_size,
            seed=recipe.seed,
            progress=say,
        )
    except HeadWarmupError as exc:
        raise AdaptError(f"adapt.head_warmup_steps: {exc}") from None
    if is_main_process():
        save_head(model, result, directory, fingerprint)
    return result


def _sample(texts: list[str], seed: int, limit: int = MEASURE_LIMIT) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return random.Random(seed).sample(texts, limit)


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

        # rank 0 trains and saves it; the other ranks of a launch load that one
        tokenizer = main_first(
            lambda: load_or_train_tokenizer(
                corpus + task,
                adapt.scratch_vocab_size,
                out_dir / "scratch_tokenizer",
                model_max_length=adapt.max_length,
            )
        )
        try:
            config = scratch_bert_config(tokenizer, adapt)
        except ScratchConfigError as exc:
            raise AdaptError(str(exc)) from None
        model_class = BertForPreTraining if adapt.objective == "mlm+nsp" else BertForMaskedLM
        return tokenizer, model_class(config), f"scratch:{texts_sha256(corpus + task)[:16]}", []
    base = Path(recipe.resolved_base_model())
    if not (base / "config.json").is_file():
        raise AdaptError(f"base_model {base} is not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if not tokenizer.is_fast or tokenizer.mask_token is None:
        raise AdaptError(
            f"the tokenizer in {base} must be a fast tokenizer with a mask token for MLM training"
        )
    model_class = mlm_model_class(adapt.objective, AutoConfig.from_pretrained(base).model_type)
    model, info = model_class.from_pretrained(base, output_loading_info=True)
    return tokenizer, model, str(base.resolve()), head_parameter_names(model, info["missing_keys"])


def adapt_encoder(recipe: Recipe, out_dir: Path, **options: Any) -> AdaptResult:
    """Adapt the recipe's base encoder (arguments and behaviour: :func:`_adapt_encoder`) while holding an
    exclusive lock on ``out_dir``: a second run with the same folder (the flow's cache entry
    ``DAPT_HOME/adapt/<key>``) waits, then reuses what the first one finished."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = options.get("progress") or logger.info
    if not is_main_process():  # the lock is rank 0's: the other ranks of a launch follow its decisions
        return _adapt_encoder(recipe, out_dir, **options)
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


def _build_phases(recipe: Recipe, plan, replay_pool: list[str]) -> tuple[list[Phase], list[str], int]:
    """The phases with their held-out split and general-text replay mixed in; also the first phase's own
    training text (before replay, what the head warm-up trains on) and how many replay texts were added."""
    adapt = recipe.adapt
    phases: list[Phase] = []
    rng = random.Random(recipe.seed)
    replayed = 0
    warmup_domain: list[str] = []
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
        phases.append(Phase(name, train, heldout))
    return phases, warmup_domain, replayed


def _domain_texts(
    recipe: Recipe, corpus: list[str], task: list[str], phases: list[Phase], warm_head: bool, warmup_domain
) -> tuple[list[str], str, list[str]]:
    """(domain texts measured before and after, where they come from, domain texts the head warms up on)."""
    if recipe.adapt.strategy in ("tapt", "none") and corpus:
        domain_texts, domain_on = corpus, "corpus"  # never trained on by these strategies
    elif phases and phases[0].heldout_texts:
        domain_texts, domain_on = phases[0].heldout_texts, "heldout"
    elif phases:
        domain_texts, domain_on = phases[0].train_texts, "train"
    else:
        domain_texts, domain_on = task, "task"
    if warm_head and not phases:  # strategy none: warm up on one half of the domain text, measure the other
        warmup_domain, domain_texts = split_heldout(domain_texts, 0.5, recipe.seed)
    return _sample(domain_texts, recipe.seed), domain_on, warmup_domain


def _run_phases(
    recipe: Recipe,
    phases: list[Phase],
    model,
    tokenizer,
    start: str,
    out_dir: Path,
    say: Callable[[str], None],
    checkpoint_every: int | None,
):
    """Train the phases in order, each starting from the previous one's result; (model, runs, pooler kept)."""
    encoder_dir = out_dir / ENCODER_DIR
    runs: list[PhaseRun] = []
    vocabulary_size = len(tokenizer)
    for index, phase in enumerate(phases):
        last_phase = index == len(phases) - 1
        output_dir = encoder_dir if last_phase else out_dir / PHASES_DIR / phase.name
        fingerprint = phase_fingerprint(recipe, phase, start, vocabulary_size)
        model, run = train_phase(
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
        freeze_lower_layers(model, recipe.adapt.freeze_layers)
        runs.append(run)
        start = fingerprint  # the next phase starts from this one's result
    pooler_kept = False
    if recipe.adapt.strategy != "scratch" and is_main_process():
        pooler_kept = carry_pooler(Path(recipe.resolved_base_model()), encoder_dir, model.base_model_prefix)
    return model, runs, pooler_kept


def _prepare_head(
    model, tokenizer, recipe: Recipe, new_head: list[str], texts: _Texts, start: str, out_dir, say
):
    """Warm the new MLM head up when there is one and the recipe allows it; warn when it stays random."""
    if new_head and recipe.adapt.head_warmup_steps > 0:
        return _warm_up_head(
            model,
            tokenizer,
            recipe,
            new_head,
            texts.warmup_domain,
            texts.general_pool,
            start,
            out_dir / HEAD_WARMUP_DIR,
            say,
        )
    if new_head:
        say(
            "[adapt] warning: the MLM head is newly initialised and adapt.head_warmup_steps is 0, so the "
            "losses before adaptation measure a random head; forgetting is not reported"
        )
    return None


@dataclass
class _Texts:
    """Which texts a run trains on and measures with."""

    phases: list[Phase]
    measured_general: list[str]  # general text measured before and after, never trained on
    general_pool: list[str]  # general text replay and the head warm-up may train on
    warmup_domain: list[str]  # domain text the head warms up on
    domain: list[str]  # domain text measured before and after
    domain_on: str  # where ``domain`` comes from
    replayed: int  # general texts mixed into the phases


def _select_texts(
    recipe: Recipe, plan, corpus: list[str], task: list[str], general: list[str], warm_head: bool
) -> _Texts:
    adapt = recipe.adapt
    # general text trained on (replay, head warm-up) is never measured; see split_general
    measured_general, general_pool = split_general(
        general, adapt.replay_fraction, recipe.seed, trained_on=warm_head
    )
    phases, warmup_domain, replayed = _build_phases(recipe, plan, general_pool)
    domain, domain_on, warmup_domain = _domain_texts(recipe, corpus, task, phases, warm_head, warmup_domain)
    return _Texts(
        phases,
        _sample(measured_general, recipe.seed),
        general_pool,
        warmup_domain,
        domain,
        domain_on,
        replayed,
    )


def _write_record(
    out_dir: Path, strategy: str, metrics: dict, runs, before, after, head_warmup, say
) -> Path | None:
    """Write the curves PNG (main process, when something trained) and adapt_metrics.json; report the losses."""
    curves_png = None
    if runs and is_main_process():
        curves_png = plot_adapt_curves(runs, before, after, out_dir / CURVES_PNG, strategy, head_warmup)
    if is_main_process():
        (out_dir / "adapt_metrics.json").write_text(json.dumps(metrics, indent=2))
    say(
        f"[adapt] done: domain loss {_fmt(before['domain_loss'])} -> {_fmt(after['domain_loss'])}, "
        f"general loss {_fmt(before['general_loss'])} -> {_fmt(after['general_loss'])}"
    )
    return curves_png


def _extend_vocabulary(
    tokenizer, model, corpus: list[str], adapt: AdaptConfig, training: bool, say
) -> list[str]:
    """Add frequent domain words the tokenizer splits into many pieces (only when something trains)."""
    added_tokens = extend_vocabulary(tokenizer, model, corpus, adapt.extend_vocab) if training else []
    if added_tokens:
        say(
            f"[adapt] added {len(added_tokens)} domain words to the vocabulary: {', '.join(added_tokens[:10])}..."
        )
    return added_tokens


def _train_and_measure(
    recipe: Recipe,
    plan,
    phases,
    model,
    tokenizer,
    start: str,
    out_dir: Path,
    before: dict,
    texts: _Texts,
    device: str,
    say,
    checkpoint_every: int | None,
):
    """(model, encoder dir, phase runs, base pooler kept, losses after). Strategy none trains nothing: the
    base model is the encoder and "after" is "before"."""
    if not plan:
        return model, Path(recipe.resolved_base_model()), [], False, dict(before)
    model, runs, pooler_kept = _run_phases(
        recipe, phases, model, tokenizer, start, out_dir, say, checkpoint_every
    )
    model.to(device)
    say("[adapt] measuring after")
    after = _measure(model, tokenizer, texts.domain, texts.measured_general, recipe.adapt)
    return model, out_dir / ENCODER_DIR, runs, pooler_kept, after


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
    corpus, task = clean_texts(corpus), clean_texts(task_texts)
    plan = _plan(recipe, corpus, task)
    started = time.perf_counter()

    set_seed(recipe.seed)
    tokenizer, model, start, new_head = _load_start(recipe, out_dir, corpus, task)
    scratch = adapt.strategy == "scratch"
    warm_head = bool(new_head) and adapt.head_warmup_steps > 0
    texts = _select_texts(recipe, plan, corpus, task, general, warm_head)
    phases, domain_texts, measured_general = texts.phases, texts.domain, texts.measured_general

    added_tokens = _extend_vocabulary(tokenizer, model, corpus, adapt, bool(plan), say)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    head_warmup = _prepare_head(model, tokenizer, recipe, new_head, texts, start, out_dir, say)
    frozen = freeze_lower_layers(model, adapt.freeze_layers) if plan else 0
    phases, budget = fit_to_budget(phases, model, tokenizer, recipe, out_dir, say)
    # scratch: a random model knows no general text, so there is no "general before" to forget from
    general_before = [] if scratch else measured_general
    say(f"[adapt] measuring before: {len(domain_texts)} domain / {len(general_before)} general texts")
    before = _measure(model, tokenizer, domain_texts, general_before, adapt)

    model, encoder_dir, runs, pooler_kept, after = _train_and_measure(
        recipe, plan, phases, model, tokenizer, start, out_dir, before, texts, device, say, checkpoint_every
    )

    facts = RunFacts(
        domain_on=texts.domain_on,
        domain_texts=len(domain_texts),
        general_texts=len(measured_general),
        mlm_head_initialised=bool(new_head) or scratch,
        head_warmup=head_warmup,
        added_tokens=added_tokens,
        replayed=texts.replayed,
        budget=budget,
        train_texts=sum(len(p.train_texts) for p in phases),
        frozen=frozen,
        pooler_kept=pooler_kept,
        device=device,
        wall_seconds=round(time.perf_counter() - started, 2),
    )
    note = forgetting_note(scratch, new_head, warm_head, measured_general)
    metrics = adapt_metrics(adapt, before, after, runs, note, facts)
    curves_png = _write_record(out_dir, adapt.strategy, metrics, runs, before, after, head_warmup, say)
    log_history = [{"phase": r.name, **entry} for r in runs for entry in r.log_history]
    return AdaptResult(encoder_dir, metrics, curves_png, log_history, adapt.strategy)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
