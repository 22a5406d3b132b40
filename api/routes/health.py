"""Liveness and readiness."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import RedisDep
from api.errors import ApiError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health)
def readyz(client: RedisDep) -> Health:
    """Ready only when Redis answers."""
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ApiError(503, "not_ready", f"redis does not answer: {exc}") from None
    return Health(status="ready")
