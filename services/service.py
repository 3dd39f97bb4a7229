"""The HTTP service: BentoML 1.4 + ONNX Runtime, with micro-batching across concurrent requests (one hop).

    DAPT_BUNDLE_DIR=.dapt/artifacts/demo/3 bentoml serve services.service:DaptService --port 3000

Where the model comes from (first that is set):
  - ``DAPT_BUNDLE_DIR``: a serving bundle folder (``dapt serve`` sets it from the registry alias);
  - ``DAPT_BENTO_MODEL``: a BentoML model tag (``dapt bento build`` packs that model into the bento).
``DAPT_MODEL_NAME`` / ``DAPT_MODEL_VERSION`` name the model in every response (defaults: the bundle's).

Several models in one service (``dapt serve --name finsent --name finner``): ``DAPT_EXTRA_MODELS`` is a JSON
list of ``{"name", "version", "bundle_dir", "alias"}`` served beside the first; each is loaded, verified and
warmed up before /readyz says 200 and follows its own alias. ``/classify``, ``/entities`` and ``/embed`` take
an optional ``model`` (a served name; default: the only model that fits the endpoint; 400 naming the choices
when several fit, 404 for a name not served). ``/metadata`` keeps the first model's fields at the top and
lists every model under ``models``.

Shadow traffic (``dapt serve --shadow candidate``): ``DAPT_SHADOW`` (JSON ``{"name", "version", "bundle_dir",
"alias"}``) loads another version of a served model; every answered request of that model is copied to it
off the answering path (services/shadow.py), and ``/metadata`` shows the comparison under ``shadow``.

Per-model hooks: every answered request becomes an :class:`services.shadow.Observation` (model, version, task,
texts, predictions, latency) handed to each callable in ``DaptService.observers`` after the answer is ready;
a hook must return quickly and its exceptions are logged, never answered.

Input contract (each limit from the environment; errors are ``{"error", "field", "limit"?}`` JSON, never 5xx):
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

Batching (services/batcher.py): a request's texts are tokenized (in a thread when the request is large) and
join the in-process micro-batcher directly, one hop: no second HTTP call. Batches hold at most
``DAPT_MAX_BATCH_SIZE`` (32) texts and ``DAPT_MAX_BATCH_TOKENS`` (4096) padded tokens, texts of similar length
together; an under-full batch waits at most ``DAPT_BATCH_WAIT_MS`` (2) ms; more than ``DAPT_MAX_QUEUE_TEXTS``
(512) waiting texts → 503 with ``Retry-After``. Each answer says per text whether it was ``truncated`` to the
model's max_length.

Shutdown: SIGTERM stops accepting connections and lets requests in flight finish (uvicorn's graceful
shutdown under BentoML's process manager), then stops the reload thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import unicodedata
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field

from models.settings import (
    ALIAS_ENV,
    BATCH_WAIT_MS_ENV,
    BENTO_MODEL_ENV,
    BUNDLE_ENV,
    EXTRA_MODELS_ENV,
    MAX_BATCH_SIZE_ENV,
    MAX_BATCH_TOKENS_ENV,
    MAX_CHARS_ENV,
    MAX_QUEUE_TEXTS_ENV,
    MAX_TEXTS_ENV,
    MODEL_NAME_ENV,
    MODEL_VERSION_ENV,
    RELOAD_POLL_ENV,
    SHADOW_ENV,
    SHADOW_EVIDENCE_S_ENV,
    SHADOW_QUEUE_ENV,
    admin_token,
    env_number,
    env_text,
)
from services.batcher import MicroBatcher, QueueFull
from services.connections import install as install_connection_guard
from services.drift import Observer
from services.guard import RequestGuard, max_body_bytes, surrogate_error, unpaired_surrogate
from services.metrics import describe as describe_metrics
from services.metrics import service_metrics
from services.reloader import ModelSlot, ReloadFailed, ServedModel, load_model
from services.shadow import DEFAULT_EVIDENCE_S, DEFAULT_QUEUE, Observation, Shadow
from services.timeouts import install as install_prompt_timeouts

DEFAULT_RELOAD_POLL_S = 10.0
# A text with only these (besides whitespace) has nothing to classify: control, format (zero-width, direction
# marks, BOM) and separator characters.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
DEFAULT_MAX_TEXTS = 64
DEFAULT_MAX_CHARS = 10_000
DEFAULT_MAX_BATCH_SIZE = 32  # texts per ONNX Runtime call
DEFAULT_MAX_BATCH_TOKENS = 4096  # padded tokens per call: 32 texts of 128 tokens, or fewer longer ones
DEFAULT_BATCH_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE_TEXTS = 512
# Tokenizing a request this small takes less time than handing it to a thread; larger ones leave the loop.
INLINE_TOKENIZE_CHARS = 2048

# BentoML's request timeout pins each request's state for the whole timeout (services/timeouts.py).
install_prompt_timeouts()
# uvicorn has no request-header timeout or connection cap: slow or idle clients would hold sockets forever.
install_connection_guard()

SAMPLE_TEXTS = ["Aspirin relieved the patient's headache within an hour."]
MODEL_FIELD_DESCRIPTION = (
    "Which served model answers (a name from /metadata's `models`); optional when one served model fits "
    "this endpoint"
)
TASK_KINDS = {"classification": "text-classification", "ner": "NER", "embedding": "embedding"}


def _bento_model_tag() -> str | None:
    """The BentoML model to declare: env DAPT_BENTO_MODEL (at `bentoml build`), else the bento's own
    `--arg bento_model=...` (stored in bento.yaml, restored when the built bento is served)."""
    tag = env_text(BENTO_MODEL_ENV)
    if tag:
        return tag
    return getattr(bentoml.use_arguments(), "bento_model", None) or None


# Read when the class body runs: a declared model is what `bentoml build` packs into the bento.
BENTO_MODEL_TAG = _bento_model_tag()


class ModelInfo(BaseModel):
    name: str = Field(examples=["demo"])
    version: str = Field(examples=["3"])
    variant: str = Field(examples=["int8"], description="ONNX variant that answered (fp32, int8, fp16)")
    provider: str = Field(examples=["CPUExecutionProvider"])


TRUNCATED_DESCRIPTION = (
    "True when the text had more tokens than the model's max_length (see /metadata): only its beginning was "
    "read. Split long texts to have all of them read."
)


class ClassPrediction(BaseModel):
    label: str
    score: float = Field(description="Probability of `label`")
    scores: dict[str, float] = Field(description="Probability of every label")
    truncated: bool = Field(description=TRUNCATED_DESCRIPTION)


class ClassifyResponse(BaseModel):
    model: ModelInfo
    predictions: list[ClassPrediction]


class Entity(BaseModel):
    text: str = Field(description="The span as it appears in the input")
    label: str = Field(description="Entity type (BIO prefix removed)")
    start: int = Field(description="Character offset of the span's start in the input text")
    end: int = Field(description="Character offset just past the span's end")
    score: float = Field(description="Mean tag probability over the span's words")


class EmbedResponse(BaseModel):
    model: ModelInfo
    embeddings: list[list[float]] = Field(description="One unit-length vector per text, in order")
    dimension: int = Field(examples=[384])
    pooling: str = Field(
        examples=["mean"], description="How token vectors became one vector (then L2-normalised)"
    )
    truncated: list[bool] = Field(description="Per text, in order: " + TRUNCATED_DESCRIPTION)


@dataclass(frozen=True, eq=False)
class _EmbedTarget:
    """What embed texts are batched under: one per served model, so they never share a call with its
    classification or NER texts (another ONNX session)."""

    served: ServedModel


class EntitiesResponse(BaseModel):
    model: ModelInfo
    entities: list[list[Entity]]
    truncated: list[bool] = Field(description="Per text, in order: " + TRUNCATED_DESCRIPTION)


def _int_env(name: str, default: int) -> int:
    return env_number(name, default, kind=int, valid=lambda n: n >= 1, requirement="a positive whole number")


def _float_env(name: str, default: float) -> float:
    return env_number(
        name, default, kind=float, valid=lambda n: n >= 0, requirement="a number of seconds >= 0 (0 disables)"
    )


def _blank(text: str) -> bool:
    """Nothing visible: whitespace, control or format characters only (stops at the first visible one)."""
    return all(ch.isspace() or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


def _error(status: int, message: str, headers: dict[str, str] | None = None, **details: Any):
    # A plain JSON object (BentoML's own 4xx wraps the message in a list); imported here, like bentoml does.
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, **details}, status_code=status, headers=headers)


def resolve_bundle_dir(bento_model: Any = None) -> tuple[Path, dict[str, str]]:
    """The bundle folder to serve and the labels that name it (from the BentoML model, when used)."""
    configured = env_text(BUNDLE_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise RuntimeError(
                f"{BUNDLE_ENV}={configured} does not exist; point it at an exported bundle folder"
            )
        return path, {}
    if bento_model is not None:
        return Path(bento_model.path), {k: str(v) for k, v in (bento_model.info.labels or {}).items()}
    raise RuntimeError(
        f"no model to serve: set {BUNDLE_ENV} to a bundle folder (or {BENTO_MODEL_ENV} to a BentoML model tag "
        "when building the bento), e.g. DAPT_BUNDLE_DIR=.dapt/artifacts/<name>/<version>"
    )


@bentoml.service(
    name="dapt",
    description="Domain-adapted BERT served with ONNX Runtime: text classification and entity extraction.",
    traffic={"timeout": 60},
    logging={"access": {"skip_paths": ["/livez", "/readyz", "/metrics"]}},  # probes and scrapes are noise
    workers=1,
)
class DaptService:
    if BENTO_MODEL_TAG:
        bento_model = bentoml.models.BentoModel(BENTO_MODEL_TAG)

    def __init__(self) -> None:
        self._ready = False
        dapt_logger = logging.getLogger("dapt")
        if dapt_logger.level == logging.NOTSET:  # BentoML's root level is WARNING: show load/reload lines
            dapt_logger.setLevel(logging.INFO)
        self.max_texts = _int_env(MAX_TEXTS_ENV, DEFAULT_MAX_TEXTS)
        self.max_chars = _int_env(MAX_CHARS_ENV, DEFAULT_MAX_CHARS)
        self.max_body_bytes = max_body_bytes()
        bundle_dir, labels = resolve_bundle_dir(getattr(self, "bento_model", None))
        spec_name, spec_version = _bundle_name_and_version(bundle_dir)
        name = env_text(MODEL_NAME_ENV) or labels.get("name") or spec_name
        version = env_text(MODEL_VERSION_ENV) or labels.get("version") or spec_version
        alias = env_text(ALIAS_ENV) or None
        if alias:
            # A worker restarted by the process manager gets the environment of the first start: the alias's
            # version now is the one to serve, not the folder named then.
            bundle_dir, version = _alias_target(name, alias, bundle_dir, version)
        self.metrics = service_metrics()
        poll_s = _float_env(RELOAD_POLL_ENV, DEFAULT_RELOAD_POLL_S)
        # Load, verify the manifest checksums, warm up and probe before __init__ returns: BentoML answers
        # /readyz 200 only after that, and __is_ready__ says so explicitly.
        self.slot = ModelSlot(
            load_model(bundle_dir, name, version),
            alias=alias,
            poll_s=poll_s,
            on_reload=self.metrics.record_reload,
        )
        # Every served model by name, the first (DAPT_BUNDLE_DIR's) first: it keeps /metadata's top fields.
        self.slots: dict[str, ModelSlot] = {name: self.slot}
        for entry in _json_env(EXTRA_MODELS_ENV, list):
            extra_name, extra_dir, extra_version, extra_alias = _model_entry(entry, EXTRA_MODELS_ENV)
            if extra_name in self.slots:
                raise RuntimeError(
                    f"{EXTRA_MODELS_ENV} names {extra_name!r} twice: serve each model once (a second version of "
                    "the same model is a shadow: DAPT_SHADOW / dapt serve --shadow)"
                )
            self.slots[extra_name] = ModelSlot(
                load_model(extra_dir, extra_name, extra_version),
                alias=extra_alias,
                poll_s=poll_s,
                on_reload=self.metrics.record_reload,
            )
        # Per-model hooks called with an Observation after each answer (the shadow, a prediction log, drift).
        self.observers: list[Callable[[Observation], None]] = []
        self.shadow = self._load_shadow(poll_s)
        if self.shadow is not None:
            self.observers.append(self.shadow.offer)
        self.batcher = MicroBatcher(
            self._run_batch,
            length=lambda payload: len(payload[1].ids),
            max_batch_size=_int_env(MAX_BATCH_SIZE_ENV, DEFAULT_MAX_BATCH_SIZE),
            max_batch_tokens=_int_env(MAX_BATCH_TOKENS_ENV, DEFAULT_MAX_BATCH_TOKENS),
            max_wait_ms=_wait_ms_env(),
            max_queue_texts=_int_env(MAX_QUEUE_TEXTS_ENV, DEFAULT_MAX_QUEUE_TEXTS),
        )
        if self.batcher.max_queue_texts < self.max_texts:
            raise RuntimeError(
                f"{MAX_QUEUE_TEXTS_ENV}={self.batcher.max_queue_texts} is below {MAX_TEXTS_ENV}={self.max_texts}: "
                "a full-size request would only be taken when nothing else waits; raise the queue bound"
            )
        self._embed_targets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # Live drift and the prediction log (services/drift.py): fed after answering, off the answering path.
        self.observer = Observer.from_environment(self.metrics)
        for slot in self.slots.values():
            slot.start()
        if self.shadow is not None:
            self.shadow.slot.start()
            self.shadow.start()
        self._ready = True

    def _load_shadow(self, poll_s: float) -> Shadow | None:
        entry = _json_env(SHADOW_ENV, dict)
        if not entry:
            return None
        name, bundle_dir, version, alias = _model_entry(entry, SHADOW_ENV)
        production = self.slots.get(name)
        if production is None:
            raise RuntimeError(
                f"{SHADOW_ENV} shadows {name!r}, which is not served here (served: {', '.join(self.slots)})"
            )
        slot = ModelSlot(
            load_model(bundle_dir, name, version),
            alias=alias,
            poll_s=poll_s,
            on_reload=self.metrics.record_reload,
        )
        if slot.current.task != production.current.task:
            raise RuntimeError(
                f"the shadow {name} v{version} is a {slot.current.task} model and production a "
                f"{production.current.task} model: a shadow must answer the same requests"
            )
        return Shadow(
            slot,
            metrics=self.metrics,
            queue_size=_int_env(SHADOW_QUEUE_ENV, DEFAULT_QUEUE),
            evidence_every_s=_float_env(SHADOW_EVIDENCE_S_ENV, DEFAULT_EVIDENCE_S),
            record_evidence=entry.get("record_evidence", True) is not False,
        )

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.on_shutdown
    def _stop_following_the_alias(self) -> None:
        self._ready = False
        for slot in self.slots.values():
            slot.stop()
        if self.shadow is not None:
            self.shadow.slot.stop()
            self.shadow.stop()  # writes the shadow's summary to the registry once more
        self.batcher.close()
        self.observer.close()

    @property
    def predictor(self):
        """The predictor serving now (it changes when a reload swaps the model)."""
        return self.slot.current.predictor

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info(self.slot.current)

    @staticmethod
    def _model_info(served: ServedModel) -> ModelInfo:
        return ModelInfo(
            name=served.name,
            version=served.version,
            variant=served.predictor.variant,
            provider=served.predictor.provider,
        )

    # ------------------------------------------------------------------ validation

    def _choose(self, model: str | None, task: str) -> tuple[ModelSlot | None, Any]:
        """(the slot that answers, None), or (None, an error response) for an unknown or ambiguous model."""
        if model is not None:
            slot = self.slots.get(model)
            if slot is None:
                return None, _error(
                    404,
                    f"model {model!r} is not served here; choose one of: {self._choices()}",
                    field="model",
                    choices=list(self.slots),
                )
            return slot, None
        if len(self.slots) == 1:
            return self.slot, None
        if task == "embedding":
            fitting = [s for s in self.slots.values() if s.current.predictor.embedding_session is not None]
        else:
            fitting = [s for s in self.slots.values() if s.current.task == task]
        if len(fitting) == 1:
            return fitting[0], None
        if not fitting:
            return None, _error(
                400,
                f"no {TASK_KINDS[task]} model is served here (served: {self._choices()}); call the endpoint of "
                "the model's task",
                field="model",
                choices=list(self.slots),
            )
        names = [s.current.name for s in fitting]
        return None, _error(
            400,
            f'several {TASK_KINDS[task]} models are served here: send "model": one of {", ".join(names)}',
            field="model",
            choices=names,
        )

    def _choices(self) -> str:
        return ", ".join(f"{name} ({slot.current.task})" for name, slot in self.slots.items())

    def admin_slot(self, model: str | None) -> ModelSlot:
        """The slot an admin reload acts on; ReloadFailed (400/404) when ``model`` is unknown or needed."""
        if model is None:
            if len(self.slots) == 1:
                return self.slot
            raise ReloadFailed(
                f'several models are served: send {{"model": NAME}} with one of {", ".join(self.slots)}', 400
            )
        if model not in self.slots:
            raise ReloadFailed(
                f"model {model!r} is not served here; choose one of: {', '.join(self.slots)}", 404
            )
        return self.slots[model]

    def _invalid(self, texts: list[str], task: str, served: ServedModel):
        """An error response for a bad request, or None when the request is fine."""
        if task == "embedding":
            if served.predictor.embedding_session is None:
                return _error(
                    400,
                    f"model {served.name!r} v{served.version} has no embedding model in its bundle (exported before "
                    "/embed existed, or its embedding failed parity): re-export and register it to serve /embed",
                    field="endpoint",
                )
        elif task != served.task:
            right = "/entities" if served.task == "ner" else "/classify"
            kind = "a token-classification (NER)" if served.task == "ner" else "a text-classification"
            return _error(
                400,
                f"model {served.name!r} is {kind} model: call {right} instead",
                field="endpoint",
                use=right,
            )
        if not texts:
            return _error(422, "texts is empty: send at least one text", field="texts")
        if len(texts) > self.max_texts:
            return _error(
                413,
                f"texts has {len(texts)} items; at most {self.max_texts} per request ({MAX_TEXTS_ENV})",
                field="texts",
                limit=self.max_texts,
            )
        for index, text in enumerate(texts):
            if len(text) > self.max_chars:
                return _error(
                    413,
                    f"texts[{index}] has {len(text)} characters; at most {self.max_chars} ({MAX_CHARS_ENV})",
                    field=f"texts[{index}]",
                    limit=self.max_chars,
                )
            if _blank(text):
                return _error(
                    422,
                    f"texts[{index}] is empty or has only whitespace, control or format characters",
                    field=f"texts[{index}]",
                )
            position = unpaired_surrogate(text)
            if position is not None:
                problem = surrogate_error(index, text, position)
                return _error(422, problem["error"], field=problem["field"])
        return None

    # ------------------------------------------------------------------ batching

    async def _predict(self, texts: list[str], served: ServedModel, embed: bool = False):
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
            return served, _error(
                503, str(exc), field="texts", headers={"retry-after": str(exc.retry_after_s)}
            )
        if self.observers:
            task = "embedding" if embed else served.task
            predictions = [a[0] for a in answers] if embed or task == "ner" else answers
            self._observe(Observation(served, task, texts, predictions, time.perf_counter() - started))
        if not embed:
            self.observer.submit(served, texts, encodings, answers, (time.perf_counter() - started) * 1000)
        return served, answers

    def _observe(self, observation: Observation) -> None:
        """Hand an answered request to every hook; a failing hook is logged and never changes the answer."""
        for observer in self.observers:
            try:
                observer(observation)
            except Exception:
                logging.getLogger("dapt.service").exception("observer %r failed", observer)

    def _embed_target(self, served: ServedModel) -> _EmbedTarget:
        target = self._embed_targets.get(served)
        if target is None:
            target = self._embed_targets.setdefault(served, _EmbedTarget(served))
        return target

    def _run_batch(self, model: ServedModel | _EmbedTarget, payloads: list[tuple[str, Any]]) -> list[Any]:
        """One ONNX Runtime call for a batch of one model's texts (in the batcher's inference thread)."""
        texts = [text for text, _ in payloads]
        encodings = [encoding for _, encoding in payloads]
        if isinstance(model, _EmbedTarget):
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

    # ------------------------------------------------------------------ public endpoints

    @bentoml.api(route="/classify")
    async def classify(
        self,
        texts: Annotated[list[str], Field(description="Texts to classify", examples=[SAMPLE_TEXTS])],
        model: Annotated[str | None, Field(description=MODEL_FIELD_DESCRIPTION)] = None,
    ) -> ClassifyResponse:
        """Class label, its probability and every label's probability, per text."""
        slot, problem = self._choose(model, "classification")
        if slot is None:
            return problem
        served = slot.current
        invalid = self._invalid(texts, "classification", served)
        if invalid is not None:
            return invalid
        served, answers = await self._predict(texts, served)
        if not isinstance(answers, list):
            return answers
        return ClassifyResponse(model=self._model_info(served), predictions=answers)

    @bentoml.api(route="/entities")
    async def entities(
        self,
        texts: Annotated[
            list[str], Field(description="Texts to extract entities from", examples=[SAMPLE_TEXTS])
        ],
        model: Annotated[str | None, Field(description=MODEL_FIELD_DESCRIPTION)] = None,
    ) -> EntitiesResponse:
        """Entity spans per text, with character offsets into that text."""
        slot, problem = self._choose(model, "ner")
        if slot is None:
            return problem
        served = slot.current
        invalid = self._invalid(texts, "ner", served)
        if invalid is not None:
            return invalid
        served, answers = await self._predict(texts, served)
        if not isinstance(answers, list):
            return answers
        return EntitiesResponse(
            model=self._model_info(served),
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
        slot, problem = self._choose(model, "embedding")
        if slot is None:
            return problem
        served = slot.current
        invalid = self._invalid(texts, "embedding", served)
        if invalid is not None:
            return invalid
        served, answers = await self._predict(texts, served, embed=True)
        if not isinstance(answers, list):
            return answers
        embedding = served.predictor.embedding
        return EmbedResponse(
            # the embedding model is always the fp32 export, whichever variant classifies
            model=self._model_info(served).model_copy(update={"variant": "fp32"}),
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
            **self._model_info(served).model_dump(),
            "max_texts": self.max_texts,
            "max_chars": self.max_chars,
            "max_body_bytes": self.max_body_bytes,
            "batching": self.batcher.settings(),
            **self.slot.status(operator=operator),
            "admin_reload_enabled": bool(admin_token()),
            "metrics": describe_metrics(),
            "drift": self.observer.drift_document(served),
            "prediction_log": self.observer.log_document(operator),
        }
        document["models"] = [
            {
                **slot.current.predictor.info(),
                **self._model_info(slot.current).model_dump(),
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


def _wait_ms_env() -> float:
    value = _float_env(BATCH_WAIT_MS_ENV, DEFAULT_BATCH_WAIT_MS)
    if value > 1000:
        raise RuntimeError(f"{BATCH_WAIT_MS_ENV} is a wait in milliseconds, at most 1000; got {value}")
    return value


def _json_env(name: str, kind: type) -> Any:
    """A JSON variable of the expected kind (list or dict), empty when unset."""
    raw = env_text(name)
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise RuntimeError(f"{name} is not valid JSON ({exc}); `dapt serve` writes it for you") from None
    if not isinstance(value, kind):
        raise RuntimeError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _model_entry(entry: Any, variable: str) -> tuple[str, Path, str, str | None]:
    """(name, bundle folder, version, alias) of one ``{"name", "bundle_dir", "version"?, "alias"?}`` entry; with
    an alias, the alias's version in the registry now (as for the first model)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry.get("bundle_dir"):
        raise RuntimeError(f'{variable}: each model needs "name" and "bundle_dir", got {entry!r}')
    bundle_dir = Path(str(entry["bundle_dir"])).expanduser()
    if not bundle_dir.is_dir():
        raise RuntimeError(f"{variable}: {bundle_dir} does not exist; point it at an exported bundle folder")
    name = entry["name"]
    version = str(entry.get("version") or _bundle_name_and_version(bundle_dir)[1])
    alias = entry.get("alias") or None
    if alias:
        bundle_dir, version = _alias_target(name, str(alias), bundle_dir, version)
    return name, bundle_dir, version, alias


def _alias_target(name: str, alias: str, bundle_dir: Path, version: str) -> tuple[Path, str]:
    """The alias's version in the registry now (checksums verified), or the start-up folder when the registry
    cannot say (the alias poller catches up once it can)."""
    from models.registry.store import Registry

    log = logging.getLogger("dapt.service")
    try:
        registry = Registry()
        target = registry.get_version(name, alias=alias)
        if str(target.version) == str(version):
            return bundle_dir, version
        path = registry.load_path(name, version=target.version, verify=True)
    except Exception as exc:  # registry unreachable, alias gone, checksum mismatch: serve what we were given
        log.warning("cannot resolve alias '%s' of %s at start (%s); serving v%s", alias, name, exc, version)
        return bundle_dir, version
    log.info("alias '%s' of %s is at v%s now (started with v%s)", alias, name, target.version, version)
    return Path(path), str(target.version)


def _bundle_name_and_version(bundle_dir: Path) -> tuple[str, str]:
    from models.registry.bundle import ServingSpec

    spec = ServingSpec.read(bundle_dir)
    return spec.name, str(spec.extra.get("version", "unversioned"))


# Limits before parsing, uniform JSON errors, GET /metadata and POST /admin/reload (services/guard.py).
DaptService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # added by @bentoml.service
