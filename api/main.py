"""The churnflow API: ``create_app(settings)`` builds it; ``app`` is for uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import customers, health, model
from engine.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings or Settings()
        pool = redis.BlockingConnectionPool.from_url(
            app.state.settings.redis_url, max_connections=64, timeout=5, socket_timeout=5
        )
        app.state.redis = redis.Redis(connection_pool=pool)
        try:
            yield
        finally:
            app.state.redis.close()
            pool.disconnect()

    app = FastAPI(title="churnflow", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(customers.router)
    app.include_router(model.router)
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory api.main:app``."""
    return create_app()
