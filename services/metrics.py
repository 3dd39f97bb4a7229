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
    }
