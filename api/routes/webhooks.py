"""Webhook ingestion: Shopify, WooCommerce and generic signed batches → the events topic.

``POST /v1/stores/{store_id}/webhooks/{shopify|woocommerce|events}``. No API key:
the HMAC signature over the raw body, under the store's secret for that
platform (:mod:`api.webhook_secrets`), is the authentication.

==========================================  ===========================================
outcome                                     answer
==========================================  ===========================================
events produced, every one acknowledged     202 ``{"accepted": n, "event_ids": [...]}``
body normalised to nothing, or a topic we   202 ``{"accepted": 0, "ignored": true,
do not handle (``UnsupportedTopic``)        "reason": ...}`` — 2xx so that the platform
                                            does not retry it or disable the webhook
Shopify ``X-Shopify-Webhook-Id`` produced   200 ``{"duplicate": true}``, nothing produced
in the last 7 days
the same ``X-Shopify-Webhook-Id`` still     409 ``in_progress`` with ``Retry-After`` (the
being produced by another request           first may yet fail, so the platform retries)
Shopify ``shop/redact``                      202; an ``erase_request`` per customer of the
                                            store, then the store's Redis keys removed
WooCommerce set-up ping (unsigned)          200 ``{"ping": true}``
no secret configured for the store          401 ``unauthenticated``
missing or wrong signature                  401 ``bad_signature`` (and a warning log line)
body over 1 MiB                             413 ``payload_too_large``
not JSON, ``MalformedPayload``, an invalid  400 ``malformed_payload``; the raw body goes to
event in a batch                            the dead-letter topic (headers error, step
                                            ``webhook``, source ``webhook/<platform>``)
the broker does not acknowledge in time     503 ``broker_unavailable`` (the platform retries)
==========================================  ===========================================

Order of checks: size, then signature (an unsigned body is never written
anywhere), then parsing and normalisation, then deduplication, then producing.
A batch is all or nothing: one invalid event rejects the whole body.

Producing uses the app's idempotent producer; each request waits (up to
``app.state.produce_timeout_s``) for the delivery report of each of its events
and answers 202 only when all of them are acknowledged. The Shopify dedup
marker ``{prefix}:{<store>}:webhook:<id>`` is first set *pending* (``SET NX``
with a token and a short TTL, :func:`pending_ttl_s`), made permanent (7 days)
only after the broker acknowledged every event, and removed if producing fails;
so neither a 503 nor a crash in between makes the platform's retry look like a
duplicate (a crashed request's marker expires within the short TTL). Event ids are deterministic
(:mod:`api.webhooks`), so a retry after a 503 whose events did reach the broker
is deduplicated by the dataflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from decimal import Decimal
from typing import Annotated, Any, cast

import orjson
import redis
from confluent_kafka import KafkaException, Producer
from fastapi import APIRouter, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter

from api.errors import ApiError, ErrorBody
from api.ratelimit import enforce, webhook_bucket
from api.webhook_secrets import get_secret
from api.webhooks import (
    NormalizeResult,
    UnsupportedTopic,
    as_list,
    as_mapping,
    is_woocommerce_ping,
    normalize_shopify,
    normalize_woocommerce,
    parse_utc,
    verify_generic,
    verify_shopify,
    verify_woocommerce,
)
from api.webhooks.shopify import canonical_topic
from engine.connectors.kafka import idempotent_producer
from engine.errors import ChurnflowError
from engine.events import EraseRequest, Event, encode_event, parse_event
from engine.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/stores/{store_id}/webhooks", tags=["webhooks"])

MAX_BODY_BYTES = 1 << 20
MAX_BATCH_EVENTS = 1000
DEDUP_TTL_S = 7 * 86400
PENDING_MARGIN_S = 15
PENDING = b"pending:"
DELIVERED = b"delivered"
PRODUCE_TIMEOUT_S = 10.0
MAX_WEBHOOK_ID_CHARS = 200
MAX_LISTED_EVENT_IDS = 1000

StorePath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed body (dead-lettered)"},
    409: {"model": ErrorBody, "description": "the same delivery is being produced (Shopify)"},
    401: {"model": ErrorBody, "description": "no secret for the store, or a bad signature"},
    413: {"model": ErrorBody, "description": "body over 1 MiB"},
    429: {"model": ErrorBody, "description": "the store's webhook rate limit (Retry-After)"},
    503: {"model": ErrorBody, "description": "the broker did not acknowledge the events"},
}


class WebhookAccepted(BaseModel):
    accepted: int
    event_ids: list[str]
    ignored: bool = False
    reason: str | None = None
    skipped: list[str] = []
    test: bool = False


class Duplicate(BaseModel):
    duplicate: bool


class Ping(BaseModel):
    ping: bool


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined (OpenAPI resolves ``$ref`` from the
    document root, where ``#/$defs`` does not exist); discriminator mappings dropped.

    >>> inline_refs({"$defs": {"A": {"type": "integer"}}, "items": {"$ref": "#/$defs/A"}})
    {'items': {'type': 'integer'}}
    """
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
        return {
            key: walk(value)
            for key, value in node.items()
            if key != "$defs" and not (key == "discriminator" and isinstance(value, dict))
        }

    inlined: dict[str, Any] = walk(schema)
    return inlined


EVENT_SCHEMA = inline_refs(TypeAdapter(Event).json_schema())
"""One canonical event (:mod:`engine.events`), for the batch route's documented body."""


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a raw (signed) JSON request body the route reads itself."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


Headers = list[tuple[str, str | bytes | None]]
Message = tuple[str, bytes, bytes, Headers | None]
"""topic, key, value, headers"""


class _Duplicate(Exception):
    """The delivery was produced before (answered 200 ``duplicate``)."""


class _Malformed(Exception):
    """A signed body that cannot be used; dead-lettered, answered 400."""


def open_producer(settings: Settings, timeout_s: float = PRODUCE_TIMEOUT_S) -> Producer:
    """The API's idempotent producer; librdkafka gives up on a message after ``timeout_s``.

    ``message.max.bytes`` leaves room for a dead-lettered body of up to 1 MiB plus
    its headers (librdkafka's default, 1 000 000, is less than 1 MiB).
    """
    config = {"message.timeout.ms": int(timeout_s * 1000), "message.max.bytes": 2 * MAX_BODY_BYTES}
    return idempotent_producer(settings.brokers, **config)


# ------------------------------------------------------------------ producing


class _Acks:
    """Delivery reports of one request's messages (the callback may run on any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = 0
        self.errors: list[str] = []

    def __call__(self, err: Any, msg: Any) -> None:
        with self.lock:
            self.done += 1
            if err is not None:
                self.errors.append(str(err))


def _produce_all(
    producer: Producer,
    messages: list[Message],
    timeout_s: float,
) -> None:
    """Produce ``(topic, key, value, headers)`` and wait for every acknowledgement, or 503."""
    acks = _Acks()
    try:
        for topic, key, value, headers in messages:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=acks)
            producer.poll(0)
    except (BufferError, KafkaException) as exc:
        producer.flush(min(timeout_s, 1.0))  # let the ones already queued report
        raise ApiError(503, "broker_unavailable", f"cannot produce: {exc}") from None
    deadline = time.monotonic() + timeout_s + 1.0
    while True:
        with acks.lock:
            done, errors = acks.done, list(acks.errors)
        if done >= len(messages) or time.monotonic() >= deadline:
            break
        # flush() serves the delivery reports; another request's thread may serve ours.
        if producer.flush(min(0.5, max(0.0, deadline - time.monotonic()))) == 0:
            producer.poll(0.01)
    if errors or done < len(messages):
        reason = errors[0] if errors else f"{len(messages) - done} not acknowledged in time"
        log.warning("webhook produce failed: %s", reason)
        raise ApiError(503, "broker_unavailable", f"the broker did not acknowledge: {reason}")


def _dead_letter(
    request: Request, store_id: str, platform: str, raw: bytes, error: str, timeout_s: float
) -> None:
    settings: Settings = request.app.state.settings
    source = f"webhook/{platform}"
    log.warning("webhook dead letter store=%s source=%s error=%s", store_id, source, error)
    headers: Headers = [
        ("error", error.encode()),
        ("step", b"webhook"),
        ("source", source.encode()),
        ("store", store_id.encode()),
    ]
    _produce_all(
        request.app.state.producer,
        [(settings.dead_letter_topic, source.encode(), raw, headers)],
        timeout_s,
    )


def _produce_events(request: Request, events: list[Event], timeout_s: float) -> None:
    settings: Settings = request.app.state.settings
    messages: list[Message] = [
        (settings.events_topic, e.key.encode(), encode_event(e), None) for e in events
    ]
    _produce_all(request.app.state.producer, messages, timeout_s)


def produce_events(request: Request, events: list[Event]) -> None:
    """Produce events with the app's idempotent producer; return once all are acked, or 503."""
    _produce_events(request, events, _timeout(request))


# ------------------------------------------------------------------ request plumbing


async def _read_body(request: Request) -> bytes:
    """The raw body, or 413 past ``MAX_BODY_BYTES`` (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _secret(request: Request, store_id: str, platform: str) -> str:
    settings: Settings = request.app.state.settings
    client: redis.Redis = request.app.state.redis
    secret = get_secret(client, settings.key_prefix, store_id, platform)
    if secret is None:
        log.warning(
            "webhook refused store=%s platform=%s: no secret configured", store_id, platform
        )
        raise ApiError(
            401, "unauthenticated", f"no {platform} webhook secret is configured for {store_id!r}"
        )
    return secret


def _bad_signature(request: Request, store_id: str, platform: str) -> ApiError:
    client = request.client.host if request.client else "?"
    log.warning("webhook bad signature store=%s platform=%s from=%s", store_id, platform, client)
    return ApiError(401, "bad_signature", f"the {platform} signature does not match the body")


def _rate_limit(request: Request, store_id: str) -> None:
    """The store's webhook budget (taken after the signature check), or 429."""
    settings: Settings = request.app.state.settings
    bucket = webhook_bucket(settings.key_prefix, store_id)
    rate, burst = settings.webhook_rate_limit_per_s, settings.webhook_rate_limit_burst
    enforce(request.app.state.redis, bucket, rate, burst, f"webhooks of store {store_id!r}")


def _timeout(request: Request) -> float:
    return float(getattr(request.app.state, "produce_timeout_s", PRODUCE_TIMEOUT_S))


def _normalise_or_dead_letter(
    request: Request, store_id: str, platform: str, raw: bytes, normalise: Any
) -> NormalizeResult | UnsupportedTopic:
    """Run ``normalise()``; a client-caused failure is dead-lettered and answered 400."""
    try:
        result: NormalizeResult = normalise()
        return result
    except UnsupportedTopic as exc:
        return exc
    except (_Malformed, ChurnflowError, ValueError, RecursionError) as exc:
        error = str(exc) or type(exc).__name__
    except Exception as exc:  # a normaliser bug must not become a 500: keep the body
        log.exception("webhook normaliser failed store=%s platform=%s", store_id, platform)
        error = f"normaliser failed: {type(exc).__name__}: {exc}"
    _dead_letter(request, store_id, platform, raw, error[:2000], _timeout(request))
    raise ApiError(400, "malformed_payload", error[:2000])


def _accept(request: Request, result: NormalizeResult | UnsupportedTopic) -> JSONResponse:
    if isinstance(result, UnsupportedTopic):
        body = WebhookAccepted(accepted=0, event_ids=[], ignored=True, reason=str(result))
        return JSONResponse(body.model_dump(), status_code=202)
    if result.events:
        _produce_events(request, result.events, _timeout(request))
    body = WebhookAccepted(
        accepted=len(result.events),
        event_ids=[e.event_id for e in result.events],
        ignored=not result.events,
        reason=None if result.events else ("; ".join(result.skipped) or "no events"),
        skipped=result.skipped,
        test=result.test,
    )
    return JSONResponse(body.model_dump(), status_code=202)


def _apply_erasures(
    request: Request, result: NormalizeResult | UnsupportedTopic
) -> NormalizeResult | UnsupportedTopic:
    """Erase requests (customers/redact) also remove the customer's Redis data now.

    With ``clock=event`` the event is re-dated into the dataflow's event time
    (:func:`api.routes.privacy.erase_time`).
    """
    if isinstance(result, UnsupportedTopic) or not any(
        isinstance(e, EraseRequest) for e in result.events
    ):
        return result
    from api.routes.privacy import erase_customer_data, erase_time  # privacy imports us

    settings: Settings = request.app.state.settings
    client: redis.Redis = request.app.state.redis
    events: list[Event] = []
    for event in result.events:
        if isinstance(event, EraseRequest):
            if settings.clock == "event":
                when = erase_time(client, settings, event.store_id, event.customer_id)
                event = event.model_copy(update={"occurred_at": when})
            removed = erase_customer_data(
                client, settings.key_prefix, event.store_id, event.customer_id
            )
            log.info(
                "webhook erase store=%s customer=%s removed=%s",
                event.store_id,
                event.customer_id,
                removed._asdict(),
            )
        events.append(event)
    return dataclasses.replace(result, events=events)


def _deliver(
    request: Request, store_id: str, topic: str | None, result: NormalizeResult | UnsupportedTopic
) -> JSONResponse:
    """Produce a Shopify delivery's events; ``shop/redact`` erases the whole store."""
    if isinstance(result, UnsupportedTopic) or canonical_topic(topic or "") != "shop/redact":
        return _accept(request, _apply_erasures(request, result))
    from api.routes.privacy import redact_store  # privacy imports us

    event_ids, removed = redact_store(request, store_id, "shopify")
    body = WebhookAccepted(
        accepted=len(event_ids),
        event_ids=event_ids[:MAX_LISTED_EVENT_IDS],
        ignored=not event_ids,
        reason=f"shop/redact: {len(event_ids)} customers erased, {removed} Redis keys removed",
        test=result.test,
    )
    return JSONResponse(body.model_dump(), status_code=202)


# KEYS: the marker. ARGV: our pending token, then the value (and TTL) to put.
# Acts only while the marker still holds our token (it may have expired and
# been claimed by a retry since).
_CONFIRM_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def dedup_key(prefix: str, store_id: str, webhook_id: str) -> str:
    """
    >>> dedup_key("cf", "demo", "b54557e4")
    'cf:{demo}:webhook:b54557e4'
    """
    return f"{prefix}:{{{store_id}}}:webhook:{webhook_id}"


def pending_ttl_s(produce_timeout_s: float) -> int:
    """How long a pending marker lives: past the produce wait, short of a platform retry.

    >>> pending_ttl_s(10.0), pending_ttl_s(1.0)
    (25, 16)
    """
    return math.ceil(produce_timeout_s) + PENDING_MARGIN_S


def claim_delivery(client: redis.Redis, marker: str, ttl_s: int) -> bytes:
    """Mark a delivery pending (``SET NX``, ``ttl_s``); return the token, or answer it.

    A delivery already produced answers 200 ``duplicate``; one still being
    produced by another request answers 409 ``in_progress`` with ``Retry-After``
    (the platform retries: the first may yet fail).
    """
    token = PENDING + uuid.uuid4().hex.encode()
    if client.set(marker, token, nx=True, ex=ttl_s):
        return token
    held = cast(bytes | None, client.get(marker))
    if held is not None and not held.startswith(PENDING):
        raise _Duplicate()
    wait = client.ttl(marker)
    raise ApiError(
        409,
        "in_progress",
        "this webhook delivery is being produced by another request; retry",
        headers={"Retry-After": str(max(1, int(wait)))},
    )


def confirm_delivery(client: redis.Redis, marker: str, token: bytes) -> None:
    """The broker acknowledged: the pending marker becomes permanent (``DEDUP_TTL_S``)."""
    client.eval(_CONFIRM_LUA, 1, marker, token, DELIVERED, DEDUP_TTL_S)


def release_delivery(client: redis.Redis, marker: str, token: bytes) -> None:
    """Producing failed: remove our pending marker so the platform's retry goes through."""
    client.eval(_RELEASE_LUA, 1, marker, token)


def data_request_ids(raw: bytes) -> str:
    """What an operator needs to answer a Shopify data request (with the export route),
    without writing the customer's email or phone into the logs.

    >>> data_request_ids(b'{"customer": {"id": 7, "email": "a@b.c"}, "data_request": {"id": 9}}')
    'customer=7 data_request=9 orders=[]'
    """
    parsed = orjson.loads(raw)
    doc: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    customer = as_mapping(doc.get("customer"))
    request = as_mapping(doc.get("data_request"))
    orders = as_list(doc.get("orders_requested"))
    return f"customer={customer.get('id')} data_request={request.get('id')} orders={orders[:50]}"


def _load_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)  # ints exact to 64 bits; nesting is bounded
    except orjson.JSONDecodeError as exc:
        raise _Malformed(f"body is not JSON: {exc}") from None


# ------------------------------------------------------------------ routes


def _shopify(
    request: Request,
    store_id: str,
    raw: bytes,
    topic: str | None,
    signature: str | None,
    webhook_id: str | None,
    triggered_at: str | None,
) -> JSONResponse:
    secret = _secret(request, store_id, "shopify")
    if not verify_shopify(raw, signature, secret):
        raise _bad_signature(request, store_id, "shopify")
    _rate_limit(request, store_id)
    webhook_id = (webhook_id or "").strip() or None
    if webhook_id is not None and len(webhook_id) > MAX_WEBHOOK_ID_CHARS:
        raise ApiError(400, "invalid_request", "X-Shopify-Webhook-Id is too long")

    def normalise() -> NormalizeResult:
        received = None
        if triggered_at:
            received = parse_utc(triggered_at, "X-Shopify-Triggered-At")
        return normalize_shopify(
            topic or "",
            _load_json(raw),
            store_id=store_id,
            webhook_id=webhook_id,
            received_at=received,
        )

    result = _normalise_or_dead_letter(request, store_id, "shopify", raw, normalise)
    if canonical_topic(topic or "") == "customers/data_request":
        log.info("shopify customers/data_request store=%s %s", store_id, data_request_ids(raw))
    if webhook_id is None:
        return _deliver(request, store_id, topic, result)
    settings: Settings = request.app.state.settings
    client: redis.Redis = request.app.state.redis
    dedup = dedup_key(settings.key_prefix, store_id, webhook_id)
    token = claim_delivery(client, dedup, pending_ttl_s(_timeout(request)))
    try:
        answer = _deliver(request, store_id, topic, result)
    except Exception:
        release_delivery(client, dedup, token)  # not delivered: the retry must go through
        raise
    confirm_delivery(client, dedup, token)
    return answer


@router.post(
    "/shopify",
    status_code=202,
    response_model=WebhookAccepted,
    responses={**ERRORS, 200: {"model": Duplicate, "description": "a delivery seen before"}},
    openapi_extra=json_body({"type": "object"}, "the Shopify payload, signed as sent"),
)
async def shopify_webhook(
    request: Request,
    store_id: StorePath,
    x_shopify_topic: Annotated[str | None, Header()] = None,
    x_shopify_hmac_sha256: Annotated[str | None, Header()] = None,
    x_shopify_webhook_id: Annotated[str | None, Header()] = None,
    x_shopify_triggered_at: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """A Shopify webhook; deduplicated on ``X-Shopify-Webhook-Id`` for 7 days."""
    raw = await _read_body(request)
    signature = x_shopify_hmac_sha256 or request.headers.get("shopify-hmac-sha256")
    try:
        return await run_in_threadpool(
            _shopify,
            request,
            store_id,
            raw,
            x_shopify_topic,
            signature,
            x_shopify_webhook_id,
            x_shopify_triggered_at,
        )
    except _Duplicate:
        return JSONResponse({"duplicate": True}, status_code=200)


def _woocommerce(
    request: Request, store_id: str, raw: bytes, topic: str | None, signature: str | None
) -> JSONResponse:
    secret = _secret(request, store_id, "woocommerce")
    if not verify_woocommerce(raw, signature, secret):
        raise _bad_signature(request, store_id, "woocommerce")
    _rate_limit(request, store_id)
    result = _normalise_or_dead_letter(
        request,
        store_id,
        "woocommerce",
        raw,
        lambda: normalize_woocommerce(topic or "", raw, store_id=store_id),
    )
    return _accept(request, result)


@router.post(
    "/woocommerce",
    status_code=202,
    response_model=WebhookAccepted,
    responses={**ERRORS, 200: {"model": Ping, "description": "the unsigned set-up ping"}},
    openapi_extra=json_body({"type": "object"}, "the WooCommerce payload, signed as sent"),
)
async def woocommerce_webhook(
    request: Request,
    store_id: StorePath,
    x_wc_webhook_topic: Annotated[str | None, Header()] = None,
    x_wc_webhook_signature: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """A WooCommerce webhook; the unsigned set-up ping (``webhook_id=<n>``) gets 200."""
    raw = await _read_body(request)
    if is_woocommerce_ping(raw):
        return JSONResponse({"ping": True}, status_code=200)
    return await run_in_threadpool(
        _woocommerce, request, store_id, raw, x_wc_webhook_topic, x_wc_webhook_signature
    )


def _parse_batch(raw: bytes, store_id: str) -> NormalizeResult:
    doc = json.loads(raw, parse_float=Decimal) if raw.strip() else None
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise _Malformed('body must be a JSON object {"events": [...]}')
    items = doc["events"]
    if not items:
        raise _Malformed("events: empty")
    if len(items) > MAX_BATCH_EVENTS:
        raise _Malformed(f"events: {len(items)} events, at most {MAX_BATCH_EVENTS} per batch")
    events: list[Event] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Malformed(f"events[{i}]: not a JSON object")
        try:
            event = parse_event(item)
        except ChurnflowError as exc:
            raise _Malformed(f"events[{i}]: {exc}") from None
        if event.store_id != store_id:
            raise _Malformed(
                f"events[{i}]: store_id {event.store_id!r} is not the path's store {store_id!r}"
            )
        events.append(event)
    return NormalizeResult(events=events, skipped=[], kind="events")


def _generic(request: Request, store_id: str, raw: bytes, signature: str | None) -> JSONResponse:
    secret = _secret(request, store_id, "events")
    if not verify_generic(raw, signature, secret):
        raise _bad_signature(request, store_id, "events")
    _rate_limit(request, store_id)
    result = _normalise_or_dead_letter(
        request, store_id, "events", raw, lambda: _parse_batch(raw, store_id)
    )
    return _accept(request, result)


@router.post(
    "/events",
    status_code=202,
    response_model=WebhookAccepted,
    responses=ERRORS,
    openapi_extra=json_body(
        {
            "type": "object",
            "required": ["events"],
            "properties": {
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH_EVENTS,
                    "items": EVENT_SCHEMA,
                }
            },
        },
        "canonical events of this store (engine/events.py), all or none",
    ),
)
async def events_webhook(
    request: Request,
    store_id: StorePath,
    x_churnflow_signature: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """A signed batch of canonical events (``X-Churnflow-Signature: sha256=<hex>``), all or none."""
    raw = await _read_body(request)
    return await run_in_threadpool(_generic, request, store_id, raw, x_churnflow_signature)
