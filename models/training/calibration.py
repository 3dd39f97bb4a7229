"""How fast this machine trains this model: real batches timed through a training step, weights left as they were.

Both time budgets (adaptation's corpus share, fine-tuning's step count) plan from it, so a run fits the minutes
it was given on the machine it runs on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    seconds: float  # whole timed steps over the timed batches
    batches: int  # batches timed (the first one, which pays one-off costs, is not)
    tokens: int  # real (unpadded) tokens in the timed batches
    forward_seconds: float = 0.0  # the forward passes alone: what an evaluation pays per row
    rows: int = 0  # examples in the timed batches

    @property
    def seconds_per_batch(self) -> float:
        return self.seconds / self.batches if self.batches else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def forward_seconds_per_row(self) -> float:
        return self.forward_seconds / self.rows if self.rows else 0.0


def time_training_steps(
    model: Any,
    batches: Iterable[dict],
    *,
    bf16: bool = False,
    update: bool = False,
    max_grad_norm: float = 1.0,
) -> Timing:
    """Time ``model(**batch).loss.backward()`` per collated batch (in bf16 autocast when training will be).

    With ``update`` each step also clips the gradients and takes an AdamW step, as a Trainer step does: on a
    small encoder the update costs a third as much as forward + backward (benchmarks/README.md), so a plan
    without it overruns. The weights are restored afterwards and the optimizer is thrown away.
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in trainable] if update else []
    optimizer = torch.optim.AdamW(trainable) if update else None
    model.train()
    seconds, forward, timed, tokens, rows = 0.0, 0.0, 0, 0, 0
    try:
        for step, collated in enumerate(batches):
            batch = {k: v.to(device) for k, v in collated.items() if hasattr(v, "to")}
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            if device.type == "cuda":
                torch.cuda.synchronize()
            forwarded = time.perf_counter()
            loss.backward()
            if optimizer is not None:
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first batch pays one-off costs (allocation, kernel choice, optimizer state)
                seconds += time.perf_counter() - started
                forward += forwarded - started
                timed += 1
                tokens += int(batch["attention_mask"].sum())
                rows += int(batch["attention_mask"].shape[0])
    finally:
        model.zero_grad(set_to_none=True)
        if update:
            with torch.no_grad():
                for param, original in zip(trainable, saved, strict=True):
                    param.copy_(original)
        model.train(was_training)
    return Timing(seconds, timed, tokens, forward, rows)
