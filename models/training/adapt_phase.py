"""One adaptation phase: a Hugging Face Trainer run of masked-LM training that resumes from its last complete
checkpoint, writes its result atomically, and is skipped when the same configuration already finished; and the
time budget that subsamples the phases' text to fit the machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from models.distributed import barrier, from_main
from models.settings import is_main_process, world_size
from models.training.mlm import (
    AdaptError,
    deadline_callback,
    encode_texts,
    mlm_collator,
    precision_flags,
    progress_callback,
    texts_sha256,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from models.recipe import AdaptConfig, Recipe

logger = logging.getLogger(__name__)

PHASE_CONFIG = "phase_config.json"
PHASE_DONE = "phase_done.json"
EARLY_STOPPING_PATIENCE = 3  # evaluations without a better held-out loss before stopping


@dataclass(frozen=True)
class Phase:
    name: str
    train_texts: list[str]
    heldout_texts: list[str]
    # with a time budget: the seconds this phase may train, and the share of ``train_texts`` the plan expects
    # to get through in them (the rest is room for the watch to grow into when training runs faster)
    budget_seconds: float | None = None
    planned_share: float = 1.0
    text_share: float = 1.0  # the share of the phase's whole text that ``train_texts`` is


@dataclass
class PhaseRun:
    name: str
    log_history: list[dict] = field(default_factory=list)
    train_tokens: int = 0
    train_seconds: float = 0.0
    global_step: int = 0
    resumed_from_step: int | None = None
    early_stopped: bool = False
    reused: bool = False
    processes: int = 1  # the Trainer's world size: data-parallel processes that trained this phase
    planned_steps: int | None = None  # what the time budget planned before training (None: no budget)
    replanned: list[dict] = field(default_factory=list)  # the budget watch's changes to the step count


# ---------------------------------------------------------------------------------------------- training


def phase_fingerprint(recipe: Recipe, phase: Phase, start: str, vocabulary_size: int) -> str:
    payload = {
        "adapt": recipe.adapt.model_dump(mode="json"),
        "seed": recipe.seed,
        "start": start,
        "phase": phase.name,
        "train": texts_sha256(phase.train_texts),
        "heldout": texts_sha256(phase.heldout_texts),
        "vocabulary_size": vocabulary_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _steps_per_epoch(n_features: int, adapt: AdaptConfig) -> int:
    """The batch size is per process, so a data-parallel launch takes fewer steps per epoch."""
    return max(1, math.ceil(n_features / (adapt.batch_size * world_size())))


def _intervals(
    n_features: int, adapt: AdaptConfig, checkpoint_every: int | None, planned: int | None = None
) -> tuple[int, int, int]:
    """(total steps, eval/save interval, logging interval): evaluate once an epoch, and at least 4 times a run
    (of the ``planned`` steps, when a time budget plans fewer than the text holds)."""
    steps_per_epoch = _steps_per_epoch(n_features, adapt)
    total = adapt.max_steps if adapt.max_steps > 0 else max(1, math.ceil(adapt.epochs * steps_per_epoch))
    total = min(total, planned) if planned else total
    interval = checkpoint_every or max(1, min(steps_per_epoch, math.ceil(total / 4)))
    logging_steps = max(1, min(interval, math.ceil(total / 20)))
    return total, interval, logging_steps


def _planned_steps(phase: Phase, n_features: int, adapt: AdaptConfig) -> tuple[int | None, int, int]:
    """(steps the budget plans for this phase or None, the most its watch may grow them to, the steps of all the
    text it was given): the plan's share of the text, and the end of the last epoch the Trainer will start."""
    steps_per_epoch = _steps_per_epoch(n_features, adapt)
    every = max(1, math.ceil(adapt.epochs * steps_per_epoch))
    if phase.budget_seconds is None or adapt.max_steps > 0:
        return None, every, every
    planned = max(1, min(every, round(every * phase.planned_share)))
    return planned, min(every, math.ceil(planned / steps_per_epoch) * steps_per_epoch), every


def _finished_result(
    phase: Phase, model, fingerprint: str, checkpoints: Path, output_dir: Path, say: Callable[[str], None]
):
    """(model, run) of this phase when a run with the same fingerprint finished it and its result loads. In a
    multi-process launch rank 0 decides (it may discard a damaged result) and the other ranks follow."""
    found = _finished_on_main(phase, model, fingerprint, checkpoints, output_dir, say)
    run = from_main(lambda: found[1] if found else None)
    if found or run is None:
        return found
    return type(model).from_pretrained(output_dir), run


def _finished_on_main(
    phase: Phase, model, fingerprint: str, checkpoints: Path, output_dir: Path, say: Callable[[str], None]
):
    if not is_main_process():
        return None
    done_file = checkpoints / PHASE_DONE
    if not (done_file.is_file() and (output_dir / "config.json").is_file()):
        return None
    done = json.loads(done_file.read_text())
    if done.get("fingerprint") != fingerprint:
        return None
    try:
        reused = type(model).from_pretrained(output_dir)
    except Exception as exc:  # noqa: BLE001 - a damaged result is trained again, never used
        say(f"[adapt:{phase.name}] the finished result in {output_dir} does not load ({exc}); training again")
        done_file.unlink()
        return None
    say(f"[adapt:{phase.name}] already finished with this configuration; reusing {output_dir}")
    run = PhaseRun(**{k: v for k, v in done.items() if k != "fingerprint"})
    run.reused = True
    return reused, run


def _prepare_checkpoints(
    phase: Phase, fingerprint: str, checkpoints: Path, say: Callable[[str], None]
) -> None:
    """Keep the checkpoints of an interrupted run with this fingerprint; discard those of another one (rank 0;
    the other ranks of a launch wait until it is done)."""
    if not is_main_process():
        barrier()
        return
    config_file = checkpoints / PHASE_CONFIG
    if checkpoints.is_dir():
        previous = json.loads(config_file.read_text()).get("fingerprint") if config_file.is_file() else None
        if previous != fingerprint:
            say(
                f"[adapt:{phase.name}] configuration or data changed; discarding old checkpoints in {checkpoints}"
            )
            shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_atomic(config_file, json.dumps({"fingerprint": fingerprint}))
    barrier()


def _training_arguments(
    adapt: AdaptConfig,
    seed: int,
    checkpoints: Path,
    interval: int,
    logging_steps: int,
    has_eval: bool,
    planned: int | None = None,
):
    from transformers import TrainingArguments

    max_steps = adapt.max_steps if adapt.max_steps > 0 else (planned or -1)

    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=adapt.batch_size,
        per_device_eval_batch_size=adapt.batch_size,
        learning_rate=adapt.learning_rate,
        weight_decay=adapt.weight_decay,
        warmup_ratio=adapt.warmup_ratio,
        num_train_epochs=adapt.epochs,
        max_steps=max_steps,
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
        **precision_flags(),
    )


def _phase_trainer(
    phase: Phase,
    model,
    tokenizer,
    adapt: AdaptConfig,
    args,
    train_features,
    eval_features,
    seed: int,
    say,
    watch=None,
):
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer

    callbacks = [progress_callback(say, phase.name)]
    if watch is not None:
        callbacks.append(watch)
    if adapt.time_budget_minutes is not None:
        callbacks.append(deadline_callback(adapt.time_budget_minutes * 60 * 1.25, say, phase.name))
    if eval_features:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=EARLY_STOPPING_PATIENCE))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_features,
        eval_dataset=eval_features or None,
        data_collator=mlm_collator(tokenizer, adapt, seed, None if precision_flags()["use_cpu"] else 8),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our progress callback reports instead of raw dict prints
    return trainer


def _budget_watch(
    phase: Phase, planned: int | None, most: int, every: int, interval: int, say: Callable[[str], None]
):
    """The callback that keeps this phase's training to its share of the time budget (None without one)."""
    if planned is None or phase.budget_seconds is None:  # no budget, or adapt.max_steps fixes the count
        return None
    from models.training.step_budget import interval_budget_watch

    return interval_budget_watch(
        phase.budget_seconds,
        most_steps=most,
        boundary_every=interval,
        label=f"adapt:{phase.name}",
        extent=lambda steps: f"{phase.text_share * steps / every:.0%} of the text",
        emit=say,
    )


def _mark_done(
    trainer, run: PhaseRun, tokenizer, fingerprint: str, checkpoints: Path, output_dir: Path
) -> None:
    """Save the phase's result, then mark it done and drop its checkpoints (the main process only)."""
    if not trainer.is_world_process_zero():
        return
    save_pretrained_atomic(trainer.model, tokenizer, output_dir)
    done = {"fingerprint": fingerprint, **{k: v for k, v in run.__dict__.items() if k != "reused"}}
    write_atomic(
        checkpoints / PHASE_DONE, json.dumps(done)
    )  # last: only a complete output_dir is ever marked done
    for stale in checkpoints.glob("checkpoint-*"):  # finished: the output dir replaces them
        shutil.rmtree(stale, ignore_errors=True)


def train_phase(
    phase: Phase,
    model: PreTrainedModel,
    tokenizer,
    recipe: Recipe,
    fingerprint: str,
    checkpoints: Path,
    output_dir: Path,
    say: Callable[[str], None],
    checkpoint_every: int | None,
) -> tuple[PreTrainedModel, PhaseRun]:
    """One Trainer run, resumed from its last checkpoint when the same configuration was interrupted."""
    adapt = recipe.adapt
    finished = _finished_result(phase, model, fingerprint, checkpoints, output_dir, say)
    if finished is not None:
        return finished
    _prepare_checkpoints(phase, fingerprint, checkpoints, say)

    seed = recipe.seed
    train_features = encode_texts(tokenizer, phase.train_texts, adapt, seed)
    eval_features = encode_texts(tokenizer, phase.heldout_texts, adapt, seed + 1)
    if not train_features:
        raise AdaptError(
            f"phase {phase.name!r} has no training examples"
            + (" (mlm+nsp needs documents of several sentences)" if adapt.objective == "mlm+nsp" else "")
        )
    planned, most, every = _planned_steps(phase, len(train_features), adapt)
    total, interval, logging_steps = _intervals(len(train_features), adapt, checkpoint_every, planned)
    has_eval = bool(eval_features)
    args = _training_arguments(adapt, seed, checkpoints, interval, logging_steps, has_eval, planned)
    # every rank resumes from the same checkpoint: rank 0's choice (it removes incomplete ones)
    last = from_main(lambda: _last_complete_checkpoint(checkpoints, say, phase.name))
    # the watch times steps from the start of training; a resumed run keeps to its plan and the deadline
    watch = _budget_watch(phase, planned, most, every, interval, say) if not last else None
    trainer = _phase_trainer(
        phase, model, tokenizer, adapt, args, train_features, eval_features, seed, say, watch
    )
    run = PhaseRun(name=phase.name, planned_steps=planned)
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
    run.processes = trainer.args.world_size
    run.replanned = list(watch.watch.log) if watch is not None else []
    _mark_done(trainer, run, tokenizer, fingerprint, checkpoints, output_dir)
    return trainer.model, run


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


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, fsync it and rename it over ``path``: a kill leaves old or new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_pretrained_atomic(model, tokenizer, directory: Path) -> None:
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


def carry_pooler(base: Path, encoder_dir: Path, prefix: str) -> bool:
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
# The plan is a few timed steps: whole runs then trained 0.7-1.3x the planned time (benchmarks/README.md). Each
# phase gets this much more text than planned, and a watch times the real steps (evaluations and checkpoints
# apart) and moves the step count so training ends at WATCH_SAFETY of the budget.
BUDGET_ROOM = 1.5
WATCH_SAFETY = 0.95
# Whole steps timed on length-grouped batches spread over the texts' lengths, as training (group_by_length)
# runs them: 3 random batches without the AdamW update read half the speed training then had (benchmarks/README.md)
CALIBRATION_STEPS = 8
CALIBRATION_TEXTS = 1024  # texts sampled to spread the timed batches over the length distribution


def _training_tokens_per_second(model, tokenizer, texts: list[str], adapt: AdaptConfig, seed: int) -> float:
    """Speed of whole training steps (forward, backward, clipping, AdamW) of this model on this machine, in the
    precision training will use; the weights are left as they were."""
    from models.training.calibration import time_training_steps
    from models.training.step_budget import calibration_batches

    sample = random.Random(seed).sample(texts, min(len(texts), CALIBRATION_TEXTS))
    features = encode_texts(tokenizer, sample, adapt, seed)
    collator = mlm_collator(tokenizer, adapt, seed, None)
    batches = (collator(rows) for rows in calibration_batches(features, adapt.batch_size, CALIBRATION_STEPS))
    return time_training_steps(model, batches, bf16=precision_flags()["bf16"], update=True).tokens_per_second


def _budget_plan(phases: list[Phase], model, tokenizer, recipe: Recipe, plan_file: Path, key: str) -> dict:
    """The saved plan for these settings and texts, or a new one measured here and saved."""
    adapt = recipe.adapt
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else {}
    if plan.get("key") == key:
        return plan
    texts = [t for p in phases for t in p.train_texts]
    lengths = [min(len(ids), adapt.max_length) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    needed = sum(lengths) * adapt.epochs
    # measured in one process; a data-parallel launch trains that many processes at once
    speed = _training_tokens_per_second(model, tokenizer, texts, adapt, recipe.seed) * world_size()
    affordable = speed * (adapt.time_budget_minutes or 0) * 60 * BUDGET_SAFETY
    plan = {
        "key": key,
        "budget_minutes": adapt.time_budget_minutes,
        "tokens_per_second": round(speed, 1),
        "tokens_needed": int(needed),
        "tokens_affordable": int(min(affordable, needed)),
        "fraction": min(1.0, affordable / needed) if needed else 1.0,
        "processes": world_size(),
    }
    plan_file.write_text(json.dumps(plan, indent=2))
    return plan


def fit_to_budget(
    phases: list[Phase], model, tokenizer, recipe: Recipe, out_dir: Path, say: Callable[[str], None]
) -> tuple[list[Phase], dict | None]:
    """Subsample each phase's training text so MLM training fits ``adapt.time_budget_minutes`` on this machine.

    The plan is kept in ``out_dir/budget.json`` so a resumed run trains on the very same texts.
    """
    adapt = recipe.adapt
    if adapt.time_budget_minutes is None or not phases or adapt.max_steps > 0:
        return phases, None
    key = hashlib.sha256(
        json.dumps(
            [adapt.model_dump(mode="json"), recipe.seed, [texts_sha256(p.train_texts) for p in phases]],
            sort_keys=True,
        ).encode()
    ).hexdigest()
    # rank 0 measures and plans; every rank of a launch then trims the same texts
    plan = from_main(lambda: _budget_plan(phases, model, tokenizer, recipe, out_dir / BUDGET_FILE, key))
    fraction = plan["fraction"]
    all_texts = sum(len(p.train_texts) for p in phases) or 1
    seconds = adapt.time_budget_minutes * 60 * WATCH_SAFETY

    def share_of_budget(phase: Phase) -> float:
        return seconds * len(phase.train_texts) / all_texts

    if fraction >= 1.0:
        say(
            f"[adapt] budget: {plan['tokens_needed']} training tokens fit {adapt.time_budget_minutes:g} min at "
            f"{plan['tokens_per_second']:.0f} tokens/s; using all the text"
        )
        return [replace(p, budget_seconds=share_of_budget(p)) for p in phases], plan
    room = min(1.0, fraction * BUDGET_ROOM)
    rng = random.Random(recipe.seed + 7)
    trimmed = []
    for phase in phases:
        keep = max(1, round(len(phase.train_texts) * room))
        # the held-out share shrinks with the planned training text, so evaluations stay a small part of the
        # budget
        planned_texts = max(1, round(len(phase.train_texts) * fraction))
        heldout = phase.heldout_texts[: max(16, round(planned_texts * recipe.adapt.heldout_fraction))]
        trimmed.append(
            Phase(
                phase.name,
                rng.sample(phase.train_texts, keep),
                heldout,
                budget_seconds=share_of_budget(phase),
                planned_share=fraction / room,
                text_share=room,
            )
        )
    say(
        f"[adapt] budget: {adapt.time_budget_minutes:g} min at {plan['tokens_per_second']:.0f} tokens/s fits "
        f"{fraction:.0%} of the {plan['tokens_needed']} training tokens; training on a random "
        f"{fraction:.0%} of the text, up to {room:.0%} if the steps run faster than timed (raise "
        "adapt.time_budget_minutes, or set it to null, for more)"
    )
    return trimmed, plan


# ---------------------------------------------------------------------------------------------- measuring
