"""The HTTP service: BentoML 1.4 + ONNX Runtime, with adaptive batching across concurrent requests.

    DAPT_BUNDLE_DIR=.dapt/artifacts/demo/3 bentoml serve services.service:DaptService --port 3000

Where the model comes from (first that is set):
  - ``DAPT_BUNDLE_DIR``: a serving bundle folder (``dapt serve`` sets it from the registry alias);
  - ``DAPT_BENTO_MODEL``: a BentoML model tag (``dapt bento build`` packs that model into the bento).
``DAPT_MODEL_NAME`` / ``DAPT_MODEL_VERSION`` name the model in every response (defaults: the bundle's).

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

Endpoints: ``POST /classify``, ``POST /entities``, ``GET /metadata``, ``POST /admin/reload``; BentoML adds
``/livez``, ``/readyz`` (200 once the model is loaded, verified, warmed up and probed), ``/metrics``
(Prometheus, with ``dapt_predictions_total`` and ``dapt_batch_size`` labelled by model name and version) and
the OpenAPI page at ``/`` (spec at ``/docs.json``). ``/classify_batch`` and ``/entities_batch`` are the batching
stage the two public endpoints call (their answers carry the model per text); prefer the public ones.

Shutdown: SIGTERM stops accepting connections and lets requests in flight finish (uvicorn's graceful
shutdown under BentoML's process manager), then stops the reload thread.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field

from services.guard import RequestGuard, max_body_bytes, surrogate_error, unpaired_surrogate
from services.metrics import describe as describe_metrics
from services.metrics import service_metrics
from services.reloader import ModelSlot, ServedModel, load_model
from services.timeouts import install as install_prompt_timeouts

BUNDLE_ENV = "DAPT_BUNDLE_DIR"
BENTO_MODEL_ENV = "DAPT_BENTO_MODEL"
MAX_TEXTS_ENV = "DAPT_MAX_TEXTS"
MAX_CHARS_ENV = "DAPT_MAX_CHARS"
ALIAS_ENV = "DAPT_MODEL_ALIAS"
RELOAD_POLL_ENV = "DAPT_RELOAD_POLL_S"
DEFAULT_RELOAD_POLL_S = 10.0
# A text with only these (besides whitespace) has nothing to classify: control, format (zero-width, direction
# marks, BOM) and separator characters.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
DEFAULT_MAX_TEXTS = 64
DEFAULT_MAX_CHARS = 10_000
BATCH_SIZE = 32  # what one ONNX Runtime call takes at most; larger requests are split by the dispatcher
# The batcher answers 503 to a request it expects to miss this deadline; generous, because CPUs are slow.
BATCH_DEADLINE_MS = int(os.environ.get("DAPT_BATCH_DEADLINE_MS", "10000"))

# BentoML's request timeout pins each request's state for the whole timeout (services/timeouts.py).
install_prompt_timeouts()

SAMPLE_TEXTS = ["Aspirin relieved the patient's headache within an hour."]


def _bento_model_tag() -> str | None:
    """The BentoML model to declare: env DAPT_BENTO_MODEL (at `bentoml build`), else the bento's own
    `--arg bento_model=...` (stored in bento.yaml, restored when the built bento is served)."""
    tag = os.environ.get(BENTO_MODEL_ENV)
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


class ClassPrediction(BaseModel):
    label: str
    score: float = Field(description="Probability of `label`")
    scores: dict[str, float] = Field(description="Probability of every label")


class ClassifyResponse(BaseModel):
    model: ModelInfo
    predictions: list[ClassPrediction]


class Entity(BaseModel):
    text: str = Field(description="The span as it appears in the input")
    label: str = Field(description="Entity type (BIO prefix removed)")
    start: int = Field(description="Character offset of the span's start in the input text")
    end: int = Field(description="Character offset just past the span's end")
    score: float = Field(description="Mean tag probability over the span's words")


class EntitiesResponse(BaseModel):
    model: ModelInfo
    entities: list[list[Entity]]


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise RuntimeError(f"{name} must be a positive whole number, got {value!r}") from None
    if number < 1:
        raise RuntimeError(f"{name} must be a positive whole number, got {number}")
    return number


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise RuntimeError(f"{name} must be a number of seconds (0 disables), got {value!r}") from None
    if number < 0 or number != number:
        raise RuntimeError(f"{name} must be a number of seconds >= 0 (0 disables), got {value!r}")
    return number


def _blank(text: str) -> bool:
    """Nothing visible: whitespace, control or format characters only (stops at the first visible one)."""
    return all(ch.isspace() or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


def _error(status: int, message: str, **details: Any):
    # A plain JSON object (BentoML's own 4xx wraps the message in a list); imported here, like bentoml does.
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, **details}, status_code=status)


def resolve_bundle_dir(bento_model: Any = None) -> tuple[Path, dict[str, str]]:
    """The bundle folder to serve and the labels that name it (from the BentoML model, when used)."""
    configured = os.environ.get(BUNDLE_ENV)
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
    # No max_concurrency: each /classify request also holds a slot for its inner /classify_batch call, so a
    # cap would answer 429 to those inner calls under load; the batcher's deadline bounds the queue instead.
    traffic={"timeout": 60},
    # The public endpoints reach the batching stage through BentoML's in-process client, which by default
    # replaces its aiohttp session every 100 requests and closes the old one with calls still on it: under
    # concurrency those calls fail (~25% HTTP 500 at 64 concurrent clients, measured). The in-process
    # connector pools nothing, so the session never needs replacing.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e12},
    # The batching stage's in-process hop would double every access-log line; probes and scrapes add noise.
    logging={
        "access": {"skip_paths": ["/classify_batch", "/entities_batch", "/livez", "/readyz", "/metrics"]}
    },
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
        name = os.environ.get("DAPT_MODEL_NAME") or labels.get("name") or spec_name
        version = os.environ.get("DAPT_MODEL_VERSION") or labels.get("version") or spec_version
        self.metrics = service_metrics()
        # Load, verify the manifest checksums, warm up and probe before __init__ returns: BentoML answers
        # /readyz 200 only after that, and __is_ready__ says so explicitly.
        self.slot = ModelSlot(
            load_model(bundle_dir, name, version),
            alias=os.environ.get(ALIAS_ENV) or None,
            poll_s=_float_env(RELOAD_POLL_ENV, DEFAULT_RELOAD_POLL_S),
            on_reload=self.metrics.record_reload,
        )
        self.slot.start()
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.on_shutdown
    def _stop_following_the_alias(self) -> None:
        self._ready = False
        self.slot.stop()

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

    def _invalid(self, texts: list[str], task: str):
        """An error response for a bad request, or None when the request is fine."""
        served = self.slot.current
        if task != served.task:
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
                return _error(422, **surrogate_error(index, text, position))
        return None

    async def _answers(self, stage, texts: list[str]) -> list[dict[str, Any]]:
        """The batching stage's answers, all from one model version (a swap between the sub-batches of one
        request is retried, so a response never mixes versions)."""
        for _ in range(3):
            answers = await stage(texts)
            if len({answer["model"]["version"] for answer in answers}) <= 1:
                break
        return answers

    # ------------------------------------------------------------------ public endpoints

    @bentoml.api(route="/classify")
    async def classify(
        self, texts: Annotated[list[str], Field(description="Texts to classify")] = SAMPLE_TEXTS
    ) -> ClassifyResponse:
        """Class label, its probability and every label's probability, per text."""
        invalid = self._invalid(texts, "classification")
        if invalid is not None:
            return invalid
        answers = await self._answers(self.to_async.classify_batch, texts)
        return ClassifyResponse(model=ModelInfo(**answers[0]["model"]), predictions=answers)

    @bentoml.api(route="/entities")
    async def entities(
        self, texts: Annotated[list[str], Field(description="Texts to extract entities from")] = SAMPLE_TEXTS
    ) -> EntitiesResponse:
        """Entity spans per text, with character offsets into that text."""
        invalid = self._invalid(texts, "ner")
        if invalid is not None:
            return invalid
        answers = await self._answers(self.to_async.entities_batch, texts)
        return EntitiesResponse(
            model=ModelInfo(**answers[0]["model"]), entities=[answer["entities"] for answer in answers]
        )

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """Which model answers (name, version, task, variant, provider, labels), limits and reload state
        (also GET /metadata)."""
        return self.metadata_document()

    def metadata_document(self) -> dict[str, Any]:
        served = self.slot.current
        return {
            **served.predictor.info(),
            **self._model_info(served).model_dump(),
            "bundle_dir": str(served.bundle_dir),
            "max_texts": self.max_texts,
            "max_chars": self.max_chars,
            "max_body_bytes": self.max_body_bytes,
            **self.slot.status(),
            "admin_reload_enabled": bool(os.environ.get("DAPT_ADMIN_TOKEN")),
            "metrics": describe_metrics(),
        }

    # ------------------------------------------------------------------ batching stage

    def _stage(self, task: str, texts: list[str]) -> tuple[ServedModel, list[str]]:
        served = self.slot.current  # read once: this batch is answered by this model even if a swap follows
        if served.task != task:
            from bentoml.exceptions import InvalidArgument

            right = "/entities" if served.task == "ner" else "/classify"
            raise InvalidArgument(f"model {served.name!r} is a {served.task} model: call {right} instead")
        self.metrics.record_batch(served.name, served.version, served.task, len(texts))
        # Requests were validated by the public endpoint; a direct caller still cannot make us tokenize megabytes.
        return served, [text[: self.max_chars] for text in texts]

    @bentoml.api(batchable=True, max_batch_size=BATCH_SIZE, max_latency_ms=BATCH_DEADLINE_MS)
    def classify_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        """Batching stage behind /classify: concurrent requests' texts arrive here as one batch."""
        served, texts = self._stage("classification", texts)
        model = self._model_info(served).model_dump()
        return [{"model": model, **prediction} for prediction in served.predictor.classify(texts)]

    @bentoml.api(batchable=True, max_batch_size=BATCH_SIZE, max_latency_ms=BATCH_DEADLINE_MS)
    def entities_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        """Batching stage behind /entities."""
        served, texts = self._stage("ner", texts)
        model = self._model_info(served).model_dump()
        return [{"model": model, "entities": spans} for spans in served.predictor.entities(texts)]


def _bundle_name_and_version(bundle_dir: Path) -> tuple[str, str]:
    from models.bundle import ServingSpec

    spec = ServingSpec.read(bundle_dir)
    return spec.name, str(spec.extra.get("version", "unversioned"))


# Limits before parsing, uniform JSON errors, GET /metadata and POST /admin/reload (services/guard.py).
DaptService.add_asgi_middleware(RequestGuard)
