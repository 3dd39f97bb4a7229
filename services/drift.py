"""Live drift per served model version, and the observer thread that feeds it and the prediction log.

    observer = Observer.from_environment(metrics)   # at service start; one of the service's hooks
    observer.observe(observation)                   # after answering (services/hooks.py): never blocks
    observer.drift_document(served)                 # /metadata "drift" for that model

The answering path only puts the request's :class:`~services.hooks.Observation` (a reference to what it
already has: texts, their encodings, the answers) into a bounded queue; when the queue is full the request is
dropped and counted (``dapt_monitor_dropped_total``). The observer thread counts each text as the training
profile counts it (from the encoding the request already made: no second tokenization), keeps a sliding
window of ``monitor.window`` texts and predicted labels per model *version*, compares it with the version's
profile (``evidence.json`` in its bundle: the profile and the recipe's ``monitor`` thresholds,
models/monitoring.py) and sets ``dapt_input_drift{model,version,statistic}``. A text longer than the model's
max_length counts as max_length tokens (only that much was read). Embedding requests are not watched.

``DAPT_DRIFT=off`` turns drift off; a version registered without a profile reports ``"status": "no profile"``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from models.monitoring import TextStats, assess, drift_statistics, monitor_settings, reference_profile
from models.settings import DRIFT_ENV, env_text
from services.hooks import Observation
from services.prediction_log import PredictionLog

logger = logging.getLogger("dapt.service")

QUEUE_ITEMS = 1024  # requests waiting for the observer; beyond that they are dropped (and counted)
OBSERVED_TASKS = ("classification", "ner")  # embeddings have no labels to watch or log


def drift_enabled() -> bool:
    value = env_text(DRIFT_ENV, "on").strip().lower()
    if value not in ("on", "off", "1", "0", "true", "false"):
        raise RuntimeError(f"{DRIFT_ENV}={value!r}: use on or off")
    return value in ("on", "1", "true")


def encoding_stats(encoding: Any, unk_id: int | None) -> TextStats:
    """(subword tokens, words, OOV words) of one `tokenizers` Encoding, special tokens left out, counted as
    expectations/derived.py's TokenCounter counts the training data: [UNK] weighs 3 pieces, and a word of 3+
    pieces is out of vocabulary."""
    pieces: dict[int, int] = {}
    tokens = 0
    for word, token, special in zip(
        encoding.word_ids, encoding.ids, encoding.special_tokens_mask, strict=True
    ):
        if special or word is None:
            continue
        tokens += 1
        pieces[word] = pieces.get(word, 0) + (3 if token == unk_id else 1)
    return tokens, len(pieces), sum(1 for n in pieces.values() if n >= 3)


def answer_labels(task: str, answer: Any) -> list[str]:
    """Predicted labels of one answer: its class, or each entity's type."""
    if task == "ner":
        spans, _ = answer
        return [span["label"] for span in spans]
    return [answer["label"]]


class DriftMonitor:
    """Sliding window of one model version's live texts and predicted labels, compared with its profile."""

    def __init__(self, name: str, version: str, reference: dict[str, Any] | None, config: Any) -> None:
        self.name = name
        self.version = version
        self.reference = reference
        self.config = config
        self._stats: deque[TextStats] = deque(maxlen=config.window)
        self._labels: deque[list[str]] = deque(maxlen=config.window)
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None

    @classmethod
    def for_bundle(cls, name: str, version: str, bundle_dir: Path) -> DriftMonitor:
        """From the version's ``evidence.json`` (written by the registry; absent in a bare export)."""
        evidence = None
        path = Path(bundle_dir) / "evidence.json"
        if path.is_file():
            try:
                evidence = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                logger.warning("drift: cannot read %s (%s); no profile to compare with", path, exc)
        return cls(name, version, reference_profile(evidence), monitor_settings(evidence))

    def observe(self, stats: list[TextStats], labels: list[list[str]]) -> dict[str, Any] | None:
        """Add texts to the window and return the new assessment (None without a profile)."""
        with self._lock:
            self._stats.extend(stats)
            self._labels.extend(labels)
            if self.reference is None:
                return None
            stats_now = list(self._stats)
            labels_now = [label for per_text in self._labels for label in per_text]
        report = assess(
            drift_statistics(stats_now, labels_now, self.reference),
            self.config,
            len(stats_now),
            len(labels_now),
        )
        self._last = report
        return report

    def document(self) -> dict[str, Any]:
        base = {"version": self.version, "window": self.config.window, "min_texts": self.config.min_texts}
        if self.reference is None:
            return {**base, "status": "no profile", "texts": len(self._stats), "statistics": {}}
        if self._last is None:
            return {
                **base,
                **assess(dict.fromkeys(("length", "oov_rate", "labels")), self.config, 0, 0),
                "status": "waiting",
            }
        return {**base, **self._last}


class Observer:
    """One thread per service: drift windows and the prediction log, fed through a bounded queue."""

    def __init__(
        self,
        metrics: Any = None,
        *,
        drift: bool = True,
        log: PredictionLog | None = None,
        queue_items: int = QUEUE_ITEMS,
    ) -> None:
        self.metrics = metrics
        self.drift = drift
        self.log = log
        self._queue: queue.Queue = queue.Queue(maxsize=queue_items)
        self._monitors: dict[tuple[str, str], DriftMonitor] = {}
        self._monitors_lock = threading.Lock()
        self.dropped: dict[str, int] = {}
        self.processed = 0
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._write_error_logged = False
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="dapt-observer", daemon=True)
            self._thread.start()

    @classmethod
    def from_environment(cls, metrics: Any = None) -> Observer:
        return cls(metrics, drift=drift_enabled(), log=PredictionLog.from_environment())

    @property
    def enabled(self) -> bool:
        return self.drift or self.log is not None

    # ------------------------------------------------------------------ the answering path

    def observe(self, observation: Observation) -> None:
        """Hand one answered classification or NER request over; never blocks, never raises."""
        if not self.enabled or self._closed.is_set() or observation.task not in OBSERVED_TASKS:
            return
        try:
            self._queue.put_nowait(observation)
        except queue.Full:
            self._drop("queue_full")

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        if self.metrics is not None:
            self.metrics.record_monitor_drop(reason, count)

    # ------------------------------------------------------------------ the observer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._process(item)
                self.processed += 1
            except Exception:  # the thread must outlive any bad item; the answer was sent long ago
                logger.exception("observer: could not process a request")
                self._drop("error")
            finally:
                self._queue.task_done()

    def monitor(self, name: str, version: str, bundle_dir: Path) -> DriftMonitor:
        key = (name, version)
        with self._monitors_lock:
            found = self._monitors.get(key)
        if found is None:
            found = DriftMonitor.for_bundle(name, version, bundle_dir)
            with self._monitors_lock:
                found = self._monitors.setdefault(key, found)
        return found

    def _process(self, observation: Observation) -> None:
        from datetime import datetime, timezone

        served, answers = observation.served, observation.answers
        unk_id = served.predictor.tokenizer.token_to_id("[UNK]")
        stats = [encoding_stats(encoding, unk_id) for encoding in observation.encodings]
        if self.drift:
            monitor = self.monitor(served.name, served.version, served.bundle_dir)
            report = monitor.observe(stats, [answer_labels(served.task, a) for a in answers])
            if report is not None and self.metrics is not None:
                for statistic, judged in report["statistics"].items():
                    if judged["value"] is not None:
                        self.metrics.record_drift(served.name, served.version, statistic, judged["value"])
        if self.log is not None:
            records = self.log.records(
                name=served.name,
                version=served.version,
                task=served.task,
                texts=observation.texts,
                stats=stats,
                answers=answers,
                latency_ms=observation.latency_ms,
                at=datetime.fromtimestamp(observation.at, timezone.utc),
            )
            try:
                written = self.log.write(served.name, records)
            except OSError as exc:
                self._drop("write_error", len(records))
                if not self._write_error_logged:  # a full disk stays full: say it once
                    logger.warning("prediction log: cannot write (%s); records are dropped and counted", exc)
                    self._write_error_logged = True
                return
            if self.metrics is not None and written:
                self.metrics.record_logged(served.name, written)

    # ------------------------------------------------------------------ reading

    def drift_document(self, served: Any) -> dict[str, Any]:
        """What /metadata shows under "drift" for one served model."""
        if not self.drift:
            return {"status": "off", "enabled_by": f"{DRIFT_ENV}=on"}
        return self.monitor(served.name, served.version, served.bundle_dir).document()

    def log_document(self, operator: bool = False) -> dict[str, Any]:
        """What /metadata shows under "prediction_log"."""
        if self.log is None:
            return {"mode": "off"}
        return {**self.log.status(operator), "dropped": dict(self.dropped)}

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until every submitted item was processed (tests and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish what is queued (bounded in time), then stop the thread and close the log."""
        self._closed.set()
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if self.log is not None:
            self.log.close()
