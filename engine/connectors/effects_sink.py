"""Effect-tracking counters in Redis: one hash per store and key group, overwritten.

::

    {prefix}:{<store>}:effects:<key group>    hash: field = JSON [rule_id, step, arm, channel],
                                              value = JSON counters (engine.effects.COUNT_FIELDS,
                                              money in 1/10,000 of the base currency);
                                              field "meta" = JSON late/duplicate/... counters

Each :class:`EffectsSnapshot` holds a key group's *absolute* counters, and is
written as ``DEL`` + ``HSET`` in one ``MULTI``: replaying snapshots after a
restart rewrites the same values (never ``HINCRBY``). Readers sum the key
groups (:func:`read_effects`).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from engine.connectors.redis_sink import RedisSink
from engine.effects import COUNT_FIELDS, EffectsSnapshot, RowKey

__all__ = ["effects_sink", "effects_redis_key", "read_effects", "write_snapshots"]


META_FIELD = b"meta"


def effects_redis_key(prefix: str, store_id: str, key_group: int) -> str:
    """The hash of one store's counters in one key group.

    >>> effects_redis_key("cf", "demo", 7)
    'cf:{demo}:effects:7'
    """
    return f"{prefix}:{{{store_id}}}:effects:{key_group}"


def row_field(row: RowKey) -> bytes:
    """The hash field of a row.

    >>> row_field(RowKey("winback", 0, None, "email"))
    b'["winback",0,null,"email"]'
    """
    return orjson.dumps(list(row))


def write_snapshots(client: redis.Redis, prefix: str, items: list[Any]) -> int:
    """Write the newest snapshot of each (store, key group): one transaction per store.

    A store's hashes share its hash tag, so each transaction stays on one Redis
    Cluster slot, and a reader of one store never sees half a batch.
    """
    latest: dict[str, dict[int, EffectsSnapshot]] = {}
    for item in items:
        if isinstance(item, EffectsSnapshot):
            latest.setdefault(item.store_id, {})[item.key_group] = item
    for store, groups in latest.items():
        pipe = client.pipeline(transaction=True)
        for group, snap in groups.items():
            key = effects_redis_key(prefix, store, group)
            rows = snap.rows.items()
            mapping = {row_field(row): orjson.dumps(counts) for row, counts in rows}
            mapping[META_FIELD] = orjson.dumps(snap.meta)
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]  # dict keys: invariant
        pipe.execute()
    return sum(len(groups) for groups in latest.values())


def read_effects(
    client: redis.Redis, prefix: str, store_id: str, key_groups: int
) -> tuple[dict[RowKey, dict[str, int]], dict[str, int]]:
    """Rows and meta counters of a store, summed over its key groups (one pipeline)."""
    pipe = client.pipeline(transaction=False)
    for group in range(key_groups):
        pipe.hgetall(effects_redis_key(prefix, store_id, group))
    rows: dict[RowKey, dict[str, int]] = {}
    meta: dict[str, int] = {}
    for fields in pipe.execute():
        for name, raw in fields.items():
            values = orjson.loads(raw)
            if name == META_FIELD:
                target = meta
            else:
                rule_id, step, arm, channel = orjson.loads(name)
                target = rows.setdefault(
                    RowKey(rule_id, step, arm, channel), dict.fromkeys(COUNT_FIELDS, 0)
                )
            for counter, value in values.items():
                target[counter] = target.get(counter, 0) + int(value)
    return rows, meta


def effects_sink(url: str, prefix: str, max_retry_s: float = 300.0) -> RedisSink:
    """Overwrites each (store, key group) hash with its newest :class:`EffectsSnapshot`."""
    return RedisSink(url, prefix, max_retry_s, write=write_snapshots)
