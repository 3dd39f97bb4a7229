"""What an adaptation run reports: the metrics record (losses before and after, forgetting, throughput,
phases) and the curves PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.training.adapt_phase import PhaseRun
from models.training.head_warmup import HeadWarmupResult
from models.training.mlm import precision_flags
from models.training.precision import precision_name

if TYPE_CHECKING:
    from models.recipe import AdaptConfig


def forgetting_note(
    scratch: bool, new_head: list[str], warm_head: bool, measured_general: list[str]
) -> str | None:
    """Why forgetting is not reported, or None when it is."""
    if scratch:
        return "scratch: no pretrained model to forget; general loss is reported after training only"
    if new_head and not warm_head:
        return "MLM head was random when measured before (adapt.head_warmup_steps is 0)"
    if not measured_general:
        return "no general text given (data.general)"
    return None


@dataclass
class RunFacts:
    """What the run did besides the losses, for the metrics record."""

    domain_on: str
    domain_texts: int
    general_texts: int
    mlm_head_initialised: bool
    head_warmup: HeadWarmupResult | None
    added_tokens: list[str]
    replayed: int
    budget: dict | None
    train_texts: int
    frozen: int
    pooler_kept: bool
    device: str
    wall_seconds: float


def adapt_metrics(
    adapt: AdaptConfig, before: dict, after: dict, runs: list[PhaseRun], note: str | None, facts: RunFacts
) -> dict:
    train_tokens = sum(r.train_tokens for r in runs)
    train_seconds = sum(r.train_seconds for r in runs)
    head_warmup = facts.head_warmup
    return {
        "strategy": adapt.strategy,
        "objective": adapt.objective,
        "domain_loss_before": before["domain_loss"],
        "domain_loss_after": after["domain_loss"],
        "domain_loss_on": facts.domain_on,
        "general_loss_before": before["general_loss"],
        "general_loss_after": after["general_loss"],
        "forgetting_delta": (
            after["general_loss"] - before["general_loss"]
            if before["general_loss"] is not None and after["general_loss"] is not None and not note
            else None
        ),
        "forgetting_note": note,
        "general_pseudo_perplexity_before": before["general_pseudo_perplexity"],
        "general_pseudo_perplexity_after": after["general_pseudo_perplexity"],
        "general_texts_measured": facts.general_texts,
        "domain_texts_measured": facts.domain_texts,
        "mlm_head_initialised": facts.mlm_head_initialised,
        "head_warmup_steps": head_warmup.steps if head_warmup else 0,
        "head_warmup": head_warmup.to_metrics() if head_warmup else None,
        "train_tokens": train_tokens,
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(train_tokens / train_seconds, 1) if train_seconds > 0 else None,
        "added_tokens": facts.added_tokens,
        "replay_examples": facts.replayed,
        "budget": facts.budget,
        "train_texts": facts.train_texts,
        "frozen_parameters": facts.frozen,
        "base_pooler_kept": facts.pooler_kept,
        "phases": [
            {
                "name": r.name,
                "steps": r.global_step,
                "resumed_from_step": r.resumed_from_step,
                "early_stopped": r.early_stopped,
                "reused": r.reused,
                "train_tokens": r.train_tokens,
                "processes": r.processes,
                "planned_steps": r.planned_steps,
                "replanned": r.replanned,
            }
            for r in runs
        ],
        "resumed_from_step": next(
            (r.resumed_from_step for r in runs if r.resumed_from_step is not None), None
        ),
        "precision": precision_name(precision_flags()),
        "device": facts.device,
        "wall_seconds": facts.wall_seconds,
    }


def plot_adapt_curves(
    runs: list[PhaseRun],
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
