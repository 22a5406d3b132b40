"""Fixtures: a real Tansu broker and a real redis-server on free loopback ports.

Both are started once per test session with the same code as ``churnflow
services up`` and stopped at the end; each test gets a fresh topic name and a
fresh Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from engine.services import Service, services_down, services_up
from engine.settings import Settings


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    run_dir: Path = tmp_path_factory.mktemp("services")
    started = services_up(run_dir)
    try:
        yield started
    finally:
        services_down(run_dir)


@pytest.fixture()
def settings(services: dict[str, Service]) -> Settings:
    """Settings pointing at the session's services, with a fresh topic and key prefix."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        kafka_brokers=services["broker"].address,
        redis_url=f"redis://{services['redis'].address}/0",
        events_topic=f"events-{tag}",
        dead_letter_topic=f"dead-{tag}",
        key_prefix=f"t{tag}",
        key_groups=16,
        model_warm_examples=5,
    )


@pytest.fixture()
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        keys = list(client.scan_iter(f"{settings.key_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
