"""Shared dependencies of the API: settings, the Redis clients, the caller's key.

Authentication is one Redis round trip: the key's record (``GET``), a token from
its rate-limit bucket (the token-bucket script) and whatever the route reads next
go out in one pipeline on the asyncio client (:func:`authenticate`). The bucket is
named by the presented key's hash, so the token is taken before the record is
seen: an unknown key's request takes a token from a bucket of its own (it expires
about a second later), never from a real key's. Nothing is cached in the process:
a revoked key is refused on its next request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import redis
import redis.asyncio
from fastapi import Depends, Header, Request

from api.errors import ApiError
from api.keys import ApiKey, hash_key, key_record, parse_key
from api.ratelimit import apikey_bucket, read_with_token, refusal
from engine.settings import Settings

# Dependencies are ``async def`` even when they only read app.state: FastAPI runs a
# plain ``def`` dependency in the thread pool, a thread hand-off per request each.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> redis.Redis:
    client: redis.Redis = request.app.state.redis
    return client


async def get_async_redis(request: Request) -> redis.asyncio.Redis:
    client: redis.asyncio.Redis = request.app.state.async_redis
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[redis.asyncio.Redis, Depends(get_async_redis)]


def bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header, or 401.

    >>> bearer_key("Bearer cfk_x ")
    'cfk_x'
    """
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(401, "unauthenticated", "missing Authorization: Bearer <key> header")
    return authorization.removeprefix("Bearer ").strip()


async def authenticate(
    client: redis.asyncio.Redis,
    settings: Settings,
    authorization: str | None,
    reads: Sequence[str] = (),
) -> tuple[ApiKey, list[bytes | None]]:
    """The caller's key (401 unknown or revoked, 429 past its rate limit) and the values
    of ``reads``, all in one round trip."""
    key_hash = hash_key(bearer_key(authorization))
    verdict, values = await read_with_token(
        client,
        apikey_bucket(settings.key_prefix, key_hash),
        settings.rate_limit_per_s,
        settings.rate_limit_burst,
        [key_record(settings.key_prefix, key_hash), *reads],
    )
    found = parse_key(values[0])
    if found is None:
        raise ApiError(401, "unauthenticated", "unknown or revoked API key")
    error = refusal(verdict, settings.rate_limit_per_s, settings.rate_limit_burst, "this API key")
    if error is not None:
        raise error
    return found, values[1:]


async def get_api_key(
    client: AsyncRedisDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The caller's key from ``Authorization: Bearer <key>``, or 401; 429 past its rate limit."""
    found, _ = await authenticate(client, settings, authorization)
    return found


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


def require_store(store_id: str, key: ApiKey, scope: str = "read") -> None:
    """403 unless the key belongs to ``store_id`` and has ``scope``."""
    if key.store_id != store_id:
        raise ApiError(403, "forbidden", f"this key is not valid for store {store_id!r}")
    if scope not in key.scopes and "admin" not in key.scopes:
        raise ApiError(403, "forbidden", f"this key lacks the {scope!r} scope")
