"""Request limits: a token bucket per API key and per store's webhooks, in Redis;
and a cap on request body size (``BodyLimitMiddleware``).

One Lua script reads the bucket, refills it for the time passed (Redis ``TIME``,
so every API process shares one clock), takes a token or says how long until
one is there, and writes the bucket back, atomically. Buckets::

    {prefix}:ratelimit:apikey:<sha256 of the key>    per API key
    {prefix}:{<store>}:ratelimit:webhook             per store, signed webhooks only

A bucket holds at most ``burst`` tokens and refills at ``rate`` per second; a
full bucket expires, so idle keys leave nothing behind. A refused request gets
429 ``rate_limited`` with ``Retry-After`` (whole seconds, at least 1).

The webhook bucket is taken *after* the signature check, so a stranger posting
unsigned bodies cannot use up a store's budget.

>>> retry_after_s(0.0), retry_after_s(0.2), retry_after_s(3.01)
(1, 1, 4)
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import orjson
import redis
from fastapi import HTTPException
from redis.commands.core import Script
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError

__all__ = [
    "BodyLimitMiddleware",
    "Verdict",
    "apikey_bucket",
    "enforce",
    "retry_after_s",
    "take_token",
    "webhook_bucket",
]

# KEYS: bucket hash. ARGV: rate (tokens/s), burst, cost.
# Returns {allowed (1/0), seconds until allowed, tokens left} (numbers as strings:
# Lua numbers returned bare would be truncated to integers).
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(wait), tostring(tokens)}
"""

_scripts: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()


class Verdict(NamedTuple):
    allowed: bool
    wait_s: float
    """Seconds until a token is there (0 when allowed)."""
    tokens_left: float


def apikey_bucket(prefix: str, key_hash: str) -> str:
    """
    >>> apikey_bucket("cf", "ab12")
    'cf:ratelimit:apikey:ab12'
    """
    return f"{prefix}:ratelimit:apikey:{key_hash}"


def webhook_bucket(prefix: str, store_id: str) -> str:
    """
    >>> webhook_bucket("cf", "demo")
    'cf:{demo}:ratelimit:webhook'
    """
    return f"{prefix}:{{{store_id}}}:ratelimit:webhook"


def retry_after_s(wait_s: float) -> int:
    """``Retry-After`` in whole seconds: rounded up, at least 1."""
    return max(1, math.ceil(wait_s - 1e-9))


def take_token(client: redis.Redis, bucket: str, rate: float, burst: int) -> Verdict:
    """Take one token from ``bucket`` (atomic); say whether it was there."""
    script = _scripts.get(client)
    if script is None:
        script = _scripts[client] = client.register_script(TOKEN_BUCKET_LUA)
    allowed, wait, left = script(keys=[bucket], args=[repr(float(rate)), int(burst), 1])
    return Verdict(bool(int(allowed)), float(wait), float(left))


def enforce(client: redis.Redis, bucket: str, rate: float, burst: int, what: str) -> None:
    """Take a token or raise 429 ``rate_limited`` with ``Retry-After``."""
    verdict = take_token(client, bucket, rate, burst)
    if verdict.allowed:
        return
    seconds = retry_after_s(verdict.wait_s)
    raise ApiError(
        429,
        "rate_limited",
        f"rate limit of {what} exceeded ({rate:g}/s, burst {burst}); retry in {seconds}s",
        headers={"Retry-After": str(seconds)},
    )


class BodyLimitMiddleware:
    """413 ``payload_too_large`` for a body over ``max_bytes``.

    A declared ``Content-Length`` over the limit is answered at once, before the
    app runs; a body streamed without one is counted as it is read and the read
    that crosses the limit raises 413 inside the app (routes never see more).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"body over {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.strip().isdigit():
                if int(value) > self.max_bytes:
                    await _answer_413(send, message)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            got = await receive()
            if got["type"] == "http.request":
                seen += len(got.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, message)
            return got

        await self.app(scope, counted, send)


async def _answer_413(send: Send, message: str) -> None:
    body = orjson.dumps({"error": {"code": "payload_too_large", "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
