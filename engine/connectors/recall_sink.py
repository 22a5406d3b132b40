"""The recall queue: recall intents enqueued exactly once, whatever is replayed.

Key layout (the store is a hash tag, so every key of one intent is on one
Redis Cluster slot)::

    {prefix}:{<store>}:recall:<channel>         stream: intents to send, per channel
    {prefix}:{<store>}:recall-suppressed        stream: holdout intents (recorded, not sent)
    {prefix}:{<store>}:recall-log               capped stream (MAXLEN ~ 100000): every
                                                newly enqueued intent without its payload,
                                                plus ``status`` (queued/suppressed) and
                                                ``entry`` (its id in the queue), for the API
    {prefix}:{<store>}:recall-key:<key>         idempotency marker (value: the entry id),
                                                expires after ``ttl_s`` (90 days)

One Lua script per intent checks the marker and, only if it is absent, sets it
and appends the intent to its stream and to the log, atomically. Enqueueing
the same intent again (a replay after a restart, two workers racing, a retried
batch) is reported as a duplicate and changes nothing. Queue entries carry
``idempotency_key``, ``channel``, ``send_at`` (epoch seconds), ``store_id``,
``customer_id``, ``rule_id`` and ``payload`` (the whole intent as JSON).
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.commands.core import Script

from engine.redis_client import RetryingClient, is_cluster
from engine.triggers.intent import RecallIntent

__all__ = [
    "DEFAULT_LOG_MAXLEN",
    "DEFAULT_TTL_S",
    "EnqueueResult",
    "RecallSink",
    "enqueue_intents",
    "intent_fields",
    "log_key",
    "marker_key",
    "queue_key",
    "suppressed_key",
]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 90 * 86_400
DEFAULT_LOG_MAXLEN = 100_000

# KEYS: marker, target stream, log stream. ARGV: ttl, log maxlen, status, then
# the entry's field/value pairs, ``payload`` last (the log leaves it out).
# Returns 1 when enqueued, 0 for a duplicate. The marker is checked first and
# set after the XADD (same effect as SET NX, the script being atomic), so a
# failing XADD leaves no marker behind and a retry can still enqueue.
ENQUEUE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'status', ARGV[3], 'entry', id,
  unpack(ARGV, 4, #ARGV - 2))
return 1
"""

_scripts: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()


class EnqueueResult(NamedTuple):
    enqueued: int
    """New intents appended to a channel stream."""
    duplicates: int
    """Intents whose idempotency key was already enqueued (holdout or not)."""
    suppressed: int
    """New holdout intents appended to the suppressed stream."""


def _tag(prefix: str, store_id: str) -> str:
    return f"{prefix}:{{{store_id}}}"


def queue_key(prefix: str, store_id: str, channel: str) -> str:
    """The stream a channel's sender reads.

    >>> queue_key("cf", "demo", "email")
    'cf:{demo}:recall:email'
    """
    return f"{_tag(prefix, store_id)}:recall:{channel}"


def suppressed_key(prefix: str, store_id: str) -> str:
    return f"{_tag(prefix, store_id)}:recall-suppressed"


def log_key(prefix: str, store_id: str) -> str:
    return f"{_tag(prefix, store_id)}:recall-log"


def marker_key(prefix: str, intent: RecallIntent) -> str:
    return f"{_tag(prefix, intent.store_id)}:recall-key:{intent.idempotency_key}"


def intent_fields(intent: RecallIntent) -> list[bytes | str]:
    """The stream entry of an intent, as a flat field/value list (``payload`` last)."""
    key = intent.idempotency_key
    payload = dataclasses.asdict(intent)
    payload["idempotency_key"] = key
    return [
        "idempotency_key",
        key,
        "channel",
        intent.channel,
        "send_at",
        repr(float(intent.send_at)),
        "store_id",
        intent.store_id,
        "customer_id",
        intent.customer_id,
        "rule_id",
        intent.rule_id,
        "payload",
        orjson.dumps(payload),
    ]


def _script(client: redis.Redis) -> Script:
    script = _scripts.get(client)
    if script is None:
        script = _scripts[client] = client.register_script(ENQUEUE_LUA)
    return script


def enqueue_intents(
    client: redis.Redis,
    prefix: str,
    intents: Iterable[RecallIntent],
    *,
    ttl_s: int = DEFAULT_TTL_S,
    log_maxlen: int = DEFAULT_LOG_MAXLEN,
) -> EnqueueResult:
    """Enqueue each intent unless its idempotency key was enqueued before.

    One pipeline on a single server; on a Redis Cluster (which refuses scripts in
    pipelines) one script call per intent, each on its store's slot.
    """
    batch = list(intents)
    if not batch:
        return EnqueueResult(0, 0, 0)
    script = _script(client)
    calls: list[tuple[list[str], list[Any]]] = []
    for intent in batch:
        if intent.holdout:
            target, status = suppressed_key(prefix, intent.store_id), "suppressed"
        else:
            target, status = queue_key(prefix, intent.store_id, intent.channel), "queued"
        keys = [marker_key(prefix, intent), target, log_key(prefix, intent.store_id)]
        calls.append((keys, [int(ttl_s), int(log_maxlen), status, *intent_fields(intent)]))
    if is_cluster(client):
        results = [script(keys=keys, args=args) for keys, args in calls]
    else:
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        results = pipe.execute()
    enqueued = duplicates = suppressed = 0
    for intent, added in zip(batch, results, strict=True):
        if not added:
            duplicates += 1
        elif intent.holdout:
            suppressed += 1
        else:
            enqueued += 1
    return EnqueueResult(enqueued, duplicates, suppressed)


class _RecallPartition(StatelessSinkPartition[Any]):
    def __init__(
        self, url: str, prefix: str, ttl_s: int, log_maxlen: int, max_retry_s: float
    ) -> None:
        self.redis = RetryingClient(url, max_retry_s, socket_timeout=10)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.log_maxlen = log_maxlen

    def write_batch(self, items: list[Any]) -> None:
        intents = [item for item in items if isinstance(item, RecallIntent)]
        if not intents:
            return

        def enqueue(client: redis.Redis) -> EnqueueResult:
            # a retry re-sends the whole batch: what was already enqueued is a duplicate
            return enqueue_intents(
                client, self.prefix, intents, ttl_s=self.ttl_s, log_maxlen=self.log_maxlen
            )

        result = self.redis.call(enqueue, "recall enqueue")
        log.debug("recall queue: %s", result)

    def close(self) -> None:
        self.redis.close()


class RecallSink(DynamicSink[Any]):
    """Enqueues ``RecallIntent`` items (other items are ignored), exactly once per key."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        log_maxlen: int = DEFAULT_LOG_MAXLEN,
        max_retry_s: float = 300.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.log_maxlen = log_maxlen
        self.max_retry_s = max_retry_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RecallPartition:
        return _RecallPartition(
            self.url, self.prefix, self.ttl_s, self.log_maxlen, self.max_retry_s
        )
