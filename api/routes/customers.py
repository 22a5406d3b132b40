"""Customer scores for storefronts: ``GET /v1/stores/{store_id}/customers/{customer_id}``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ApiKeyDep, RedisDep, SettingsDep, require_store
from api.errors import ApiError, ErrorBody
from engine.connectors.redis_sink import customer_key

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["customers"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "the key belongs to another store"},
    404: {"model": ErrorBody, "description": "no such customer"},
    429: {"model": ErrorBody, "description": "rate limited (Retry-After)"},
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


@router.get("/customers/{customer_id}", response_model=CustomerScore, responses=ERRORS)
def get_customer(
    store_id: str, customer_id: str, key: ApiKeyDep, client: RedisDep, settings: SettingsDep
) -> Any:
    """Churn probability, segment, reasons and features of one customer."""
    require_store(store_id, key, "read")
    raw = client.get(customer_key(settings.key_prefix, store_id, customer_id))
    if raw is None:
        raise ApiError(404, "not_found", f"no customer {customer_id!r} in store {store_id!r}")
    return orjson.loads(raw)
