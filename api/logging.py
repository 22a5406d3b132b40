"""Structured logs: JSON lines with the request id, and one access line per request.

``RequestLogMiddleware`` gives every HTTP request an id (the client's
``X-Request-ID`` when it is a short token, else a fresh one), echoes it in the
response's ``X-Request-ID``, keeps it in a context variable for the duration of
the request (log lines of the route, in the thread pool too, carry it) and logs
one ``api.access`` line when the response started: method, route template,
path, status, duration in ms.

``configure_json_logging()`` makes the root logger write :class:`JsonFormatter`
lines to stderr; ``churnflow api`` (``api.main:app``) calls it, ``create_app``
does not, so tests and embedding programs keep their own logging.

>>> import logging
>>> record = logging.LogRecord("api.access", logging.INFO, __file__, 1, "done %s", ("x",), None)
>>> record.status = 200
>>> doc = orjson.loads(JsonFormatter().format(record))
>>> doc["msg"], doc["status"], doc["level"], doc["request_id"]
('done x', 200, 'info', None)
>>> safe_request_id("abc-123"), len(safe_request_id("no spaces allowed"))
('abc-123', 32)
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "JsonFormatter",
    "RequestLogMiddleware",
    "configure_json_logging",
    "current_request_id",
    "route_template",
    "safe_request_id",
]

access_log = logging.getLogger("api.access")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "churnflow_request_id", default=None
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
# attributes every LogRecord has; anything else was passed in ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


def current_request_id() -> str | None:
    return _request_id.get()


def safe_request_id(given: str | None) -> str:
    """The client's request id if it is a short token, else a new random one."""
    if given and _REQUEST_ID.match(given):
        return given
    return secrets.token_hex(16)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": _request_id.get(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in doc:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_json_logging(level: int = logging.INFO) -> None:
    """Root logger → JSON lines on stderr (replaces the root's handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/stores/{store_id}/...``), else ``unmatched``.

    FastAPI (0.16x) includes routers lazily: ``scope["route"]`` is the router's
    own route (its path lacks an ``include_router`` prefix), so the effective
    context's full template is preferred when present.
    """
    fastapi_scope = scope.get("fastapi")
    context = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    for path in (getattr(context, "path_format", None), getattr(scope.get("route"), "path", None)):
        if isinstance(path, str):
            return path
    return "unmatched"


class RequestLogMiddleware:
    """Request id in and out, and one access log line per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                given = value.decode("latin-1")
        request_id = safe_request_id(given)
        token = _request_id.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "%s %s %s",
                scope.get("method"),
                scope.get("path"),
                status,
                extra={
                    "method": scope.get("method"),
                    "route": route_template(scope),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
            _request_id.reset(token)
