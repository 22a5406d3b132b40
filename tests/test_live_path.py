"""The live path on real services: broker → dataflow → Redis → API.

Good, malformed and duplicate events are produced to the real Tansu broker; the
dataflow reads them with Bytewax's KafkaSource, writes profiles to the real
redis-server, and dead-letters every bad record with its reason; the API then
serves the profiles.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from api.keys import create_key
from api.main import create_app
from engine.cli import child_env, dataflow_command, produce_lines
from engine.connectors.kafka import ensure_topics
from engine.connectors.redis_sink import customer_key
from engine.events import BrowseEvent, OrderEvent, encode_event
from engine.settings import Settings

pytestmark = pytest.mark.integration

BASE = datetime(1997, 1, 1, 12, tzinfo=UTC)


def order(customer: str, day: int, amount: str = "20.00", n: int = 0) -> bytes:
    return encode_event(
        OrderEvent(
            type="order_created",
            event_id=f"o-{customer}-{day}-{n}",
            store_id="shop",
            customer_id=customer,
            occurred_at=BASE + timedelta(days=day),
            order_id=f"{customer}-{day}-{n}",
            amount=amount,
            currency="USD",
        )
    )


def view(customer: str, day: int) -> bytes:
    return encode_event(
        BrowseEvent(
            type="product_view",
            event_id=f"v-{customer}-{day}",
            store_id="shop",
            customer_id=customer,
            occurred_at=BASE + timedelta(days=day),
            sku="sku-1",
        )
    )


GOOD_CUSTOMERS = [str(i) for i in range(1, 31)]
MALFORMED = [
    b"not json at all",
    b'{"type": "order_created", "store_id": "shop"}',
    b'{"type": "teleport", "event_id": "x", "store_id": "shop", "customer_id": "1",'
    b' "occurred_at": "1997-01-01T00:00:00Z"}',
    b'{"type": "order_created", "event_id": "bad-ccy", "store_id": "shop", "customer_id": "9",'
    b' "occurred_at": "1997-01-01T00:00:00Z", "order_id": "1", "amount": "5", "currency": "ZZZ"}',
    b'{"type": "order_created", "event_id": "naive", "store_id": "shop", "customer_id": "9",'
    b' "occurred_at": "1997-01-01T00:00:00", "order_id": "1", "amount": "5", "currency": "USD"}',
]


def stream() -> list[bytes]:
    lines: list[bytes] = []
    for i, customer in enumerate(GOOD_CUSTOMERS):
        for k in range(1 + i % 4):
            lines.append(order(customer, day=k * (10 + i), amount=f"{10 + i}.50", n=k))
        lines.append(view(customer, day=3 + i))
    # webhook retries: every 7th event is delivered twice, a few events apart
    with_retries: list[bytes] = []
    for n, line in enumerate(lines):
        with_retries.append(line)
        if n % 7 == 0:
            with_retries.insert(max(0, len(with_retries) - 3), line)
    return with_retries + MALFORMED


def run_until(settings: Settings, client: redis.Redis, expected: int, tmp_path: Path) -> None:
    """Run the live dataflow as ``churnflow run`` does, until every profile is in Redis."""
    command = dataflow_command(settings.model_copy(update={"run_dir": tmp_path}))
    proc = subprocess.Popen(command, env=child_env(settings), stderr=subprocess.PIPE)
    pattern = f"{settings.key_prefix}:{{shop}}:customer:*"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            if sum(1 for _ in client.scan_iter(pattern, count=1000)) >= expected:
                time.sleep(1.0)  # let the last epoch's writes land
                return
            time.sleep(0.2)
        raise AssertionError("profiles did not all arrive within 120 s")
    finally:
        proc.kill()
        proc.wait()


def read_dead_letters(settings: Settings, expected: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"dl-{settings.key_prefix}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.assign([TopicPartition(settings.dead_letter_topic, 0, 0)])
    found = []
    deadline = time.monotonic() + timeout_s
    while len(found) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        found.append(msg)
    consumer.close()
    return found


def test_events_travel_broker_dataflow_redis_api(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
    sent = produce_lines(settings, iter(stream()))
    assert sent == len(stream())

    run_until(settings, redis_client, len(GOOD_CUSTOMERS), tmp_path)

    # every good customer's profile is in the real Redis, with the order count it had
    for i, customer in enumerate(GOOD_CUSTOMERS):
        raw = redis_client.get(customer_key(settings.key_prefix, "shop", customer))
        assert raw is not None, customer
        profile = orjson.loads(raw)
        assert profile["features"]["order_count"] == 1 + i % 4  # duplicates applied once
        assert 0.0 <= profile["churn_probability"] <= 1.0
        assert profile["model_version"]

    # every bad record is in the dead-letter topic with its reason
    letters = read_dead_letters(settings, expected=len(MALFORMED))
    assert sorted(m.value() for m in letters) == sorted(MALFORMED)
    reasons = {m.value(): dict(m.headers())["error"].decode() for m in letters}
    assert reasons[b"not json at all"].startswith("not JSON")
    assert "event_id: Field required" in reasons[MALFORMED[1]]
    assert "does not match any of the expected tags" in reasons[MALFORMED[2]]
    assert "no exchange rate from ZZZ" in reasons[MALFORMED[3]]
    assert "timezone" in reasons[MALFORMED[4]].lower()
    for m in letters:
        assert dict(m.headers())["source"].decode().startswith(settings.events_topic + "/")

    # the API serves them; keys are checked
    key = create_key(redis_client, settings.key_prefix, "shop", ("read",))
    other = create_key(redis_client, settings.key_prefix, "other", ("read",))
    with TestClient(create_app(settings)) as api:
        ok = api.get("/v1/stores/shop/customers/4", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        body = ok.json()
        assert body["customer_id"] == "4" and body["features"]["order_count"] == 4
        for field in (
            "churn_probability",
            "segment",
            "reasons",
            "model_version",
            "model_warm",
            "features",
            "updated_at",
        ):
            assert field in body
        unknown = api.get(
            "/v1/stores/shop/customers/999", headers={"Authorization": f"Bearer {key}"}
        )
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        assert api.get("/v1/stores/shop/customers/4").status_code == 401
        bad = api.get("/v1/stores/shop/customers/4", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        cross = api.get("/v1/stores/shop/customers/4", headers={"Authorization": f"Bearer {other}"})
        assert cross.status_code == 403
        assert api.get("/readyz").json() == {"status": "ready"}
