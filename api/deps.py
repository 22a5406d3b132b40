"""Shared dependencies of the API: settings, the Redis client, the caller's key."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Header, Request

from api.errors import ApiError
from api.keys import ApiKey, hash_key, lookup_key
from api.ratelimit import apikey_bucket, enforce
from engine.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_redis(request: Request) -> redis.Redis:
    client: redis.Redis = request.app.state.redis
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


def get_api_key(
    client: RedisDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The caller's key from ``Authorization: Bearer <key>``, or 401; 429 past its rate limit."""
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(401, "unauthenticated", "missing Authorization: Bearer <key> header")
    raw_key = authorization.removeprefix("Bearer ").strip()
    found = lookup_key(client, settings.key_prefix, raw_key)
    if found is None:
        raise ApiError(401, "unauthenticated", "unknown or revoked API key")
    bucket = apikey_bucket(settings.key_prefix, hash_key(raw_key))
    enforce(client, bucket, settings.rate_limit_per_s, settings.rate_limit_burst, "this API key")
    return found


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


def require_store(store_id: str, key: ApiKey, scope: str = "read") -> None:
    """403 unless the key belongs to ``store_id`` and has ``scope``."""
    if key.store_id != store_id:
        raise ApiError(403, "forbidden", f"this key is not valid for store {store_id!r}")
    if scope not in key.scopes and "admin" not in key.scopes:
        raise ApiError(403, "forbidden", f"this key lacks the {scope!r} scope")
