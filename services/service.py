"""The HTTP service: BentoML 1.4 + ONNX Runtime, with adaptive batching across concurrent requests.

    DAPT_BUNDLE_DIR=.dapt/artifacts/demo/3 bentoml serve services.service:DaptService --port 3000

Where the model comes from (first that is set):
  - ``DAPT_BUNDLE_DIR``: a serving bundle folder (``dapt serve`` sets it from the registry alias);
  - ``DAPT_BENTO_MODEL``: a BentoML model tag (``dapt bento build`` packs that model into the bento).
``DAPT_MODEL_NAME`` / ``DAPT_MODEL_VERSION`` name the model in every response (defaults: the bundle's).
Limits: ``DAPT_MAX_TEXTS`` (64) texts per request, ``DAPT_MAX_CHARS`` (10000) characters per text.

Endpoints: ``POST /classify``, ``POST /entities``, ``GET /metadata``; BentoML adds ``/livez``, ``/readyz``,
``/metrics`` and the OpenAPI page at ``/`` (spec at ``/docs.json``). ``/classify_batch`` and
``/entities_batch`` are the batching stage the two public endpoints call; prefer the public ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field

from services.predictor import OnnxPredictor

BUNDLE_ENV = "DAPT_BUNDLE_DIR"
BENTO_MODEL_ENV = "DAPT_BENTO_MODEL"
MAX_TEXTS_ENV = "DAPT_MAX_TEXTS"
MAX_CHARS_ENV = "DAPT_MAX_CHARS"
DEFAULT_MAX_TEXTS = 64
DEFAULT_MAX_CHARS = 10_000
BATCH_SIZE = 32  # what one ONNX Runtime call takes at most; larger requests are split by the dispatcher
# The batcher answers 503 to a request it expects to miss this deadline; generous, because CPUs are slow.
BATCH_DEADLINE_MS = int(os.environ.get("DAPT_BATCH_DEADLINE_MS", "10000"))

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
    workers=1,
)
class DaptService:
    if BENTO_MODEL_TAG:
        bento_model = bentoml.models.BentoModel(BENTO_MODEL_TAG)

    def __init__(self) -> None:
        bundle_dir, labels = resolve_bundle_dir(getattr(self, "bento_model", None))
        self.predictor = OnnxPredictor(bundle_dir)
        self.predictor.warmup()  # BentoML reports /readyz only after __init__ returns: load + warm first
        info = self.predictor.info()
        self.model_info = ModelInfo(
            name=os.environ.get("DAPT_MODEL_NAME") or labels.get("name") or info["name"],
            version=os.environ.get("DAPT_MODEL_VERSION") or labels.get("version") or info["version"],
            variant=info["variant"],
            provider=info["provider"],
        )
        self.max_texts = _int_env(MAX_TEXTS_ENV, DEFAULT_MAX_TEXTS)
        self.max_chars = _int_env(MAX_CHARS_ENV, DEFAULT_MAX_CHARS)

    # ------------------------------------------------------------------ validation

    def _invalid(self, texts: list[str], task: str):
        """An error response for a bad request, or None when the request is fine."""
        task_now = self.predictor.spec.task
        if task != task_now:
            right = "/entities" if task_now == "ner" else "/classify"
            kind = "a token-classification (NER)" if task_now == "ner" else "a text-classification"
            return _error(
                400,
                f"model {self.model_info.name!r} is {kind} model: call {right} instead",
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
            if not text.strip():
                return _error(422, f"texts[{index}] is empty or whitespace", field=f"texts[{index}]")
            if len(text) > self.max_chars:
                return _error(
                    413,
                    f"texts[{index}] has {len(text)} characters; at most {self.max_chars} ({MAX_CHARS_ENV})",
                    field=f"texts[{index}]",
                    limit=self.max_chars,
                )
        return None

    # ------------------------------------------------------------------ public endpoints

    @bentoml.api(route="/classify")
    async def classify(
        self, texts: Annotated[list[str], Field(description="Texts to classify")] = SAMPLE_TEXTS
    ) -> ClassifyResponse:
        """Class label, its probability and every label's probability, per text."""
        invalid = self._invalid(texts, "classification")
        if invalid is not None:
            return invalid
        predictions = await self.to_async.classify_batch(texts)
        return ClassifyResponse(model=self.model_info, predictions=predictions)

    @bentoml.api(route="/entities")
    async def entities(
        self, texts: Annotated[list[str], Field(description="Texts to extract entities from")] = SAMPLE_TEXTS
    ) -> EntitiesResponse:
        """Entity spans per text, with character offsets into that text."""
        invalid = self._invalid(texts, "ner")
        if invalid is not None:
            return invalid
        spans = await self.to_async.entities_batch(texts)
        return EntitiesResponse(model=self.model_info, entities=spans)

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict[str, Any]:
        """Which model answers: name, version, task, variant, provider, labels, limits (also GET /metadata)."""
        return self.metadata_document()

    def metadata_document(self) -> dict[str, Any]:
        return {
            **self.predictor.info(),
            **self.model_info.model_dump(),
            "max_texts": self.max_texts,
            "max_chars": self.max_chars,
        }

    # ------------------------------------------------------------------ batching stage

    @bentoml.api(batchable=True, max_batch_size=BATCH_SIZE, max_latency_ms=BATCH_DEADLINE_MS)
    def classify_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        """Batching stage behind /classify: concurrent requests' texts arrive here as one batch."""
        # Requests were validated by /classify; a direct caller still cannot make us tokenize megabytes.
        return self.predictor.classify([text[: self.max_chars] for text in texts])

    @bentoml.api(batchable=True, max_batch_size=BATCH_SIZE, max_latency_ms=BATCH_DEADLINE_MS)
    def entities_batch(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """Batching stage behind /entities."""
        return self.predictor.entities([text[: self.max_chars] for text in texts])


class MetadataOnGet:
    """BentoML APIs answer POST only; this ASGI middleware also answers ``GET /metadata`` (same document)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and scope["path"].rstrip("/") == "/metadata"
        ):
            service = bentoml.get_current_service()
            if service is not None:
                body = json.dumps(service.metadata_document()).encode("utf-8")
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
                return
        await self.app(scope, receive, send)


DaptService.add_asgi_middleware(MetadataOnGet)
