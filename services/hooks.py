"""The one per-request hook of the service: every answered request becomes an :class:`Observation`, handed to
each :class:`Hook` in ``DaptService.observers`` after the answer is ready.

    class MyHook:
        def observe(self, observation: Observation) -> None: ...   # must return quickly, never block
    service.observers.append(MyHook())

The consumers: the shadow (services/shadow.py: compares another version's answers), drift and the prediction
log (services/drift.py's Observer: one thread for both). A hook that raises is logged
(:func:`notify`), never answered. Each consumer picks the tasks it handles (``task`` is ``classification``,
``ner`` or ``embedding``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from services.reloader import ServedModel

logger = logging.getLogger("dapt.service")


@dataclass(frozen=True)
class Observation:
    """One answered request: the model that answered, the texts, their encodings and the raw answers.

    ``answers`` has one entry per text, as the batcher returned it: the classification dict (``label``,
    ``score``, ``scores``, ``truncated``), for NER ``(spans, truncated)``, for embedding ``(vector, truncated)``;
    :attr:`predictions` is the prediction part alone.
    """

    served: ServedModel
    task: str
    texts: list[str]
    encodings: list[Any]
    answers: list[Any]
    latency_s: float
    at: float = field(default_factory=time.time)  # wall-clock time of the answer (epoch seconds)

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def version(self) -> str:
        return self.served.version

    @property
    def latency_ms(self) -> float:
        return self.latency_s * 1000.0

    @property
    def predictions(self) -> list[Any]:
        """One per text: the classification dict, the list of entity spans, or the embedding vector."""
        if self.task in ("ner", "embedding"):
            return [answer[0] for answer in self.answers]
        return self.answers


class Hook(Protocol):
    """What the service calls after each answer; returns at once (queue the work, never block)."""

    def observe(self, observation: Observation) -> None: ...


def notify(hooks: list[Hook], observation: Observation) -> None:
    """Hand an answered request to every hook; a failing hook is logged and never changes the answer."""
    for hook in hooks:
        try:
            hook.observe(observation)
        except Exception:
            logger.exception("observer %r failed", hook)
