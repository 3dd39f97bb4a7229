"""Hyperparameter search with Optuna: learning rate, epochs, batch size and warmup.

The objective is macro-F1 on a validation split carved out of the training set (stratified for
classification); the evaluation set is never seen, so the final metrics stay an honest estimate. The budget is
``search_trials`` trials and, when set, ``search_timeout_s`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from models.recipe import Recipe

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.2
SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": (1e-5, 2e-4),  # log-uniform
    "epochs": (2, 6),  # integer
    "batch_size": [8, 16, 32],
    "warmup_ratio": (0.0, 0.2),
}


# One trial's fit: (recipe, trial config, encoder dir, fit rows, validation rows, out dir, progress) -> a run
# whose ``trainer.evaluate()`` reports ``eval_macro_f1``.
TrainTrial = Callable[..., Any]


class SearchError(ValueError):
    """The search cannot run with these inputs; the message says what to change."""


@dataclass(frozen=True)
class SearchResult:
    best_params: dict
    best_value: float
    trials: list[dict]  # one row per trial: number, state, value, params, seconds
    objective: str = "validation macro_f1 (split of train)"
    extra: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {
            "best_params": self.best_params,
            "best_value": self.best_value,
            "objective": self.objective,
            "n_trials": len(self.trials),
            "trials": self.trials,
            **self.extra,
        }


def search_hyperparameters(
    recipe: Recipe,
    encoder_dir: Path,
    train_df: pd.DataFrame,
    work_dir: Path,
    *,
    train: TrainTrial,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Run the Optuna study (TPE, seeded) and return the best parameters and the trials table.

    ``train`` fits one trial (``models.training.trainer.train_task_model``; passed in so search does not import the
    fine-tuning module that calls it)."""
    import optuna

    from models.data import stratified_split

    emit = progress or logger.info
    config = recipe.finetune
    n_trials = config.search_trials if n_trials is None else n_trials
    timeout_s = config.search_timeout_s if timeout_s is None else timeout_s
    if n_trials < 1:
        raise SearchError("the search needs at least one trial; set finetune.search_trials >= 1")
    if len(train_df) < 10:
        raise SearchError(f"the search needs at least 10 training rows to hold some out, got {len(train_df)}")
    stratify = "label" if recipe.task == "classification" and not config.multi_label else None
    fit_rows, validation_rows = stratified_split(train_df, VALIDATION_FRACTION, recipe.seed, column=stratify)
    work_dir = Path(work_dir)
    trials: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", *SEARCH_SPACE["learning_rate"], log=True),
            "epochs": float(trial.suggest_int("epochs", *SEARCH_SPACE["epochs"])),
            "batch_size": trial.suggest_categorical("batch_size", SEARCH_SPACE["batch_size"]),
            "warmup_ratio": trial.suggest_float("warmup_ratio", *SEARCH_SPACE["warmup_ratio"]),
        }
        emit(f"search trial {trial.number + 1}/{n_trials}: {params}")
        started = time.perf_counter()
        trial_config = config.model_copy(
            update={**params, "augment_fraction": 0.0, "early_stopping_patience": 0}
        )
        run = train(
            recipe,
            trial_config,
            encoder_dir,
            fit_rows,
            validation_rows,
            work_dir / f"trial_{trial.number}",
            emit,
        )
        value = float(run.trainer.evaluate()["eval_macro_f1"])
        trials.append(
            {
                "number": trial.number,
                "value": value,
                "params": params,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        emit(f"search trial {trial.number + 1}: validation macro-F1 {value:.4f}")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=recipe.seed))
    study.optimize(objective, n_trials=n_trials, timeout=timeout_s, gc_after_trial=True)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise SearchError("no search trial finished; raise finetune.search_timeout_s or lower the trial cost")
    best = study.best_trial
    best_params = {**best.params, "epochs": float(best.params["epochs"])}
    emit(f"search done: best validation macro-F1 {best.value:.4f} with {best_params}")
    return SearchResult(
        best_params=best_params,
        best_value=float(best.value or 0.0),  # a finished trial always has its value
        trials=trials,
        extra={"n_fit": len(fit_rows), "n_validation": len(validation_rows), "timeout_s": timeout_s},
    )
