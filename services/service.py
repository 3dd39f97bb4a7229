"""The HTTP service: BentoML 1.4 + ONNX Runtime, with micro-batching across concurrent requests (one hop).

    DAPT_BUNDLE_DIR=.dapt/artifacts/demo/3 bentoml serve services.service:DaptService --port 3000

Where the model comes from (first that is set):
  - ``DAPT_BUNDLE_DIR``: a serving bundle folder (``dapt serve`` sets it from the registry alias);
  - ``DAPT_BENTO_MODEL``: a BentoML model tag (``dapt bento build`` packs that model into the bento).
``DAPT_MODEL_NAME`` / ``DAPT_MODEL_VERSION`` name the model in every response (defaults: the bundle's).

Several models in one service (services/model_set.py; ``dapt serve --name finsent --name finner``):
``DAPT_EXTRA_MODELS`` is a JSON
list of ``{"name", "version", "bundle_dir", "alias"}`` served beside the first; each is loaded, verified and
warmed up before /readyz says 200 and follows its own alias. ``/classify``, ``/entities`` and ``/embed`` take
an optional ``model`` (a served name; default: the only model that fits the endpoint; 400 naming the choices
when several fit, 404 for a name not served). ``/metadata`` keeps the first model's fields at the top and
lists every model under ``models``.

Shadow traffic (``dapt serve --shadow candidate``): ``DAPT_SHADOW`` (JSON ``{"name", "version", "bundle_dir",
"alias"}``) loads another version of a served model; every answered request of that model is copied to it
off the answering path (services/shadow.py), and ``/metadata`` shows the comparison under ``shadow``.

Per-request hooks (services/hooks.py): every answered request becomes one :class:`services.hooks.Observation`
(model, version, task, texts, encodings, answers, latency) handed to each hook in ``DaptService.observers``
(``hook.observe(observation)``) after the answer is ready: the shadow, drift and the prediction log are such
hooks. A hook must return quickly and its exceptions are logged, never answered.

Input contract (services/validation.py; each limit from the environment; errors are ``{"error", "field", "limit"?}`` JSON, never 5xx):
  - ``DAPT_MAX_BODY_BYTES`` (2 MiB): checked before parsing (Content-Length, then the streamed size) → 413;
  - ``DAPT_MAX_TEXTS`` (64) texts per request → 413; ``DAPT_MAX_CHARS`` (10000) characters per text → 413;
  - not JSON / not an object → 400; ``texts`` not a list of strings, empty, a text with nothing visible
    (whitespace, control or format characters only), an unpaired surrogate → 422. Other Unicode (emoji,
    combining marks, RTL marks, NUL inside text) is valid text and answered 200.

Model updates without downtime (services/reloader.py): with ``DAPT_MODEL_ALIAS`` set (``dapt serve`` does), a
thread polls the registry every ``DAPT_RELOAD_POLL_S`` seconds (10; 0 disables) and, when the alias moved,
loads the new version beside the old one (registry + manifest checksums, warm-up, probe), then swaps it in;
requests in flight finish on the old one. ``POST /admin/reload`` (body ``{"version": N}`` optional) does the
same on demand, with ``Authorization: Bearer $DAPT_ADMIN_TOKEN`` (403 when no token is configured). A failed
reload leaves the old version serving and shows in ``/metadata`` as ``last_reload_error``.

Endpoints: ``POST /classify``, ``POST /entities``, ``POST /embed`` (L2-normalised sentence embeddings from
the bundle's encoder, pooled as its base model was trained; any task's bundle exported with an embedding model),
``GET /metadata``, ``POST /admin/reload``,
``GET /admin/status`` (the operator's view: bundle path, raw reload errors; same token); BentoML adds
``/livez``, ``/readyz`` (200 once the model is loaded, verified, warmed up and probed), ``/metrics``
(Prometheus, with ``dapt_predictions_total`` and ``dapt_batch_size`` labelled by model name and version) and
the OpenAPI page at ``/`` (spec at ``/docs.json``).

Batching (services/answering.py, services/batcher.py): a request's texts are tokenized (in a thread when the request is large) and
join the in-process micro-batcher directly, one hop: no second HTTP call. Batches hold at most
``DAPT_MAX_BATCH_SIZE`` (32) texts and ``DAPT_MAX_BATCH_TOKENS`` (4096) padded tokens, texts of similar length
together; while traffic is concurrent an under-full batch waits at most ``DAPT_BATCH_WAIT_MS`` (2) ms for
company, and a lone client's text runs at once; more than ``DAPT_MAX_QUEUE_TEXTS``
(512) waiting texts → 503 with ``Retry-After``. Each answer says per text whether it was ``truncated`` to the
model's max_length.

Tracing: the prediction endpoints are left out of BentoML's OpenTelemetry middleware unless ``DAPT_TRACING=on``
(BentoML samples no traces by default, and the spans cost the event loop CPU on every request).

Shutdown: SIGTERM stops accepting connections and lets requests in flight finish (uvicorn's graceful
shutdown under BentoML's process manager), then stops the reload thread.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import bentoml
from pydantic import Field

from models.settings import (
    BENTO_MODEL_ENV,
    MAX_QUEUE_TEXTS_ENV,
    MAX_TEXTS_ENV,
    RELOAD_POLL_ENV,
    TRACING_ENV,
    admin_token,
    env_choice,
    env_text,
)
from services.answering import Answering
from services.connections import install as install_connection_guard
from services.drift import Observer
from services.guard import RequestGuard
from services.heap import freeze_long_lived_objects, frozen_objects
from services.hooks import Hook
from services.metrics import describe as describe_metrics
from services.metrics import service_metrics
from services.model_set import ModelSet, resolve_bundle_dir
from services.reloader import ModelSlot
from services.schemas import (
    MODEL_FIELD_DESCRIPTION,
    SAMPLE_TEXTS,
    ClassifyResponse,
    EmbedResponse,
    EntitiesResponse,
    ModelInfo,
)
from services.shadow import Shadow
from services.timeouts import install as install_prompt_timeouts
from services.validation import RequestLimits, float_env

__all__ = ["DaptService", "resolve_bundle_dir"]

DEFAULT_RELOAD_POLL_S = 10.0

# BentoML's request timeout pins each request's state for the whole timeout (services/timeouts.py).
install_prompt_timeouts()
# uvicorn has no request-header timeout or connection cap: slow or idle clients would hold sockets forever.
install_connection_guard()


def _bento_model_tag() -> str | None:
    """The BentoML model to declare: env DAPT_BENTO_MODEL (at `bentoml build`), else the bento's own
    `--arg bento_model=...` (stored in bento.yaml, restored when the built bento is served)."""
    tag = env_text(BENTO_MODEL_ENV)
    if tag:
        return tag
    return getattr(bentoml.use_arguments(), "bento_model", None) or None


# Read when the class body runs: a declared model is what `bentoml build` packs into the bento.
BENTO_MODEL_TAG = _bento_model_tag()


PREDICTION_PATHS = ("/classify", "/entities", "/embed")


def tracing_config() -> dict[str, Any]:
    """BentoML's tracing settings for this service: ``DAPT_TRACING=off`` (default) leaves the prediction
    endpoints out of OpenTelemetry. BentoML samples no traces unless configured to (``tracing.sample_rate`` is
    0), yet its middleware built a span for each request: ~0.6 ms of the event loop's CPU per request under
    load (benchmarks/README, session 8). Set ``on`` when BentoML tracing is configured."""
    if env_choice(TRACING_ENV, ("off", "on"), "off") == "on":
        return {}
    return {"excluded_urls": list(PREDICTION_PATHS)}


def _show_dapt_logs() -> None:
    dapt_logger = logging.getLogger("dapt")
    if dapt_logger.level == logging.NOTSET:  # BentoML's root level is WARNING: show load/reload lines
        dapt_logger.setLevel(logging.INFO)


@bentoml.service(
    name="dapt",
    description="Domain-adapted BERT served with ONNX Runtime: text classification and entity extraction.",
    traffic={"timeout": 60},
    logging={"access": {"skip_paths": ["/livez", "/readyz", "/metrics"]}},  # probes and scrapes are noise
    tracing=tracing_config(),
    workers=1,
)
class DaptService:
    if BENTO_MODEL_TAG:
        bento_model = bentoml.models.BentoModel(BENTO_MODEL_TAG)

    def __init__(self) -> None:
        self._ready = False
        _show_dapt_logs()
        self.limits = RequestLimits.from_environment()
        self.metrics = service_metrics()
        # Load, verify the manifest checksums, warm up and probe before __init__ returns: BentoML answers
        # /readyz 200 only after that, and __is_ready__ says so explicitly.
        self.models = ModelSet.from_environment(
            getattr(self, "bento_model", None),
            self.metrics,
            poll_s=float_env(RELOAD_POLL_ENV, DEFAULT_RELOAD_POLL_S),
        )
        # The per-request hooks (services/hooks.py), told after each answer: the shadow, drift + prediction log.
        self.observers: list[Hook] = []
        self.answering = Answering.from_environment(self.metrics, self.observers)
        self.batcher = self.answering.batcher
        if self.batcher.max_queue_texts < self.limits.max_texts:
            raise RuntimeError(
                f"{MAX_QUEUE_TEXTS_ENV}={self.batcher.max_queue_texts} is below {MAX_TEXTS_ENV}={self.limits.max_texts}: "
                "a full-size request would only be taken when nothing else waits; raise the queue bound"
            )
        if self.shadow is not None:
            self.observers.append(self.shadow)
        # Live drift and the prediction log (services/drift.py): fed after answering, off the answering path.
        self.observer = Observer.from_environment(self.metrics)
        if self.observer.enabled:
            self.observers.append(self.observer)
        self.models.start()
        freeze_long_lived_objects()
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.on_shutdown
    def _stop_following_the_alias(self) -> None:
        self._ready = False
        self.models.stop()
        self.batcher.close()
        self.observer.close()

    @property
    def slot(self) -> ModelSlot:
        """The first served model's slot (DAPT_BUNDLE_DIR's): it keeps /metadata's top fields."""
        return self.models.first

    @property
    def slots(self) -> dict[str, ModelSlot]:
        return self.models.slots

    @property
    def shadow(self) -> Shadow | None:
        return self.models.shadow

    @property
    def predictor(self):
        """The predictor serving now (it changes when a reload swaps the model)."""
        return self.slot.current.predictor

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo.of(self.slot.current)

    def admin_slot(self, model: str | None) -> ModelSlot:
        """The slot an admin reload acts on; ReloadFailed (400/404) when ``model`` is unknown or needed."""
        return self.models.admin_slot(model)

    async def _answer(self, texts: list[str], model: str | None, task: str):
        """(model that answered, answers) or (None, an error response): which model, the input contract, the
        batcher. The slot's model is read once: it answers this request even if a swap follows."""
        slot, problem = self.models.choose(model, task)
        if slot is None:
            return None, problem
        served = slot.current
        invalid = self.limits.invalid(texts, task, served)
        if invalid is not None:
            return None, invalid
        served, answers = await self.answering.answer(texts, served, embed=task == "embedding")
        if not isinstance(answers, list):
            return None, answers
        return served, answers

    # ------------------------------------------------------------------ public endpoints

    @bentoml.api(route="/classify")
    async def classify(
        self,
        texts: Annotated[list[str], Field(description="Texts to classify", examples=[SAMPLE_TEXTS])],
        model: Annotated[str | None, Field(description=MODEL_FIELD_DESCRIPTION)] = None,
    ) -> ClassifyResponse:
        """Class label, its probability and every label's probability, per text."""
        served, answers = await self._answer(texts, model, "classification")
        if served is None:
            return answers
        return ClassifyResponse(model=ModelInfo.of(served), predictions=answers)

    @bentoml.api(route="/entities")
    async def entities(
        self,
        texts: Annotated[
            list[str], Field(description="Texts to extract entities from", examples=[SAMPLE_TEXTS])
        ],
        model: Annotated[str | None, Field(description=MODEL_FIELD_DESCRIPTION)] = None,
    ) -> EntitiesResponse:
        """Entity spans per text, with character offsets into that text."""
        served, answers = await self._answer(texts, model, "ner")
        if served is None:
            return answers
        return EntitiesResponse(
            model=ModelInfo.of(served),
            entities=[spans for spans, _ in answers],
            truncated=[truncated for _, truncated in answers],
        )

    @bentoml.api(route="/embed")
    async def embed(
        self,
        texts: Annotated[list[str], Field(description="Texts to embed", examples=[SAMPLE_TEXTS])],
        model: Annotated[str | None, Field(description=MODEL_FIELD_DESCRIPTION)] = None,
    ) -> EmbedResponse:
        """L2-normalised sentence embeddings from the model's domain-adapted encoder, one per text."""
        served, answers = await self._answer(texts, model, "embedding")
        if served is None:
            return answers
        embedding = served.predictor.embedding
        return EmbedResponse(
            # the embedding model is always the fp32 export, whichever variant classifies
            model=ModelInfo.of(served).model_copy(update={"variant": "fp32"}),
            embeddings=[vector for vector, _ in answers],
            dimension=len(answers[0][0]),
            pooling=embedding["pooling"],
            truncated=[truncated for _, truncated in answers],
        )

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """Which model answers (name, version, task, variant, provider, labels), limits and reload state
        (also GET /metadata)."""
        return self.metadata_document()

    def metadata_document(self, operator: bool = False) -> dict[str, Any]:
        """What anyone may see; ``operator`` (GET /admin/status, with the admin token) adds the bundle path
        and the raw reload errors, which name files and hosts."""
        served = self.slot.current
        document = {
            **served.predictor.info(),
            **ModelInfo.of(served).model_dump(),
            "max_texts": self.limits.max_texts,
            "max_chars": self.limits.max_chars,
            "max_body_bytes": self.limits.max_body_bytes,
            "batching": self.batcher.settings(),
            "gc_frozen_objects": frozen_objects(),
            **self.slot.status(operator=operator),
            "admin_reload_enabled": bool(admin_token()),
            "metrics": describe_metrics(),
            "drift": self.observer.drift_document(served),
            "prediction_log": self.observer.log_document(operator),
        }
        document["models"] = [
            {
                **slot.current.predictor.info(),
                **ModelInfo.of(slot.current).model_dump(),
                **slot.status(operator=operator),
                **({"bundle_dir": str(slot.current.bundle_dir)} if operator else {}),
                "drift": self.observer.drift_document(slot.current),
            }
            for slot in self.slots.values()
        ]
        document["shadow"] = None if self.shadow is None else self.shadow.status()
        if operator:
            document["bundle_dir"] = str(served.bundle_dir)
            document["queued_texts"] = self.batcher.queued
            if self.shadow is not None:
                document["shadow"]["bundle_dir"] = str(self.shadow.slot.current.bundle_dir)
                document["shadow"]["evidence"]["last_error"] = self.shadow.last_evidence_error
        return document


# Limits before parsing, uniform JSON errors, GET /metadata and POST /admin/reload (services/guard.py).
DaptService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # added by @bentoml.service
