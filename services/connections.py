"""Connection limits uvicorn lacks: a request-header timeout and a cap on open connections (issue 14).

uvicorn (under BentoML) times out idle keep-alive connections, but not a connection that never finishes its
request headers: a client that connects and sends nothing, or a header a byte at a time, holds its socket and
its slot in the server forever (a thousand such connections were still open after 75 s; tens of thousands
made ``/readyz`` time out). :class:`GuardedH11Protocol` is uvicorn's h11 protocol with:

- ``DAPT_HEADER_TIMEOUT_S`` (10): a connection must deliver complete request headers within this many seconds
  of opening (or, on a kept-alive connection, of the next request's first byte); else it is closed;
- ``DAPT_KEEP_ALIVE_S`` (5): an idle kept-alive connection is closed after this many seconds;
- ``DAPT_MAX_CONNECTIONS`` (1024): a connection beyond this many open ones is answered 503 with
  ``Retry-After`` and closed at once, so connections already open keep working.

The request body is bounded by the service's request timeout (60 s, ``traffic.timeout``) and body size limit.
BentoML builds uvicorn's ``Config`` itself with ``http="auto"``; :func:`install` (called when the service
module is imported, before the worker builds the server) points uvicorn's "auto" and "h11" protocol names at
this class. The h11 protocol is the one uvicorn uses here anyway (httptools is not installed).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, NamedTuple

from models.settings import HEADER_TIMEOUT_ENV, KEEP_ALIVE_ENV, MAX_CONNECTIONS_ENV, env_number

_REFUSAL_BODY = b'{"error": "too many open connections; retry in 1 s"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


class Limits(NamedTuple):
    header_timeout_s: float
    keep_alive_s: float
    max_connections: int


def _positive(name: str, default: float, kind: type = float) -> Any:
    return env_number(
        name, default, kind=kind, valid=lambda n: n > 0, requirement=f"a positive {kind.__name__}"
    )


@lru_cache(maxsize=1)
def limits() -> Limits:
    return Limits(
        header_timeout_s=_positive(HEADER_TIMEOUT_ENV, 10.0),
        keep_alive_s=_positive(KEEP_ALIVE_ENV, 5.0),
        max_connections=_positive(MAX_CONNECTIONS_ENV, 1024, int),
    )


def install() -> None:
    """Make uvicorn build its HTTP connections with :class:`GuardedH11Protocol` (idempotent)."""
    try:
        import uvicorn.config
        from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: F401 - the class we extend
    except ImportError as exc:  # another uvicorn layout: serve as it is, and say so
        logging.getLogger("dapt").warning(
            "connection limits not installed (%s); check services/connections.py", exc
        )
        return
    limits()  # a bad setting fails the start, not the first connection
    for name in ("auto", "h11"):
        uvicorn.config.HTTP_PROTOCOLS[name] = f"{__name__}:GuardedH11Protocol"


def __getattr__(name: str) -> Any:
    # Built on first use so that importing this module does not import uvicorn (tests, `bentoml build`).
    if name == "GuardedH11Protocol":
        cls = _guarded_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _guarded_class() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with a header timeout and a connection cap (see the module docstring)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            settings = limits()
            self.timeout_keep_alive = settings.keep_alive_s  # type: ignore[assignment]  # uvicorn takes seconds
            self._header_timeout_s = settings.header_timeout_s
            self._max_connections = settings.max_connections
            self._header_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self._max_connections:
                transport.write(REFUSAL)
                transport.close()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE:
                if self._header_timer is None:  # the first byte of a request: its headers are now due
                    self._arm_header_timer()
            else:  # headers complete (sending the body, or done)
                self._cancel_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(self._header_timeout_s, self._header_timed_out)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.transport.close()

    GuardedH11Protocol.__module__ = __name__
    GuardedH11Protocol.__qualname__ = "GuardedH11Protocol"
    return GuardedH11Protocol
