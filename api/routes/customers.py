"""Customer scores for storefronts: ``GET /v1/stores/{store_id}/customers/{customer_id}``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis.asyncio
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from api.deps import authenticate, require_store
from api.errors import ApiError, ErrorBody
from engine.connectors.redis_sink import customer_key
from engine.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["customers"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "the key belongs to another store"},
    404: {"model": ErrorBody, "description": "no such customer"},
    429: {"model": ErrorBody, "description": "rate limited (Retry-After)"},
    503: {"model": ErrorBody, "description": "the store is unavailable"},
}


class Reason(BaseModel):
    feature: str
    contribution: float | None
    direction: str
    text: str


class CustomerScore(BaseModel):
    store_id: str
    customer_id: str
    churn_probability: float
    risk_band: str
    segment: str
    value_tier: str
    reasons: list[Reason]
    model_version: str
    model_warm: bool
    features: dict[str, float]
    profile: dict[str, Any]
    updated_at: str


def score_json(raw: bytes) -> bytes:
    """The stored profile document as the API's ``CustomerScore`` JSON.

    Parsed, checked and written by pydantic's core in one pass each way; fields the
    sink stores for itself (``cause``) are left out.

    >>> doc = (b'{"store_id": "s", "customer_id": "7", "churn_probability": 0.5, '
    ...        b'"risk_band": "medium", "segment": "active", "value_tier": "low", "reasons": [], '
    ...        b'"model_version": "v1", "model_warm": true, "features": {}, "profile": {}, '
    ...        b'"updated_at": "2026-11-23T10:00:00+00:00", "cause": "order"}')
    >>> b"cause" in score_json(doc), score_json(doc)[:34]
    (False, b'{"store_id":"s","customer_id":"7",')
    """
    return CustomerScore.model_validate_json(raw).model_dump_json().encode()


@router.get("/customers/{customer_id}", response_model=CustomerScore, responses=ERRORS)
async def get_customer(
    store_id: str,
    customer_id: str,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Churn probability, segment, reasons and features of one customer.

    One Redis round trip: the API key, its rate-limit token and the profile.
    """
    # app.state read here, not through SettingsDep/AsyncRedisDep: two dependency
    # resolutions less on the busiest route
    settings: Settings = request.app.state.settings
    client: redis.asyncio.Redis = request.app.state.async_redis
    profile_key = customer_key(settings.key_prefix, store_id, customer_id)
    key, (raw,) = await authenticate(client, settings, authorization, [profile_key])
    require_store(store_id, key, "read")
    if raw is None:
        raise ApiError(404, "not_found", f"no customer {customer_id!r} in store {store_id!r}")
    try:
        body = score_json(raw)
    except ValidationError as exc:
        log.warning("unreadable profile %s: %s", profile_key, exc)
        raise ApiError(503, "unavailable", "the stored profile is unreadable") from None
    return Response(body, media_type="application/json")
