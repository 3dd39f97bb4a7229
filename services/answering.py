"""The answering path of one request: tokenize, join the micro-batcher (one hop, no second HTTP call), run ONNX
Runtime on the batch, then hand the answered request to the hooks (services/hooks.py).

    answering = Answering.from_environment(metrics, observers)
    served, answers = await answering.answer(texts, served)             # one answer per text, in order
    served, answers = await answering.answer(texts, served, embed=True)  # (vector, truncated) per text
    # answers is an error response (503 with Retry-After) instead when the queue is full

Batches hold at most ``DAPT_MAX_BATCH_SIZE`` texts and ``DAPT_MAX_BATCH_TOKENS`` padded tokens, texts of similar
length together; while traffic is concurrent an under-full batch waits at most ``DAPT_BATCH_WAIT_MS`` for company
(a lone client's text runs at once); more than ``DAPT_MAX_QUEUE_TEXTS`` waiting texts are refused
(services/batcher.py).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import Any

from models.settings import (
    BATCH_WAIT_MS_ENV,
    MAX_BATCH_SIZE_ENV,
    MAX_BATCH_TOKENS_ENV,
    MAX_QUEUE_TEXTS_ENV,
    env_number,
)
from services.batcher import MicroBatcher, QueueFull
from services.hooks import Hook, Observation, notify
from services.reloader import ServedModel
from services.validation import error_response, int_env

DEFAULT_MAX_BATCH_SIZE = 32  # texts per ONNX Runtime call
DEFAULT_MAX_BATCH_TOKENS = 4096  # padded tokens per call: 32 texts of 128 tokens, or fewer longer ones
DEFAULT_BATCH_WAIT_MS = 2.0  # only while traffic is concurrent: a lone client never waits (batcher.py)
DEFAULT_MAX_QUEUE_TEXTS = 512
# Tokenizing a request this small takes less time than handing it to a thread; larger ones leave the loop.
INLINE_TOKENIZE_CHARS = 2048


def wait_ms_env() -> float:
    return env_number(
        BATCH_WAIT_MS_ENV,
        DEFAULT_BATCH_WAIT_MS,
        kind=float,
        valid=lambda ms: 0 <= ms <= 1000,
        requirement="a wait in milliseconds from 0 to 1000",
    )


@dataclass(frozen=True, eq=False)
class EmbedTarget:
    """What embed texts are batched under: one per served model, so they never share a call with its
    classification or NER texts (another ONNX session)."""

    served: ServedModel


class Answering:
    """The micro-batcher, the ONNX Runtime call per batch, and the hooks told about each answered request."""

    def __init__(self, batcher_settings: dict[str, Any], metrics: Any, observers: list[Hook]) -> None:
        self.metrics = metrics
        # The service's list itself: a hook appended to it later is told too.
        self.observers = observers
        self.batcher = MicroBatcher(
            self._run_batch, length=lambda payload: len(payload[1].ids), **batcher_settings
        )
        self._embed_targets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def from_environment(cls, metrics: Any, observers: list[Hook]) -> Answering:
        settings = {
            "max_batch_size": int_env(MAX_BATCH_SIZE_ENV, DEFAULT_MAX_BATCH_SIZE),
            "max_batch_tokens": int_env(MAX_BATCH_TOKENS_ENV, DEFAULT_MAX_BATCH_TOKENS),
            "max_wait_ms": wait_ms_env(),
            "max_queue_texts": int_env(MAX_QUEUE_TEXTS_ENV, DEFAULT_MAX_QUEUE_TEXTS),
        }
        return cls(settings, metrics, observers)

    async def answer(self, texts: list[str], served: ServedModel, embed: bool = False):
        """(model that answered, one answer per text), or an error response when the queue is full.

        ``served`` is read once by the caller: it tokenizes and answers this request even if a swap follows."""
        started = time.perf_counter()
        target = self._embed_target(served) if embed else served
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            encodings = served.predictor.encode(texts)
        else:
            encodings = await asyncio.to_thread(served.predictor.encode, texts)
        try:
            answers = await self.batcher.submit(target, list(zip(texts, encodings, strict=True)))
        except QueueFull as exc:
            return served, error_response(
                503, str(exc), field="texts", headers={"retry-after": str(exc.retry_after_s)}
            )
        if self.observers:
            task = "embedding" if embed else served.task
            latency_s = time.perf_counter() - started
            notify(self.observers, Observation(served, task, texts, encodings, answers, latency_s))
        return served, answers

    def _embed_target(self, served: ServedModel) -> EmbedTarget:
        target = self._embed_targets.get(served)
        if target is None:
            target = self._embed_targets.setdefault(served, EmbedTarget(served))
        return target

    def _run_batch(self, model: ServedModel | EmbedTarget, payloads: list[tuple[str, Any]]) -> list[Any]:
        """One ONNX Runtime call for a batch of one model's texts (in the batcher's inference thread)."""
        texts = [text for text, _ in payloads]
        encodings = [encoding for _, encoding in payloads]
        if isinstance(model, EmbedTarget):
            served = model.served
            self.metrics.record_batch(served.name, served.version, "embedding", len(payloads))
            vectors = served.predictor.embed_encoded(encodings)
            return [
                (vector.tolist(), served.predictor.truncated(e))
                for vector, e in zip(vectors, encodings, strict=True)
            ]
        served = model
        self.metrics.record_batch(served.name, served.version, served.task, len(payloads))
        if served.task == "ner":
            spans = served.predictor.entities_encoded(texts, encodings)
            return [(found, served.predictor.truncated(e)) for found, e in zip(spans, encodings, strict=True)]
        return served.predictor.classify_encoded(encodings)
