"""Limits, metrics and hostile input against the real broker and redis-server.

Rate limits answer 429 with ``Retry-After`` and let the key through again after
it; ``/metrics`` moves with the traffic; bodies over 1 MiB get 413 on every
route that takes a body; malformed JSON gets 400 and is kept as a dead letter;
bad signatures get 401; and Hypothesis throws garbage (random bytes, wrong
types, huge numbers, deep nesting, odd path segments) at every POST and DELETE
route the app serves — signed and with an admin key, so it reaches the parsers —
and none of it gets a 5xx.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_api_routes import (
    EVENTS_SECRET,
    LARAVEL,
    SHARED,
    SHOPIFY_SECRET,
    STORE,
    WOO_SECRET,
    b64_hmac,
    canonical,
    needs_shared,
    produced,
    read_topic,
    shopify_headers,
)

from api.keys import create_key
from api.main import create_app
from api.routes import app_routes
from api.routes.webhooks import (
    DEDUP_TTL_S,
    MAX_BODY_BYTES,
    dedup_key,
    open_producer,
    pending_ttl_s,
)
from api.webhook_secrets import set_secret
from api.webhooks import sign_generic
from api.webhooks.shopify import SHOPIFY_TOPICS
from api.webhooks.woocommerce import WOOCOMMERCE_TOPICS
from engine.connectors.recall_sink import enqueue_intents, queue_key
from engine.services import free_port
from engine.settings import Settings
from engine.triggers.intent import RecallIntent

pytestmark = pytest.mark.integration

WOO_SIGNING_SECRET = "ck&secret"  # WOO_SECRET after wp_specialchars_decode
WRITE_METHODS = ("POST", "DELETE", "PUT", "PATCH")
WRITE_ROUTES = sorted(
    (r.path, m) for r in app_routes(create_app().routes) for m in r.methods if m in WRITE_METHODS
)
BODY_ROUTES = sorted({path for path, method in WRITE_ROUTES if method != "DELETE"})


def make_client(settings: Settings, client: redis.Redis) -> TestClient:
    prefix = settings.key_prefix
    set_secret(client, prefix, STORE, "shopify", SHOPIFY_SECRET)
    set_secret(client, prefix, STORE, "woocommerce", WOO_SECRET)
    set_secret(client, prefix, STORE, "events", EVENTS_SECRET)
    return TestClient(create_app(settings))


def signed_headers(body: bytes, admin_key: str) -> dict[str, str]:
    """Every signature a route may ask for, all over ``body``, plus an admin key."""
    return {
        "Authorization": f"Bearer {admin_key}",
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": b64_hmac(SHOPIFY_SECRET, body),
        "X-WC-Webhook-Signature": b64_hmac(WOO_SIGNING_SECRET, body),
        "X-Churnflow-Signature": sign_generic(body, EVENTS_SECRET),
    }


def fill(path: str, **values: str) -> str:
    """The path template with its parameters filled (quoted); a new parameter fails here."""
    out = path
    while "{" in out:
        name = out[out.index("{") + 1 : out.index("}")]
        assert name in values, f"{path}: no test value for path parameter {name!r}"
        out = out.replace("{" + name + "}", quote(values[name], safe=""), 1)
    return out


def with_limits(settings: Settings, rate: float, burst: int) -> Settings:
    """The same settings with one rate and burst for API keys and webhooks."""
    limits = ("rate_limit", "webhook_rate_limit")
    return settings.model_copy(
        update={
            **{f"{name}_per_s": rate for name in limits},
            **{f"{name}_burst": burst for name in limits},
        }
    )


@pytest.fixture()
def roomy(settings: Settings, redis_client: redis.Redis) -> Iterator[tuple[TestClient, str]]:
    """An app whose rate limits stay out of the way, and an admin key of the store."""
    relaxed = with_limits(settings, rate=10_000.0, burst=10_000)
    admin = create_key(redis_client, settings.key_prefix, STORE, ("admin",))
    with make_client(relaxed, redis_client) as client:
        yield client, admin


# ------------------------------------------------------------------ rate limits


def test_rate_limit_answers_429_with_retry_after_then_recovers(
    settings: Settings, redis_client: redis.Redis
) -> None:
    tight = with_limits(settings, rate=0.5, burst=2)  # a token every 2 s
    prefix = settings.key_prefix
    own = {"Authorization": f"Bearer {create_key(redis_client, prefix, STORE)}"}
    other = {"Authorization": f"Bearer {create_key(redis_client, prefix, STORE)}"}
    url = f"/v1/stores/{STORE}/segments"
    with make_client(tight, redis_client) as api:
        answers = [api.get(url, headers=own) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        limited = answers[-1]
        assert limited.json()["error"]["code"] == "rate_limited"
        wait_s = int(limited.headers["Retry-After"])
        assert wait_s >= 1
        assert api.get(url, headers=other).status_code == 200  # per key, not global
        time.sleep(wait_s)
        assert api.get(url, headers=own).status_code == 200

        # webhooks: a per-store budget, taken only after the signature checks out
        hook = f"/v1/stores/{STORE}/webhooks/events"
        for _ in range(5):
            unsigned = api.post(hook, content=b"{}", headers={"X-Churnflow-Signature": "x"})
            assert unsigned.status_code == 401
        statuses = []
        for n in range(3):
            raw = orjson.dumps({"events": [canonical("r1", n=n)]})
            sent = api.post(
                hook,
                content=raw,
                headers={"X-Churnflow-Signature": sign_generic(raw, EVENTS_SECRET)},
            )
            statuses.append(sent.status_code)
            last = sent
        assert statuses == [202, 202, 429]
        time.sleep(int(last.headers["Retry-After"]))
        raw = orjson.dumps({"events": [canonical("r1", n=9)]})
        again = api.post(
            hook, content=raw, headers={"X-Churnflow-Signature": sign_generic(raw, EVENTS_SECRET)}
        )
        assert again.status_code == 202, again.text


# ------------------------------------------------------------------ /metrics


def scrape(api: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = api.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return float(samples.get((name, frozenset(labels.items())), 0.0))


def intent(customer: str) -> RecallIntent:
    return RecallIntent(STORE, customer, "winback", 0, 1.79e9, 1.79e9, "email", "t", "en")


def test_metrics_move_with_requests_webhooks_and_recall_queues(
    roomy: tuple[TestClient, str], settings: Settings, redis_client: redis.Redis
) -> None:
    api, admin = roomy
    prefix = settings.key_prefix
    enqueue_intents(redis_client, prefix, [intent("m1")])
    before = scrape(api)
    latency = "churnflow_api_request_duration_seconds_count"
    segments = {"method": "GET", "route": "/v1/stores/{store_id}/segments", "status": "200"}
    queue = {"store": STORE, "stream": "queue:email"}
    assert value(before, "churnflow_recall_stream_length", **queue) == 1

    for _ in range(3):
        assert (
            api.get(
                f"/v1/stores/{STORE}/segments", headers={"Authorization": f"Bearer {admin}"}
            ).status_code
            == 200
        )
    raw = orjson.dumps({"events": [canonical("m1"), canonical("m2")]})
    hook = f"/v1/stores/{STORE}/webhooks/events"
    assert api.post(hook, content=raw, headers=signed_headers(raw, admin)).status_code == 202
    assert (
        api.post(hook, content=raw, headers={"X-Churnflow-Signature": "sha256=00"}).status_code
        == 401
    )
    bad = b'{"events": ['
    assert api.post(hook, content=bad, headers=signed_headers(bad, admin)).status_code == 400
    enqueue_intents(redis_client, prefix, [intent("m2")])
    redis_client.xgroup_create(queue_key(prefix, STORE, "email"), "delivery", id="0")
    redis_client.xreadgroup("delivery", "w1", {queue_key(prefix, STORE, "email"): ">"}, count=1)

    after = scrape(api)
    assert value(after, latency, **segments) - value(before, latency, **segments) == 3
    assert value(after, "churnflow_api_request_duration_seconds_sum", **segments) > value(
        before, "churnflow_api_request_duration_seconds_sum", **segments
    )
    outcomes = "churnflow_webhook_requests_total"
    for outcome in ("accepted", "bad_signature", "bad_body"):
        grew = value(after, outcomes, platform="events", outcome=outcome) - value(
            before, outcomes, platform="events", outcome=outcome
        )
        assert grew == 1, outcome
    events = "churnflow_webhook_events_total"
    assert value(after, events, platform="events") - value(before, events, platform="events") == 2
    assert value(after, "churnflow_recall_stream_length", **queue) == 2
    assert value(after, "churnflow_recall_delivery_pending", **queue) == 1
    assert value(after, "churnflow_recall_delivery_lag", **queue) == 1


# ------------------------------------------------------------------ sizes, JSON, signatures


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_oversized_body_is_413_declared_or_streamed(
    roomy: tuple[TestClient, str], path: str
) -> None:
    api, admin = roomy
    url = fill(path, store_id=STORE)
    huge = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    for content in (huge, chunks()):
        answer = api.post(url, content=content, headers=signed_headers(huge, admin))
        assert answer.status_code == 413, (path, answer.text[:200])
        assert answer.json()["error"]["code"] == "payload_too_large"


def test_malformed_json_is_400_and_kept_as_a_dead_letter(
    roomy: tuple[TestClient, str], settings: Settings
) -> None:
    api, admin = roomy
    bodies = {"shopify": b'{"id": 1, "oops', "woocommerce": b'{"id": [1,', "events": b"\xff\xfe{"}
    topics = {"shopify": "orders/create", "woocommerce": "order.created", "events": ""}
    for platform, body in bodies.items():
        headers = {
            **signed_headers(body, admin),
            "X-Shopify-Topic": topics[platform],
            "X-WC-Webhook-Topic": topics[platform],
        }
        answer = api.post(f"/v1/stores/{STORE}/webhooks/{platform}", content=body, headers=headers)
        assert answer.status_code == 400, (platform, answer.text)
        assert answer.json()["error"]["code"] == "malformed_payload"
    letters = read_topic(settings, settings.dead_letter_topic, expected=3)
    kept = {dict(m.headers())["source"].decode(): m.value() for m in letters}
    assert kept == {f"webhook/{p}": body for p, body in bodies.items()}
    assert all(dict(m.headers())["error"] for m in letters)
    assert produced(api, settings) == []

    # API routes that take JSON: 400 malformed_json (nothing to dead-letter: not an event)
    batch = api.post(
        f"/v1/stores/{STORE}/customers:batchGet",
        content=b'{"customer_ids": [',
        headers=signed_headers(b"", admin),
    )
    assert batch.status_code == 400 and batch.json()["error"]["code"] == "malformed_json"


def test_bad_signatures_are_401_and_produce_nothing(
    roomy: tuple[TestClient, str], settings: Settings
) -> None:
    api, admin = roomy
    raw = orjson.dumps({"events": [canonical("s1")]})
    wrong = {
        "X-Shopify-Hmac-Sha256": b64_hmac("wrong", raw),
        "X-WC-Webhook-Signature": b64_hmac("wrong", raw),
        "X-Churnflow-Signature": sign_generic(raw, "wrong"),
        "X-Shopify-Topic": "orders/create",
        "X-WC-Webhook-Topic": "order.created",
    }
    hex_shopify = {**wrong, "X-Shopify-Hmac-Sha256": sign_generic(raw, SHOPIFY_SECRET)}
    for platform in ("shopify", "woocommerce", "events"):
        url = f"/v1/stores/{STORE}/webhooks/{platform}"
        for headers in (wrong, {}, hex_shopify, {"Authorization": f"Bearer {admin}"}):
            answer = api.post(url, content=raw, headers=headers)
            assert answer.status_code == 401, (platform, headers, answer.text)
            assert answer.json()["error"]["code"] == "bad_signature"
    assert produced(api, settings) == []
    assert read_topic(settings, settings.dead_letter_topic, expected=1, timeout_s=2.0) == []


# ------------------------------------------------------------------ garbage never gets a 5xx

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["", "NaN", "-0", "1e999", "2026-13-45T99:99:99Z", "\u0000", "../"]),
)
junk_json = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
TEMPLATES: list[Any] = [
    {"customer_ids": ["a", "b"]},
    {"events": [canonical("g1")]},
    {
        "events": [
            {**canonical("g2"), "line_items": [{"sku": "s", "quantity": 2, "price": "1.00"}]},
            {
                "type": "message_sent",
                "event_id": "m1",
                "store_id": STORE,
                "customer_id": "g3",
                "occurred_at": "2026-11-01T09:30:00Z",
                "channel": "sms",
                "step": 1,
            },
        ]
    },
    {
        "id": 820982911946154508,
        "email": "a@b.c",
        "total_price": "1.00",
        "currency": "USD",
        "created_at": "2026-01-01T00:00:00Z",
        "customer": {"id": 1},
        "line_items": [{}],
    },
    {"customer": {"id": 5, "email": "x@y.z"}, "shop_id": 1, "orders_to_redact": [1]},
    {
        "id": 7,
        "customer_id": 3,
        "billing": {"email": "a@b.c"},
        "total": "2.00",
        "currency": "EUR",
        "date_created_gmt": "2026-01-01T00:00:00",
        "line_items": [],
    },
]


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A well-shaped body with one value (at any depth) swapped for junk."""
    doc = json.loads(json.dumps(draw(st.sampled_from(TEMPLATES))))
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        node[key] = draw(junk_json)
        break
    return doc


def nested(depth: int) -> bytes:
    return b'{"a": [' * depth + b"1" + b"]}" * depth


bodies = st.one_of(
    st.binary(max_size=300),
    junk_json.map(lambda d: json.dumps(d).encode()),
    mutated().map(lambda d: json.dumps(d).encode()),
    st.integers(min_value=1, max_value=5000).map(nested),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"webhook_id=1", b"1" * 400, b'"\\ud800"']),
)
path_values = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["c1", "a:b", "%00", "..", " ", "x" * 500, "820982911946154508"]),
)


@pytest.mark.parametrize(("path", "method"), WRITE_ROUTES)
def test_garbage_to_every_write_route_never_gets_a_5xx(
    roomy: tuple[TestClient, str], path: str, method: str
) -> None:
    api, admin = roomy
    seen: set[int] = set()

    @hypothesis_settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        body=bodies,
        customer=path_values,
        other=path_values,
        shopify_topic=st.sampled_from([*sorted(SHOPIFY_TOPICS), "", "x/y"]),
        woo_topic=st.sampled_from([*sorted(WOOCOMMERCE_TOPICS), "", "order"]),
        webhook_id=st.one_of(st.none(), st.text("abc123-", min_size=1, max_size=300)),
    )
    def attempt(
        body: bytes,
        customer: str,
        other: str,
        shopify_topic: str,
        woo_topic: str,
        webhook_id: str | None,
    ) -> None:
        url = fill(path, store_id=STORE, customer_id=customer, segment=other)
        headers = {
            **signed_headers(body, admin),
            "X-Shopify-Topic": shopify_topic,
            "X-WC-Webhook-Topic": woo_topic,
        }
        if webhook_id is not None:
            headers["X-Shopify-Webhook-Id"] = webhook_id
        answer = api.request(method, url, content=body, headers=headers)
        assert answer.status_code < 500, (method, url, body[:200], answer.text[:500])
        seen.add(answer.status_code)
        if answer.status_code >= 400:
            assert answer.json()["error"]["code"], answer.text

    attempt()
    # the garbage got past authentication (signed, admin key) to the parsers
    assert seen - {401, 403}, seen


# ------------------------------------------------------------------ Shopify dedup vs broker failure


@needs_shared
def test_shopify_dedup_marker_is_pending_until_the_broker_acks(
    roomy: tuple[TestClient, str], settings: Settings, redis_client: redis.Redis
) -> None:
    """A failed produce (broker on a closed loopback port) leaves no marker; a retry
    during the attempt gets 409 (not "duplicate"); the marker is permanent only once acked."""
    api, _ = roomy
    body = (SHARED / LARAVEL).read_bytes()
    url = f"/v1/stores/{STORE}/webhooks/shopify"
    headers = shopify_headers(body, "orders/create", "dedup-1")
    marker = dedup_key(settings.key_prefix, STORE, "dedup-1")
    state = api.app.state  # type: ignore[attr-defined]
    down = settings.model_copy(update={"kafka_brokers": f"127.0.0.1:{free_port()}"})
    good, state.producer = state.producer, open_producer(down, timeout_s=3.0)
    state.produce_timeout_s = 3.0
    first: list[Any] = []
    try:
        attempt = threading.Thread(
            target=lambda: first.append(api.post(url, content=body, headers=headers))
        )
        attempt.start()
        while redis_client.get(marker) is None and attempt.is_alive():
            time.sleep(0.02)
        held = redis_client.get(marker)
        assert held is not None and held.startswith(b"pending:")
        assert 0 < redis_client.ttl(marker) <= pending_ttl_s(3.0)  # short: a crash frees it
        meanwhile = api.post(url, content=body, headers=headers)
        assert meanwhile.status_code == 409, meanwhile.text
        assert meanwhile.json()["error"]["code"] == "in_progress"
        assert int(meanwhile.headers["Retry-After"]) >= 1
        attempt.join()
    finally:
        state.producer, state.produce_timeout_s = good, 10.0
    assert first[0].status_code == 503 and first[0].json()["error"]["code"] == "broker_unavailable"
    assert redis_client.get(marker) is None  # removed on failure

    retry = api.post(url, content=body, headers=headers)
    assert retry.status_code == 202, retry.text
    assert redis_client.get(marker) == b"delivered"
    assert pending_ttl_s(10.0) < redis_client.ttl(marker) <= DEDUP_TTL_S
    again = api.post(url, content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"duplicate": True}
    assert len(produced(api, settings)) == 1


def test_integers_beyond_64_bits_in_a_signed_batch_are_400_not_500(
    roomy: tuple[TestClient, str], settings: Settings
) -> None:
    """Found by Schemathesis: a ``step`` of 10**36 passed validation, then orjson could not
    encode the event and the route answered 500."""
    api, admin = roomy
    event = {
        "type": "message_sent",
        "event_id": "big-step",
        "store_id": STORE,
        "customer_id": "c1",
        "occurred_at": "2026-02-24T23:55:50Z",
        "channel": "sms",
        "step": 10**36,
    }
    raw = json.dumps({"events": [event]}).encode()
    answer = api.post(
        f"/v1/stores/{STORE}/webhooks/events", content=raw, headers=signed_headers(raw, admin)
    )
    assert answer.status_code == 400, answer.text
    assert "step" in answer.json()["error"]["message"]
    (letter,) = read_topic(settings, settings.dead_letter_topic, expected=1)
    assert letter.value() == raw


def test_405_allow_lists_every_method_served_at_the_path(roomy: tuple[TestClient, str]) -> None:
    """Found by Schemathesis (``--checks all``): DELETE and GET of a customer live in two
    routers, and the 405 for a third method said ``Allow: DELETE`` only."""
    api, admin = roomy
    served: dict[str, set[str]] = {}
    for route in app_routes(api.app.routes):  # type: ignore[attr-defined]
        served.setdefault(route.path, set()).update(route.methods)
    for path, methods in served.items():
        url = fill(path, store_id=STORE, customer_id="c1", segment="silent", name="x.js")
        answer = api.request("PATCH", url, headers={"Authorization": f"Bearer {admin}"})
        assert answer.status_code == 405, (path, answer.status_code)
        allowed = set(answer.headers["Allow"].split(", "))
        assert allowed == methods | ({"HEAD"} if "GET" in methods else set()), path
