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

import hashlib
import math
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
import redis
import redis.asyncio
from fastapi import HTTPException
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from engine.redis_client import is_cluster

__all__ = [
    "BodyLimitMiddleware",
    "Verdict",
    "apikey_bucket",
    "enforce",
    "read_with_token",
    "refusal",
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
TOKEN_BUCKET_SHA = hashlib.sha1(TOKEN_BUCKET_LUA.encode()).hexdigest()

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
    return verdict_of(script(keys=[bucket], args=[repr(float(rate)), int(burst), 1]))


def verdict_of(reply: Sequence[Any]) -> Verdict:
    """The script's reply as a :class:`Verdict`.

    >>> verdict_of([0, b"1.5", b"0.25"])
    Verdict(allowed=False, wait_s=1.5, tokens_left=0.25)
    """
    allowed, wait, left = reply
    return Verdict(bool(int(allowed)), float(wait), float(left))


def refusal(verdict: Verdict, rate: float, burst: int, what: str) -> ApiError | None:
    """429 ``rate_limited`` with ``Retry-After`` for a refused token, else ``None``.

    >>> refusal(Verdict(True, 0.0, 3.0), 1.0, 5, "this API key") is None
    True
    >>> error = refusal(Verdict(False, 0.4, 0.6), 1.0, 5, "this API key")
    >>> error.status, error.headers
    (429, {'Retry-After': '1'})
    """
    if verdict.allowed:
        return None
    seconds = retry_after_s(verdict.wait_s)
    return ApiError(
        429,
        "rate_limited",
        f"rate limit of {what} exceeded ({rate:g}/s, burst {burst}); retry in {seconds}s",
        headers={"Retry-After": str(seconds)},
    )


def enforce(client: redis.Redis, bucket: str, rate: float, burst: int, what: str) -> None:
    """Take a token or raise 429 ``rate_limited`` with ``Retry-After``."""
    error = refusal(take_token(client, bucket, rate, burst), rate, burst, what)
    if error is not None:
        raise error


async def _token_and_reads(
    client: redis.asyncio.Redis, bucket: str, rate: float, burst: int, reads: Sequence[str]
) -> list[Any]:
    args = (TOKEN_BUCKET_SHA, 1, bucket, repr(float(rate)), int(burst), 1)
    if is_cluster(client):  # a cluster refuses scripts in pipelines: two round trips
        try:
            token: Any = await client.evalsha(*args)
        except NoScriptError as exc:
            token = exc
        if not reads:
            return [token]
        gets = client.pipeline()  # split per node by the cluster client
        for key in reads:
            gets.get(key)
        return [token, *await gets.execute()]
    pipe = client.pipeline(transaction=False)
    pipe.evalsha(*args)
    for key in reads:
        pipe.get(key)
    return list(await pipe.execute(raise_on_error=False))


async def read_with_token(
    client: redis.asyncio.Redis, bucket: str, rate: float, burst: int, reads: Sequence[str]
) -> tuple[Verdict, list[bytes | None]]:
    """Take one token from ``bucket`` and GET each of ``reads``: one pipeline, one round trip.

    The script goes by its SHA1 (``EVALSHA``); a Redis that does not know it yet
    (first call, restart, ``SCRIPT FLUSH``) gets it loaded and the pipeline is sent
    again — the refused ``EVALSHA`` took no token.
    """
    replies = await _token_and_reads(client, bucket, rate, burst, reads)
    if isinstance(replies[0], NoScriptError):
        await client.script_load(TOKEN_BUCKET_LUA)
        replies = await _token_and_reads(client, bucket, rate, burst, reads)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return verdict_of(replies[0]), replies[1:]


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
