"""How fast this machine trains this model: forward + backward timed on a few real batches, no update.

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
    seconds: float  # forward + backward over the timed batches
    batches: int  # batches timed (the first one, which pays one-off costs, is not)
    tokens: int  # real (unpadded) tokens in the timed batches

    @property
    def seconds_per_batch(self) -> float:
        return self.seconds / self.batches if self.batches else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def time_forward_backward(model: Any, batches: Iterable[dict], *, bf16: bool = False) -> Timing:
    """Time ``model(**batch).loss.backward()`` per collated batch (in bf16 autocast when training will be);
    gradients are dropped, weights unchanged."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    seconds, timed, tokens = 0.0, 0, 0
    try:
        for step, collated in enumerate(batches):
            batch = {k: v.to(device) for k, v in collated.items() if hasattr(v, "to")}
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first batch pays one-off costs (allocation, kernel choice)
                seconds += time.perf_counter() - started
                timed += 1
                tokens += int(batch["attention_mask"].sum())
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return Timing(seconds, timed, tokens)
