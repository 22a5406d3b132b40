"""``GET /metrics`` behind ``CHURNFLOW_METRICS_TOKEN``, against the real redis-server.

The recall gauges name the stores, so with a token set a scrape without
``Authorization: Bearer <token>`` (or with a wrong one) gets 401 and the
documented error body, and never a store name; the right token gets the
gauges read from Redis. Unset, the route stays open, and an API bound to a
non-loopback host warns at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from engine.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "scrape-7c1d0e"
STORE = "metrics-store-91b2"  # a store name that must not leak without the token


@pytest.fixture()
def recall_stream(settings: Settings, redis_client: redis.Redis) -> str:
    key = f"{settings.key_prefix}:{{{STORE}}}:recall:email"
    redis_client.xadd(key, {"customer_id": "c1"})
    return key


@pytest.fixture()
def guarded(settings: Settings, recall_stream: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings.model_copy(update={"metrics_token": SecretStr(TOKEN)}))
    ) as api:
        yield api


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "basic", "wrong", "longer", "empty"],
)
def test_a_scrape_without_the_token_gets_401(guarded: TestClient, headers: dict[str, str]) -> None:
    answer = guarded.get("/metrics", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert answer.json()["error"]["code"] == "unauthenticated"
    assert set(answer.json()) == {"error"} and set(answer.json()["error"]) == {"code", "message"}
    assert STORE not in answer.text


def test_the_token_opens_the_recall_gauges(guarded: TestClient) -> None:
    answer = guarded.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    line = f'churnflow_recall_stream_length{{store="{STORE}",stream="queue:email"}} 1.0'
    assert line in answer.text.splitlines()


def test_without_a_token_the_route_stays_open(settings: Settings, recall_stream: str) -> None:
    with TestClient(create_app(settings)) as api:
        answer = api.get("/metrics")
    assert answer.status_code == 200
    assert f'store="{STORE}"' in answer.text


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("10.1.2.3", None, True),
        ("api.internal", None, True),
        ("0.0.0.0", SecretStr(TOKEN), False),
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
    ],
)
def test_an_open_metrics_route_on_a_public_host_warns_at_start_up(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    host: str,
    token: SecretStr | None,
    warned: bool,
) -> None:
    exposed = settings.model_copy(update={"api_host": host, "metrics_token": token})
    with caplog.at_level(logging.WARNING, logger="api.metrics"), TestClient(create_app(exposed)):
        pass
    warnings = [r for r in caplog.records if "CHURNFLOW_METRICS_TOKEN" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert host in warnings[0].getMessage()
