"""The churnflow API: ``create_app(settings)`` builds it; ``app`` is for uvicorn."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio
from confluent_kafka import KafkaException
from fastapi import FastAPI

from api.errors import install_error_handlers
from api.logging import RequestLogMiddleware, configure_json_logging
from api.metrics import Metrics, MetricsMiddleware, warn_if_exposed
from api.metrics import router as metrics_router
from api.ratelimit import BodyLimitMiddleware
from api.routes import (
    batch,
    campaigns,
    cohorts,
    customers,
    dashboard,
    health,
    model,
    privacy,
    segments,
    webhooks,
)
from engine.connectors.kafka import ensure_topics
from engine.errors import ServiceError
from engine.redis_client import connect, connect_async, is_cluster_url
from engine.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings or Settings()
        warn_if_exposed(app.state.settings)
        url = app.state.settings.redis_url
        pool: redis.BlockingConnectionPool | None = None
        async_pool: redis.asyncio.BlockingConnectionPool | None = None
        if is_cluster_url(url):  # the cluster clients keep a pool per node themselves
            app.state.redis = connect(url, socket_timeout=5)
            app.state.async_redis = connect_async(url, socket_timeout=5)
        else:
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=64, timeout=5, socket_timeout=5
            )
            app.state.redis = redis.Redis(connection_pool=pool)
            # the hot path (API keys, rate limits, score lookups) runs on the event loop:
            # async routes and dependencies, one pipeline per request
            async_pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, max_connections=64, timeout=5, socket_timeout=5
            )
            app.state.async_redis = redis.asyncio.Redis(connection_pool=async_pool)
        # Webhooks produce through one idempotent producer; the API still serves
        # reads when the broker is down (webhooks then answer 503).
        app.state.produce_timeout_s = webhooks.PRODUCE_TIMEOUT_S
        app.state.producer = webhooks.open_producer(app.state.settings)
        try:
            ensure_topics(
                app.state.settings.brokers,
                [app.state.settings.events_topic, app.state.settings.dead_letter_topic],
            )
        except (ServiceError, KafkaException) as exc:
            log.warning("cannot ensure the topics exist (webhooks will answer 503): %s", exc)
        try:
            yield
        finally:
            app.state.producer.flush(5)
            app.state.producer = None  # let librdkafka's threads go with the object
            app.state.redis.close()
            await app.state.async_redis.aclose()
            if pool is not None and async_pool is not None:
                pool.disconnect()
                await async_pool.disconnect()

    app = FastAPI(title="churnflow", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    # outermost last: request id + access log, then timing, then the body cap
    app.state.metrics = Metrics()
    app.add_middleware(BodyLimitMiddleware, max_bytes=webhooks.MAX_BODY_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestLogMiddleware)
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(privacy.router)
    app.include_router(customers.router)
    app.include_router(model.router)
    app.include_router(batch.router)
    app.include_router(segments.router)
    app.include_router(campaigns.router)
    app.include_router(cohorts.router)
    app.include_router(webhooks.router)
    app.include_router(dashboard.router)
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory api.main:app`` (logs JSON lines to stderr)."""
    configure_json_logging()
    return create_app()
