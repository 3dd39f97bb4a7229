"""Shadow traffic: a second version of a served model answers a copy of every request, off the answering path.

    shadow = Shadow(slot, metrics=service_metrics())      # slot: the shadow version's ModelSlot
    shadow.start()
    shadow.observe(observation) # a service hook (services/hooks.py): never blocks or raises, drops when full
    shadow.status()             # what /metadata shows under "shadow"
    shadow.stop()               # at shutdown: drains nothing, writes the summary to the registry once more

Production answers first; :meth:`Shadow.observe` then puts (texts, production's answer) on a bounded queue
(``DAPT_SHADOW_QUEUE`` requests, default 256) and returns. A full queue drops the copy and counts it: under
load the shadow sees a sample, production never waits. One daemon thread takes copies off the queue, runs the
shadow's ONNX session on them (its own tokenizer: versions may differ) and compares:

  - classification: label agreement, the share of texts given the same label;
  - NER: entity-span F1 of the shadow's spans (start, end, label) against production's, micro-averaged over
    every compared text (two empty answers agree).

Per shadow version it keeps requests, texts, agreement, errors (a shadow inference that raised), dropped
copies and latency (p50 over the last ``LATENCY_WINDOW`` requests), exports them to Prometheus
(services/metrics.py) and writes a summary as the ``shadow`` evidence of the shadow version in the registry
every ``DAPT_SHADOW_EVIDENCE_S`` seconds (default 30; 0: only at shutdown) and at shutdown. The counts carry
over from the summary already stored, so a restarted service adds to them; the gate
(models/registry/gate.py) can require a number of requests and an agreement before promotion.

A shadow that follows an alias (``--shadow candidate``) swaps like any served model (services/reloader.py);
counting starts again for the new version.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from services.hooks import Observation
from services.reloader import ModelSlot, ServedModel

logger = logging.getLogger("dapt.shadow")

DEFAULT_QUEUE = 256
DEFAULT_EVIDENCE_S = 30.0
LATENCY_WINDOW = 1000
SHADOW_TASKS = ("classification", "ner")


def _spans(found: list[dict[str, Any]]) -> set[tuple[int, int, str]]:
    return {(int(s["start"]), int(s["end"]), str(s["label"])) for s in found}


@dataclass
class ShadowStats:
    """Counts for one shadow version; callers hold the Shadow's lock."""

    version: str
    task: str
    requests: int = 0
    texts: int = 0
    agreed: int = 0  # classification: texts with the same label
    tp: int = 0  # NER: spans both found
    fp: int = 0  # NER: spans only the shadow found
    fn: int = 0  # NER: spans only production found
    errors: int = 0
    dropped: int = 0
    against: list[str] = field(default_factory=list)  # production versions compared with
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    dirty: bool = False  # counts changed since the last evidence write

    @property
    def metric(self) -> str:
        return "entity_span_f1" if self.task == "ner" else "label_agreement"

    @property
    def agreement(self) -> float | None:
        if self.texts == 0:
            return None
        if self.task == "ner":
            denominator = 2 * self.tp + self.fp + self.fn
            return 1.0 if denominator == 0 else 2 * self.tp / denominator
        return self.agreed / self.texts

    def compare(self, production: list[Any], shadow: list[Any]) -> None:
        self.texts += len(production)
        if self.task == "ner":
            for ours, theirs in zip(production, shadow, strict=True):
                expected, found = _spans(ours), _spans(theirs)
                self.tp += len(expected & found)
                self.fp += len(found - expected)
                self.fn += len(expected - found)
        else:
            self.agreed += sum(p["label"] == s["label"] for p, s in zip(production, shadow, strict=True))

    def p50_ms(self) -> float | None:
        return round(statistics.median(self.latencies_ms), 3) if self.latencies_ms else None

    def carry_over(self, stored: dict[str, Any]) -> None:
        """Add the counts of an earlier summary of the same version (a restarted service continues them)."""
        counts = stored.get("counts") or {}
        if stored.get("version") != self.version or stored.get("task") != self.task:
            return
        for key in ("requests", "texts", "errors", "dropped"):
            value = stored.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, key, getattr(self, key) + value)
        for key in ("agreed", "tp", "fp", "fn"):
            value = counts.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, key, getattr(self, key) + value)
        self.against = [str(v) for v in stored.get("against") or []]

    def summary(self) -> dict[str, Any]:
        agreement = self.agreement
        return {
            "version": self.version,
            "task": self.task,
            "metric": self.metric,
            "requests": self.requests,
            "texts": self.texts,
            "agreement": None if agreement is None else round(agreement, 6),
            "errors": self.errors,
            "dropped": self.dropped,
            "p50_ms": self.p50_ms(),
            "against": list(self.against),
            "counts": {"agreed": self.agreed, "tp": self.tp, "fp": self.fp, "fn": self.fn},
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


class Shadow:
    """The shadow version of one served model; see the module docstring."""

    def __init__(
        self,
        slot: ModelSlot,
        *,
        metrics: Any = None,
        queue_size: int = DEFAULT_QUEUE,
        evidence_every_s: float = DEFAULT_EVIDENCE_S,
        registry: Any = None,
        record_evidence: bool = True,
    ) -> None:
        self.slot = slot
        self.name = slot.current.name
        self.metrics = metrics
        self.queue_size = queue_size
        self.evidence_every_s = evidence_every_s
        self.record_evidence = record_evidence
        self._registry_instance = registry
        self._queue: queue.Queue[Observation | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stats = self._new_stats(slot.current)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.last_evidence_at: str | None = None
        self.last_evidence_error: str | None = None

    # ------------------------------------------------------------------ the request side

    def observe(self, observation: Observation) -> None:
        """Queue a copy of an answered request for the shadow; returns at once (drops and counts when full)."""
        if observation.task not in SHADOW_TASKS or observation.name != self.name:
            return
        try:
            self._queue.put_nowait(observation)
        except queue.Full:
            with self._lock:
                self._stats.dropped += 1
                self._stats.dirty = True
                version = self._stats.version
            if self.metrics is not None:
                self.metrics.record_shadow(self.name, version, "dropped")

    # ------------------------------------------------------------------ the shadow thread

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name="dapt-shadow", daemon=True)
        self._thread.start()
        logger.info(
            "shadowing %s with v%s (queue %d requests)", self.name, self._stats.version, self.queue_size
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (copies still queued are not answered) and write the summary once more."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self.write_evidence()

    def _work(self) -> None:
        last_write = time.monotonic()
        while not self._stopping.is_set():
            try:
                observation = self._queue.get(timeout=0.5)
            except queue.Empty:
                observation = None
            if observation is not None:
                try:
                    self.answer(observation)
                except Exception:  # the thread must outlive anything; answer() counts shadow errors itself
                    logger.exception("shadow comparison failed")
            if self.evidence_every_s > 0 and time.monotonic() - last_write >= self.evidence_every_s:
                last_write = time.monotonic()
                self.write_evidence()

    def answer(self, observation: Observation) -> None:
        """Run the shadow on one request's texts and compare with production's answer (in the shadow thread)."""
        served = self.slot.current
        with self._lock:
            if served.version != self._stats.version:  # the shadow's alias moved: count the new version apart
                previous = self._stats
            else:
                previous = None
        if previous is not None:
            self.write_evidence(previous)
            fresh = self._new_stats(served)
            with self._lock:
                self._stats = fresh
        started = time.perf_counter()
        try:
            if observation.task == "ner":
                answer: list[Any] = served.predictor.entities(observation.texts)
            else:
                answer = served.predictor.classify(observation.texts)
        except Exception as exc:
            with self._lock:
                self._stats.errors += 1
                self._stats.dirty = True
            logger.warning("shadow %s v%s failed on a request: %s", self.name, served.version, exc)
            if self.metrics is not None:
                self.metrics.record_shadow(self.name, served.version, "error")
            return
        seconds = time.perf_counter() - started
        with self._lock:
            stats = self._stats
            stats.compare(observation.predictions, answer)
            stats.requests += 1
            stats.latencies_ms.append(seconds * 1000.0)
            if observation.version not in stats.against:
                stats.against.append(observation.version)
            stats.dirty = True
            agreement = stats.agreement
        if self.metrics is not None:
            self.metrics.record_shadow(self.name, served.version, "compared", seconds, agreement)

    # ------------------------------------------------------------------ registry evidence

    def _registry(self):
        if self._registry_instance is None:
            from models.registry.store import Registry

            self._registry_instance = Registry()
        return self._registry_instance

    def _new_stats(self, served: ServedModel) -> ShadowStats:
        stats = ShadowStats(version=served.version, task=served.task)
        if self.record_evidence:
            try:
                evidence = self._registry().get_version(self.name, int(served.version)).evidence
                stats.carry_over(evidence.get("shadow") or {})
            except Exception as exc:  # no registry (a bundle served by folder) or unreachable: count afresh
                logger.warning("shadow %s v%s: earlier counts not read (%s)", self.name, served.version, exc)
        return stats

    def write_evidence(self, stats: ShadowStats | None = None) -> None:
        """Store the summary as the ``shadow`` evidence of the shadow version (when it changed since)."""
        if not self.record_evidence:
            return
        with self._lock:
            stats = stats or self._stats
            if not stats.dirty:
                return
            summary = stats.summary()
            stats.dirty = False
        try:
            self._registry().attach_evidence(self.name, int(stats.version), "shadow", summary)
        except Exception as exc:
            with self._lock:
                stats.dirty = True
            self.last_evidence_error = f"{type(exc).__name__}: {exc}"
            logger.warning("shadow evidence for %s v%s not written: %s", self.name, stats.version, exc)
            return
        self.last_evidence_at = summary["updated_at"]
        self.last_evidence_error = None

    # ------------------------------------------------------------------ /metadata

    def status(self) -> dict[str, Any]:
        with self._lock:
            summary = self._stats.summary()
        return {
            "model": self.name,
            "version": summary["version"],
            "alias": self.slot.alias,
            "task": summary["task"],
            "metric": summary["metric"],
            "requests": summary["requests"],
            "texts": summary["texts"],
            "agreement": summary["agreement"],
            "errors": summary["errors"],
            "dropped": summary["dropped"],
            "p50_ms": summary["p50_ms"],
            "against": summary["against"],
            "queue": {"size": self.queue_size, "waiting": self._queue.qsize()},
            "evidence": {
                "recorded": self.record_evidence,
                "every_s": self.evidence_every_s,
                "last_written_at": self.last_evidence_at,
                "last_error": None if self.last_evidence_error is None else "see the server log",
            },
        }
