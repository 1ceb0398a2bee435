"""What stands between the network and the routes: the Host check, the request-body limit
and timeout, security headers, slow-header timeouts and a token-free access log.

`RequestGuard` is one ASGI middleware (outermost, so nothing is read before it decides):

* Host: a request whose `Host` header is not one of `Settings.allowed_hosts` is refused
  (400) before any route runs. A tokenless server on 127.0.0.1 would otherwise answer a
  page of another site whose name was re-pointed at 127.0.0.1 (DNS rebinding).
* Body: the bytes of a request body are counted as they arrive, with or without a
  Content-Length, and the request is answered 413 the moment they pass the limit
  (`--max-upload-mb`); a client that sends nothing for `body_timeout_s` is answered 408.
  Before, a chunked upload was written to a temporary file in full before its 413.
* Headers: `nosniff`, a self-only Content-Security-Policy (the page loads nothing from
  elsewhere), no framing, no Referer (the page's URL may hold `?token=`), and `no-store`
  for `/api/` answers (they hold patients' images).

`slow_client_protocol` closes connections whose request head does not arrive within a
timeout (uvicorn has none: a client sending a header byte a minute held its connection for
ever), and `redact_tokens` keeps `?token=` values out of uvicorn's access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MULTIPART_FRAMING = 64 * 1024  # boundaries and part headers around an upload's bytes

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
        b"style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        b"frame-ancestors 'none'; form-action 'self'",
    ),
)


class _Refused(Exception):
    """Raised out of `receive` after the guard has answered; ends the route."""


def host_name(header: str) -> str:
    """`Host` header -> the name without port: 'a.b:8000' -> 'a.b', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(bind: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The loopback names, the address the server is bound to (unless it is every address)
    and `extra` (`--allowed-host`: the names clients use for a server on 0.0.0.0)."""
    names = [*LOOPBACK_HOSTS, *(host_name(h) for h in extra)]
    if bind not in ("0.0.0.0", "::", ""):
        names.append(host_name(bind) if not bind.startswith("[") else host_name(bind))
        names.append(bind.lower())
    return tuple(dict.fromkeys(names))


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(b"connection", b"close"), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """The ASGI middleware of the module docstring; reads `app.state.settings` per request
    (`allowed_hosts`, `max_upload_bytes`, `body_timeout_s`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.settings
        hosts = settings.allowed_hosts
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if hosts is not None and host not in hosts:
            await _answer(send, 400, f"Host '{host}' is not served here (--allowed-host)")
            return
        limit = settings.max_upload_bytes + MULTIPART_FRAMING
        state = {"received": 0, "answered": False}
        api = scope.get("path", "").startswith("/api/")

        async def guarded_receive() -> Message:
            if state.get("body_done"):
                return await receive()  # e.g. a response listening for a disconnect
            try:
                message = await asyncio.wait_for(receive(), settings.body_timeout_s)
            except TimeoutError:
                await refuse(408, f"no request data for {settings.body_timeout_s:g} s")
                raise  # not reached: refuse raises
            if message["type"] == "http.request":
                state["body_done"] = not message.get("more_body", False)
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    await refuse(
                        413,
                        f"the request is over the --max-upload-mb limit of "
                        f"{settings.max_upload_mb:g} MB",
                    )
            return message

        async def refuse(status: int, message: str) -> None:
            if not state["answered"] and not state.get("started"):
                state["answered"] = True
                await _answer(send, status, message)
            raise _Refused

        async def guarded_send(message: Message) -> None:
            if state["answered"]:
                return  # the route's own answer to a body it could not read
            if message["type"] == "http.response.start":
                state["started"] = True
                extra = list(SECURITY_HEADERS)
                if api:
                    extra.append((b"cache-control", b"no-store"))
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in extra if k not in present),
                ]
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _Refused:
            pass
        except Exception:
            if not state["answered"]:
                raise  # a real error: Starlette's handlers answer it


# ------------------------------------------------------------------ uvicorn


def slow_client_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose next request head has not
    arrived `header_timeout_s` after the connection opened or the last answer was sent."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SlowClientTimeout(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _expire(self) -> None:
            waiting = self.conn.their_state is h11.IDLE
            if waiting and (self.cycle is None or self.cycle.response_complete):
                if not self.transport.is_closing():
                    self.transport.close()

    return SlowClientTimeout


_TOKEN_QUERY = re.compile(r"(?i)(token=)[^&\s\"]*")


class RedactTokens(logging.Filter):
    """Replaces `token=<value>` in a log record's arguments (uvicorn's access log line
    holds the request's path with its query) with `token=***`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = _TOKEN_QUERY.sub(r"\1***", record.msg)
        return True


def redact_tokens() -> None:
    """Installs `RedactTokens` on uvicorn's loggers (after uvicorn configured logging)."""
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    header_timeout_s: float = 10.0,
    keep_alive_s: float = 5.0,
    max_connections: int = 64,
    log_level: str = "info",
) -> Any:
    """The uvicorn configuration `scripts/serve.py` runs: slow request heads closed
    (`slow_client_protocol`), idle keep-alive connections closed after `keep_alive_s`, a
    request head of at most 64 KB, at most `max_connections` open connections (503 beyond),
    and `token=` values redacted from its logs."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # No logging configuration of its own: uvicorn's dictConfig closes every handler
        # already installed; its loggers propagate to the command's console logging.
        log_config=None,
        http=slow_client_protocol(header_timeout_s),
        timeout_keep_alive=int(max(1, keep_alive_s)),
        h11_max_incomplete_event_size=64 * 1024,
        limit_concurrency=max_connections,
        server_header=False,
    )
    redact_tokens()
    return config
