"""Scale-out on real services: the live dataflow as 2 processes (``-i``/``-a``) on
loopback gives the same customer state as 1 process.

Features, segments and value tiers depend only on each key group's own event
order, which one Kafka partition fixes; churn probabilities may differ because
the model shard learns examples from both processes in arrival order, so they
are compared only for range.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis

from engine.cli import child_env, produce_lines
from engine.connectors.kafka import ensure_topics
from engine.events import BrowseEvent, OrderEvent, encode_event
from engine.services import free_port
from engine.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = datetime(1997, 1, 1, 12, tzinfo=UTC)
CUSTOMERS = 120


def history() -> list[bytes]:
    """A deterministic two-year history: orders with customer-specific gaps, views."""
    events = []
    for c in range(CUSTOMERS):
        gap = 7 + (c * 13) % 80
        for k in range(1 + c % 6):
            day = k * gap + c % 5
            events.append(
                OrderEvent(
                    type="order_created",
                    event_id=f"o{c}-{k}",
                    store_id="shop",
                    customer_id=f"c{c}",
                    occurred_at=BASE + timedelta(days=day),
                    order_id=f"{c}-{k}",
                    amount=f"{5 + c % 40}.99",
                    currency="EUR" if c % 3 else "USD",
                )
            )
        events.append(
            BrowseEvent(
                type="product_view",
                event_id=f"v{c}",
                store_id="shop",
                customer_id=f"c{c}",
                occurred_at=BASE + timedelta(days=3 + c),
            )
        )
    events.sort(key=lambda e: (e.occurred_at, e.event_id))
    return [encode_event(e) for e in events]


def run_processes(settings: Settings, processes: int, client: redis.Redis) -> dict[str, dict]:
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = []
    for i in range(processes):
        command = [sys.executable, "-m", "bytewax.run", "engine.live:get_flow()"]
        if processes > 1:
            command += ["-i", str(i), "-a", addresses]
        procs.append(subprocess.Popen(command, env=child_env(settings)))
    pattern = f"{settings.key_prefix}:{{shop}}:customer:*"
    try:
        deadline = time.monotonic() + 120
        stable_since, last = time.monotonic(), b""
        while time.monotonic() < deadline:
            for proc in procs:
                assert proc.poll() is None, f"process exited with {proc.returncode}"
            keys = sorted(client.scan_iter(pattern, count=1000))
            snapshot = b"".join(client.get(k) or b"" for k in keys) if keys else b""
            if len(keys) == CUSTOMERS and snapshot == last:
                if time.monotonic() - stable_since > 3.0:
                    break
            else:
                stable_since, last = time.monotonic(), snapshot
            time.sleep(0.5)
        else:
            raise AssertionError("profiles did not settle within 120 s")
        return {
            k.decode().rsplit(":", 1)[1]: orjson.loads(client.get(k) or b"{}")
            for k in client.scan_iter(pattern, count=1000)
        }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_two_processes_equal_one(settings: Settings, redis_client: redis.Redis) -> None:
    ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
    produce_lines(settings, iter(history()))
    one = run_processes(settings, 1, redis_client)
    two_settings = settings.model_copy(update={"key_prefix": settings.key_prefix + "x2"})
    try:
        two = run_processes(two_settings, 2, redis_client)
    finally:
        stale = list(redis_client.scan_iter(f"{two_settings.key_prefix}:*", count=1000))
        if stale:
            redis_client.delete(*stale)
    assert set(one) == set(two) and len(one) == CUSTOMERS
    for customer, profile in one.items():
        other = two[customer]
        assert other["features"] == profile["features"], customer
        assert other["segment"] == profile["segment"], customer
        assert other["value_tier"] == profile["value_tier"], customer
        assert other["updated_at"] == profile["updated_at"], customer
        assert 0.0 <= other["churn_probability"] <= 1.0
