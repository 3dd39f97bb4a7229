"""services/timeouts.py: BentoML's request timeout, without pinning each finished request for the timeout."""

from __future__ import annotations

import asyncio
import contextvars
import gc

import pytest

REQUEST_STATE = contextvars.ContextVar("request_state")


class Payload:
    """Stands for a request's state (span, Starlette request): we check whether it outlives the request."""


def with_request_state(app):
    """What OpenTelemetry's middleware does one layer above the timeout: the request's span in a contextvar."""

    async def outer(scope, receive, send):
        REQUEST_STATE.set(Payload())
        await app(scope, receive, send)

    return outer


async def answering_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(5)
    await answering_app(scope, receive, send)


async def failing_app(scope, receive, send):
    raise RuntimeError("broken before answering")


async def call(app, path="/classify"):
    """One HTTP request through ``app`` as uvicorn would make it: in a task with its own context."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    await asyncio.get_running_loop().create_task(app(scope, receive, send))
    return sent


def pending_request_timers(loop) -> int:
    return sum(1 for handle in loop._scheduled if not handle.cancelled())


def live_payloads() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Payload))


def middlewares():
    """BentoML's own TimeoutMiddleware (even when install() already replaced it) and ours."""
    from bentoml._internal.server.http import traffic

    from services.timeouts import _prompt_class

    current = traffic.TimeoutMiddleware
    upstream = current.__mro__[1] if getattr(current, "cancels_its_timer", False) else current
    return upstream, _prompt_class(upstream)


def test_bentoml_upstream_timeout_pins_finished_requests_which_ours_does_not():
    """The reason for the module (if BentoML fixes it upstream, the first half fails and the patch can go)."""
    upstream, prompt = middlewares()

    async def run(middleware_class) -> tuple[int, int]:
        app = with_request_state(middleware_class(answering_app, timeout=60))
        for _ in range(50):
            sent = await call(app)
            assert sent[0]["status"] == 200
        return pending_request_timers(asyncio.get_running_loop()), live_payloads()

    pending, alive = asyncio.run(run(upstream))
    assert pending == 50 and alive >= 49
    pending, alive = asyncio.run(run(prompt))
    assert pending == 0 and alive <= 1  # at most the last request, still referenced by its finished task


def test_timeout_still_answers_504_json():
    _, prompt = middlewares()

    async def run():
        return await call(prompt(slow_app, timeout=0.2))

    sent = asyncio.run(run())
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.2 seconds" in sent[1]["body"]


def test_an_app_failing_before_answering_fails_at_once_instead_of_waiting_out_the_timeout():
    _, prompt = middlewares()

    async def run():
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RuntimeError, match="broken before answering"):
            await call(prompt(failing_app, timeout=30))
        return loop.time() - started, pending_request_timers(loop)

    seconds, pending = asyncio.run(run())
    assert seconds < 5 and pending == 0


def test_install_makes_bentoml_build_apps_with_the_prompt_middleware():
    from bentoml._internal.server.http import traffic

    import services.service  # noqa: F401  (installs at import, before any app is built)

    assert getattr(traffic.TimeoutMiddleware, "cancels_its_timer", False) is True
