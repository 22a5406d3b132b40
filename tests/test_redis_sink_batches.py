"""The Redis sink's batched profile writes against one command per customer (real Redis).

``write_profiles`` queues one command per customer and two per store and segment;
the keys and values it leaves must be the same as a ``SET``, a ``ZADD`` to the
customer's segment and a ``ZREM`` from each other segment per scored customer, and
a ``DEL`` plus ``ZREM`` from every segment per erased one — batch after batch.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import redis

from engine.connectors.redis_sink import (
    customer_key,
    profile_document,
    segment_key,
    write_batch,
)
from engine.messages import Erased, Scored, ScoreRequest
from engine.segments import SEGMENTS

STORES = ("shop-a", "shop-b")


def one_by_one(client: redis.Redis, prefix: str, items: list[Any]) -> None:
    """The oracle: the newest item per customer, one command per key."""
    newest: dict[tuple[str, str], Any] = {}
    for item in items:
        who = (
            (item.request.store_id, item.request.customer_id)
            if isinstance(item, Scored)
            else (item.store_id, item.customer_id)
        )
        newest.pop(who, None)
        newest[who] = item
    for (store_id, customer_id), item in newest.items():
        if isinstance(item, Scored):
            doc = profile_document(item)
            client.set(customer_key(prefix, store_id, customer_id), orjson.dumps(doc))
        else:
            client.delete(customer_key(prefix, store_id, customer_id))
        for segment in SEGMENTS:
            key = segment_key(prefix, store_id, segment)
            if isinstance(item, Scored) and segment == item.request.segment:
                client.zadd(key, {customer_id: round(item.churn_probability, 6)})
            else:
                client.zrem(key, customer_id)


def random_batch(rng: random.Random, t: float) -> list[Any]:
    items: list[Any] = []
    for _ in range(rng.randint(1, 60)):
        store, customer = rng.choice(STORES), f"c{rng.randint(0, 30)}"
        if rng.random() < 0.15:
            items.append(Erased(store, customer, t))
            continue
        segment = rng.choice(SEGMENTS)
        request = ScoreRequest(store, customer, t, {"x": 1.0}, segment, "low", {}, "event")
        items.append(Scored(request, rng.random(), [], "v1", True))
        t += 1.0
    return items


def dump(client: redis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under ``prefix`` (the prefix itself replaced by ``P``) and its value."""
    state: dict[bytes, Any] = {}
    for key in client.scan_iter(match=f"{prefix}:*"):
        name = b"P" + key[len(prefix) :]
        if client.type(key) == b"zset":
            state[name] = client.zrange(key, 0, -1, withscores=True)
        else:
            state[name] = client.get(key)
    return state


def test_batched_writes_equal_one_command_per_customer(
    redis_client: redis.Redis, settings: Any
) -> None:
    rng = random.Random(11)
    batched, oracle = f"{settings.key_prefix}-b", f"{settings.key_prefix}-o"
    for n in range(40):
        items = random_batch(rng, 1_700_000_000.0 + n * 100)
        write_batch(redis_client, batched, items)
        one_by_one(redis_client, oracle, items)
        got = {
            k.replace(batched.encode(), b"P", 1): v for k, v in dump(redis_client, batched).items()
        }
        want = {
            k.replace(oracle.encode(), b"P", 1): v for k, v in dump(redis_client, oracle).items()
        }
        assert got == want, f"batch {n}"
    assert any(k.endswith(b":segment:active") for k in got)  # the batches did write segments
