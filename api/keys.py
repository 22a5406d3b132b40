"""API keys: created per store with scopes, stored hashed (SHA-256) in Redis, revocable.

A key is shown once, at creation; Redis holds only its hash, so a leaked Redis
dump does not leak usable keys.

>>> hash_key("cfk_example")[:16]
'cbe378fd93880aea'
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import orjson
import redis

SCOPES = ("read", "ingest", "admin")


@dataclass(frozen=True)
class ApiKey:
    store_id: str
    scopes: tuple[str, ...]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_record(prefix: str, key_hash: str) -> str:
    """The Redis key holding an API key's record.

    >>> key_record("cf", "ab12")
    'cf:apikey:ab12'
    """
    return f"{prefix}:apikey:{key_hash}"


def parse_key(raw: bytes | str | None) -> ApiKey | None:
    """An API key's record as stored (``None`` when there is none: unknown or revoked).

    >>> parse_key(b'{"store_id": "demo", "scopes": ["read"]}')
    ApiKey(store_id='demo', scopes=('read',))
    >>> parse_key(None) is None
    True
    """
    if raw is None:
        return None
    doc = orjson.loads(raw)
    return ApiKey(store_id=doc["store_id"], scopes=tuple(doc["scopes"]))


def create_key(
    client: redis.Redis,
    prefix: str,
    store_id: str,
    scopes: tuple[str, ...] = ("read",),
    key: str | None = None,
) -> str:
    """Create (or, given ``key``, register) a key for one store; return the key."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {SCOPES}")
    key = key or f"cfk_{secrets.token_urlsafe(24)}"
    doc = {"store_id": store_id, "scopes": list(scopes)}
    client.set(key_record(prefix, hash_key(key)), orjson.dumps(doc))
    return key


def revoke_key(client: redis.Redis, prefix: str, key: str) -> bool:
    return bool(client.delete(key_record(prefix, hash_key(key))))
