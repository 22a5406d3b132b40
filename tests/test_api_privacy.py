"""GDPR/CCPA routes against the real broker and redis-server: erase and export.

One customer (``c1``) of store ``shop`` is given everything churnflow can hold on
someone: a profile with a score, segment membership, a contact address, queued,
holdout and dead recall entries with their idempotency markers and delivery
states. A second customer of the same store and the same customer id in another
store get the same, and must come through every request untouched.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from test_api_routes import (  # the routes suite's helpers: same secrets, same topic reader
    OTHER,
    SHARED,
    STORE,
    api,
    needs_shared,
    profile,
    read_topic,
    shopify_headers,
)

from api.keys import create_key
from api.routes.privacy import customer_streams
from api.webhook_secrets import secret_key
from api.webhooks import guest_customer_id
from engine.connectors.recall_sink import enqueue_intents, marker_key
from engine.connectors.redis_sink import customer_key, segment_key
from engine.delivery.providers import contact_key
from engine.delivery.worker import dead_key, state_key
from engine.events import EraseRequest, decode_event
from engine.segments import SEGMENTS
from engine.settings import Settings
from engine.triggers.intent import RecallIntent

pytestmark = pytest.mark.integration

__all__ = ["api"]  # the fixture, imported for pytest


def intent(store: str, customer: str, rule: str, *, holdout: bool = False) -> RecallIntent:
    due = 1_790_000_000.0
    return RecallIntent(
        store_id=store,
        customer_id=customer,
        rule_id=rule,
        step=0,
        due_ts=due,
        send_at=due,
        channel="email",
        template="winback",
        locale="en",
        holdout=holdout,
    )


def give_everything(client: redis.Redis, prefix: str, store: str, customer: str) -> None:
    """Every kind of per-customer data churnflow keeps, for one customer of one store."""
    doc = {**profile(customer, 0.9, "silent", 120.0), "store_id": store}
    client.set(customer_key(prefix, store, customer), orjson.dumps(doc))
    client.zadd(segment_key(prefix, store, "silent"), {customer: 0.9})
    client.hset(contact_key(prefix, store, "email"), customer, f"{customer}@{store}.example")
    queued = intent(store, customer, "winback")
    held = intent(store, customer, "vip", holdout=True)
    assert enqueue_intents(client, prefix, [queued, held]).enqueued == 1
    client.hset(state_key(prefix, store, queued.idempotency_key), mapping={"status": "sent"})
    dead = intent(store, customer, "cart")
    client.xadd(
        dead_key(prefix, store, "email"),
        {
            "idempotency_key": dead.idempotency_key,
            "customer_id": customer,
            "store_id": store,
            "reason": "smtp 550",
        },
    )


def customer_data(client: redis.Redis, prefix: str, store: str, customer: str) -> dict[str, Any]:
    """What Redis holds on a customer, read directly (not through the API)."""
    entries = {
        name: [
            fields
            for _, fields in client.xrange(stream)
            if fields.get(b"customer_id") == customer.encode()
        ]
        for name, stream in customer_streams(prefix, store).items()
    }
    return {
        "profile": client.get(customer_key(prefix, store, customer)),
        "segments": [s for s in SEGMENTS if client.zscore(segment_key(prefix, store, s), customer)],
        "contact": client.hget(contact_key(prefix, store, "email"), customer),
        "entries": {name: found for name, found in entries.items() if found},
        "markers": [
            k
            for rule in ("winback", "vip", "cart")
            for k in (
                marker_key(prefix, intent(store, customer, rule)),
                state_key(prefix, store, intent(store, customer, rule).idempotency_key),
            )
            if client.exists(k)
        ],
    }


@pytest.fixture()
def seeded(settings: Settings, redis_client: redis.Redis) -> dict[str, dict[str, str]]:
    prefix = settings.key_prefix
    for store, customer in ((STORE, "c1"), (STORE, "c2"), (OTHER, "c1")):
        give_everything(redis_client, prefix, store, customer)

    def bearer(store: str, *scopes: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_key(redis_client, prefix, store, scopes)}"}

    return {
        "admin": bearer(STORE, "admin"),
        "read": bearer(STORE, "read"),
        "ingest": bearer(STORE, "read", "ingest"),
        "other_admin": bearer(OTHER, "admin"),
    }


def test_seeded_customer_holds_every_kind_of_data(
    settings: Settings, redis_client: redis.Redis, seeded: dict
) -> None:
    held = customer_data(redis_client, settings.key_prefix, STORE, "c1")
    assert held["profile"] and held["segments"] == ["silent"] and held["contact"]
    assert sorted(held["entries"]) == ["dead:email", "log", "queued:email", "suppressed"]
    assert len(held["markers"]) == 3  # two idempotency markers and one delivery state


def test_erase_needs_the_stores_admin_key(
    api: TestClient, settings: Settings, redis_client: redis.Redis, seeded: dict
) -> None:
    url = f"/v1/stores/{STORE}/customers/c1"
    before = customer_data(redis_client, settings.key_prefix, STORE, "c1")
    assert api.delete(url).status_code == 401
    assert api.delete(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    for who in ("read", "ingest", "other_admin"):
        refused = api.delete(url, headers=seeded[who])
        assert refused.status_code == 403, (who, refused.text)
        assert refused.json()["error"]["code"] == "forbidden"
    assert customer_data(redis_client, settings.key_prefix, STORE, "c1") == before
    assert read_topic(settings, settings.events_topic, expected=1, timeout_s=2.0) == []


def test_erase_removes_everything_and_tells_the_engine(
    api: TestClient, settings: Settings, redis_client: redis.Redis, seeded: dict
) -> None:
    prefix = settings.key_prefix
    kept = {
        (s, c): customer_data(redis_client, prefix, s, c) for s, c in ((STORE, "c2"), (OTHER, "c1"))
    }
    erased = api.delete(f"/v1/stores/{STORE}/customers/c1", headers=seeded["admin"])
    assert erased.status_code == 202, erased.text
    body = erased.json()
    assert body["store_id"] == STORE and body["customer_id"] == "c1"
    assert body["removed"] == {
        "profile": True,
        "segments": 1,
        "contacts": 1,
        "stream_entries": 5,  # queued, holdout, dead, and the log's entries of the first two
        "records": 3,
    }

    assert customer_data(redis_client, prefix, STORE, "c1") == {
        "profile": None,
        "segments": [],
        "contact": None,
        "entries": {},
        "markers": [],
    }
    for (store, customer), before in kept.items():
        assert customer_data(redis_client, prefix, store, customer) == before, store

    (msg,) = read_topic(settings, settings.events_topic, expected=1)
    event = decode_event(msg.value())
    assert isinstance(event, EraseRequest)
    assert (event.store_id, event.customer_id, event.event_id) == (STORE, "c1", body["event_id"])
    assert msg.key() == f"{STORE}:c1".encode()

    # nothing left to export; erasing again is safe and produces another erase event
    gone = api.get(f"/v1/stores/{STORE}/customers/c1/export", headers=seeded["admin"])
    assert gone.status_code == 200 and gone.json()["holds_data"] is False
    again = api.delete(f"/v1/stores/{STORE}/customers/c1", headers=seeded["admin"])
    assert again.status_code == 202 and again.json()["removed"]["profile"] is False
    assert len(read_topic(settings, settings.events_topic, expected=2)) == 2


def test_export_holds_everything_of_the_customer_and_nothing_else(
    api: TestClient, settings: Settings, seeded: dict
) -> None:
    url = f"/v1/stores/{STORE}/customers/c1/export"
    for who in ("read", "ingest", "other_admin"):
        assert api.get(url, headers=seeded[who]).status_code == 403, who
    assert api.get(url).status_code == 401

    answer = api.get(url, headers=seeded["admin"])
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["holds_data"] is True
    assert doc["profile"] == {**profile("c1", 0.9, "silent", 120.0), "store_id": STORE}
    assert doc["segments"] == {"silent": 0.9}
    assert doc["contacts"] == {"email": "c1@shop.example"}
    assert sorted(doc["recall"]) == ["dead:email", "log", "queued:email", "suppressed"]
    (queued,) = doc["recall"]["queued:email"]
    assert queued["rule_id"] == "winback" and queued["delivery"] == {"status": "sent"}
    assert queued["payload"]["customer_id"] == "c1"  # the intent, decoded
    assert doc["recall"]["suppressed"][0]["rule_id"] == "vip"
    assert doc["recall"]["dead:email"][0]["reason"] == "smtp 550"
    assert {e["status"] for e in doc["recall"]["log"]} == {"queued", "suppressed"}

    # nothing of the other customer, nor of c1 of the other store
    text = answer.text
    assert "c2" not in text and f"{OTHER}.example" not in text and f'"{OTHER}"' not in text

    unknown = api.get(f"/v1/stores/{STORE}/customers/nobody/export", headers=seeded["admin"])
    assert unknown.status_code == 200
    assert unknown.json() == {
        "store_id": STORE,
        "customer_id": "nobody",
        "holds_data": False,
        "profile": None,
        "segments": {},
        "contacts": {},
        "recall": {},
    }


# ------------------------------------------------------------------ Shopify's GDPR webhooks

REDACT = SHARED / "shopify" / "docs_sample_2026-04"


def post_shopify(api: TestClient, name: str, topic: str) -> Any:
    """A signed delivery of one of the shared GDPR payloads."""
    body = (REDACT / name).read_bytes()
    headers = shopify_headers(body, topic, f"{topic}-{name}")
    return api.post(f"/v1/stores/{STORE}/webhooks/shopify", content=body, headers=headers)


@needs_shared
def test_shopify_customers_redact_erases_the_customer_and_the_guest_key(
    api: TestClient, settings: Settings, redis_client: redis.Redis, seeded: dict
) -> None:
    prefix = settings.key_prefix
    guest = guest_customer_id(STORE, "john@example.com")
    assert guest is not None
    for customer in ("191167", guest):
        give_everything(redis_client, prefix, STORE, customer)
    kept = customer_data(redis_client, prefix, STORE, "c1")

    answer = post_shopify(api, "customers_redact.json", "customers/redact")
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 2

    erased = [decode_event(m.value()) for m in read_topic(settings, settings.events_topic, 2)]
    assert all(isinstance(e, EraseRequest) and e.store_id == STORE for e in erased)
    assert sorted(e.customer_id for e in erased) == sorted(["191167", guest])
    for customer in ("191167", guest):
        assert customer_data(redis_client, prefix, STORE, customer)["profile"] is None
        assert customer_data(redis_client, prefix, STORE, customer)["entries"] == {}
    assert customer_data(redis_client, prefix, STORE, "c1") == kept


@needs_shared
def test_shopify_shop_redact_erases_every_customer_of_the_store(
    api: TestClient, settings: Settings, redis_client: redis.Redis, seeded: dict
) -> None:
    prefix = settings.key_prefix
    redis_client.hset(contact_key(prefix, STORE, "sms"), "c3", "+15550100")  # a contact only
    redis_client.set(f"{prefix}:{{{STORE}}}:cohorts:0", b"{}")
    other_keys = sorted(redis_client.scan_iter(f"{prefix}:{{{OTHER}}}:*"))
    other_data = customer_data(redis_client, prefix, OTHER, "c1")

    answer = post_shopify(api, "shop_redact.json", "shop/redact")
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 3
    assert "3 customers erased" in answer.json()["reason"]

    erased = [decode_event(m.value()) for m in read_topic(settings, settings.events_topic, 3)]
    assert all(isinstance(e, EraseRequest) and e.store_id == STORE for e in erased)
    assert sorted(e.customer_id for e in erased) == ["c1", "c2", "c3"]
    # only the webhook secrets stay (the platform's retry must still verify)
    left = {k.decode() for k in redis_client.scan_iter(f"{prefix}:{{{STORE}}}:*")}
    assert left == {secret_key(prefix, STORE, p) for p in ("shopify", "woocommerce", "events")}
    assert sorted(redis_client.scan_iter(f"{prefix}:{{{OTHER}}}:*")) == other_keys
    assert customer_data(redis_client, prefix, OTHER, "c1") == other_data
    # the store's keys still work for the operator; the export is empty now
    gone = api.get(f"/v1/stores/{STORE}/customers/c1/export", headers=seeded["admin"])
    assert gone.json()["holds_data"] is False


@needs_shared
def test_shopify_data_request_is_logged_by_id_without_contact_details(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="api.routes.webhooks"):
        answer = post_shopify(api, "customers_data_request.json", "customers/data_request")
    assert answer.status_code == 202 and answer.json()["accepted"] == 0
    assert "customer=191167 data_request=9999" in caplog.text
    assert "john@example.com" not in caplog.text and "555-625-1199" not in caplog.text
