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
DRAIN_ITEMS = 256  # requests the observer takes at once before judging the windows they changed
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
        self._changed = False

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

    def add(self, stats: list[TextStats], labels: list[list[str]]) -> None:
        """Add texts to the window; the assessment follows on the next ``assess_window``."""
        with self._lock:
            self._stats.extend(stats)
            self._labels.extend(labels)
            self._changed = True

    def assess_window(self) -> dict[str, Any] | None:
        """The window's assessment (None without a profile), computed again only when texts came since."""
        with self._lock:
            if self.reference is None:
                return None
            if not self._changed:
                return self._last
            stats_now = list(self._stats)
            labels_now = [label for per_text in self._labels for label in per_text]
            self._changed = False
        report = assess(
            drift_statistics(stats_now, labels_now, self.reference),
            self.config,
            len(stats_now),
            len(labels_now),
        )
        self._last = report
        return report

    def observe(self, stats: list[TextStats], labels: list[list[str]]) -> dict[str, Any] | None:
        """Add texts to the window and return the new assessment (None without a profile)."""
        self.add(stats, labels)
        return self.assess_window()

    def document(self) -> dict[str, Any]:
        base = {"version": self.version, "window": self.config.window, "min_texts": self.config.min_texts}
        if self.reference is None:
            return {**base, "status": "no profile", "texts": len(self._stats), "statistics": {}}
        self.assess_window()  # texts added since the observer's last assessment count too
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
            # Take everything waiting, add it to the windows, then judge each changed window once: judging
            # costs a pass over the whole window, and per request it took ~4 % of a core at 135 requests/s.
            items = [self._queue.get()]
            while items[-1] is not None and len(items) < DRAIN_ITEMS:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            changed: dict[int, DriftMonitor] = {}
            for item in items:
                if item is None:
                    continue
                try:
                    monitor = self._process(item)
                    if monitor is not None:
                        changed[id(monitor)] = monitor
                    self.processed += 1
                except Exception:  # the thread must outlive any bad item; the answer was sent long ago
                    logger.exception("observer: could not process a request")
                    self._drop("error")
            for monitor in changed.values():
                try:
                    self._judge(monitor)
                except Exception:
                    logger.exception(
                        "observer: could not judge drift of %s v%s", monitor.name, monitor.version
                    )
            for _ in items:  # done only once judged: wait_idle() then sees the metrics of every item
                self._queue.task_done()
            if items[-1] is None:
                return

    def _judge(self, monitor: DriftMonitor) -> None:
        report = monitor.assess_window()
        if report is not None and self.metrics is not None:
            for statistic, judged in report["statistics"].items():
                if judged["value"] is not None:
                    self.metrics.record_drift(monitor.name, monitor.version, statistic, judged["value"])

    def monitor(self, name: str, version: str, bundle_dir: Path) -> DriftMonitor:
        key = (name, version)
        with self._monitors_lock:
            found = self._monitors.get(key)
        if found is None:
            found = DriftMonitor.for_bundle(name, version, bundle_dir)
            with self._monitors_lock:
                found = self._monitors.setdefault(key, found)
        return found

    def _process(self, observation: Observation) -> DriftMonitor | None:
        """Add one request to its version's drift window and write it to the prediction log; returns the
        window it changed (judged by the caller once per drained batch of requests)."""
        from datetime import datetime, timezone

        served, answers = observation.served, observation.answers
        unk_id = served.predictor.tokenizer.token_to_id("[UNK]")
        stats = [encoding_stats(encoding, unk_id) for encoding in observation.encodings]
        monitor = None
        if self.drift:
            monitor = self.monitor(served.name, served.version, served.bundle_dir)
            monitor.add(stats, [answer_labels(served.task, a) for a in answers])
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
                return monitor
            if self.metrics is not None and written:
                self.metrics.record_logged(served.name, written)
        return monitor

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
