"""The recall queue on the real redis-server: exactly one entry per idempotency key."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from engine import redis_client as redis_client_module
from engine.connectors import recall_sink
from engine.connectors.recall_sink import (
    EnqueueResult,
    RecallSink,
    enqueue_intents,
    log_key,
    marker_key,
    queue_key,
    suppressed_key,
)
from engine.messages import Scored, ScoreRequest
from engine.settings import Settings
from engine.triggers.caps import DAY
from engine.triggers.intent import Offer, Personalisation, RecallIntent
from engine.triggers.stage import build_trigger_logic, trigger_key

pytestmark = pytest.mark.integration

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"

STORE = "shop"
DUE = 1_790_000_000.0


def intent(
    n: int, *, channel: str = "email", holdout: bool = False, store: str = STORE
) -> RecallIntent:
    return RecallIntent(
        store_id=store,
        customer_id=f"c:{n}",
        rule_id="winback",
        step=n % 3,
        due_ts=DUE + n,
        send_at=DUE + n + 0.5,
        channel=channel,
        template="dormancy_2",
        locale="de",
        variant="subject_a",
        offer=Offer(10, True, "BACK10"),
        churn_probability=0.8,
        reasons=("no order for 60 days",),
        personalisation=Personalisation("Anna", ("shoes",), ()),
        holdout=holdout,
    )


def test_enqueue_twice_is_idempotent(settings: Settings, redis_client: redis.Redis) -> None:
    prefix = settings.key_prefix
    batch = [intent(n, channel="email" if n % 2 else "sms") for n in range(10)]
    assert enqueue_intents(redis_client, prefix, batch) == EnqueueResult(10, 0, 0)
    lengths = {ch: redis_client.xlen(queue_key(prefix, STORE, ch)) for ch in ("email", "sms")}
    assert lengths == {"email": 5, "sms": 5}
    assert enqueue_intents(redis_client, prefix, batch) == EnqueueResult(0, 10, 0)
    assert enqueue_intents(redis_client, prefix, batch[:3] + batch[:3]) == EnqueueResult(0, 6, 0)
    assert {ch: redis_client.xlen(queue_key(prefix, STORE, ch)) for ch in lengths} == lengths
    assert redis_client.xlen(log_key(prefix, STORE)) == 10
    assert enqueue_intents(redis_client, prefix, []) == EnqueueResult(0, 0, 0)

    # the entry: flat fields for routing, the whole intent as JSON
    [(entry_id, fields)] = redis_client.xrange(queue_key(prefix, STORE, "email"), count=1)
    first = batch[1]
    assert fields[b"idempotency_key"] == first.idempotency_key.encode()
    assert fields[b"channel"] == b"email" and float(fields[b"send_at"]) == first.send_at
    payload = orjson.loads(fields[b"payload"])
    assert payload["idempotency_key"] == first.idempotency_key
    assert payload["offer"] == {"percent_off": 10, "free_shipping": True, "code": "BACK10"}
    assert payload["personalisation"]["first_name"] == "Anna"
    assert (payload["customer_id"], payload["variant"], payload["holdout"]) == (
        "c:1",
        "subject_a",
        False,
    )
    # the marker remembers the entry for ~90 days
    marker = marker_key(prefix, first)
    assert redis_client.get(marker) == entry_id
    assert 89 * 86400 < redis_client.ttl(marker) <= 90 * 86400
    # the log: no payload, a status and the queue entry id
    _, logged = redis_client.xrange(log_key(prefix, STORE), count=2)[1]
    assert logged[b"status"] == b"queued" and logged[b"entry"] == entry_id
    assert b"payload" not in logged and logged[b"customer_id"] == b"c:1"


def test_holdout_goes_to_the_suppressed_stream(
    settings: Settings, redis_client: redis.Redis
) -> None:
    prefix = settings.key_prefix
    held = [intent(n, holdout=True) for n in range(4)]
    assert enqueue_intents(redis_client, prefix, held) == EnqueueResult(0, 0, 4)
    assert enqueue_intents(redis_client, prefix, held) == EnqueueResult(0, 4, 0)
    assert redis_client.xlen(suppressed_key(prefix, STORE)) == 4
    assert not redis_client.exists(queue_key(prefix, STORE, "email"))
    statuses = {f[b"status"] for _, f in redis_client.xrange(log_key(prefix, STORE))}
    assert statuses == {b"suppressed"}


def test_two_threads_enqueue_200_intents_exactly_once(settings: Settings) -> None:
    prefix = settings.key_prefix
    batch = [intent(n) for n in range(200)]
    results: list[EnqueueResult] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            barrier.wait()
            # small batches so that the two threads interleave
            for i in range(0, len(batch), 10):
                results.append(enqueue_intents(client, prefix, batch[i : i + 10]))
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert sum(r.enqueued for r in results) == 200
        assert sum(r.duplicates for r in results) == 200
        assert client.xlen(queue_key(prefix, STORE, "email")) == 200
        assert client.xlen(log_key(prefix, STORE)) == 200
        ids = [f[b"idempotency_key"] for _, f in client.xrange(queue_key(prefix, STORE, "email"))]
        assert len(set(ids)) == 200
    finally:
        leftovers = list(client.scan_iter(f"{prefix}:*", count=1000))
        if leftovers:
            client.delete(*leftovers)
        client.close()


def test_the_log_is_capped(settings: Settings, redis_client: redis.Redis) -> None:
    prefix = settings.key_prefix
    batch = [intent(n) for n in range(300)]
    assert enqueue_intents(redis_client, prefix, batch, log_maxlen=50).enqueued == 300
    assert redis_client.xlen(queue_key(prefix, STORE, "email")) == 300
    assert 50 <= redis_client.xlen(log_key(prefix, STORE)) < 300


def test_sink_partition_writes_intents_only_and_retries(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = settings.key_prefix
    sink = RecallSink(settings.redis_url, prefix, max_retry_s=5.0)
    part = sink.build("recalls", 0, 1)
    try:
        part.write_batch(["not an intent", intent(1), 42, intent(2, holdout=True)])
        part.write_batch([])
        assert redis_client.xlen(queue_key(prefix, STORE, "email")) == 1
        assert redis_client.xlen(suppressed_key(prefix, STORE)) == 1

        real = recall_sink.enqueue_intents
        failures = [redis.ConnectionError("gone"), redis.TimeoutError("slow")]

        def flaky(*args: Any, **kwargs: Any) -> EnqueueResult:
            if failures:
                real(*args, **kwargs)  # half done before the connection broke
                raise failures.pop(0)
            return real(*args, **kwargs)

        monkeypatch.setattr(recall_sink, "enqueue_intents", flaky)
        monkeypatch.setattr(redis_client_module.time, "sleep", lambda s: None)
        part.write_batch([intent(1), intent(3), intent(4)])
        assert failures == []
        assert redis_client.xlen(queue_key(prefix, STORE, "email")) == 3

        def down(*args: Any, **kwargs: Any) -> EnqueueResult:
            raise redis.ConnectionError("down")

        monkeypatch.setattr(recall_sink, "enqueue_intents", down)
        part.redis.max_retry_s = 0.0
        with pytest.raises(redis.ConnectionError):
            part.write_batch([intent(5)])
    finally:
        part.close()


def silent_100_days(customer: str) -> list[Scored]:
    """An order, then a checkpoint score a day for 100 days (see test_trigger_stage.py)."""
    profile = {"country": "DE", "source": "shopify", "consent_email": True}
    out = []
    for day in range(101):
        features = {"days_since_last_order": float(day), "order_count": 3.0}
        features |= {"spend_total_base": 90.0, "avg_order_value": 30.0, "open_cart": 0.0}
        cause = "checkpoint" if day else "event"
        t = DUE + day * DAY
        request = ScoreRequest("demo-store", customer, t, features, "active", "mid", profile, cause)
        out.append(Scored(request, 0.2, [], "v1", True))
    return out


def test_trigger_stage_into_the_queue_twice(settings: Settings, redis_client: redis.Redis) -> None:
    """Scores → TriggerLogic → RecallSink, run twice from scratch: the queue is unchanged."""
    prefix = settings.key_prefix
    items = [*silent_100_days("c1"), *silent_100_days("c9"), *silent_100_days("c2")]

    def run_once() -> None:
        flow = Dataflow("recalls")
        scored = op.input("in", flow, TestingSource(items))
        keyed = op.key_on("trigger_key", scored, lambda x: trigger_key(x, settings.key_groups))
        intents = op.stateful("triggers", keyed, build_trigger_logic(RULES_DIR))
        op.output(
            "recalls", op.key_rm("recalls_out", intents), RecallSink(settings.redis_url, prefix)
        )
        run_main(flow)

    run_once()
    store = "demo-store"
    email = queue_key(prefix, store, "email")
    assert redis_client.xlen(email) == 6  # c1 and c2: three dormancy steps each
    assert redis_client.xlen(suppressed_key(prefix, store)) == 3  # c9 is in the holdout
    before = redis_client.xrange(email)
    run_once()
    assert redis_client.xrange(email) == before
    assert redis_client.xlen(log_key(prefix, store)) == 9
