"""The delivery worker: recall intents out of the Redis Streams queue, into providers.

One worker serves one channel, for one store or for every store (streams
discovered by ``SCAN``). Each stream ``{prefix}:{<store>}:recall:<channel>`` is
read with the consumer group ``delivery`` (created with ``MKSTREAM`` at id 0, so
entries enqueued before the first worker started are delivered too).

One pass (:meth:`DeliveryWorker.run_once`), per stream:

1. ``XAUTOCLAIM`` entries pending for longer than ``claim_min_idle_ms`` with any
   consumer — a dead worker's — to this consumer;
2. read this consumer's own pending entries (``XREADGROUP ... 0``): not yet
   due, backing off, or claimed;
3. read new entries (``XREADGROUP ... >``).

An entry is due when ``send_at`` (event time) ``<= clock()``; ``clock`` is
injected (default :func:`engine.clock.wall_now`: in live production event
time ≈ wall time). Entries that are not due, or whose retry back-off has not
passed (``timer``, wall time), stay pending and are touched (``XCLAIM ... JUSTID``
to this consumer, which resets their idle time), so a *live* worker keeps
them and only a dead worker's entries go idle long enough to be claimed. The
pass interval must therefore stay well below ``claim_min_idle_ms``.

A due entry is rendered (template, locale, first name, categories, offer) and
sent, with one state hash per idempotency key::

    {prefix}:{<store>}:delivery:<key>      hash: state (sending/sent/failed/dead),
                                           attempts, next_at, error, owner, since,
                                           message_id, sent_at (event time), reported;
                                           expires after ``ttl_s`` (90 days)
    {prefix}:{<store>}:recall-dead:<channel>   stream: given-up entries + reason

* Before the provider is called, ``state`` is set to ``sending`` atomically (a
  Lua script that refuses if the key is ``sent``/``dead``, or ``sending`` under
  another live owner's lease).
* After the provider accepted the message, ``state=sent``; then the
  ``message_sent`` event is produced and flushed, ``reported=1`` is recorded and
  the entry is ``XACK``-ed.
* A redelivered entry whose key is ``sent`` is never sent again: the event is
  produced if ``reported`` is missing (its ``event_id`` is deterministic, so a
  duplicate is dropped by the dataflow's dedup) and the entry is acked.
* A retryable :class:`ProviderError` increments ``attempts`` and schedules the
  next try at ``backoff_base_s * 2**(attempts-1)`` (capped); after
  ``max_attempts`` the entry goes to the dead stream with the reason. A
  non-retryable one (hard bounce, no address) goes there at once and is reported
  as ``message_bounced``. Moving to the dead stream, acking and marking the key
  ``dead`` is one Lua script.

What remains (honestly): the provider call and the ``sent`` record are not
atomic. If the worker dies *after* the provider accepted the message and
*before* ``state=sent`` is written, the key is left ``sending``. Once the
owner's lease (``send_lease_s``) has passed, such an entry is, by default, *not*
resent: it goes to the dead stream with reason ``outcome unknown`` (at most
once; a message may be lost). With ``resend_unknown=True`` it is sent again (at
least once; a duplicate is possible, but it carries the same ``Message-ID`` /
``Idempotency-Key``, so a receiver that deduplicates drops it). A provider call
that times out is treated as a retryable failure and is retried: if the
provider had in fact accepted it, that is a duplicate too (the same ids again).
A worker stalled for longer than ``send_lease_s`` inside one provider call can
race a claimant the same way. A ``sending`` key owned by *this* consumer name
counts as abandoned at once (a previous process under the same name died), so
give each worker a stable ``--consumer`` name to recover its own interrupted
sends without waiting for the lease. The outcome events are produced after the
provider call (at least once; their ids are deterministic, the dataflow drops
repeats); a ``message_bounced`` event whose flush fails is not produced again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson
import redis
from confluent_kafka import Producer

from engine.clock import wall_now
from engine.connectors.recall_sink import DEFAULT_TTL_S, queue_key
from engine.delivery.providers import OutboundMessage, Provider, ProviderError, message_id_for
from engine.errors import ServiceError
from engine.events import CHANNELS, Channel, MessageEvent, encode_event
from engine.triggers.intent import Offer, Personalisation, RecallIntent
from engine.triggers.templates import render

__all__ = [
    "GROUP",
    "DeliveryWorker",
    "PassResult",
    "WorkerConfig",
    "dead_key",
    "intent_from_payload",
    "message_event",
    "state_key",
    "store_of",
]

log = logging.getLogger(__name__)

GROUP = "delivery"

# KEYS: state hash. ARGV: owner, now, lease_s, ttl_s, resend_unknown (0/1).
# Returns {verdict, detail}: ok (state set to sending), sent, dead, busy (another
# owner's live lease), unknown (a sending state whose lease passed).
BEGIN_LUA = """
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'sent' or st == 'dead' then
  return {st, ''}
end
if st == 'sending' then
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  local since = tonumber(redis.call('HGET', KEYS[1], 'since') or '0')
  if owner ~= ARGV[1] and since + tonumber(ARGV[3]) > tonumber(ARGV[2]) then
    return {'busy', owner}
  end
  if ARGV[5] ~= '1' then
    return {'unknown', owner}
  end
end
redis.call('HSET', KEYS[1], 'state', 'sending', 'owner', ARGV[1], 'since', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'ok', ''}
"""

# KEYS: queue stream, dead stream, state hash. ARGV: group, entry id, reason,
# attempts, consumer, then the entry's field/value pairs.
DEAD_LUA = """
redis.call('XADD', KEYS[2], '*', 'reason', ARGV[3], 'attempts', ARGV[4], 'entry', ARGV[2],
  'consumer', ARGV[5], unpack(ARGV, 6))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'dead', 'error', ARGV[3])
return 1
"""


def _tag(prefix: str, store_id: str) -> str:
    return f"{prefix}:{{{store_id}}}"


def dead_key(prefix: str, store_id: str, channel: str) -> str:
    """The key.

    >>> dead_key("cf", "demo", "email")
    'cf:{demo}:recall-dead:email'
    """
    return f"{_tag(prefix, store_id)}:recall-dead:{channel}"


def state_key(prefix: str, store_id: str, idempotency_key: str) -> str:
    """The key.

    >>> state_key("cf", "demo", "demo:c1:winback:0:1")
    'cf:{demo}:delivery:demo:c1:winback:0:1'
    """
    return f"{_tag(prefix, store_id)}:delivery:{idempotency_key}"


def store_of(prefix: str, stream: str) -> str:
    """The store of a queue stream key.

    >>> store_of("cf", "cf:{demo}:recall:email")
    'demo'
    """
    rest = stream[len(prefix) + 2 :]
    return rest.split("}", 1)[0]


def intent_from_payload(raw: bytes | str) -> RecallIntent:
    """The ``RecallIntent`` of a queue entry's ``payload`` (``dataclasses.asdict`` JSON)."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    data.pop("idempotency_key", None)
    names = {f.name for f in dataclasses.fields(RecallIntent)}
    kwargs = {k: v for k, v in data.items() if k in names}
    kwargs["offer"] = Offer(**(data.get("offer") or {}))
    pers = data.get("personalisation") or {}
    kwargs["personalisation"] = Personalisation(
        first_name=pers.get("first_name"),
        favourite_categories=tuple(pers.get("favourite_categories") or ()),
        last_products=tuple(pers.get("last_products") or ()),
    )
    kwargs["reasons"] = tuple(data.get("reasons") or ())
    return RecallIntent(**kwargs)


def event_id_for(idempotency_key: str, event_type: str) -> str:
    """Deterministic: the same key and type always give the same id (≤ 200 chars).

    >>> event_id_for("demo:c1:winback:0:1", "message_sent")
    'dlv:message_sent:demo:c1:winback:0:1'
    """
    readable = f"dlv:{event_type}:{idempotency_key}"
    if len(readable) <= 200:
        return readable
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
    return f"dlv:{event_type}:sha256:{digest}"


def message_event(
    intent: RecallIntent,
    event_type: Literal["message_sent", "message_bounced"],
    *,
    at: float,
    message_id: str | None,
) -> MessageEvent:
    """The outcome event of an intent: rule, step, arm, channel and offer for effect
    tracking; ``message_id`` is the provider's id, else the one derived from the
    idempotency key (what the SMTP ``Message-ID`` carries).

    >>> intent = RecallIntent("demo", "c1", "winback", 1, 0.0, 0.0, "email", "dormancy_2",
    ...                       "en", variant="subject_b", offer=Offer(10))
    >>> ev = message_event(intent, "message_bounced", at=0.0, message_id=None)
    >>> ev.rule_id, ev.step, ev.variant, ev.offer_percent_off, ev.message_id[:3]
    ('winback', 1, 'subject_b', 10, 'cf-')
    """
    return MessageEvent(
        type=event_type,
        event_id=event_id_for(intent.idempotency_key, event_type),
        store_id=intent.store_id,
        customer_id=intent.customer_id,
        occurred_at=datetime.fromtimestamp(at, UTC),
        source="churnflow",
        channel=cast(Channel, intent.channel),
        message_id=message_id or message_id_for(intent.idempotency_key),
        rule_id=intent.rule_id,
        step=intent.step,
        variant=intent.variant,
        offer_percent_off=intent.offer.percent_off,
        offer_free_shipping=intent.offer.free_shipping,
    )


@dataclass(frozen=True)
class WorkerConfig:
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{threading.get_ident()}")
    group: str = GROUP
    batch_size: int = 50
    max_attempts: int = 5
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    claim_min_idle_ms: int = 300_000
    send_lease_s: float = 300.0
    """A ``sending`` state older than this is considered abandoned (its owner died)."""
    resend_unknown: bool = False
    """Abandoned ``sending`` states: False = dead-letter (at most once), True = resend."""
    ttl_s: int = DEFAULT_TTL_S
    max_pending_scan: int = 10_000
    """Own pending entries looked at per stream and pass."""
    idle_sleep_s: float = 1.0
    rescan_s: float = 30.0
    """``--all-stores``: how often new stores' streams are looked for."""


@dataclass
class PassResult:
    sent: int = 0
    already_sent: int = 0
    not_due: int = 0
    backing_off: int = 0
    retried: int = 0
    dead: int = 0
    busy: int = 0
    claimed: int = 0
    gone: int = 0

    @property
    def worked(self) -> int:
        return self.sent + self.already_sent + self.retried + self.dead + self.gone


def _s(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


@dataclass
class _Done:
    """An entry whose message went out (or was already out), waiting for its event + ack."""

    stream: str
    entry_id: str
    state: str
    event: MessageEvent | None


class DeliveryWorker:
    """Delivers one channel's recall queue (one store, or all stores when ``stores`` is None)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        channel: str,
        provider: Provider,
        *,
        producer: Producer | None = None,
        events_topic: str | None = None,
        stores: Sequence[str] | None = None,
        config: WorkerConfig | None = None,
        clock: Callable[[], float] = wall_now,
        timer: Callable[[], float] = wall_now,
    ) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; known: {CHANNELS}")
        if producer is not None and not events_topic:
            raise ValueError("a producer needs an events topic")
        self.client = client
        self.prefix = prefix
        self.channel = channel
        self.provider = provider
        self.producer = producer
        self.events_topic = events_topic
        self.stores = list(stores) if stores is not None else None
        self.config = config or WorkerConfig()
        self.clock = clock
        self.timer = timer
        self._begin = client.register_script(BEGIN_LUA)
        self._dead = client.register_script(DEAD_LUA)
        self._streams: list[str] = []
        self._grouped: set[str] = set()
        self._scanned_at = float("-inf")

    # -- streams -------------------------------------------------------------------

    def discover(self) -> list[str]:
        """The queue streams this worker serves (all stores: by ``SCAN``)."""
        if self.stores is not None:
            return [queue_key(self.prefix, s, self.channel) for s in self.stores]
        pattern = f"{self.prefix}:{{*}}:recall:{self.channel}"
        found = {_s(k) for k in self.client.scan_iter(match=pattern, count=1000, _type="stream")}
        return sorted(found)

    def refresh_streams(self) -> list[str]:
        self._streams = self.discover()
        for stream in self._streams:
            if stream in self._grouped:
                continue
            try:
                self.client.xgroup_create(stream, self.config.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._grouped.add(stream)
        self._scanned_at = time.monotonic()
        return self._streams

    # -- one pass ------------------------------------------------------------------

    def run_once(self) -> PassResult:
        """Claim, revisit own pending entries, read new ones; process what is due."""
        if self.stores is not None and not self._streams:
            self.refresh_streams()
        elif self.stores is None and time.monotonic() - self._scanned_at >= self.config.rescan_s:
            self.refresh_streams()
        result = PassResult()
        for stream in self._streams:
            self._pass_stream(stream, result)
        return result

    def run(self, stop: threading.Event | None = None) -> None:
        """Pass after pass until ``stop`` is set; sleeps ``idle_sleep_s`` after an idle pass."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                result = self.run_once()
            except (redis.ConnectionError, redis.TimeoutError, ServiceError) as exc:
                log.warning("delivery pass failed, retrying: %s", exc)
                stop.wait(self.config.idle_sleep_s)
                continue
            if result.worked:
                log.info("delivery %s: %s", self.channel, result)
            else:
                stop.wait(self.config.idle_sleep_s)

    def _pass_stream(self, stream: str, result: PassResult) -> None:
        cfg = self.config
        # 1. a dead consumer's entries (idle too long) become ours
        start = "0-0"
        while True:
            reply = self.client.xautoclaim(
                stream,
                cfg.group,
                cfg.consumer,
                cfg.claim_min_idle_ms,
                start_id=start,
                count=cfg.batch_size,
            )
            start = _s(reply[0])
            result.claimed += len(reply[1])
            if start == "0-0":
                break
        # 2. own pending entries (not due, backing off, claimed, interrupted)
        entries: list[tuple[str, dict[bytes, bytes] | None]] = []
        last = "0"
        while len(entries) < cfg.max_pending_scan:
            page = self._read(stream, last)
            if not page:
                break
            entries.extend(page)
            last = page[-1][0]
        # 3. new entries
        entries.extend(self._read(stream, ">"))
        done: list[_Done] = []
        seen: set[str] = set()
        for entry_id, fields in entries:
            if entry_id in seen:
                continue
            seen.add(entry_id)
            outcome = self._process(stream, entry_id, fields, result)
            if outcome is not None:
                done.append(outcome)
        self._finish(done)

    def _read(self, stream: str, start: str) -> list[tuple[str, dict[bytes, bytes] | None]]:
        cfg = self.config
        reply = self.client.xreadgroup(
            cfg.group, cfg.consumer, {stream: start}, count=cfg.batch_size
        )
        out: list[tuple[str, dict[bytes, bytes] | None]] = []
        for _key, messages in cast(list[Any], reply or []):
            for entry_id, fields in messages:
                out.append((_s(entry_id), cast(dict[bytes, bytes], fields) or None))
        return out

    def _touch(self, stream: str, entry_id: str) -> None:
        """Keep a pending entry ours: reset its idle time (no delivery count increment)."""
        self.client.xclaim(
            stream, self.config.group, self.config.consumer, 0, [entry_id], justid=True
        )

    # -- one entry -----------------------------------------------------------------

    def _process(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes] | None,
        result: PassResult,
    ) -> _Done | None:
        cfg = self.config
        if fields is None:  # deleted from the stream while pending
            self.client.xack(stream, cfg.group, entry_id)
            result.gone += 1
            return None
        store = store_of(self.prefix, stream)
        key = _s(fields.get(b"idempotency_key", b""))
        skey = state_key(self.prefix, store, key)
        try:
            intent = intent_from_payload(fields[b"payload"])
        except (KeyError, ValueError, TypeError) as exc:
            self._to_dead(stream, entry_id, fields, skey, f"undecodable entry: {exc}", 0)
            result.dead += 1
            return None
        state = {_s(k): _s(v) for k, v in self.client.hgetall(skey).items()}
        if state.get("state") == "sent":
            result.already_sent += 1
            return self._sent_done(stream, entry_id, skey, intent, state)
        if state.get("state") == "dead":
            self.client.xack(stream, cfg.group, entry_id)
            result.gone += 1
            return None
        if float(fields.get(b"send_at", b"0")) > self.clock():
            self._touch(stream, entry_id)
            result.not_due += 1
            return None
        now = self.timer()
        if float(state.get("next_at", "0")) > now:
            self._touch(stream, entry_id)
            result.backing_off += 1
            return None
        try:
            rendered = render(
                intent.template,
                intent.locale,
                first_name=intent.personalisation.first_name,
                categories=intent.personalisation.favourite_categories,
                offer=intent.offer,
            )
        except KeyError as exc:
            self._to_dead(stream, entry_id, fields, skey, f"cannot render: {exc}", 0)
            result.dead += 1
            return None
        verdict, detail = (
            _s(v)
            for v in self._begin(
                keys=[skey],
                args=[
                    cfg.consumer,
                    repr(now),
                    repr(cfg.send_lease_s),
                    cfg.ttl_s,
                    "1" if cfg.resend_unknown else "0",
                ],
            )
        )
        if verdict == "sent":
            result.already_sent += 1
            state = {_s(k): _s(v) for k, v in self.client.hgetall(skey).items()}
            return self._sent_done(stream, entry_id, skey, intent, state)
        if verdict == "dead":
            self.client.xack(stream, cfg.group, entry_id)
            result.gone += 1
            return None
        if verdict == "busy":
            result.busy += 1
            return None
        attempts = int(state.get("attempts", "0"))
        if verdict == "unknown":
            reason = f"outcome unknown: send interrupted (owner {detail or '?'})"
            self._to_dead(stream, entry_id, fields, skey, reason, attempts)
            result.dead += 1
            return None
        message = OutboundMessage(
            idempotency_key=intent.idempotency_key,
            store_id=intent.store_id,
            customer_id=intent.customer_id,
            channel=intent.channel,
            rule_id=intent.rule_id,
            template=intent.template,
            locale=rendered.locale,
            subject=rendered.subject,
            body=rendered.body,
            offer=intent.offer,
            variant=intent.variant,
        )
        try:
            message_id = self.provider.send(message)
        except ProviderError as exc:
            return self._failed(stream, entry_id, fields, skey, intent, exc, attempts, result)
        except Exception as exc:  # noqa: BLE001 - a provider bug must not kill the worker
            log.exception("provider raised unexpectedly")
            error = ProviderError(f"provider error: {exc!r}", retryable=True)
            return self._failed(stream, entry_id, fields, skey, intent, error, attempts, result)
        sent_at = self.clock()
        self.client.hset(
            skey,
            mapping={
                "state": "sent",
                "message_id": message_id,
                "sent_at": repr(sent_at),
                "attempts": attempts + 1,
            },
        )
        result.sent += 1
        event = message_event(intent, "message_sent", at=sent_at, message_id=message_id)
        return _Done(stream, entry_id, skey, event)

    def _sent_done(
        self, stream: str, entry_id: str, skey: str, intent: RecallIntent, state: dict[str, str]
    ) -> _Done:
        event = None
        if state.get("reported") != "1":
            sent_at = float(state.get("sent_at") or self.clock())
            event = message_event(
                intent, "message_sent", at=sent_at, message_id=state.get("message_id")
            )
        return _Done(stream, entry_id, skey, event)

    def _failed(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        skey: str,
        intent: RecallIntent,
        error: ProviderError,
        attempts: int,
        result: PassResult,
    ) -> _Done | None:
        cfg = self.config
        attempts += 1
        if not error.retryable:
            self._to_dead(stream, entry_id, fields, skey, f"rejected: {error.reason}", attempts)
            result.dead += 1
            event = message_event(intent, "message_bounced", at=self.clock(), message_id=None)
            return _Done(stream, entry_id, skey, event) if self.producer else None
        if attempts >= cfg.max_attempts:
            reason = f"gave up after {attempts} attempts: {error.reason}"
            self._to_dead(stream, entry_id, fields, skey, reason, attempts)
            result.dead += 1
            return None
        delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempts - 1))
        self.client.hset(
            skey,
            mapping={
                "state": "failed",
                "attempts": attempts,
                "next_at": repr(self.timer() + delay),
                "error": error.reason,
            },
        )
        self._touch(stream, entry_id)
        log.info("retrying %s in %.1fs (attempt %d): %s", entry_id, delay, attempts, error.reason)
        result.retried += 1
        return None

    def _to_dead(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        skey: str,
        reason: str,
        attempts: int,
    ) -> None:
        store = store_of(self.prefix, stream)
        flat: list[Any] = []
        for k, v in fields.items():
            flat.extend((k, v))
        log.warning("dead-lettering %s %s: %s", stream, entry_id, reason)
        self._dead(
            keys=[stream, dead_key(self.prefix, store, self.channel), skey],
            args=[self.config.group, entry_id, reason, attempts, self.config.consumer, *flat],
        )

    # -- events and acks -----------------------------------------------------------

    def _finish(self, done: Iterable[_Done]) -> None:
        """Produce the outcome events (one flush), then record ``reported`` and ack."""
        batch = list(done)
        if not batch:
            return
        failures: list[str] = []
        if self.producer is not None and self.events_topic:

            def on_delivery(err: object, msg: object) -> None:
                if err is not None:
                    failures.append(str(err))

            for item in batch:
                if item.event is None:
                    continue
                self.producer.produce(
                    self.events_topic,
                    key=item.event.key.encode(),
                    value=encode_event(item.event),
                    on_delivery=on_delivery,
                )
            remaining = self.producer.flush(30)
            if remaining or failures:
                # entries stay pending with state ``sent``: the next pass reports them again
                raise ServiceError(
                    f"{remaining} outcome events unacknowledged, {len(failures)} failed: "
                    f"{failures[:3]}"
                )
        pipe = self.client.pipeline(transaction=False)
        for item in batch:
            if self.producer is not None and item.event is not None:
                pipe.hset(item.state, "reported", "1")
            pipe.xack(item.stream, self.config.group, item.entry_id)
        pipe.execute()
