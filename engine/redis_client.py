"""One place that turns ``CHURNFLOW_REDIS_URL`` into a Redis client.

A plain URL (``redis://host:6379/0``, ``rediss://…``, ``unix://…``) gives a
``redis.Redis`` talking to one server. A URL whose scheme ends in ``+cluster``
(``redis+cluster://host:7000``, ``rediss+cluster://…``) gives a
``redis.cluster.RedisCluster``: the node in the URL is only the first contact,
the client learns the slot map from it and follows ``MOVED``/``ASK`` itself.

Every key churnflow writes for a store carries the store as a hash tag
(``cf:{shop}:customer:42``), so a store's keys share one slot: the multi-key Lua
scripts (recall enqueue, delivery state, erase) and the per-store transactions
stay on one node. Pipelines that span stores are split per node by the cluster
client (non-transactional, as the sinks use them).

``RedisCluster`` offers the same command methods as ``redis.Redis`` but is not a
subclass of it; callers are typed against ``redis.Redis`` and get the cluster
client through :func:`connect` (a ``cast``), so the rest of the code has one
client type.

>>> is_cluster_url("redis+cluster://127.0.0.1:7000")
True
>>> is_cluster_url("redis://127.0.0.1:6379/0")
False
>>> plain_url("rediss+cluster://10.0.0.5:7000")
'rediss://10.0.0.5:7000'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException

__all__ = [
    "RetryingClient",
    "connect",
    "connect_async",
    "is_cluster",
    "is_cluster_url",
    "is_transient",
    "mget",
    "plain_url",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CLUSTER_SUFFIX = "+cluster://"


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.endswith("+cluster")


def plain_url(url: str) -> str:
    """``url`` with ``+cluster`` removed from its scheme (what redis-py parses)."""
    return url.replace(_CLUSTER_SUFFIX, "://", 1) if is_cluster_url(url) else url


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url``: one server, or a whole cluster for a ``+cluster`` scheme.

    ``options`` go to ``from_url`` (``socket_timeout``, ``max_connections``…); with a
    cluster, a database number in the URL is refused by redis-py (clusters have db 0
    only).
    """
    if is_cluster_url(url):
        return cast(redis.Redis, RedisCluster.from_url(plain_url(url), **options))
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, **options: Any) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect` (``redis.asyncio``; the API's hot path)."""
    if is_cluster_url(url):
        cluster = AsyncRedisCluster.from_url(plain_url(url), **options)
        return cast(redis.asyncio.Redis, cluster)
    return redis.asyncio.Redis.from_url(url, **options)


def is_cluster(client: object) -> bool:
    """Whether ``client`` (sync or asyncio) talks to a Redis Cluster.

    >>> is_cluster(redis.Redis()), is_cluster(redis.asyncio.Redis())
    (False, False)
    """
    return isinstance(client, RedisCluster | AsyncRedisCluster)


def mget(client: redis.Redis, keys: list[str]) -> list[Any]:
    """``MGET`` of keys that may lie in different cluster slots (the stage counters of
    all key groups, say): one command on a server, one per slot on a cluster."""
    if is_cluster(client):
        return list(cast(RedisCluster, client).mget_nonatomic(keys))
    return list(client.mget(keys))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "Redis is unreachable right now" (worth retrying).

    Connection and timeout errors; on a cluster also a cluster that is down or
    moving slots, and a cluster client that could not reach any node at start-up.
    Anything else (a wrong command, a script refused in a pipeline) is a bug and is
    not retried.

    >>> is_transient(redis.ConnectionError("refused"))
    True
    >>> is_transient(RedisClusterException("Redis Cluster cannot be connected. ..."))
    True
    >>> is_transient(RedisClusterException("evalsha is blocked in cluster mode"))
    False
    >>> is_transient(redis.ResponseError("WRONGTYPE"))
    False
    """
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ClusterError):
        return True
    return isinstance(exc, RedisClusterException) and "cannot be connected" in str(exc)


class RetryingClient:
    """A client for ``url`` made on first use, and calls retried while Redis is away.

    The sinks write through it: a call that fails with a transient error
    (:func:`is_transient`) is retried with exponential backoff (0.1 s doubling to
    5 s) for up to ``max_retry_s``, then raised. The client itself is created inside
    the retried call, so a cluster that is not up yet when the dataflow starts is
    waited for like a server that went away (the cluster client connects eagerly).
    Retried calls must be idempotent: the sinks write absolute values.
    """

    def __init__(self, url: str, max_retry_s: float, **options: Any) -> None:
        self.url = url
        self.max_retry_s = max_retry_s
        self.options = options
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.url, **self.options)
        return self._client

    def call(self, write: Callable[[redis.Redis], T], what: str = "redis write") -> T:
        """``write(client)``, retried while Redis is unreachable."""
        delay = 0.1
        deadline = time.monotonic() + self.max_retry_s
        while True:
            try:
                return write(self.client)
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() > deadline:
                    raise
                log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
