"""The fine-tuning time budget: how many steps fit it on this machine (planned before training from a few timed
steps), and a watch that keeps training to it as the real steps are measured.

The plan times a handful of isolated steps; the Trainer's own per-step costs (data loading, collation, logging,
callbacks) are not in them, and at batch 16 they made a tweets run 19 % longer than planned; another time the timed
steps read slower than training then ran, and a tweets run stopped at 4.2 epochs with a minute of its budget unused
(benchmarks/README.md). So the watch re-makes the plan from the steps really taken, a few times early in training:
the count moves between the plan's minimum and the end of the epoch the plan ends in (the last epoch the Trainer
will start; never past the epochs wanted), and the learning-rate schedule is re-aimed so it still decays to zero
at the new last step. Adaptation keeps to its budget with the same watch (``interval_budget_watch``): it
evaluates and saves every few steps rather than at epoch ends, and may grow into the extra text it is given.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from models.distributed import from_main

if TYPE_CHECKING:
    from models.recipe import FinetuneConfig

# share of the fine-tuning budget planned for steps and evaluations, both measured; loading, the measuring
# itself and checkpoints take the rest
BUDGET_SAFETY = 0.95
CALIBRATION_STEPS = 8  # timed batches spread over the length distribution; a few seconds


# ------------------------------------------------------------------------------------------------------ the plan


def calibration_batches(rows: list[dict], size: int, count: int = CALIBRATION_STEPS) -> list[list[dict]]:
    """``count`` batches of ``size`` rows of near-equal length, centred on evenly spaced quantiles of length, after
    one warm-up batch.

    Training groups rows of similar length (group_by_length), so a step pads little and costs what its length
    costs; batches taken the same way across the length distribution give the mean step cost without the luck of
    a random draw (3 random batches once planned 0.17 or 0.32 s per step for the same data: benchmarks/README.md).
    """
    ordered = sorted(rows, key=lambda row: len(row["input_ids"]))
    size = min(size, len(ordered))
    batches = []
    for quantile in range(count):
        centre = round((quantile + 0.5) * len(ordered) / count)
        first = min(max(0, centre - size // 2), len(ordered) - size)
        batches.append(ordered[first : first + size])
    return [batches[count // 2], *batches]  # the first batch timed pays one-off costs and is dropped


def plan_steps_for_budget(
    model,
    collator,
    rows: list[dict],
    config: FinetuneConfig,
    steps_per_epoch: int,
    minutes: float,
    *,
    monitor_rows: int = 0,
    bf16: bool = False,
) -> dict:
    """How many optimizer steps fit ``minutes`` here, with an evaluation of ``monitor_rows`` after each epoch.

    A step is timed whole (forward, backward, clipping, the AdamW update) on batches spread over the training
    rows' lengths; an evaluation is costed from the same forward passes. At least ``config.min_epochs`` (and one
    whole epoch) are always planned: cutting epochs to keep to the clock costs more quality than the minutes it
    saves (benchmarks/README.md, ``finetune.min_epochs``).
    """
    from models.training.calibration import time_training_steps

    size = int(config.batch_size)  # resolved from 'auto' by train_task_model
    batches = calibration_batches(rows, size)
    timing = time_training_steps(model, (collator(b) for b in batches), bf16=bf16, update=True)
    per_step = timing.seconds_per_batch
    evaluation = monitor_rows * timing.forward_seconds_per_row  # one pass over the validation split
    per_step_with_evaluations = per_step + evaluation / steps_per_epoch
    wanted = max(1, math.ceil(config.epochs * steps_per_epoch))
    affordable = (
        int(minutes * 60 * BUDGET_SAFETY / per_step_with_evaluations)
        if per_step_with_evaluations > 0
        else wanted
    )
    floor = max(steps_per_epoch, math.ceil(config.min_epochs * steps_per_epoch))
    planned = min(wanted, max(floor, affordable))
    return {
        "minutes": minutes,
        "seconds_per_step": round(per_step, 4),
        "evaluation_seconds": round(evaluation, 4),
        "steps_wanted": wanted,
        "steps_affordable": affordable,
        "min_steps": min(wanted, floor),
        "planned_steps": planned,
        "epochs_planned": round(planned / steps_per_epoch, 2),
        "planned_seconds": round(planned * per_step_with_evaluations, 1),
    }


# The run's budget: seconds kept for what follows fine-tuning (evaluate, export with its parity checks, register,
# the report), by task. Measured on 2 cores (benchmarks/README.md): classification 81-109 s in four tweets runs
# (2,388 eval rows), NER 141-147 s in three BC5CDR runs (4,797; NER's parity scores entities per token and its
# int8 keeps the feed-forward outputs in fp32), whose whole runs then ended 9-12 s inside 15 min: 160 s for margin.
# Export's parity passes read at most export.parity_max_texts (2,000) texts, so past BC5CDR's size only evaluation
# grows with the eval set: 28 s for those 4,797 NER rows, ~6 ms a row.
RESERVED_AFTER_FINETUNE_SECONDS = {"classification": 120.0, "ner": 160.0}
RESERVE_COVERS_EVAL_ROWS = 4_800
SECONDS_PER_EXTRA_EVAL_ROW = 0.006
# a budget already spent still plans min_epochs (the plan's floor); the budget field itself must stay positive
SPENT_BUDGET_MINUTES = 0.01


def reserved_after_finetune_seconds(task: str, eval_rows: int) -> float:
    """Seconds the run keeps for evaluation, export and registration of a ``task`` model evaluated on
    ``eval_rows``."""
    extra_rows = max(0, eval_rows - RESERVE_COVERS_EVAL_ROWS)
    return RESERVED_AFTER_FINETUNE_SECONDS[task] + extra_rows * SECONDS_PER_EXTRA_EVAL_ROW


def expected_eval_rows(row_counts: dict, eval_fraction: float) -> int:
    """The eval set's size from validation's row counts: the eval file's rows, else the share split from train."""
    if row_counts.get("eval"):
        return int(row_counts["eval"])
    return round(int(row_counts.get("train", 0)) * eval_fraction)


def finetune_minutes_in_run(
    run_minutes: float | None,
    spent_seconds: float,
    finetune_minutes: float | None,
    *,
    task: str = "classification",
    eval_rows: int = 0,
) -> dict | None:
    """The fine-tuning budget that ends the whole run within ``run_minutes``: what is left after the
    ``spent_seconds`` the stages before it took and the seconds kept for the stages after it (by ``task``, and
    more for an eval set over ``RESERVE_COVERS_EVAL_ROWS`` rows), never more than the stage's own
    ``finetune_minutes`` (None: no budget of its own). None when the run has no budget.

    ``binds`` says whether the run's budget, not the stage's, set ``finetune_minutes``."""
    if run_minutes is None:
        return None
    reserved = reserved_after_finetune_seconds(task, eval_rows)
    left = (run_minutes * 60 - spent_seconds - reserved) / 60
    binds = finetune_minutes is None or left < finetune_minutes
    return {
        "run_minutes": run_minutes,
        "spent_minutes": round(spent_seconds / 60, 2),
        "reserved_minutes": round(reserved / 60, 2),
        "stage_minutes": finetune_minutes,
        "finetune_minutes": round(max(left, SPENT_BUDGET_MINUTES), 2) if binds else finetune_minutes,
        "binds": binds,
    }


# ----------------------------------------------------------------------------------------------------- the watch

# shares of the planned steps after which the plan is re-made: early enough to act, late enough that the
# first evaluation and the warm-up steps are in the measurement by the later checks
CHECK_FRACTIONS = (0.05, 0.15, 0.3, 0.5, 0.7)
MIN_STEPS_MEASURED = 10  # fewer steps are too noisy to re-plan from
# a re-plan that moves the count by less than this share of the plan (about 4 s of a 7-minute budget) is noise:
# the count and the schedule are left alone
REPLAN_TOLERANCE = 0.01


def steps_that_fit(
    *,
    steps_done: int,
    step_seconds: float,
    seconds_left: float,
    boundaries_left: int,
    seconds_per_boundary: float,
    most_steps: int,
    min_steps: int,
) -> int:
    """The last step to train so the rest ends within ``seconds_left``, at the measured seconds per step plus
    ``boundaries_left`` epoch ends (evaluation, checkpoint) of ``seconds_per_boundary`` each; never more than
    ``most_steps``, never fewer than ``min_steps`` nor than the steps already done."""
    per_step = step_seconds / steps_done if steps_done else 0.0
    if per_step <= 0:
        return most_steps
    room = seconds_left - boundaries_left * seconds_per_boundary
    affordable = steps_done + max(0, math.floor(room / per_step))
    return max(steps_done, min(most_steps, max(min_steps, affordable)))


def reaim_schedule(lr_scheduler: Any, total_steps: int) -> bool:
    """Point a Transformers warm-up/decay schedule (a LambdaLR of partials that take ``num_training_steps``) at
    ``total_steps``; the warm-up is kept. False when the schedule is of another kind (left as it is)."""
    # Accelerate's wrapper, where there is one
    lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)
    if not lambdas or not all(
        isinstance(f, functools.partial) and "num_training_steps" in f.keywords for f in lambdas
    ):
        return False
    lr_scheduler.lr_lambdas = [
        functools.partial(f.func, *f.args, **{**f.keywords, "num_training_steps": total_steps})
        for f in lambdas
    ]
    return True


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class StepWatch:
    """The pace of a training run against its budget: step time apart from the epoch ends (evaluation,
    checkpoint), and at each of a few early checks the step count that still fits (``steps_that_fit``)."""

    def __init__(
        self,
        seconds: float,
        min_steps: int,
        steps_per_epoch: int,
        planned_boundary_seconds: float,
        wanted_steps: int | None = None,
        *,
        boundary_every: int | None = None,
        label: str = "finetune",
        extent: Callable[[int], str] | None = None,
    ):
        self.seconds = seconds
        self.min_steps = min_steps
        self.wanted_steps = wanted_steps  # every epoch asked for: no re-plan goes past it
        self.steps_per_epoch = steps_per_epoch
        # steps between evaluations/checkpoints: once an epoch in fine-tuning, more often in adaptation
        self.boundary_every = boundary_every or steps_per_epoch
        self.planned_boundary_seconds = planned_boundary_seconds
        self.label = label
        self.extent = extent or (lambda steps: f"{steps / self.steps_per_epoch:.1f} epochs")
        self.log: list[dict] = []
        self.begin(0)

    def begin(self, planned_steps: int) -> None:
        self.started = time.monotonic()
        self.boundary_seconds = 0.0
        self.boundaries = 0
        self.boundary_started: float | None = None
        self.planned = planned_steps
        # The Trainer fixes its epoch loop when training begins, so a later step count can grow only to the end
        # of the epoch the plan ends in.
        epoch_end = math.ceil(planned_steps / self.steps_per_epoch) * self.steps_per_epoch
        self.most_steps = max(planned_steps, min(self.wanted_steps or planned_steps, epoch_end))
        self.checks = sorted({max(MIN_STEPS_MEASURED, math.ceil(f * planned_steps)) for f in CHECK_FRACTIONS})

    def epoch_ended(self) -> None:
        self.boundary_started = time.monotonic()

    def step_begins(self) -> None:
        if self.boundary_started is not None:
            self.boundary_seconds += time.monotonic() - self.boundary_started
            self.boundaries += 1
            self.boundary_started = None

    def due(self, steps_done: int, max_steps: int) -> bool:
        """Whether a check falls at ``steps_done`` (each is taken once)."""
        if not self.checks or steps_done < self.checks[0] or steps_done >= max_steps:
            return False
        self.checks = [c for c in self.checks if c > steps_done]
        return True

    def step_seconds(self) -> float:
        return time.monotonic() - self.started - self.boundary_seconds

    def replan(self, steps_done: int) -> int:
        elapsed = time.monotonic() - self.started
        per_boundary = (
            self.boundary_seconds / self.boundaries if self.boundaries else self.planned_boundary_seconds
        )

        def fit(last_step: int) -> int:  # the epoch ends still ahead depend on where training will stop
            return steps_that_fit(
                steps_done=steps_done,
                step_seconds=self.step_seconds(),
                seconds_left=self.seconds - elapsed,
                boundaries_left=max(0, math.ceil(last_step / self.boundary_every) - self.boundaries),
                seconds_per_boundary=per_boundary,
                most_steps=self.most_steps,
                min_steps=self.min_steps,
            )

        return fit(fit(self.most_steps))

    def record(self, steps_done: int, before: int, after: int, reaimed: bool) -> str:
        """Keep the change in ``log``; the progress line that tells it."""
        entry = {
            "at_step": steps_done,
            "seconds_per_step": round(self.step_seconds() / steps_done, 4),
            "max_steps_before": before,
            "max_steps": after,
            "schedule_reaimed": reaimed,
        }
        self.log.append(entry)
        return (
            f"[{self.label}] budget: steps take {entry['seconds_per_step']:.2f} s here in training; {after} steps "
            f"(planned {self.planned}) fit the {_duration(self.seconds)} the budget gives them "
            f"({self.extent(after)}; learning-rate schedule "
            f"{'re-aimed to end there' if reaimed else 'unchanged'})"
        )


@functools.cache
def _watch_callback_class():
    """The TrainerCallback around a StepWatch, defined lazily so importing this module stays light. Boundaries
    (evaluation, checkpoint) are the epoch ends, or with ``at_intervals`` the steps the Trainer's flow callback
    marks for an evaluation or a save (adaptation evaluates every few steps)."""
    from transformers import TrainerCallback

    class BudgetWatch(TrainerCallback):
        def __init__(self, watch: StepWatch, emit: Callable[[str], None], at_intervals: bool = False):
            self.watch, self.emit, self.at_intervals = watch, emit, at_intervals

        def on_train_begin(self, args, state, control, **kwargs):
            self.watch.begin(state.max_steps)

        def on_epoch_end(self, args, state, control, **kwargs):
            if not self.at_intervals:
                self.watch.epoch_ended()

        def on_step_begin(self, args, state, control, **kwargs):
            self.watch.step_begins()

        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            if self.watch.due(state.global_step, state.max_steps):
                before = state.max_steps
                # rank 0 re-plans; every process of a launch stops at the same step
                after = from_main(lambda: self.watch.replan(state.global_step))
                if abs(after - before) > REPLAN_TOLERANCE * self.watch.planned:
                    state.max_steps = after
                    reaimed = reaim_schedule(lr_scheduler, after)
                    self.emit(self.watch.record(state.global_step, before, after, reaimed))
                    _stop_if_reached(args, state, control)
            # the flow callback ran first: a step it marked ends in an evaluation or a checkpoint, and the time
            # until the next step begins is boundary time, not step time
            if self.at_intervals and (control.should_evaluate or control.should_save):
                self.watch.epoch_ended()

    return BudgetWatch


def _stop_if_reached(args, state, control) -> None:
    """A count cut to the step just taken: the Trainer's flow callback compared this step with the old count
    already, so without this one more step would run. It ends training as that callback does."""
    if state.max_steps <= state.global_step:
        control.should_training_stop = True
        if args.save_strategy == "steps":
            control.should_save = True


def budget_watch(budget: dict | None, steps_per_epoch: int, emit: Callable[[str], None]):
    """With a time budget (``plan_steps_for_budget``'s plan), the callback that keeps training to it; its
    changes are in ``.watch.log``."""
    if budget is None:
        return None
    watch = StepWatch(
        seconds=budget["minutes"] * 60 * BUDGET_SAFETY,
        min_steps=budget["min_steps"],
        steps_per_epoch=steps_per_epoch,
        planned_boundary_seconds=budget["evaluation_seconds"],
        wanted_steps=budget["steps_wanted"],
    )
    return _watch_callback_class()(watch, emit)


def interval_budget_watch(
    seconds: float,
    *,
    most_steps: int,
    boundary_every: int,
    label: str,
    extent: Callable[[int], str],
    emit: Callable[[str], None],
):
    """The callback that keeps a run which evaluates and saves every ``boundary_every`` steps to ``seconds``:
    from the steps really taken it re-plans the count between the steps done and ``most_steps`` (the end of the
    text the run was given). Its changes are in ``.watch.log``."""
    watch = StepWatch(
        seconds=seconds,
        min_steps=1,
        steps_per_epoch=max(1, most_steps),
        planned_boundary_seconds=0.0,  # measured at the first evaluation; the early checks see steps only
        wanted_steps=most_steps,
        boundary_every=boundary_every,
        label=label,
        extent=extent,
    )
    # the plan is the Trainer's step count when training begins (the callback's on_train_begin)
    return _watch_callback_class()(watch, emit, at_intervals=True)
