"""Many customer scores at once: ``POST /v1/stores/{store_id}/customers:batchGet``."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import ApiKeyDep, RedisDep, SettingsDep, require_store
from api.errors import ErrorBody
from api.routes import REQUIRED_SCOPE
from engine.connectors.redis_sink import customer_key

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["customers"])

MAX_BATCH = 1000

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "the key belongs to another store"},
    400: {"model": ErrorBody, "description": "the body is not JSON"},
    422: {"model": ErrorBody, "description": f"not 1..{MAX_BATCH} customer ids"},
    429: {"model": ErrorBody, "description": "rate limited (Retry-After)"},
}


class BatchGetRequest(BaseModel):
    customer_ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]],
        Field(min_length=1, max_length=MAX_BATCH),
    ]


class BatchGetResponse(BaseModel):
    customers: list[dict[str, Any]]
    """Profiles (the document of ``GET .../customers/{id}``), in request order."""
    missing: list[str]
    """Requested ids with no profile, in request order."""


@router.post(
    "/customers:batchGet",
    response_model=BatchGetResponse,
    responses=ERRORS,
    openapi_extra={REQUIRED_SCOPE: "read"},  # a lookup, though a POST
)
def batch_get(
    store_id: str,
    body: BatchGetRequest,
    key: ApiKeyDep,
    client: RedisDep,
    settings: SettingsDep,
) -> BatchGetResponse:
    """Up to 1000 customers' profiles with one Redis ``MGET``; repeated ids are read once."""
    require_store(store_id, key, "read")
    ids = list(dict.fromkeys(body.customer_ids))
    raws = client.mget([customer_key(settings.key_prefix, store_id, c) for c in ids])
    customers: list[dict[str, Any]] = []
    missing: list[str] = []
    for customer_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            missing.append(customer_id)
        else:
            customers.append(orjson.loads(raw))
    return BatchGetResponse(customers=customers, missing=missing)
