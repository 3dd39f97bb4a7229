"""BentoML's per-request timeout without its memory growth (issue 8).

BentoML 1.4's ``TimeoutMiddleware`` arms ``loop.call_later(timeout, ...)`` for every request and never cancels
it. The timer handle keeps the request's context alive until the timeout fires (``traffic.timeout``, 60 s
here): the OpenTelemetry span, the Starlette request and everything they reference, ~20 KB per request for
this service. Under steady load the worker therefore holds ``requests/s x timeout`` dead requests: at 200
req/s that is ~240 MB, measured as RSS climbing 20 KB per request (tracemalloc and objgraph traced the live
spans to ``loop._scheduled`` -> ``TimerHandle`` -> ``Context``).

:class:`PromptTimeoutMiddleware` keeps BentoML's behaviour (504 JSON once the timeout passes before the
response starts) but arms the timer in an empty context and cancels it when the request ends. The timeout
cannot be turned off in BentoML's configuration (it must be > 0), so :func:`install` swaps the class in
BentoML's module before the app is built; the service module calls it at import time.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any


def install() -> None:
    """Make BentoML build its apps with :class:`PromptTimeoutMiddleware` (idempotent)."""
    try:
        from bentoml._internal.server.http import traffic

        upstream = traffic.TimeoutMiddleware
    except (ImportError, AttributeError) as exc:  # another BentoML layout: serve as it is, and say so
        logging.getLogger("dapt").warning(
            "BentoML timeout fix not installed (%s); check services/timeouts.py", exc
        )
        return
    traffic.TimeoutMiddleware = _prompt_class(upstream)  # type: ignore[misc,assignment]


def _prompt_class(upstream: type) -> type:
    if getattr(upstream, "cancels_its_timer", False):  # already installed
        return upstream

    class PromptTimeoutMiddleware(upstream):  # type: ignore[misc, valid-type]
        """BentoML's TimeoutMiddleware whose timer holds no request state and is cancelled when done."""

        cancels_its_timer = True

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] not in ("http", "websocket"):
                await self.app(scope, receive, send)
                return
            from starlette.responses import JSONResponse

            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            # An empty context: a timer that does fire must not pin the request's contextvars either.
            timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

            async def _send(message: Any) -> None:
                if not waiter.done():
                    waiter.set_result(None)
                await send(message)

            task = asyncio.ensure_future(self.app(scope, receive, _send))
            try:
                # Upstream waits for the response to start only, so an app that fails before answering held
                # the request until the timeout; waiting for either ends it as soon as the app does.
                await asyncio.wait((waiter, task), return_when=asyncio.FIRST_COMPLETED)
                timed_out = waiter.done() and waiter.exception() is not None
                if timed_out and task.cancel():
                    response = JSONResponse(
                        {"error": f"Not able to process the request in {self.timeout} seconds"},
                        status_code=504,
                    )
                    await response(scope, receive, send)
                else:
                    await task
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                timer.cancel()
                if not waiter.done():
                    waiter.cancel()

    PromptTimeoutMiddleware.__qualname__ = PromptTimeoutMiddleware.__name__
    return PromptTimeoutMiddleware
