"""Several training processes (``torchrun`` / ``accelerate launch``) as one data-parallel job.

A launcher starts the same command N times with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. Rank 0 runs the
command as usual: the Prefect flow, validation, evaluation, export, registration, every file the run writes.
The other ranks run no command of their own; they follow (:func:`lead_or_follow`). Each stage that trains with
the Hugging Face Trainer is marked :func:`collective`: rank 0 announces the call (stage and arguments) before it
runs it, and every follower runs the same stage with the same arguments, so all ranks reach the Trainer's
gradient all-reduces together. Rank 0 alone writes; inside those stages a decision that depends on files or on
timings (which checkpoint to resume from, a time budget's plan) is made by rank 0 and shared
(:func:`from_main`), never recomputed per rank, since ranks that disagree on the step count deadlock.

The announcements travel on a gloo group of their own with a long timeout: a follower waits there while rank 0
validates, evaluates or exports alone. Single-process runs (no ``WORLD_SIZE`` above 1) never touch
``torch.distributed``.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from models.settings import is_main_process, process_rank, world_size

logger = logging.getLogger(__name__)

T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., Any])

# How long a follower waits for rank 0's next announcement (rank 0 may validate, evaluate and export alone for
# a long while) and how long the training collectives may wait for a slow rank.
CONTROL_TIMEOUT = dt.timedelta(hours=24)
TRAINING_TIMEOUT = dt.timedelta(hours=2)
_DONE = "done"

_state: dict[str, Any] = {"group": None, "in_stage": False}


def active() -> bool:
    """True in a launch of more than one process (after :func:`start`)."""
    return world_size() > 1 and _state["group"] is not None


def start() -> None:
    """Join the launch's process group (gloo on CPU, NCCL with gloo beside it on GPUs), the one the Trainer then
    uses, and open the control group. Nothing happens in a single process."""
    if world_size() <= 1 or _state["group"] is not None:
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    # The Trainer asks for the same shared state later and finds it set up with this timeout.
    PartialState(cpu=not torch.cuda.is_available(), timeout=TRAINING_TIMEOUT)
    _state["group"] = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def _broadcast(value: Any = None) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_state["group"])
    return box[0]


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its value on every rank (the other ranks do not compute it). For decisions that
    must agree across ranks: which checkpoint to resume from, how many steps a time budget affords."""
    if not active():
        return compute()
    if is_main_process():
        return _broadcast(compute())
    return _broadcast()


def barrier() -> None:
    """Wait until every rank gets here (after rank 0 wrote something the others then read or remove)."""
    if active():
        import torch.distributed as dist

        dist.barrier(group=_state["group"])


def main_first(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, then on the others: rank 0 writes what it makes (a tokenizer trained on the
    domain text), the others find it written and load it."""
    if not active():
        return compute()
    value = compute() if is_main_process() else None
    barrier()
    return value if is_main_process() else compute()  # type: ignore[return-value]


def collective(function: _F) -> _F:
    """Mark a stage that trains with the Trainer: in a multi-process launch rank 0 announces the call (module,
    name and arguments; ``progress`` stays local) so the followers run it too; single-process it is a plain
    call."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not active() or not is_main_process():
            return function(*args, **kwargs)
        bound = inspect.signature(function).bind(*args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k != "progress"}
        _broadcast((function.__module__, function.__name__, arguments))
        # Set until the stage returns: a stage that raises leaves the followers inside it, so rank 0 then
        # exits without the closing announcement and the launcher stops the others.
        _state["in_stage"] = True
        result = function(*args, **kwargs)
        _state["in_stage"] = False
        return result

    return wrapper  # type: ignore[return-value]


def _say(line: str) -> None:
    print(f"[rank {process_rank()}] {line}", file=sys.stderr, flush=True)


def follow() -> None:
    """Run the stages rank 0 announces, with its arguments, until it says it is done (ranks other than 0)."""
    while True:
        message = _broadcast()
        if message == _DONE:
            _say("rank 0 is done")
            _leave()
            return
        module, name, arguments = message
        _say(f"following rank 0 into {name}")
        stage = getattr(importlib.import_module(module), name)
        stage(**arguments)


@contextmanager
def leading() -> Iterator[None]:
    """Around rank 0's command: tell the followers it is done when it returns, so they exit too."""
    try:
        yield
    finally:
        if not _state["in_stage"]:
            _broadcast(_DONE)
            _leave()


def _leave() -> None:
    """Every rank waits for the others, then the process groups are destroyed. Left to the interpreter's exit,
    gloo's threads raced it: "terminate called without an active exception" and exit -6 on rank 0 after a run
    that had finished."""
    import torch.distributed as dist

    try:
        dist.barrier(group=_state["group"])
    finally:
        dist.destroy_process_group()
        _state["group"] = None


def lead_or_follow(command: Callable[[], int]) -> int:
    """Exit code of ``command`` on rank 0 (or in a single process); the other ranks follow and return 0."""
    if world_size() <= 1:
        return command()
    start()
    if not is_main_process():
        follow()
        return 0
    with leading():
        return command()
