"""Per-store webhook secrets, kept in Redis: ``{prefix}:{<store>}:webhook-secret:<platform>``.

The webhook routes need no API key: the HMAC signature over the raw body is the
authentication, so each store has one secret per platform. Unlike API keys the
secret is stored as is (verifying an HMAC needs the key itself). Platforms are
the webhook route names: ``shopify``, ``woocommerce`` and ``events`` (the
generic signed batch).

These helpers are plain functions over a Redis client (no FastAPI), for the
routes, the CLI and tests.
"""

from __future__ import annotations

import redis

PLATFORMS = ("shopify", "woocommerce", "events")


def secret_key(prefix: str, store_id: str, platform: str) -> str:
    """The Redis key of a store's secret for one platform.

    >>> secret_key("cf", "demo", "shopify")
    'cf:{demo}:webhook-secret:shopify'
    """
    return f"{prefix}:{{{store_id}}}:webhook-secret:{platform}"


def _check(platform: str) -> None:
    if platform not in PLATFORMS:
        raise ValueError(f"unknown webhook platform {platform!r}; known: {PLATFORMS}")


def set_secret(client: redis.Redis, prefix: str, store_id: str, platform: str, secret: str) -> None:
    """Set (or replace) the secret a store's ``platform`` webhooks are signed with."""
    _check(platform)
    if not secret:
        raise ValueError("refusing to store an empty webhook secret")
    client.set(secret_key(prefix, store_id, platform), secret.encode("utf-8"))


def get_secret(client: redis.Redis, prefix: str, store_id: str, platform: str) -> str | None:
    """The store's secret for ``platform``, or ``None`` if none is configured."""
    _check(platform)
    raw = client.get(secret_key(prefix, store_id, platform))
    if raw is None:
        return None
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return text or None


def delete_secret(client: redis.Redis, prefix: str, store_id: str, platform: str) -> bool:
    """Remove the secret; the store's ``platform`` webhooks are then refused (401)."""
    _check(platform)
    return bool(client.delete(secret_key(prefix, store_id, platform)))
