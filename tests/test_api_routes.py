"""The batch, segment and webhook routes against the real broker and redis-server.

Reads are seeded with plain SET/ZADDs in the Redis sink's key layout. Webhooks
are posted with the real payload files of /work/shared/webhooks, signed the way
``sign.py`` signs them, and the normalised events are then read back from the
real events topic (and bad bodies from the dead-letter topic).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Consumer, Message, TopicPartition
from fastapi.testclient import TestClient

from api.keys import create_key
from api.main import create_app
from api.routes.webhooks import MAX_BODY_BYTES, open_producer
from api.webhook_secrets import get_secret, set_secret
from api.webhooks import guest_customer_id, sign_generic
from engine.connectors.redis_sink import customer_key, segment_key
from engine.events import OrderEvent, decode_event, encode_event
from engine.segments import SEGMENTS
from engine.settings import Settings

pytestmark = pytest.mark.integration

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webhooks"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared webhook corpus not found at {SHARED}"
)
LARAVEL = "shopify/orders_create__laravel-shopify__admin-test-notification.json"
WOO_GUEST = "woocommerce/order__rest-api-docs-v3__guest-processing.json"

STORE = "shop"
OTHER = "other"
SHOPIFY_SECRET = "shpss_0123456789abcdef"
WOO_SECRET = "ck&amp;secret"  # WooCommerce uses it as "ck&secret"
EVENTS_SECRET = "batch-secret"


# ------------------------------------------------------------------ helpers


def b64_hmac(secret: str, body: bytes) -> str:
    """sign.py's algorithm: base64(HMAC-SHA256(secret, raw body))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_headers(body: bytes, topic: str, webhook_id: str, secret: str = SHOPIFY_SECRET):
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": b64_hmac(secret, body),
        "X-Shopify-Shop-Domain": "shop.myshopify.com",
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Triggered-At": "2026-11-23T10:00:00.000000Z",
    }


def woo_headers(body: bytes, topic: str, secret: str = "ck&secret") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Signature": b64_hmac(secret, body),
        "X-WC-Webhook-Source": "https://shop.example/",
    }


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 20.0):
    """The first ``expected`` messages of partition 0 (fewer if the timeout passes)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"routes-{settings.key_prefix}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    found: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            found.append(msg)
    finally:
        consumer.close()
    return found


def produced(api: TestClient, settings: Settings) -> list[bytes]:
    """Every value in the events topic so far (partition 0), up to a marker sent now.

    Counting by reading (not by the high watermark, which Tansu reports per batch):
    a signed marker event is posted last, and the values before it are returned.
    """
    marker_id = f"marker-{time.monotonic_ns()}"
    raw = orjson.dumps({"events": [{**canonical("marker"), "event_id": marker_id}]})
    sent = api.post(
        f"/v1/stores/{STORE}/webhooks/events",
        content=raw,
        headers={"X-Churnflow-Signature": sign_generic(raw, EVENTS_SECRET)},
    )
    assert sent.status_code == 202, sent.text
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"count-{settings.key_prefix}",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.assign([TopicPartition(settings.events_topic, 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            if marker_id.encode() in msg.value():
                return [v for v in values if b'"marker-' not in v]
            values.append(msg.value())
    finally:
        consumer.close()
    raise AssertionError("the marker event did not arrive")


def profile(customer: str, probability: float, segment: str, spend: float) -> dict[str, Any]:
    return {
        "store_id": STORE,
        "customer_id": customer,
        "churn_probability": probability,
        "risk_band": "high" if probability >= 0.7 else "low",
        "segment": segment,
        "value_tier": "high" if spend >= 200 else "low",
        "reasons": [],
        "model_version": "logreg-test",
        "model_warm": True,
        "features": {"order_count": 2.0, "spend_total_base": spend},
        "profile": {},
        "updated_at": "2026-11-23T10:00:00+00:00",
        "cause": "event",
    }


def seed(client: redis.Redis, prefix: str, docs: list[dict[str, Any]]) -> None:
    pipe = client.pipeline()
    for doc in docs:
        pipe.set(customer_key(prefix, STORE, doc["customer_id"]), orjson.dumps(doc))
        pipe.zadd(
            segment_key(prefix, STORE, doc["segment"]),
            {doc["customer_id"]: doc["churn_probability"]},
        )
    pipe.execute()


@pytest.fixture()
def api(settings: Settings, redis_client: redis.Redis) -> Iterator[TestClient]:
    set_secret(redis_client, settings.key_prefix, STORE, "shopify", SHOPIFY_SECRET)
    set_secret(redis_client, settings.key_prefix, STORE, "woocommerce", WOO_SECRET)
    set_secret(redis_client, settings.key_prefix, STORE, "events", EVENTS_SECRET)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture()
def keys(settings: Settings, redis_client: redis.Redis) -> dict[str, dict[str, str]]:
    def bearer(store: str) -> dict[str, str]:
        key = create_key(redis_client, settings.key_prefix, store, ("read",))
        return {"Authorization": f"Bearer {key}"}

    return {"own": bearer(STORE), "other": bearer(OTHER)}


# ------------------------------------------------------------------ batchGet


def test_batch_get_found_missing_limits_and_scope(
    api: TestClient, settings: Settings, redis_client: redis.Redis, keys: dict
) -> None:
    seed(
        redis_client,
        settings.key_prefix,
        [profile("a", 0.9, "silent", 10.0), profile("b", 0.2, "active", 300.0)],
    )
    url = f"/v1/stores/{STORE}/customers:batchGet"
    ok = api.post(url, json={"customer_ids": ["b", "zz", "a", "b"]}, headers=keys["own"])
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert [c["customer_id"] for c in body["customers"]] == ["b", "a"]
    assert body["customers"][0]["features"]["spend_total_base"] == 300.0
    assert body["missing"] == ["zz"]

    at_limit = api.post(
        url, json={"customer_ids": [str(i) for i in range(1000)]}, headers=keys["own"]
    )
    assert at_limit.status_code == 200 and len(at_limit.json()["missing"]) == 1000
    for bad in ({"customer_ids": [str(i) for i in range(1001)]}, {"customer_ids": []}, {}):
        too = api.post(url, json=bad, headers=keys["own"])
        assert too.status_code == 422
        assert too.json()["error"]["code"] == "invalid_request"

    assert api.post(url, json={"customer_ids": ["a"]}).status_code == 401
    cross = api.post(url, json={"customer_ids": ["a"]}, headers=keys["other"])
    assert cross.status_code == 403 and cross.json()["error"]["code"] == "forbidden"


# ------------------------------------------------------------------ segments


def test_segment_counts_and_pages_by_probability(
    api: TestClient, settings: Settings, redis_client: redis.Redis, keys: dict
) -> None:
    silent = [
        profile(f"s{i}", p, "silent", spend=10.0 * i)
        for i, p in enumerate([0.31, 0.95, 0.12, 0.77, 0.5])
    ]
    seed(redis_client, settings.key_prefix, [*silent, profile("n1", 0.4, "new", 20.0)])
    base = f"/v1/stores/{STORE}/segments"

    counts = api.get(base, headers=keys["own"])
    assert counts.status_code == 200, counts.text
    body = counts.json()
    assert body["segments"] == {s: {"silent": 5, "new": 1}.get(s, 0) for s in SEGMENTS}
    assert body["total"] == 6 and "value_tiers" not in body

    page = api.get(f"{base}/silent/customers", params={"limit": 2}, headers=keys["own"])
    assert page.status_code == 200, page.text
    first = page.json()
    assert [c["customer_id"] for c in first["customers"]] == ["s1", "s3"]
    assert first["customers"][0]["churn_probability"] == 0.95
    assert first["customers"][0]["features"]["spend_total_base"] == 10.0
    seen = [c["customer_id"] for c in first["customers"]]
    cursor = first["next_cursor"]
    while cursor:
        nxt = api.get(
            f"{base}/silent/customers", params={"limit": 2, "cursor": cursor}, headers=keys["own"]
        ).json()
        seen += [c["customer_id"] for c in nxt["customers"]]
        cursor = nxt["next_cursor"]
    assert seen == ["s1", "s3", "s4", "s0", "s2"]  # 0.95, 0.77, 0.5, 0.31, 0.12

    asc = api.get(f"{base}/silent/customers", params={"order": "asc"}, headers=keys["own"]).json()
    assert [c["customer_id"] for c in asc["customers"]] == ["s2", "s0", "s4", "s3", "s1"]
    assert asc["next_cursor"] is None

    # min_spend filters the fetched page: this page of 2 (s1 = 10, s3 = 30) keeps one
    rich = api.get(
        f"{base}/silent/customers", params={"limit": 2, "min_spend": 25}, headers=keys["own"]
    ).json()
    assert [c["customer_id"] for c in rich["customers"]] == ["s3"]
    assert rich["next_cursor"] is not None

    unknown = api.get(f"{base}/dormant/customers", headers=keys["own"])
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    bad_cursor = api.get(f"{base}/silent/customers?cursor=nope", headers=keys["own"])
    assert bad_cursor.status_code == 422
    assert api.get(f"{base}/silent/customers?limit=0", headers=keys["own"]).status_code == 422

    for url in (base, f"{base}/silent/customers"):
        assert api.get(url).status_code == 401
        cross = api.get(url, headers=keys["other"])
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "forbidden"


# ------------------------------------------------------------------ webhooks


def test_webhook_secrets_roundtrip(settings: Settings, redis_client: redis.Redis) -> None:
    assert get_secret(redis_client, settings.key_prefix, STORE, "shopify") is None
    set_secret(redis_client, settings.key_prefix, STORE, "shopify", "s3cret")
    assert get_secret(redis_client, settings.key_prefix, STORE, "shopify") == "s3cret"
    with pytest.raises(ValueError):
        set_secret(redis_client, settings.key_prefix, STORE, "bigcommerce", "x")


@needs_shared
def test_shopify_webhook_produces_dedupes_and_refuses(
    api: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    body = (SHARED / LARAVEL).read_bytes()
    url = f"/v1/stores/{STORE}/webhooks/shopify"
    headers = shopify_headers(body, "orders/create", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")

    accepted = api.post(url, content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["event_ids"] == ["shopify:order:820982911946154508:order_created"]
    assert accepted.json()["test"] is True

    (msg,) = read_topic(settings, settings.events_topic, expected=1)
    event = decode_event(msg.value())
    assert isinstance(event, OrderEvent)
    assert event.order_id == "820982911946154508"  # exact, not rounded through a float
    assert event.customer_id == "115310627314723954" and event.store_id == STORE
    assert msg.key() == f"{STORE}:115310627314723954".encode()
    assert str(event.amount) == "57.98" and event.currency == "USD"
    assert msg.value() == encode_event(event)

    # the same delivery again: 200 duplicate, nothing produced
    again = api.post(url, content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"duplicate": True}
    assert len(produced(api, settings)) == 1
    dedup = f"{settings.key_prefix}:{{{STORE}}}:webhook:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    assert 0 < redis_client.ttl(dedup) <= 7 * 86400

    # wrong secret, no signature, a tampered body: 401 bad_signature, nothing produced
    wrong = shopify_headers(body, "orders/create", "w-1", secret="not-the-secret")
    unsigned = {k: v for k, v in headers.items() if k != "X-Shopify-Hmac-Sha256"}
    for content, hdrs in (
        (body, wrong),
        (body, unsigned),
        (body.replace(b"57.98", b"0.01"), headers),
    ):
        bad = api.post(url, content=content, headers=hdrs)
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "bad_signature"
    # a store without a secret
    nosecret = api.post(f"/v1/stores/{OTHER}/webhooks/shopify", content=body, headers=headers)
    assert nosecret.status_code == 401 and nosecret.json()["error"]["code"] == "unauthenticated"

    # an unsupported topic is acknowledged and ignored (the platform must not retry it)
    ignored = api.post(url, content=body, headers=shopify_headers(body, "themes/publish", "w-2"))
    assert ignored.status_code == 202 and ignored.json()["ignored"] is True
    assert "unsupported Shopify topic" in ignored.json()["reason"]
    assert len(produced(api, settings)) == 1

    # over 1 MiB: 413 before anything else
    huge = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    big = api.post(url, content=huge, headers=shopify_headers(huge, "orders/create", "w-3"))
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"

    # an invalid store name in the path is refused before any Redis key is built
    assert api.post("/v1/stores/a{b}/webhooks/shopify", content=body).status_code == 422


@needs_shared
def test_malformed_bodies_are_dead_lettered(api: TestClient, settings: Settings) -> None:
    url = f"/v1/stores/{STORE}/webhooks/shopify"
    not_json = b'{"id": 1, "oops'
    bad = api.post(url, content=not_json, headers=shopify_headers(not_json, "orders/create", "m1"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_payload"
    # a JSON body a normaliser refuses (MalformedPayload): an order without a currency
    no_ccy = (
        b'{"id": 5, "email": "a@b.c", "created_at": "2026-01-01T00:00:00Z", "total_price": "x"}'
    )
    refused = api.post(url, content=no_ccy, headers=shopify_headers(no_ccy, "orders/create", "m2"))
    assert refused.status_code == 400, refused.text
    # a refused body is not remembered as delivered: a fixed retry would go through
    again = api.post(url, content=no_ccy, headers=shopify_headers(no_ccy, "orders/create", "m2"))
    assert again.status_code == 400
    nested = b"[" * 100_000
    deep = api.post(url, content=nested, headers=shopify_headers(nested, "orders/create", "m3"))
    assert deep.status_code == 400

    # exactly 1 MiB is allowed, and a body that size still fits in a dead letter
    limit = b"{" + b"x" * (MAX_BODY_BYTES - 1)
    full = api.post(url, content=limit, headers=shopify_headers(limit, "orders/create", "m4"))
    assert full.status_code == 400, full.text

    letters = read_topic(settings, settings.dead_letter_topic, expected=5)
    assert [m.value() for m in letters][:2] == [not_json, no_ccy]
    assert nested in [m.value() for m in letters] and limit in [m.value() for m in letters]
    for m in letters:
        headers = {k: v.decode() for k, v in m.headers()}
        assert headers["step"] == "webhook" and headers["source"] == "webhook/shopify"
        assert headers["error"]
    assert "not JSON" in dict(letters[0].headers())["error"].decode()
    assert len(produced(api, settings)) == 0


@needs_shared
def test_woocommerce_webhook_and_ping(api: TestClient, settings: Settings) -> None:
    url = f"/v1/stores/{STORE}/webhooks/woocommerce"
    ping = api.post(
        url,
        content=b"webhook_id=12",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert ping.status_code == 200 and ping.json() == {"ping": True}
    # the ping is answered even for a store without a secret
    assert api.post(f"/v1/stores/{OTHER}/webhooks/woocommerce", content=b"webhook_id=3").json() == {
        "ping": True
    }

    body = (SHARED / WOO_GUEST).read_bytes()
    accepted = api.post(url, content=body, headers=woo_headers(body, "order.created"))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["accepted"] == 2

    messages = read_topic(settings, settings.events_topic, expected=2)
    events = [decode_event(m.value()) for m in messages]
    guest = guest_customer_id(STORE, "john.doe@example.com")
    assert [e.type for e in events] == ["order_created", "order_paid"]
    for e in events:
        assert isinstance(e, OrderEvent)
        assert e.order_id == "727" and e.customer_id == guest and str(e.amount) == "29.35"
        assert e.source == "woocommerce"

    bad = api.post(url, content=body, headers=woo_headers(body, "order.created", secret="nope"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "bad_signature"
    # the secret is used after wp_specialchars_decode: signing with "&amp;" verbatim fails
    verbatim = api.post(url, content=body, headers=woo_headers(body, "order.created", WOO_SECRET))
    assert verbatim.status_code == 401
    assert len(produced(api, settings)) == 2


def canonical(customer: str, store: str = STORE, n: int = 0) -> dict[str, Any]:
    return {
        "type": "order_created",
        "event_id": f"batch-{customer}-{n}",
        "store_id": store,
        "customer_id": customer,
        "occurred_at": "2026-11-01T09:30:00+01:00",
        "order_id": f"o-{customer}-{n}",
        "amount": 19.9,
        "currency": "eur",
    }


def test_generic_events_batch(api: TestClient, settings: Settings) -> None:
    url = f"/v1/stores/{STORE}/webhooks/events"

    def post(doc: Any, secret: str = EVENTS_SECRET):
        raw = orjson.dumps(doc)
        return api.post(
            url, content=raw, headers={"X-Churnflow-Signature": sign_generic(raw, secret)}
        )

    ok = post({"events": [canonical("c1"), canonical("c2")]})
    assert ok.status_code == 202, ok.text
    assert ok.json()["event_ids"] == ["batch-c1-0", "batch-c2-0"]
    messages = read_topic(settings, settings.events_topic, expected=2)
    events = [decode_event(m.value()) for m in messages]
    assert [m.key() for m in messages] == [b"shop:c1", b"shop:c2"]
    first = events[0]
    assert isinstance(first, OrderEvent)
    assert str(first.amount) == "19.9" and first.currency == "EUR"
    assert first.occurred_at == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)

    foreign = post({"events": [canonical("c3"), canonical("c4", store=OTHER)]})
    assert foreign.status_code == 400
    assert foreign.json()["error"]["message"].startswith("events[1]: store_id 'other'")
    invalid = post({"events": [{**canonical("c5"), "currency": "ZZZZ"}]})
    assert invalid.status_code == 400 and "events[0]" in invalid.json()["error"]["message"]
    assert post({"events": []}).status_code == 400
    assert post([canonical("c6")]).status_code == 400
    bad = post({"events": [canonical("c7")]}, secret="wrong")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "bad_signature"
    assert api.post(url, json={"events": [canonical("c8")]}).status_code == 401

    # nothing of a refused batch was produced; the refused bodies are dead letters
    assert len(produced(api, settings)) == 2
    letters = read_topic(settings, settings.dead_letter_topic, expected=4)
    assert len(letters) == 4
    assert all(dict(m.headers())["source"] == b"webhook/events" for m in letters)


@needs_shared
def test_broker_failure_is_503_and_the_retry_goes_through(
    api: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    body = (SHARED / LARAVEL).read_bytes()
    url = f"/v1/stores/{STORE}/webhooks/shopify"
    headers = shopify_headers(body, "orders/create", "retry-1")
    state = api.app.state  # type: ignore[attr-defined]
    good, state.producer = (
        state.producer,
        open_producer(settings.model_copy(update={"kafka_brokers": "127.0.0.1:1"}), timeout_s=1.0),
    )
    state.produce_timeout_s = 1.0
    try:
        down = api.post(url, content=body, headers=headers)
    finally:
        state.producer, state.produce_timeout_s = good, 10.0
    assert down.status_code == 503, down.text
    assert down.json()["error"]["code"] == "broker_unavailable"
    # the failed delivery is not remembered, so Shopify's retry is produced
    retry = api.post(url, content=body, headers=headers)
    assert retry.status_code == 202, retry.text
    assert len(produced(api, settings)) == 1
