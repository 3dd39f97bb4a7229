"""What the service's endpoints answer (pydantic models: BentoML builds the OpenAPI page from them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from services.reloader import ServedModel

SAMPLE_TEXTS = ["Aspirin relieved the patient's headache within an hour."]
MODEL_FIELD_DESCRIPTION = (
    "Which served model answers (a name from /metadata's `models`); optional when one served model fits "
    "this endpoint"
)
TRUNCATED_DESCRIPTION = (
    "True when the text had more tokens than the model's max_length (see /metadata): only its beginning was "
    "read. Split long texts to have all of them read."
)


class ModelInfo(BaseModel):
    name: str = Field(examples=["demo"])
    version: str = Field(examples=["3"])
    variant: str = Field(
        examples=["int8"],
        description="ONNX variant that answered (fp32, int8, fp16); int8 answers near-ties with fp32 "
        "(/metadata runtime.int8_fp32_fallback)",
    )
    provider: str = Field(examples=["CPUExecutionProvider"])

    @classmethod
    def of(cls, served: ServedModel) -> ModelInfo:
        """The model that answered: name, version, and the variant and provider its predictor runs."""
        return cls(
            name=served.name,
            version=served.version,
            variant=served.predictor.variant,
            provider=served.predictor.provider,
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


class EntitiesResponse(BaseModel):
    model: ModelInfo
    entities: list[list[Entity]]
    truncated: list[bool] = Field(description="Per text, in order: " + TRUNCATED_DESCRIPTION)


class EmbedResponse(BaseModel):
    model: ModelInfo
    embeddings: list[list[float]] = Field(description="One unit-length vector per text, in order")
    dimension: int = Field(examples=[384])
    pooling: str = Field(
        examples=["mean"], description="How token vectors became one vector (then L2-normalised)"
    )
    truncated: list[bool] = Field(description="Per text, in order: " + TRUNCATED_DESCRIPTION)
