"""The service's input contract after parsing: per-request limits from the environment and the checks that turn
a bad request into a ``{"error", "field", "limit"?}`` JSON answer (400, 413, 422), never a 5xx.

    limits = RequestLimits.from_environment()        # DAPT_MAX_TEXTS, DAPT_MAX_CHARS, DAPT_MAX_BODY_BYTES
    problem = limits.invalid(texts, "classification", served)   # an error response, or None when fine

The body size is checked before parsing, in services/guard.py.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.settings import MAX_CHARS_ENV, MAX_TEXTS_ENV, env_number
from services.guard import max_body_bytes, surrogate_error, unpaired_surrogate

if TYPE_CHECKING:
    from services.reloader import ServedModel

DEFAULT_MAX_TEXTS = 64
DEFAULT_MAX_CHARS = 10_000
# A text with only these (besides whitespace) has nothing to classify: control, format (zero-width, direction
# marks, BOM) and separator characters.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
TASK_KINDS = {"classification": "text-classification", "ner": "NER", "embedding": "embedding"}


def int_env(name: str, default: int) -> int:
    return env_number(name, default, kind=int, valid=lambda n: n >= 1, requirement="a positive whole number")


def float_env(name: str, default: float) -> float:
    return env_number(
        name, default, kind=float, valid=lambda n: n >= 0, requirement="a number of seconds >= 0 (0 disables)"
    )


def blank(text: str) -> bool:
    """Nothing visible: whitespace, control or format characters only (stops at the first visible one)."""
    return all(ch.isspace() or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **details: Any):
    # A plain JSON object (BentoML's own 4xx wraps the message in a list); imported here, like bentoml does.
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, **details}, status_code=status, headers=headers)


def wrong_endpoint(task: str, served: ServedModel):
    """An error response when ``served`` cannot answer ``task``'s endpoint, or None when it can."""
    if task == "embedding":
        if served.predictor.embedding_session is None:
            return error_response(
                400,
                f"model {served.name!r} v{served.version} has no embedding model in its bundle (exported before "
                "/embed existed, or its embedding failed parity): re-export and register it to serve /embed",
                field="endpoint",
            )
        return None
    if task != served.task:
        right = "/entities" if served.task == "ner" else "/classify"
        kind = "a token-classification (NER)" if served.task == "ner" else "a text-classification"
        return error_response(
            400,
            f"model {served.name!r} is {kind} model: call {right} instead",
            field="endpoint",
            use=right,
        )
    return None


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may carry (``/metadata`` shows them)."""

    max_texts: int
    max_chars: int
    max_body_bytes: int

    @classmethod
    def from_environment(cls) -> RequestLimits:
        return cls(
            max_texts=int_env(MAX_TEXTS_ENV, DEFAULT_MAX_TEXTS),
            max_chars=int_env(MAX_CHARS_ENV, DEFAULT_MAX_CHARS),
            max_body_bytes=max_body_bytes(),
        )

    def invalid(self, texts: list[str], task: str, served: ServedModel):
        """An error response for a bad request, or None when the request is fine."""
        wrong = wrong_endpoint(task, served)
        if wrong is not None:
            return wrong
        if not texts:
            return error_response(422, "texts is empty: send at least one text", field="texts")
        if len(texts) > self.max_texts:
            return error_response(
                413,
                f"texts has {len(texts)} items; at most {self.max_texts} per request ({MAX_TEXTS_ENV})",
                field="texts",
                limit=self.max_texts,
            )
        for index, text in enumerate(texts):
            problem = self._invalid_text(index, text)
            if problem is not None:
                return problem
        return None

    def _invalid_text(self, index: int, text: str):
        if len(text) > self.max_chars:
            return error_response(
                413,
                f"texts[{index}] has {len(text)} characters; at most {self.max_chars} ({MAX_CHARS_ENV})",
                field=f"texts[{index}]",
                limit=self.max_chars,
            )
        if blank(text):
            return error_response(
                422,
                f"texts[{index}] is empty or has only whitespace, control or format characters",
                field=f"texts[{index}]",
            )
        position = unpaired_surrogate(text)
        if position is not None:
            problem = surrogate_error(index, text, position)
            return error_response(422, problem["error"], field=problem["field"])
        return None
