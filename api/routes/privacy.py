"""GDPR/CCPA: erase a customer, or export everything churnflow holds on them.

``DELETE /v1/stores/{store}/customers/{customer}`` (scope ``admin``) removes, in
one Lua script (atomic; every key carries the store's hash tag, so it is one
Redis Cluster slot):

* the profile/score document ``{p}:{<store>}:customer:<customer>``;
* the customer's membership of every segment sorted set;
* the customer's contact addresses (``{p}:{<store>}:contact:<channel>`` hashes);
* the customer's entries in the recall streams: the per-channel queues, the
  holdout (suppressed) stream, the recall log and the per-channel dead streams
  (``XDEL``; a delivery worker that had the entry pending finds it gone and
  acks it);
* the idempotency markers (``recall-key:<key>``) and delivery states
  (``delivery:<key>``) of those entries.

Streams are scanned for the customer's entries in chunks *before* the script
(so a large stream does not block Redis); the script deletes what was found and
first re-checks the entries appended since the scan: if one of them is the
customer's, it changes nothing and the scan is repeated (at most a few times).

Then an ``erase_request`` event is produced to the events topic with the
idempotent producer, and 202 is answered only once the broker acknowledged it;
the engine drops the customer's state (customer stage, trigger stage) and its
Redis sink deletes the profile again. A broker failure answers 503 after the
Redis side was already removed; repeating the request is safe.

The event's time: with ``clock=wall`` the wall clock. With ``clock=event``
(replays, the demo) a wall-clock time would move the dataflow's watermark to
today and fire every timer, so the event is dated in the dataflow's event time:
the later of the customer's key-group watermark and the profile's
``updated_at`` (else the newest watermark of any group, else the wall clock).

``GET .../customers/{customer}/export`` (scope ``admin``) answers, as JSON, the
profile (score, reasons, features, segment, value tier), segment memberships,
contact addresses and every recall entry (queued, suppressed, dead, log) with
its delivery state. The engine's in-memory state is not included: it holds the
same features the profile shows, and the events themselves are in the Kafka
topic, whose retention the operator sets.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple, cast

import orjson
import redis
from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from api.deps import ApiKeyDep, require_store
from api.errors import ApiError, ErrorBody
from api.routes import REQUIRED_SCOPE
from api.routes.webhooks import produce_events
from api.webhook_secrets import PLATFORMS, secret_key
from engine.clock import wall_now_dt
from engine.connectors.recall_sink import log_key, queue_key, suppressed_key
from engine.connectors.redis_sink import customer_key, segment_key
from engine.delivery.providers import contact_key
from engine.delivery.worker import dead_key, state_key
from engine.events import CHANNELS, EraseRequest, Event
from engine.keygroups import key_group
from engine.redis_client import mget
from engine.segments import SEGMENTS
from engine.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["privacy"])

StorePath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
CustomerPath = Annotated[str, Path(min_length=1, max_length=128)]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "another store's key, or no admin scope"},
    429: {"model": ErrorBody, "description": "rate limited"},
}

SCAN_CHUNK = 1000
PRODUCE_CHUNK = 10_000
XDEL_CHUNK = 1000
MAX_ERASE_ATTEMPTS = 5

# KEYS: profile, ns segment sets, nc contact hashes, nst streams, then the
# marker and state keys to delete.
# ARGV: customer, ns, nc, nst, nst "scanned up to" ids, then per stream the
# number of entry ids to XDEL followed by them.
# Returns -1 (nothing done) if an entry of the customer was appended to a
# stream after the scan, else {profile, segments, contacts, entries, keys} removed.
ERASE_LUA = """
local cid = ARGV[1]
local ns, nc, nst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local first_stream = 1 + ns + nc
for i = 1, nst do
  local newer = redis.call('XRANGE', KEYS[first_stream + i], '(' .. ARGV[4 + i], '+')
  for _, entry in ipairs(newer) do
    local f = entry[2]
    for j = 1, #f, 2 do
      if f[j] == 'customer_id' and f[j + 1] == cid then
        return -1
      end
    end
  end
end
local profile = redis.call('DEL', KEYS[1])
local segments, contacts, entries, keys = 0, 0, 0, 0
for i = 1, ns do
  segments = segments + redis.call('ZREM', KEYS[1 + i], cid)
end
for i = 1, nc do
  contacts = contacts + redis.call('HDEL', KEYS[1 + ns + i], cid)
end
local a = 5 + nst
for i = 1, nst do
  local n = tonumber(ARGV[a])
  a = a + 1
  local j = 0
  while j < n do
    local last = math.min(n, j + 1000)
    local ids = {unpack(ARGV, a + j, a + last - 1)}
    entries = entries + redis.call('XDEL', KEYS[first_stream + i], unpack(ids))
    j = last
  end
  a = a + n
end
for k = first_stream + nst + 1, #KEYS do
  keys = keys + redis.call('DEL', KEYS[k])
end
return {profile, segments, contacts, entries, keys}
"""


# ------------------------------------------------------------------ Redis side


def customer_streams(prefix: str, store_id: str) -> dict[str, str]:
    """Every recall stream that can hold a customer's entries, by a readable name.

    >>> sorted(customer_streams("cf", "s"))[:3]
    ['dead:email', 'dead:push', 'dead:sms']
    >>> customer_streams("cf", "s")["queued:email"]
    'cf:{s}:recall:email'
    """
    streams = {f"queued:{c}": queue_key(prefix, store_id, c) for c in CHANNELS}
    streams["suppressed"] = suppressed_key(prefix, store_id)
    streams["log"] = log_key(prefix, store_id)
    streams.update({f"dead:{c}": dead_key(prefix, store_id, c) for c in CHANNELS})
    return streams


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _stream_entries(
    client: redis.Redis, stream: str, after: str = "0-0"
) -> Iterator[tuple[str, dict[str, str]]]:
    """All entries of ``stream`` after the id ``after``, read in chunks."""
    start = f"({after}"
    while True:
        chunk = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            client.xrange(stream, start, "+", count=SCAN_CHUNK),
        )
        for entry_id, fields in chunk:
            yield _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
        if len(chunk) < SCAN_CHUNK:
            return
        start = f"({_text(chunk[-1][0])}"


class StreamScan(NamedTuple):
    matches: list[tuple[str, dict[str, str]]]
    """The customer's entries (id, fields)."""
    scanned_to: str
    """The id of the last entry read (``0-0`` for an empty stream)."""


def scan_stream(client: redis.Redis, stream: str, customer_id: str) -> StreamScan:
    matches: list[tuple[str, dict[str, str]]] = []
    last = "0-0"
    for entry_id, fields in _stream_entries(client, stream):
        last = entry_id
        if fields.get("customer_id") == customer_id:
            matches.append((entry_id, fields))
    return StreamScan(matches, last)


def _record_keys(prefix: str, store_id: str, scans: dict[str, StreamScan]) -> list[str]:
    """Idempotency markers and delivery states of the scanned entries."""
    keys: set[str] = set()
    for scan in scans.values():
        for _, fields in scan.matches:
            idem = fields.get("idempotency_key")
            if idem:
                keys.add(f"{prefix}:{{{store_id}}}:recall-key:{idem}")
                keys.add(state_key(prefix, store_id, idem))
    return sorted(keys)


class Erased(NamedTuple):
    profile: bool
    segments: int
    contacts: int
    stream_entries: int
    records: int
    """Idempotency markers and delivery states deleted."""


def erase_customer_data(
    client: redis.Redis, prefix: str, store_id: str, customer_id: str
) -> Erased:
    """Remove everything Redis holds on one customer (see the module docstring)."""
    segments = [segment_key(prefix, store_id, s) for s in SEGMENTS]
    contacts = [contact_key(prefix, store_id, c) for c in CHANNELS]
    streams = list(customer_streams(prefix, store_id).values())
    for _ in range(MAX_ERASE_ATTEMPTS):
        scans = {s: scan_stream(client, s, customer_id) for s in streams}
        args: list[str | int] = [customer_id, len(segments), len(contacts), len(streams)]
        args += [scans[s].scanned_to for s in streams]
        for s in streams:
            args.append(len(scans[s].matches))
            args.extend(entry_id for entry_id, _ in scans[s].matches)
        keys = [
            customer_key(prefix, store_id, customer_id),
            *segments,
            *contacts,
            *streams,
            *_record_keys(prefix, store_id, scans),
        ]
        result = client.eval(ERASE_LUA, len(keys), *keys, *args)
        if result != -1:
            profile, n_segments, n_contacts, n_entries, n_records = (int(x) for x in result)
            return Erased(bool(profile), n_segments, n_contacts, n_entries, n_records)
    raise ApiError(
        503, "busy", f"recall entries for {customer_id!r} keep arriving; retry the erase"
    )


def erase_time(
    client: redis.Redis, settings: Settings, store_id: str, customer_id: str
) -> datetime:
    """When the erase happens, in the dataflow's time (see the module docstring)."""
    if settings.clock == "wall":
        return wall_now_dt()
    prefix = settings.key_prefix
    group = key_group(store_id, customer_id, settings.key_groups)
    stages = [f"{prefix}:stage:{g}" for g in range(settings.key_groups)]
    raws = mget(client, [customer_key(prefix, store_id, customer_id), *stages])
    watermarks: list[float] = []
    for raw in raws[1:]:
        mark = orjson.loads(raw).get("watermark") if raw else None
        watermarks.append(mark if isinstance(mark, int | float) and mark > 0 else float("-inf"))
    candidates = [watermarks[group]]
    if raws[0]:
        updated = orjson.loads(raws[0]).get("updated_at")
        if isinstance(updated, str):
            candidates.append(datetime.fromisoformat(updated).timestamp())
    best = max(candidates)
    if best == float("-inf"):
        best = max(watermarks, default=float("-inf"))
    if best == float("-inf"):
        return wall_now_dt()
    return datetime.fromtimestamp(best, UTC)


def newest_watermark(client: redis.Redis, settings: Settings) -> datetime:
    """The newest watermark of any key group, else the wall clock."""
    prefix = settings.key_prefix
    raws = mget(client, [f"{prefix}:stage:{g}" for g in range(settings.key_groups)])
    marks = [orjson.loads(raw).get("watermark") if raw else None for raw in raws]
    best = max((m for m in marks if isinstance(m, int | float) and m > 0), default=None)
    return wall_now_dt() if best is None else datetime.fromtimestamp(best, UTC)


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped.

    >>> _glob("cf:{s}:customer:a*b")
    'cf:{s}:customer:a\\\\*b'
    """
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def store_customer_ids(client: redis.Redis, prefix: str, store_id: str) -> list[str]:
    """Every customer of a store Redis knows: profiles, segment members, contacts, recall."""
    head = customer_key(prefix, store_id, "")
    ids = {_text(k)[len(head) :] for k in client.scan_iter(f"{_glob(head)}*", count=1000)}
    for segment in SEGMENTS:
        ids.update(_text(m) for m, _ in client.zscan_iter(segment_key(prefix, store_id, segment)))
    for channel in CHANNELS:
        ids.update(_text(f) for f, _ in client.hscan_iter(contact_key(prefix, store_id, channel)))
    for stream in customer_streams(prefix, store_id).values():
        ids.update(
            f["customer_id"] for _, f in _stream_entries(client, stream) if "customer_id" in f
        )
    return sorted(i for i in ids if i)


def erase_store_data(client: redis.Redis, prefix: str, store_id: str) -> int:
    """UNLINK every key of the store (its hash tag) but its webhook secrets; how many went.

    The secrets stay so the platform's retry of the redact webhook still
    verifies; API keys (``{prefix}:apikey:*``) are the operator's to revoke.
    """
    keep = {secret_key(prefix, store_id, p) for p in PLATFORMS}
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(f"{_glob(f'{prefix}:{{{store_id}}}:')}*", count=1000):
        if _text(key) not in keep:
            batch.append(key)
        if len(batch) >= SCAN_CHUNK:
            removed += int(client.unlink(*batch))
            batch = []
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def redact_store(request: Request, store_id: str, source: str) -> tuple[list[str], int]:
    """Store-level erasure (Shopify ``shop/redact``): an ``erase_request`` per customer
    (produced and acknowledged first, in chunks), then the store's Redis keys.

    Returns the event ids and the number of Redis keys removed. With
    ``clock=event`` every event is dated at the newest watermark of any key
    group (a store being deleted need not wait for its own groups' timers).
    Event ids are deterministic, so a retried webhook is deduplicated by the
    dataflow. A broker failure answers 503 before anything is deleted.
    """
    settings: Settings = request.app.state.settings
    client: redis.Redis = request.app.state.redis
    prefix = settings.key_prefix
    when = wall_now_dt() if settings.clock == "wall" else newest_watermark(client, settings)
    event_ids: list[str] = []
    customers = store_customer_ids(client, prefix, store_id)
    for start in range(0, len(customers), PRODUCE_CHUNK):
        events: list[Event] = [
            erase_event(store_id, customer, f"{source}:shop-redact:{customer}", when, source)
            for customer in customers[start : start + PRODUCE_CHUNK]
        ]
        produce_events(request, events)
        event_ids += [e.event_id for e in events]
    removed = erase_store_data(client, prefix, store_id)
    log.info("store redact store=%s customers=%d keys=%d", store_id, len(customers), removed)
    return event_ids, removed


def _entry_document(
    entry_id: str, fields: dict[str, str], states: dict[str, dict[str, str]]
) -> dict[str, Any]:
    doc: dict[str, Any] = {"entry_id": entry_id, **fields}
    if "payload" in doc:
        try:
            doc["payload"] = orjson.loads(doc["payload"])
        except orjson.JSONDecodeError:
            pass
    idem = fields.get("idempotency_key")
    if idem and idem in states:
        doc["delivery"] = states[idem]
    return doc


def export_customer_data(
    client: redis.Redis, prefix: str, store_id: str, customer_id: str
) -> dict[str, Any]:
    """Everything Redis holds on one customer, as one JSON-able document."""
    pipe = client.pipeline(transaction=False)
    pipe.get(customer_key(prefix, store_id, customer_id))
    for segment in SEGMENTS:
        pipe.zscore(segment_key(prefix, store_id, segment), customer_id)
    for channel in CHANNELS:
        pipe.hget(contact_key(prefix, store_id, channel), customer_id)
    replies = pipe.execute()
    profile = orjson.loads(replies[0]) if replies[0] else None
    scores = replies[1 : 1 + len(SEGMENTS)]
    addresses = replies[1 + len(SEGMENTS) :]
    scans = {
        name: scan_stream(client, stream, customer_id).matches
        for name, stream in customer_streams(prefix, store_id).items()
    }
    idems = sorted(
        {f["idempotency_key"] for m in scans.values() for _, f in m if f.get("idempotency_key")}
    )
    pipe = client.pipeline(transaction=False)
    for idem in idems:
        pipe.hgetall(state_key(prefix, store_id, idem))
    states = {
        idem: {_text(k): _text(v) for k, v in state.items()}
        for idem, state in zip(idems, pipe.execute() if idems else [], strict=True)
        if state
    }
    recall = {
        name: [_entry_document(i, f, states) for i, f in matches]
        for name, matches in scans.items()
        if matches
    }
    segments = {s: float(v) for s, v in zip(SEGMENTS, scores, strict=True) if v is not None}
    contacts = {c: _text(v) for c, v in zip(CHANNELS, addresses, strict=True) if v is not None}
    return {
        "store_id": store_id,
        "customer_id": customer_id,
        "holds_data": bool(profile or segments or contacts or recall),
        "profile": profile,
        "segments": segments,
        "contacts": contacts,
        "recall": recall,
    }


# ------------------------------------------------------------------ routes


class EraseAccepted(BaseModel):
    store_id: str
    customer_id: str
    event_id: str
    """The ``erase_request`` event produced to the events topic (acknowledged)."""
    removed: dict[str, int | bool]
    """What was deleted from Redis: profile, segments, contacts, stream_entries, records."""


def erase_event(
    store_id: str, customer_id: str, event_id: str, when: datetime, source: str
) -> EraseRequest:
    return EraseRequest(
        type="erase_request",
        event_id=event_id,
        store_id=store_id,
        customer_id=customer_id,
        occurred_at=when,
        source=source,
    )


def erase_request_event(
    client: redis.Redis, settings: Settings, store_id: str, customer_id: str, source: str
) -> EraseRequest:
    when = erase_time(client, settings, store_id, customer_id)
    return erase_event(store_id, customer_id, f"{source}:erase:{uuid.uuid4().hex}", when, source)


def _erase(request: Request, store_id: str, customer_id: str) -> JSONResponse:
    settings: Settings = request.app.state.settings
    client: redis.Redis = request.app.state.redis
    try:
        event = erase_request_event(client, settings, store_id, customer_id, "api")
    except ValidationError as exc:  # e.g. an id that is only whitespace: no event can carry it
        message = "; ".join(str(e["msg"]) for e in exc.errors())
        raise ApiError(422, "invalid_request", f"customer id {customer_id!r}: {message}") from None
    removed = erase_customer_data(client, settings.key_prefix, store_id, customer_id)
    log.info(
        "erase store=%s customer=%s removed=%s event=%s",
        store_id,
        customer_id,
        removed._asdict(),
        event.event_id,
    )
    produce_events(request, [event])
    body = EraseAccepted(
        store_id=store_id,
        customer_id=customer_id,
        event_id=event.event_id,
        removed=removed._asdict(),
    )
    return JSONResponse(body.model_dump(), status_code=202)


@router.delete(
    "/customers/{customer_id}",
    status_code=202,
    response_model=EraseAccepted,
    openapi_extra={REQUIRED_SCOPE: "admin"},
    responses={
        **ERRORS,
        422: {"model": ErrorBody, "description": "not a customer id an event can carry"},
        503: {"model": ErrorBody, "description": "broker did not acknowledge"},
    },
)
async def erase_customer(
    request: Request, store_id: StorePath, customer_id: CustomerPath, key: ApiKeyDep
) -> JSONResponse:
    """GDPR/CCPA erasure: Redis data removed, ``erase_request`` produced; 202 once acked."""
    require_store(store_id, key, "admin")
    return await run_in_threadpool(_erase, request, store_id, customer_id)


@router.get(
    "/customers/{customer_id}/export", responses=ERRORS, openapi_extra={REQUIRED_SCOPE: "admin"}
)
def export_customer(
    request: Request, store_id: StorePath, customer_id: CustomerPath, key: ApiKeyDep
) -> dict[str, Any]:
    """Everything churnflow holds on the customer (profile, score, segments, recall history)."""
    require_store(store_id, key, "admin")
    settings: Settings = request.app.state.settings
    return export_customer_data(request.app.state.redis, settings.key_prefix, store_id, customer_id)
