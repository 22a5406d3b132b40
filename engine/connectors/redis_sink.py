"""The Redis sink: customer profiles, segment membership, model status and counters.

Key layout (the store is a hash tag, so Redis Cluster keeps a store on one slot)::

    {prefix}:{<store>}:customer:<customer>     JSON profile (the score API reads it)
    {prefix}:{<store>}:segment:<segment>       sorted set: customer -> churn probability
    {prefix}:model:<shard>                     JSON model status and metrics
    {prefix}:stage:<key group>                 JSON customer-stage counters

Every write is idempotent (SET, ZADD, ZREM, DEL), so items replayed after a
restart from the recovery store leave the same result. A batch is written in one
pipeline; only the newest score of a customer in a batch is written. A lost
connection is retried with backoff rather than crashing the dataflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from engine.messages import Erased, GroupAggregates, ModelStatus, Scored, StageCounters
from engine.redis_client import RetryingClient
from engine.segments import SEGMENTS

log = logging.getLogger(__name__)

RISK_BANDS = ((0.7, "high"), (0.4, "medium"), (0.0, "low"))


def customer_key(prefix: str, store_id: str, customer_id: str) -> str:
    """The key of a customer's profile.

    >>> customer_key("cf", "demo", "42")
    'cf:{demo}:customer:42'
    """
    return f"{prefix}:{{{store_id}}}:customer:{customer_id}"


def segment_key(prefix: str, store_id: str, segment: str) -> str:
    return f"{prefix}:{{{store_id}}}:segment:{segment}"


def aggregates_key(prefix: str, store_id: str, table: str, key_group: int) -> str:
    """One key group's ``cohorts`` or ``lifecycle`` table of a store (JSON).

    >>> aggregates_key("cf", "demo", "cohorts", 7)
    'cf:{demo}:cohorts:7'
    """
    return f"{prefix}:{{{store_id}}}:{table}:{key_group}"


def store_model_key(prefix: str, store_id: str, shard: int) -> str:
    """One store's view of a model shard: its version and the store's own metrics.

    >>> store_model_key("cf", "shop", 0)
    'cf:{shop}:model:0'
    """
    return f"{prefix}:{{{store_id}}}:model:{shard}"


def model_key(prefix: str, shard: int) -> str:
    return f"{prefix}:model:{shard}"


def risk_band(probability: float) -> str:
    """The risk band of a churn probability.

    >>> risk_band(0.75), risk_band(0.5), risk_band(0.1)
    ('high', 'medium', 'low')
    """
    for floor, band in RISK_BANDS:
        if probability >= floor:
            return band
    return "low"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def profile_document(scored: Scored) -> dict[str, Any]:
    """The JSON document stored for a customer (the score API's contract)."""
    request = scored.request
    return {
        "store_id": request.store_id,
        "customer_id": request.customer_id,
        "churn_probability": round(scored.churn_probability, 6),
        "risk_band": risk_band(scored.churn_probability),
        "segment": request.segment,
        "value_tier": request.value_tier,
        "reasons": scored.reasons,
        "model_version": scored.model_version,
        "model_warm": scored.model_warm,
        "features": request.features,
        "profile": request.profile,
        "updated_at": iso(request.t),
        "cause": request.cause,
    }


def write_batch(client: redis.Redis, prefix: str, items: list[Any]) -> None:
    """Write one batch of stage outputs in a single pipeline.

    Segment membership follows each scored profile (ZADD to its segment, ZREM from
    the others), so ``SegmentChange`` items need no write of their own.
    """
    latest: dict[tuple[str, str], Scored] = {}
    erased: dict[tuple[str, str], Erased] = {}
    statuses: dict[int, ModelStatus] = {}
    store_views: dict[tuple[str, int], dict[str, Any]] = {}
    counters: dict[int, StageCounters] = {}
    aggregates: dict[tuple[str, int], GroupAggregates] = {}
    for item in items:
        if isinstance(item, Scored):
            key = (item.request.store_id, item.request.customer_id)
            latest[key] = item
            erased.pop(key, None)
        elif isinstance(item, Erased):
            key = (item.store_id, item.customer_id)
            erased[key] = item
            latest.pop(key, None)
        elif isinstance(item, ModelStatus):
            statuses[item.shard] = item
            for store_id, view in item.stores.items():  # each status names only some stores
                store_views[(store_id, item.shard)] = view
        elif isinstance(item, StageCounters):
            counters[item.key_group] = item
        elif isinstance(item, GroupAggregates):
            aggregates[(item.store_id, item.key_group)] = item
    pipe = client.pipeline(transaction=False)
    write_profiles(pipe, prefix, latest.values(), erased)
    for shard, status in statuses.items():
        body = {**status.metrics, "model_version": status.model_version}
        body["model_warm"] = status.model_warm
        pipe.set(model_key(prefix, shard), orjson.dumps(body))
    for (store_id, shard), view in store_views.items():
        pipe.set(store_model_key(prefix, store_id, shard), orjson.dumps(view))
    for group, stage in counters.items():
        body = {"watermark": stage.watermark, **stage.counts}
        pipe.set(f"{prefix}:stage:{group}", orjson.dumps(body))
    for (store_id, group), tables in aggregates.items():
        pipe.set(aggregates_key(prefix, store_id, "cohorts", group), orjson.dumps(tables.cohorts))
        pipe.set(
            aggregates_key(prefix, store_id, "lifecycle", group), orjson.dumps(tables.lifecycle)
        )
    pipe.execute()


def write_profiles(
    pipe: Any, prefix: str, scores: Iterable[Scored], erased: Iterable[tuple[str, str]]
) -> None:
    """Queue the profiles and segment memberships of a batch: one command per customer.

    Each scored customer gets a ``SET`` of its profile and each erased one a
    ``DEL``; then each store gets, per segment, one ``ZADD`` of the batch's
    customers now in it and one ``ZREM`` of the batch's other customers (one key
    each, so cluster pipelines take them; ``MSET`` they refuse). The customers of
    ``scores`` and ``erased`` are distinct, so the result is the same as a ``ZADD``
    and five ``ZREM`` per customer, for a fraction of the client's work.
    """
    stores: dict[str, StoreWrites] = {}
    for scored in scores:
        store_id, customer_id = scored.request.store_id, scored.request.customer_id
        writes = StoreWrites.of(stores, store_id)
        doc = profile_document(scored)
        pipe.set(customer_key(prefix, store_id, customer_id), orjson.dumps(doc))
        writes.members.setdefault(doc["segment"], {})[customer_id] = doc["churn_probability"]
        writes.customers.append(customer_id)
    for store_id, customer_id in erased:
        writes = StoreWrites.of(stores, store_id)
        pipe.delete(customer_key(prefix, store_id, customer_id))
        writes.customers.append(customer_id)
    for store_id, writes in stores.items():
        for segment in SEGMENTS:
            members = writes.members.get(segment, {})
            key = segment_key(prefix, store_id, segment)
            if members:
                pipe.zadd(key, members)
            leaving = [c for c in writes.customers if c not in members]
            if leaving:
                pipe.zrem(key, *leaving)


class StoreWrites:
    """One store's segment moves in a batch (see :func:`write_profiles`)."""

    __slots__ = ("members", "customers")

    def __init__(self) -> None:
        self.members: dict[str, dict[str, float]] = {}
        """Segment → customer → churn probability."""
        self.customers: list[str] = []
        """Every customer of the batch (scored or erased)."""

    @staticmethod
    def of(stores: dict[str, StoreWrites], store_id: str) -> StoreWrites:
        """The store's entry of ``stores`` (created when missing)."""
        writes = stores.get(store_id)
        if writes is None:
            writes = stores[store_id] = StoreWrites()
        return writes


BatchWriter = Callable[[redis.Redis, str, list[Any]], object]
"""Writes one batch of items to Redis under a key prefix (one pipeline or transaction)."""


class _RedisPartition(StatelessSinkPartition[Any]):
    def __init__(self, url: str, prefix: str, max_retry_s: float, write: BatchWriter) -> None:
        self.redis = RetryingClient(url, max_retry_s, socket_timeout=10)
        self.prefix = prefix
        self.write = write

    def write_batch(self, items: list[Any]) -> None:
        self.redis.call(lambda client: self.write(client, self.prefix, items))

    def close(self) -> None:
        self.redis.close()


class RedisSink(DynamicSink[Any]):
    """Writes batches to Redis with ``write`` (profiles, segments, model status and
    counters by default), retrying with backoff while Redis is unreachable."""

    def __init__(
        self, url: str, prefix: str, max_retry_s: float = 300.0, write: BatchWriter = write_batch
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_retry_s = max_retry_s
        self.write = write

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.url, self.prefix, self.max_retry_s, self.write)
