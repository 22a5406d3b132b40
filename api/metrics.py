"""Prometheus metrics: ``GET /metrics`` (text exposition format, no API key).

With ``CHURNFLOW_METRICS_TOKEN`` set the scrape needs ``Authorization: Bearer
<token>`` (compared in constant time), else 401 ``unauthenticated``; unset, the
route is open, and :func:`warn_if_exposed` logs a warning at start-up when the API
binds a non-loopback host (the recall gauges carry store names).

===============================================  =========================================
metric                                           what
===============================================  =========================================
``churnflow_api_request_duration_seconds``       histogram by ``method``, ``route``
                                                 (the path template, ``unmatched`` for
                                                 404s) and ``status``
``churnflow_webhook_requests_total``             webhook deliveries by ``platform`` and
                                                 ``outcome``: accepted, ignored,
                                                 duplicate, ping, bad_signature,
                                                 no_secret, bad_body, rate_limited,
                                                 broker_unavailable, error
``churnflow_webhook_events_total``               events produced from webhooks, by platform
``churnflow_recall_stream_length``               entries per recall stream, by ``store``
                                                 and ``stream`` (``queue:<channel>``,
                                                 ``suppressed``, ``log``, ``dead:<channel>``)
``churnflow_recall_delivery_pending``            entries read by the delivery workers and
                                                 not acknowledged yet, per queue
``churnflow_recall_delivery_lag``                entries the delivery group has not read
                                                 yet, per queue (Redis 7 ``XINFO GROUPS``)
===============================================  =========================================

Each app has its own registry (``app.state.metrics``), so apps built in one
process (tests) do not share counters. Recall gauges are read from Redis at
scrape time: the stream keys are found with ``SCAN`` (remembered for
``DISCOVERY_TTL_S``), then one pipeline of ``XLEN`` / ``XINFO GROUPS``.

Consumer lag of the dataflow is not exported: Bytewax's Kafka source keeps its
offsets in its recovery store, not in a Kafka consumer group (it runs with
``group.id=BYTEWAX_IGNORED`` and no commits), so there are no committed offsets
to compare with the high watermarks.

>>> webhook_outcome(202, b'{"accepted": 2, "ignored": false}')
'accepted'
>>> webhook_outcome(200, b'{"duplicate": true}'), webhook_outcome(200, b'{"ping": true}')
('duplicate', 'ping')
>>> webhook_outcome(401, b'{"error": {"code": "bad_signature", "message": ""}}')
'bad_signature'
>>> webhook_outcome(413, b""), webhook_outcome(429, b""), webhook_outcome(500, b"")
('bad_body', 'rate_limited', 'error')
>>> stream_label("cf", "cf:{demo}:recall:email"), stream_label("cf", "cf:{demo}:recall-log")
(('demo', 'queue:email'), ('demo', 'log'))
>>> stream_label("cf", "cf:{demo}:recall-dead:sms"), stream_label("cf", "cf:{x}:customer:1")
(('demo', 'dead:sms'), None)
>>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "api.example")]
[True, True, True, False, False]
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from typing import Annotated, Any, cast

import orjson
import redis
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from api.logging import route_template
from engine.settings import Settings

__all__ = [
    "Metrics",
    "MetricsMiddleware",
    "is_loopback",
    "router",
    "stream_label",
    "warn_if_exposed",
    "webhook_outcome",
]

log = logging.getLogger(__name__)

WEBHOOK_ROUTE = "/v1/stores/{store_id}/webhooks/"
DISCOVERY_TTL_S = 60.0
DELIVERY_GROUP = "delivery"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

router = APIRouter(tags=["health"])


class Metrics:
    """One app's registry and instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "churnflow_api_request_duration_seconds",
            "API request latency by route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhooks = Counter(
            "churnflow_webhook_requests_total",
            "Webhook deliveries by platform and outcome",
            ["platform", "outcome"],
            registry=self.registry,
        )
        self.webhook_events = Counter(
            "churnflow_webhook_events_total",
            "Events produced from webhooks",
            ["platform"],
            registry=self.registry,
        )
        self.recall_length = Gauge(
            "churnflow_recall_stream_length",
            "Entries per recall stream",
            ["store", "stream"],
            registry=self.registry,
        )
        self.recall_pending = Gauge(
            "churnflow_recall_delivery_pending",
            "Recall entries delivered to a worker and not acknowledged",
            ["store", "stream"],
            registry=self.registry,
        )
        self.recall_lag = Gauge(
            "churnflow_recall_delivery_lag",
            "Recall entries the delivery group has not read yet",
            ["store", "stream"],
            registry=self.registry,
        )
        self._streams: list[str] = []
        self._discovered_at = float("-inf")

    def streams(self, client: redis.Redis, prefix: str) -> list[str]:
        """The recall stream keys (``SCAN``, remembered for ``DISCOVERY_TTL_S``)."""
        now = time.monotonic()
        if now - self._discovered_at > DISCOVERY_TTL_S:
            found = client.scan_iter(f"{prefix}:{{*}}:recall*", count=1000, _type="stream")
            self._streams = sorted({_text(k) for k in found})
            self._discovered_at = now
        return self._streams

    def refresh_recall(self, client: redis.Redis, prefix: str) -> None:
        streams = [(s, stream_label(prefix, s)) for s in self.streams(client, prefix)]
        labelled = [(s, label) for s, label in streams if label is not None]
        pipe = client.pipeline(transaction=False)
        for stream, _ in labelled:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        replies = pipe.execute(raise_on_error=False) if labelled else []
        for gauge in (self.recall_length, self.recall_pending, self.recall_lag):
            gauge.clear()
        for i, (_, (store, name)) in enumerate(labelled):
            length, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(length, int):
                self.recall_length.labels(store, name).set(length)
            if not isinstance(groups, list):
                continue
            for group in groups:
                info = {_text(k): v for k, v in cast(dict[Any, Any], group).items()}
                if _text(info.get("name", b"")) != DELIVERY_GROUP:
                    continue
                self.recall_pending.labels(store, name).set(int(info.get("pending") or 0))
                if isinstance(info.get("lag"), int):
                    self.recall_lag.labels(store, name).set(info["lag"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_label(prefix: str, key: str) -> tuple[str, str] | None:
    """``(store, stream)`` of a recall stream key, else ``None``."""
    head = f"{prefix}:{{"
    if not key.startswith(head) or "}:" not in key:
        return None
    store, _, rest = key[len(head) :].partition("}:")
    if rest.startswith("recall:"):
        return store, f"queue:{rest.removeprefix('recall:')}"
    if rest == "recall-suppressed":
        return store, "suppressed"
    if rest == "recall-log":
        return store, "log"
    if rest.startswith("recall-dead:"):
        return store, f"dead:{rest.removeprefix('recall-dead:')}"
    return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def webhook_outcome(status: int, body: bytes) -> str:
    """The outcome of a webhook delivery from its answer (status and JSON body)."""
    doc = _json_object(body)
    code = doc.get("error", {}).get("code") if isinstance(doc.get("error"), dict) else None
    if status == 202:
        return "accepted" if doc.get("accepted") else "ignored"
    if status == 200:
        return "duplicate" if doc.get("duplicate") else "ping"
    if status == 401:
        return "bad_signature" if code == "bad_signature" else "no_secret"
    return {
        400: "bad_body",
        413: "bad_body",
        422: "bad_body",
        429: "rate_limited",
        503: "broker_unavailable",
    }.get(status, "error")


class MetricsMiddleware:
    """Times every HTTP request by route template; counts webhook outcomes."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        body = bytearray()
        # only a webhook's answer is read (for its outcome): no copy of other bodies
        keep_body = "/webhooks/" in scope.get("path", "")

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif keep_body and message["type"] == "http.response.body" and len(body) < 65536:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = route_template(scope)
            elapsed = time.perf_counter() - started
            self.metrics.latency.labels(scope.get("method", ""), route, str(status)).observe(
                elapsed
            )
            if route.startswith(WEBHOOK_ROUTE):
                platform = route.removeprefix(WEBHOOK_ROUTE)
                outcome = webhook_outcome(status, bytes(body))
                self.metrics.webhooks.labels(platform, outcome).inc()
                if outcome == "accepted":
                    accepted = _json_object(bytes(body)).get("accepted")
                    if isinstance(accepted, int):
                        self.metrics.webhook_events.labels(platform).inc(accepted)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) binds only the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: Settings) -> bool:
    """Log a warning (and say so) when ``/metrics`` is open on a non-loopback host."""
    if settings.metrics_token or is_loopback(settings.api_host):
        return False
    log.warning(
        "GET /metrics is open on %s and its recall gauges name the stores: "
        "set CHURNFLOW_METRICS_TOKEN",
        settings.api_host,
    )
    return True


def require_metrics_token(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    """401 unless ``Authorization: Bearer <metrics_token>`` when a token is set."""
    settings: Settings = request.app.state.settings
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if not token:
        return
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(401, "unauthenticated", "missing Authorization: Bearer <token> header")
    given = authorization.removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "unauthenticated", "wrong metrics token")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_token)])
def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; recall gauges are read from Redis now."""
    metrics: Metrics = request.app.state.metrics
    settings = request.app.state.settings
    try:
        metrics.refresh_recall(request.app.state.redis, settings.key_prefix)
    except redis.RedisError:
        pass  # the request metrics are still worth scraping; the recall gauges keep old values
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
