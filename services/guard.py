"""ASGI middleware in front of the BentoML app: request limits before parsing, uniform JSON errors, and the
routes BentoML APIs cannot express (``GET /metadata``; ``POST /admin/reload`` and ``GET /admin/status`` with a
bearer token).

Body size (``DAPT_MAX_BODY_BYTES``, default 2 MiB) is enforced before anything parses the body: a
``Content-Length`` above the limit is answered 413 at once; a body without one (chunked) is counted as it
streams and refused as soon as it passes the limit. The body of ``/classify``, ``/entities`` and ``/embed``
must be a JSON object whose ``texts`` is a list of strings; anything else (``texts`` missing included) is a 400/422 naming the
field, so malformed input never reaches the model (and BentoML does not log a traceback for each bad request).
Every error body is
``{"error": "<what is wrong and how to fix it>", "field": ..., ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from models.settings import ADMIN_TOKEN_ENV, MAX_BODY_ENV, admin_token, env_number

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
PUBLIC_TEXT_ROUTES = ("/classify", "/entities", "/embed")


def max_body_bytes() -> int:
    return env_number(
        MAX_BODY_ENV,
        DEFAULT_MAX_BODY_BYTES,
        kind=int,
        valid=lambda n: n >= 1024,
        requirement="a whole number of bytes, at least 1024",
    )


async def send_json(
    send: Any, status: int, document: Any, headers: list[tuple[bytes, bytes]] | tuple[()] = ()
) -> None:
    body = json.dumps(document).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


async def read_body(scope: dict, receive: Any, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (declared or streamed) before buffering it."""
    declared = dict(scope.get("headers") or []).get(b"content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ValueError(f"Content-Length {declared[:40].decode('latin-1')!r} is not a number of bytes")
        if int(declared) > limit:
            raise BodyTooLarge(
                f"request body has {int(declared)} bytes; at most {limit} bytes are accepted ({MAX_BODY_ENV})",
                limit,
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(
                f"request body exceeds {limit} bytes ({MAX_BODY_ENV}); send fewer or shorter texts", limit
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any):
    """A receive() that hands the buffered body to the app, then passes on later events (disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def check_texts_payload(body: bytes) -> tuple[int, dict[str, Any]] | None:
    """(status, error document) when the body is not ``{"texts": [str, ...], ...}``-shaped, else None.

    Only the shape is checked here; counts, lengths and blank texts are the service's (it knows the limits).
    """
    if not body.strip():
        return 400, {
            "error": 'request body is empty; send a JSON object like {"texts": ["..."]}',
            "field": "body",
        }
    try:
        document = json.loads(body)
    except UnicodeDecodeError as exc:
        return 400, {
            "error": f"request body is not UTF-8 ({exc.reason} at byte {exc.start})",
            "field": "body",
        }
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, nesting too deep
        return 400, {"error": f"request body is not valid JSON: {str(exc)[:200]}", "field": "body"}
    if not isinstance(document, dict):
        return 400, {
            "error": f'request body must be a JSON object like {{"texts": ["..."]}}, got {type(document).__name__}',
            "field": "body",
        }
    if "texts" not in document:
        near = [
            key for key in document if isinstance(key, str) and key.lower() in ("text", "inputs", "input")
        ]
        hint = f" (got {near[0]!r}: did you mean 'texts'?)" if near else ""
        return 422, {
            "error": f'texts is required: send {{"texts": ["..."]}}, a list of strings{hint}',
            "field": "texts",
        }
    texts = document["texts"]
    if not isinstance(texts, list):
        return 422, {
            "error": f"texts must be a list of strings, got {type(texts).__name__}",
            "field": "texts",
        }
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            return 422, {
                "error": f"texts[{index}] must be a string, got {type(text).__name__}",
                "field": f"texts[{index}]",
            }
        position = unpaired_surrogate(text)
        if position is not None:
            return 422, surrogate_error(index, text, position)
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        return 422, {
            "error": f"model must be the name of a served model (a string, see /metadata), got {type(model).__name__}",
            "field": "model",
        }
    return None


def unpaired_surrogate(text: str) -> int | None:
    """Index of the first lone UTF-16 surrogate (JSON "\\ud800" without its pair), which is not Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def surrogate_error(index: int, text: str, position: int) -> dict[str, Any]:
    return {
        "error": f"texts[{index}] has an unpaired UTF-16 surrogate (U+{ord(text[position]):04X}) at character "
        f"{position}: send valid Unicode (escape characters above U+FFFF as a surrogate pair)",
        "field": f"texts[{index}]",
    }


class RequestGuard:
    """See the module docstring. Reads its limits from the environment when the app is built."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.max_body = max_body_bytes()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        if path == "/metadata" and method in ("GET", "HEAD"):
            await self._metadata(send, head=method == "HEAD")
            return
        if path == "/admin/reload":
            await self._admin_reload(scope, receive, send)
            return
        if path == "/admin/status":
            await self._admin_status(scope, send)
            return
        if method not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return

        try:
            body = await read_body(scope, receive, self.max_body)
        except BodyTooLarge as exc:
            await send_json(send, 413, {"error": str(exc), "field": "body", "limit": exc.limit})
            return
        except ValueError as exc:
            await send_json(send, 400, {"error": str(exc), "field": "Content-Length"})
            return
        except ConnectionResetError:
            return
        if path == "/metadata":  # the POST twin of GET /metadata takes no input: any body is fine
            await self._metadata(send, head=False)
            return
        if path in PUBLIC_TEXT_ROUTES:
            problem = check_texts_payload(body)
            if problem is not None:
                await send_json(send, *problem)
                return
        await self.app(scope, _replay(body, receive), send)

    # ------------------------------------------------------------------ routes

    @staticmethod
    def _service():
        import bentoml

        return bentoml.get_current_service()

    async def _metadata(self, send: Any, head: bool) -> None:
        service = self._service()
        if service is None:
            await send_json(
                send, 503, {"error": "the service is still starting; retry when /readyz says 200"}
            )
            return
        body = json.dumps(service.metadata_document()).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    @staticmethod
    async def _authorized(scope: dict, send: Any, what: str) -> bool:
        """True for a request with the admin bearer token; otherwise answers 403/401 and returns False."""
        token = admin_token()
        if not token:
            await send_json(
                send,
                403,
                {
                    "error": f"{what} is disabled: no admin token is configured (set {ADMIN_TOKEN_ENV} on the server)"
                },
            )
            return False
        given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            await send_json(
                send,
                401,
                {
                    "error": "missing or wrong admin token: send the header 'Authorization: Bearer <DAPT_ADMIN_TOKEN>'"
                },
                [(b"www-authenticate", b"Bearer")],
            )
            return False
        return True

    async def _admin_status(self, scope: dict, send: Any) -> None:
        """``GET /admin/status``: /metadata plus what only the operator should see (bundle path, raw errors)."""
        if scope["method"] not in ("GET", "HEAD"):
            await send_json(
                send, 405, {"error": "use GET /admin/status", "field": "method"}, [(b"allow", b"GET")]
            )
            return
        if not await self._authorized(scope, send, "the admin status"):
            return
        service = self._service()
        if service is None:
            await send_json(
                send, 503, {"error": "the service is still starting; retry when /readyz says 200"}
            )
            return
        await send_json(send, 200, service.metadata_document(operator=True))

    async def _admin_reload(self, scope: dict, receive: Any, send: Any) -> None:
        """``POST /admin/reload`` (optional body ``{"version": N, "model": NAME}``; ``model`` is needed when
        several models are served), bearer token from DAPT_ADMIN_TOKEN.

        With a version the service stays on it (the alias poller stops); without one it goes back to the
        alias's version and follows the alias again."""
        if scope["method"] != "POST":
            await send_json(
                send, 405, {"error": "use POST /admin/reload", "field": "method"}, [(b"allow", b"POST")]
            )
            return
        if not await self._authorized(scope, send, "reload"):
            return
        try:
            body = await read_body(scope, receive, 4096)
        except BodyTooLarge:
            await send_json(
                send, 413, {"error": 'the reload body is at most {"version": N}', "field": "body"}
            )
            return
        except (ValueError, ConnectionResetError) as exc:
            await send_json(send, 400, {"error": str(exc), "field": "body"})
            return
        version = None
        model = None
        if body.strip():
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                document = None
            if not isinstance(document, dict):
                await send_json(send, 400, {"error": 'body must be empty or {"version": N}', "field": "body"})
                return
            version = document.get("version")
            model = document.get("model")
            if model is not None and not isinstance(model, str):
                await send_json(send, 422, {"error": "model must be a served model's name", "field": "model"})
                return
            if version is not None and (
                isinstance(version, bool) or not isinstance(version, int) or version < 1
            ):
                await send_json(
                    send,
                    422,
                    {
                        "error": f"version must be a positive whole number, got {version!r}",
                        "field": "version",
                    },
                )
                return
        service = self._service()
        if service is None:
            await send_json(
                send, 503, {"error": "the service is still starting; retry when /readyz says 200"}
            )
            return
        from services.reloader import ReloadFailed

        try:
            slot = service.admin_slot(model)
        except ReloadFailed as exc:
            await send_json(send, exc.status, {"error": str(exc), "field": "model"})
            return
        try:
            # In a plain thread, not BentoML's inference thread: predictions go on while the candidate loads.
            result = await asyncio.to_thread(slot.pin, version, reason="POST /admin/reload")
        except ReloadFailed as exc:
            await send_json(send, exc.status, {"error": str(exc), "field": "version"})
            return
        await send_json(send, 200, result)
