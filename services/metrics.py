"""The service's own Prometheus metrics, labelled with the model that answered; served by BentoML at /metrics.

    metrics = service_metrics()
    metrics.record_batch("demo", "3", "classification", texts=17)

BentoML 1.4 exposes every ``prometheus_client`` metric of the worker at ``/metrics`` (``bentoml.metrics`` is a
deprecated alias of ``prometheus_client``). BentoML runs Prometheus in multiprocess mode and sets
``PROMETHEUS_MULTIPROC_DIR`` in the worker's environment, so the client is imported here only on first use, and
the metrics are created once per process (a second registration of the same name raises in prometheus_client).
"""

from __future__ import annotations

import threading
from typing import Any

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_lock = threading.Lock()
_metrics: ServiceMetrics | None = None


class ServiceMetrics:
    """Counters and histograms of this process (created by :func:`service_metrics`)."""

    def __init__(self) -> None:
        import prometheus_client

        self.predictions = prometheus_client.Counter(
            "dapt_predictions",  # exposed as dapt_predictions_total
            "Texts predicted, by the model version that answered",
            ["model_name", "model_version", "task"],
        )
        self.batch_size = prometheus_client.Histogram(
            "dapt_batch_size",
            "Texts per ONNX Runtime call, after the micro-batcher merged concurrent requests",
            ["model_name", "model_version"],
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.reloads = prometheus_client.Counter(
            "dapt_model_reloads",  # exposed as dapt_model_reloads_total
            "Model reload attempts, by outcome (swapped, failed)",
            ["model_name", "outcome"],
        )
        self.shadow_requests = prometheus_client.Counter(
            "dapt_shadow_requests",  # exposed as dapt_shadow_requests_total
            "Request copies sent to the shadow version, by outcome (compared, error, dropped)",
            ["model_name", "shadow_version", "outcome"],
        )
        self.shadow_agreement = prometheus_client.Gauge(
            "dapt_shadow_agreement",
            "Shadow agreement with production (label agreement; entity-span F1 for NER)",
            ["model_name", "shadow_version"],
            multiprocess_mode="livemostrecent",
        )
        self.shadow_latency = prometheus_client.Histogram(
            "dapt_shadow_latency_seconds",
            "Seconds the shadow version took per request copy",
            ["model_name", "shadow_version"],
        )
        self.input_drift = prometheus_client.Gauge(
            "dapt_input_drift",
            "Distance of the live input window from the version's training profile, by statistic "
            "(length, oov_rate, labels); thresholds in /metadata under drift",
            ["model", "version", "statistic"],
            multiprocess_mode="livemostrecent",
        )
        self.monitor_dropped = prometheus_client.Counter(
            "dapt_monitor_dropped",  # exposed as dapt_monitor_dropped_total
            "Requests (queue_full, error) or log records (write_error) the observer dropped; answers unaffected",
            ["reason"],
        )
        self.logged = prometheus_client.Counter(
            "dapt_prediction_log_records",  # exposed as dapt_prediction_log_records_total
            "Records written to the prediction log",
            ["model_name"],
        )

    def record_batch(self, name: str, version: str, task: str, texts: int) -> None:
        self.batch_size.labels(model_name=name, model_version=version).observe(texts)
        self.predictions.labels(model_name=name, model_version=version, task=task).inc(texts)

    def record_reload(self, name: str, outcome: str) -> None:
        self.reloads.labels(model_name=name, outcome=outcome).inc()

    def record_shadow(
        self,
        name: str,
        version: str,
        outcome: str,
        seconds: float | None = None,
        agreement: float | None = None,
    ) -> None:
        self.shadow_requests.labels(model_name=name, shadow_version=version, outcome=outcome).inc()
        if seconds is not None:
            self.shadow_latency.labels(model_name=name, shadow_version=version).observe(seconds)
        if agreement is not None:
            self.shadow_agreement.labels(model_name=name, shadow_version=version).set(agreement)

    def record_drift(self, name: str, version: str, statistic: str, value: float) -> None:
        self.input_drift.labels(model=name, version=version, statistic=statistic).set(value)

    def record_monitor_drop(self, reason: str, count: int = 1) -> None:
        self.monitor_dropped.labels(reason=reason).inc(count)

    def record_logged(self, name: str, count: int) -> None:
        self.logged.labels(model_name=name).inc(count)


def service_metrics() -> ServiceMetrics:
    """The process's metrics, created on first call (after BentoML has set up multiprocess mode)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = ServiceMetrics()
        return _metrics


def describe() -> dict[str, Any]:
    """Names of the metrics, for /metadata."""
    return {
        "predictions": "dapt_predictions_total{model_name,model_version,task}",
        "batch_size": "dapt_batch_size{model_name,model_version}",
        "reloads": "dapt_model_reloads_total{model_name,outcome}",
        "shadow_requests": "dapt_shadow_requests_total{model_name,shadow_version,outcome}",
        "shadow_agreement": "dapt_shadow_agreement{model_name,shadow_version}",
        "shadow_latency": "dapt_shadow_latency_seconds{model_name,shadow_version}",
        "input_drift": "dapt_input_drift{model,version,statistic}",
        "monitor_dropped": "dapt_monitor_dropped_total{reason}",
        "prediction_log": "dapt_prediction_log_records_total{model_name}",
    }
