"""Model status: metrics, calibration, version, warmth."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter

from api.deps import ApiKeyDep, RedisDep, SettingsDep, require_store
from api.errors import ApiError, ErrorBody
from engine.connectors.redis_sink import store_model_key

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["model"])


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "the key belongs to another store"},
    404: {"model": ErrorBody, "description": "the model has not reported yet"},
    429: {"model": ErrorBody, "description": "rate limited (Retry-After)"},
}


@router.get("/model", responses=ERRORS)
def get_model(store_id: str, key: ApiKeyDep, client: RedisDep, settings: SettingsDep) -> Any:
    """The model (shard 0) as this store sees it: the shared model's version and
    warmth, and progressive-validation metrics on this store's own examples only."""
    require_store(store_id, key, "read")
    raw = client.get(store_model_key(settings.key_prefix, store_id, 0))
    if raw is None:
        raise ApiError(404, "not_found", "the model has not learned this store's examples yet")
    return orjson.loads(raw)
