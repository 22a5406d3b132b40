"""The score lookup's fast path against the real redis-server.

``GET /v1/stores/{store}/customers/{id}`` reads the API key, takes its rate-limit
token and reads the profile in one pipeline (``api.deps.authenticate``). These
tests hold it to what the slower path did: the same answers in the same order of
checks (401, 429, 403, 404), no key cached (a revoked key is refused on its next
request), the token bucket still per key, the script reloaded after Redis forgot
it, 503 while Redis is down and 200 again once it is back, a malformed stored
profile answered 503 and never 500, and exactly three commands per lookup
(``INFO commandstats``: no SCRIPT EXISTS or LOAD per request).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from api.keys import create_key, hash_key, revoke_key
from api.main import create_app
from api.ratelimit import apikey_bucket
from engine.connectors.redis_sink import customer_key
from engine.services import LOOPBACK, start_redis, stop_service
from engine.settings import Settings

pytestmark = pytest.mark.integration

STORE, OTHER = "lookup-shop", "lookup-other"


def stored_profile(customer_id: str) -> dict[str, Any]:
    """A profile as the Redis sink stores it (``cause`` is the sink's own field)."""
    return {
        "store_id": STORE,
        "customer_id": customer_id,
        "churn_probability": 0.731,
        "risk_band": "high",
        "segment": "slipping",
        "value_tier": "mid",
        "reasons": [
            {"feature": "recency", "contribution": 1.25, "direction": "up", "text": "42 days"},
            {"feature": "orders", "contribution": None, "direction": "down", "text": "5 orders"},
        ],
        "model_version": "m7",
        "model_warm": True,
        "features": {"order_count": 5.0, "days_since_last_order": 42.0},
        "profile": {"country": "NL", "tags": ["vip"]},
        "updated_at": "2026-11-23T10:00:00+00:00",
        "cause": "timer",
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def url(customer_id: str, store: str = STORE) -> str:
    return f"/v1/stores/{store}/customers/{customer_id}"


def command_calls(client: redis.Redis, name: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


@pytest.fixture()
def seeded(settings: Settings, redis_client: redis.Redis) -> Settings:
    for customer_id in ("c1", "c2"):
        doc = stored_profile(customer_id)
        redis_client.set(customer_key(settings.key_prefix, STORE, customer_id), orjson.dumps(doc))
    return settings


@pytest.fixture()
def api(seeded: Settings) -> Iterator[TestClient]:
    roomy = seeded.model_copy(update={"rate_limit_per_s": 10_000.0, "rate_limit_burst": 10_000})
    with TestClient(create_app(roomy)) as client:
        yield client


def test_lookup_answers_the_stored_profile_without_the_sinks_own_fields(
    api: TestClient, seeded: Settings, redis_client: redis.Redis
) -> None:
    key = create_key(redis_client, seeded.key_prefix, STORE)
    answer = api.get(url("c1"), headers=bearer(key))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    expected = stored_profile("c1")
    del expected["cause"]
    assert answer.json() == expected


def test_checks_come_in_order_401_429_403_404(seeded: Settings, redis_client: redis.Redis) -> None:
    prefix = seeded.key_prefix
    tight = seeded.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 2})
    own, foreign = create_key(redis_client, prefix, STORE), create_key(redis_client, prefix, OTHER)
    ingest_only = create_key(redis_client, prefix, STORE, ("ingest",))
    with TestClient(create_app(tight)) as api:
        assert api.get(url("c1")).status_code == 401
        unknown = api.get(url("c1"), headers=bearer("cfk_unknown"))
        assert unknown.status_code == 401
        assert unknown.json()["error"]["code"] == "unauthenticated"
        assert api.get(url("c1"), headers=bearer(foreign)).status_code == 403
        assert api.get(url("c1"), headers=bearer(ingest_only)).status_code == 403
        assert api.get(url("nobody"), headers=bearer(own)).status_code == 404
        assert api.get(url("c1"), headers=bearer(own)).status_code == 200
        # the burst of 2 is spent: even a missing customer or a foreign store is 429 now
        for path in (url("c1"), url("nobody"), url("c1", OTHER)):
            limited = api.get(path, headers=bearer(own))
            assert limited.status_code == 429, path
            assert limited.json()["error"]["code"] == "rate_limited"
            assert int(limited.headers["Retry-After"]) >= 1
        # per key: another key of the store still gets through; unknown keys stay 401
        assert api.get(url("c2"), headers=bearer(ingest_only)).status_code == 403
        assert api.get(url("c1"), headers=bearer("cfk_unknown")).status_code == 401
    left = redis_client.hget(apikey_bucket(prefix, hash_key(own)), "tokens")
    assert left is not None and float(left) < 1.0


def test_a_revoked_key_is_refused_on_its_next_lookup(
    api: TestClient, seeded: Settings, redis_client: redis.Redis
) -> None:
    key = create_key(redis_client, seeded.key_prefix, STORE)
    assert api.get(url("c1"), headers=bearer(key)).status_code == 200
    assert revoke_key(redis_client, seeded.key_prefix, key)
    refused = api.get(url("c1"), headers=bearer(key))
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"


def test_lookup_reloads_the_token_script_after_redis_forgot_it(
    seeded: Settings, redis_client: redis.Redis
) -> None:
    slow = seeded.model_copy(update={"rate_limit_per_s": 0.001, "rate_limit_burst": 100})
    key = create_key(redis_client, seeded.key_prefix, STORE)
    bucket = apikey_bucket(seeded.key_prefix, hash_key(key))
    with TestClient(create_app(slow)) as api:
        assert api.get(url("c1"), headers=bearer(key)).status_code == 200
        first = float(redis_client.hget(bucket, "tokens") or 0)
        redis_client.script_flush()
        assert api.get(url("c2"), headers=bearer(key)).status_code == 200
        second = float(redis_client.hget(bucket, "tokens") or 0)
    # one token per request: the refused EVALSHA took none, the one sent again took one
    assert 98.99 < first < 99.01
    assert 97.99 < second < 98.01


def test_a_malformed_stored_profile_is_503_not_500(
    api: TestClient, seeded: Settings, redis_client: redis.Redis
) -> None:
    key = create_key(redis_client, seeded.key_prefix, STORE)
    broken = stored_profile("c3")
    del broken["risk_band"]
    redis_client.set(customer_key(seeded.key_prefix, STORE, "c3"), orjson.dumps(broken))
    redis_client.set(customer_key(seeded.key_prefix, STORE, "c4"), b"not json")
    for customer_id in ("c3", "c4"):
        answer = api.get(url(customer_id), headers=bearer(key))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "unavailable"


def test_a_lookup_is_three_commands(
    api: TestClient, seeded: Settings, redis_client: redis.Redis
) -> None:
    key = create_key(redis_client, seeded.key_prefix, STORE)
    assert api.get(url("c1"), headers=bearer(key)).status_code == 200  # script loaded
    before = {name: command_calls(redis_client, name) for name in ("get", "evalsha", "script")}
    for customer_id in ("c1", "c2", "nobody") * 4:
        assert api.get(url(customer_id), headers=bearer(key)).status_code in (200, 404)
    after = {name: command_calls(redis_client, name) for name in ("get", "evalsha", "script")}
    assert after["get"] - before["get"] == 2 * 12  # the key's record and the profile
    assert after["evalsha"] - before["evalsha"] == 12  # one token each
    assert after["script"] == before["script"]  # no SCRIPT EXISTS/LOAD per request


def test_lookup_is_503_while_redis_is_down_and_recovers_after(
    seeded: Settings, tmp_path: Path
) -> None:
    """A redis-server of this test's own, stopped and started again on the same port
    (empty: no persistence): the pooled connections are dead, the script is gone."""
    server = start_redis(tmp_path / "redis")
    url_of = f"redis://{LOOPBACK}:{server.port}/0"
    own = seeded.model_copy(update={"redis_url": url_of})

    def seed() -> str:
        client = redis.Redis.from_url(url_of)
        doc = orjson.dumps(stored_profile("c1"))
        client.set(customer_key(own.key_prefix, STORE, "c1"), doc)
        key = create_key(client, own.key_prefix, STORE)
        client.close()
        return key

    try:
        with TestClient(create_app(own)) as api:
            key = seed()
            assert api.get(url("c1"), headers=bearer(key)).status_code == 200
            stop_service(server)
            down = api.get(url("c1"), headers=bearer(key))
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "unavailable"
            server = start_redis(tmp_path / "redis", port=server.port)
            key = seed()
            again = api.get(url("c1"), headers=bearer(key))
            assert again.status_code == 200, again.text
            assert again.json()["customer_id"] == "c1"
    finally:
        stop_service(server)
