"""Fault injection on real services: Redis restarts, a burst of bad input, kill -9 of the API.

* **Redis restart while the dataflow writes.** A redis-server of this test's own
  (append-only file, ``appendfsync always``, so what it acknowledged survives a
  SIGKILL) is killed with SIGKILL twice at seeded moments while the live dataflow
  (``python -m bytewax.run``, as ``churnflow run``) consumes a paced stream, and
  restarted on the same port with the same data directory. The sinks retry with
  backoff; the dataflow must not die, and the final profiles must equal a clean run's
  (the same ``build_flow`` in process over the same records, into the same Redis
  under another prefix): features, segment, value tier, profile attributes, time and
  cause. Churn probabilities are left out for the reason ``tests/test_recovery.py``
  gives (the model shard's learning order follows the input batching).
* **A burst of malformed, duplicate, late and out-of-order events** mixed into good
  ones goes through the live dataflow. Every malformed record is in the dead-letter
  topic, once, with a reason; the key groups' counters say every good event was
  applied once (``events`` = distinct good events, ``duplicates`` = the copies,
  ``late_events`` and ``out_of_order_events`` as an oracle over the arrival order
  counts them); every customer's ``order_count`` is its number of distinct good
  orders (late ones included); and the profiles equal a clean run over the good
  events alone, in the order they arrived.
* **kill -9 of the API under webhook load.** Client threads post signed batches of
  canonical events to ``/v1/stores/{store}/webhooks/events`` and retry a batch (same
  bytes) until it is answered 202, while the API process is killed with SIGKILL three
  times and restarted. Every event of every 202-acknowledged batch is in the events
  topic, nothing else is. A batch the API produced but could not answer (killed
  after the broker's ack) is produced again by the client's retry: such copies are
  allowed only for batches that saw a failed attempt, at most one per failed attempt;
  the dataflow drops them by event id (second test above). Exactly once in the topic
  itself would need a dedup marker or a Kafka transaction in the generic route.

No assertion is about wall-clock time; the timeouts only bound a hung run.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from procs import DeadLetters, TopicReader, delete_prefix, kill9, paced, profiles, start_dataflow
from test_recovery import comparable, fresh, make_stream, wait_complete

from api.webhook_secrets import set_secret
from api.webhooks.signing import sign_generic
from engine.cli import api_command, child_env, produce_lines
from engine.connectors.kafka import ensure_topics
from engine.connectors.redis_sink import RedisSink
from engine.events import BrowseEvent, OrderEvent, encode_event
from engine.flow import FlowSinks, build_flow
from engine.keygroups import key_group
from engine.services import LOOPBACK, free_port, redis_binary, wait_for_port
from engine.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

SEED = 20261125
STORE = "shop"  # the store of test_recovery's stream


def clean_profiles(settings: Settings, lines: list[bytes], prefix: str) -> dict[str, Any]:
    """The clean run: the same dataflow in process over ``lines``, into Redis under ``prefix``."""
    sinks = FlowSinks(redis=RedisSink(settings.redis_url, prefix), dead_letter=TestingSink([]))
    run_main(build_flow(TestingSource(lines), sinks, settings))
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return profiles(client, prefix, STORE)
    finally:
        client.close()


def differing(clean: dict[str, Any], run: dict[str, Any]) -> list[str]:
    return [c for c in clean if c not in run or comparable(clean[c]) != comparable(run[c])]


# -- (a) Redis restarted while the dataflow writes ----------------------------------------


class DurableRedis:
    """A redis-server with an fsync-always append-only file, restartable on its port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        argv = [str(redis_binary()), "--bind", LOOPBACK, "--port", str(self.port)]
        argv += ["--dir", str(self.data_dir), "--save", "", "--appendonly", "yes"]
        argv += ["--appendfsync", "always", "--protected-mode", "yes"]
        log = (self.data_dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(LOOPBACK, self.port, self.proc, timeout_s=20.0)
        client = redis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + 30
            while True:  # it answers LOADING until the append-only file is replayed
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    assert time.monotonic() < deadline, "redis-server kept loading"
                    time.sleep(0.05)
        finally:
            client.close()

    def kill9(self) -> None:
        if self.proc is not None:
            kill9(self.proc)


@pytest.fixture()
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    server = DurableRedis(tmp_path / "redis-data")
    server.start()
    try:
        yield server
    finally:
        server.kill9()


def customer_count(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(f"{prefix}:{{{STORE}}}:customer:*", count=1000))
    finally:
        client.close()


def test_redis_restarts_while_the_dataflow_writes(
    settings: Settings, durable_redis: DurableRedis, tmp_path: Path
) -> None:
    run = fresh(settings, tmp_path, "redis").model_copy(update={"redis_url": durable_redis.url})
    lines, _distinct, orders = make_stream(SEED)
    clean = clean_profiles(run, lines, run.key_prefix + "clean")
    assert set(clean) == set(orders)

    rng = random.Random(SEED)
    kills: list[dict[str, Any]] = []
    letters = DeadLetters(run)
    ensure_topics(run.brokers, [run.events_topic, run.dead_letter_topic])
    proc = start_dataflow(run)
    try:
        produce_lines(run, iter([b"probe"]))  # its dead letter says the dataflow reads
        letters.wait_new()
        producer = threading.Thread(target=produce_lines, args=(run, paced(lines, 8.0)))
        began = time.monotonic()
        producer.start()
        for at in (rng.uniform(1.0, 3.0), rng.uniform(4.0, 6.5)):
            time.sleep(max(0.0, began + at - time.monotonic()))
            before = customer_count(run.redis_url, run.key_prefix)
            durable_redis.kill9()
            down_s = rng.uniform(0.8, 2.0)
            time.sleep(down_s)
            assert proc.poll() is None, "the dataflow died while Redis was down"
            durable_redis.start()
            after = customer_count(run.redis_url, run.key_prefix)
            kills.append({"at_s": round(at, 2), "down_s": round(down_s, 2), "profiles": before})
            assert after >= before, "Redis lost acknowledged profiles across the restart"
        producer.join()
        client = redis.Redis.from_url(run.redis_url)
        try:
            after_faults, _model = wait_complete(client, run.key_prefix, orders, proc)
        finally:
            delete_prefix(client, run.key_prefix)
            delete_prefix(client, run.key_prefix + "clean")
            client.close()
    finally:
        kill9(proc)
        letters.close()
    print(f"{len(lines)} records, {len(orders)} customers; Redis kills: {kills}")
    assert len(kills) == 2
    assert any(0 < k["profiles"] < len(orders) for k in kills), kills  # mid-stream
    assert set(after_faults) == set(orders)
    assert not differing(clean, after_faults)
    assert all(0.0 <= p["churn_probability"] <= 1.0 for p in after_faults.values())


# -- (b) a burst of malformed, duplicate, late and out-of-order events --------------------

BURST_CUSTOMERS = 40
BURST_KEY_GROUPS = 4
LATENESS_S = 3 * 86400.0
LATE_BY_DAYS = 10.0
BASE = datetime(2024, 3, 4, tzinfo=UTC)
MALFORMED: tuple[tuple[str, bytes], ...] = (
    ("not JSON", b"this is not json"),
    ("not a JSON object", b"[1, 2, 3]"),
    ("missing fields", b'{"type": "order_created", "schema_version": 1}'),
    (
        "naive timestamp",
        b'{"schema_version":1,"type":"product_view","event_id":"bad-naive","store_id":"shop",'
        b'"customer_id":"c00","occurred_at":"2024-03-05T10:00:00"}',
    ),
    (
        "unknown currency",
        b'{"schema_version":1,"type":"order_created","event_id":"bad-cur","store_id":"shop",'
        b'"customer_id":"c01","occurred_at":"2024-03-05T10:00:00Z","order_id":"bad-cur",'
        b'"amount":"12.00","currency":"XYZ"}',
    ),
    (
        "unknown type",
        b'{"schema_version":1,"type":"teleport","event_id":"bad-type","store_id":"shop",'
        b'"customer_id":"c02","occurred_at":"2024-03-05T10:00:00Z"}',
    ),
    (
        "negative amount",
        b'{"schema_version":1,"type":"order_created","event_id":"bad-neg","store_id":"shop",'
        b'"customer_id":"c03","occurred_at":"2024-03-05T10:00:00Z","order_id":"bad-neg",'
        b'"amount":"-5.00","currency":"USD"}',
    ),
)


@dataclass
class Burst:
    """A topic's records and what each one is."""

    topic: list[bytes] = field(default_factory=list)
    good: list[bytes] = field(default_factory=list)
    """The good events, each once, in arrival order (the clean run's input)."""
    malformed: dict[int, str] = field(default_factory=dict)
    """Topic offset -> kind of the malformed records."""
    copies: int = 0
    moved_late: int = 0
    orders: dict[str, int] = field(default_factory=dict)


def good_events(rng: random.Random) -> list[tuple[float, bytes, str, bool]]:
    """(event time, bytes, customer, is an order), in event-time order; a ticker per key
    group at the very end moves every group's watermark (and publishes its counters)."""
    events: list[tuple[float, bytes, str, bool]] = []
    for c in range(BURST_CUSTOMERS):
        customer = f"c{c:02d}"
        for k in range(rng.randint(2, 8)):
            day = rng.uniform(0, 120)
            when = BASE + timedelta(days=day)
            if rng.random() < 0.5:
                event: OrderEvent | BrowseEvent = OrderEvent(
                    type="order_created",
                    event_id=f"o-{customer}-{k}",
                    store_id=STORE,
                    customer_id=customer,
                    occurred_at=when,
                    order_id=f"{customer}-{k}",
                    amount=f"{rng.randint(5, 150)}.00",
                    currency=rng.choice(("USD", "EUR")),
                )
            else:
                event = BrowseEvent(
                    type="product_view",
                    event_id=f"v-{customer}-{k}",
                    store_id=STORE,
                    customer_id=customer,
                    occurred_at=when,
                    sku=f"sku-{k}",
                )
            events.append((day, encode_event(event), customer, event.type == "order_created"))
    events.sort(key=lambda e: e[0])
    tickers: dict[int, str] = {}
    n = 0
    while len(tickers) < BURST_KEY_GROUPS:
        tickers.setdefault(key_group(STORE, f"tick{n}", BURST_KEY_GROUPS), f"tick{n}")
        n += 1
    for group, ticker in sorted(tickers.items()):
        day = 140 + group
        view = BrowseEvent(
            type="product_view",
            event_id=f"tick-{group}",
            store_id=STORE,
            customer_id=ticker,
            occurred_at=BASE + timedelta(days=day),
        )
        events.append((day, encode_event(view), ticker, False))
    return events


def make_burst(seed: int = SEED) -> Burst:
    """Good events, some delivered late (LATE_BY_DAYS after their time: past their key
    group's watermark, inside the dedup retention) or a place out of order, copies of
    some right after them (webhook retries), and the malformed records."""
    rng = random.Random(seed)
    events = good_events(rng)
    body, tail = events[:-BURST_KEY_GROUPS], events[-BURST_KEY_GROUPS:]
    delays = [LATE_BY_DAYS if rng.random() < 0.08 else 0.0 for _ in body]
    burst = Burst(moved_late=sum(1 for d in delays if d))
    order = sorted(range(len(body)), key=lambda i: body[i][0] + delays[i])
    arrival = [body[i] for i in order]
    for i in range(len(arrival) - 1):  # out of order: swap ~10% of neighbours
        if rng.random() < 0.1:
            arrival[i], arrival[i + 1] = arrival[i + 1], arrival[i]
    arrival.extend(tail)
    kinds = list(MALFORMED)
    for n, (_, line, customer, is_order) in enumerate(arrival):
        burst.topic.append(line)
        burst.good.append(line)
        burst.orders[customer] = burst.orders.get(customer, 0) + int(is_order)
        if rng.random() < 0.08 and n < len(arrival) - BURST_KEY_GROUPS:
            burst.topic.append(line)  # a retry right after the original
            burst.copies += 1
        if kinds and (rng.random() < 0.05 or len(arrival) - n <= len(kinds) + BURST_KEY_GROUPS):
            kind, raw = kinds.pop(0)
            burst.malformed[len(burst.topic)] = kind
            burst.topic.append(raw)
    assert not kinds, "every kind of malformed record is in the topic"
    return burst


def expected_lateness(good: list[bytes], key_groups: int) -> tuple[int, int]:
    """Oracle: (late, out of order) events of an arrival order. Late: at or before its
    key group's watermark (largest event time - lateness); out of order: before the
    customer's latest event time so far."""
    watermark: dict[int, float] = {}
    newest: dict[str, float] = {}
    late = out_of_order = 0
    for line in good:
        doc = orjson.loads(line)
        ts = datetime.fromisoformat(doc["occurred_at"]).timestamp()
        group = key_group(doc["store_id"], doc["customer_id"], key_groups)
        if ts <= watermark.get(group, float("-inf")):
            late += 1
        watermark[group] = max(watermark.get(group, float("-inf")), ts - LATENESS_S)
        if ts < newest.get(doc["customer_id"], float("-inf")):
            out_of_order += 1
        newest[doc["customer_id"]] = max(newest.get(doc["customer_id"], ts), ts)
    return late, out_of_order


def stage_totals(client: redis.Redis, prefix: str, key_groups: int) -> Counter[str]:
    totals: Counter[str] = Counter()
    for group in range(key_groups):
        raw = client.get(f"{prefix}:stage:{group}")
        assert raw is not None, f"key group {group} published no counters"
        counts = orjson.loads(raw)
        totals.update({k: v for k, v in counts.items() if k != "watermark"})
    return totals


def test_burst_of_bad_input_every_good_event_applied_once(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = fresh(settings, tmp_path, "burst").model_copy(
        update={"key_groups": BURST_KEY_GROUPS, "allowed_lateness_s": LATENESS_S}
    )
    burst = make_burst()
    late, out_of_order = expected_lateness(burst.good, BURST_KEY_GROUPS)
    assert late > 0 and burst.moved_late > 0 and out_of_order > 0 and burst.copies > 0
    clean = clean_profiles(run, burst.good, run.key_prefix + "clean")

    ensure_topics(run.brokers, [run.events_topic, run.dead_letter_topic])
    letters = DeadLetters(run)
    proc = start_dataflow(run)
    try:
        produce_lines(run, iter(burst.topic))
        after, _model = wait_complete(redis_client, run.key_prefix, burst.orders, proc)
        totals = stage_totals(redis_client, run.key_prefix, BURST_KEY_GROUPS)
        letters.drain(2.0)
        reasons = {
            int(dict(m.headers())["source"].decode().rsplit("/", 1)[1]): dict(m.headers())
            for m in letters.records
        }
    finally:
        kill9(proc)
        letters.close()
    print(
        f"{len(burst.topic)} records: {len(burst.good)} good, {burst.copies} copies, "
        f"{len(burst.malformed)} malformed; late {late}, out of order {out_of_order}; "
        f"stage counters {dict(totals)}"
    )
    # every malformed record dead-lettered once, with its reason; nothing else
    assert sorted(letters.sources) == sorted(burst.malformed)
    for offset in burst.malformed:
        assert reasons[offset]["error"].strip(), burst.malformed[offset]
        assert reasons[offset]["step"] == b"decode"
    # every good event applied once: the counters, the orders, the profiles
    assert totals["events"] == len(burst.good)
    assert totals["duplicates"] == burst.copies
    assert totals["late_events"] == late
    assert totals["out_of_order_events"] == out_of_order
    assert {c: p["features"]["order_count"] for c, p in after.items()} == burst.orders
    assert set(after) == set(clean) == set(burst.orders)
    assert not differing(clean, after)


# -- (c) kill -9 of the API under webhook load --------------------------------------------

SECRET = "whsec-api-faults"
CLIENTS = 4
BATCHES = 120
BATCH_EVENTS = 4
REQUESTS_PER_S = 15.0
API_KILLS = 3


@dataclass
class Client:
    """One webhook client: its batches, what was acknowledged, what had to be retried."""

    number: int
    acked: list[str] = field(default_factory=list)
    failed_attempts: Counter[str] = field(default_factory=Counter)
    """Event id -> attempts of its batch that did not end in 202."""
    unexpected: list[str] = field(default_factory=list)


def webhook_batch(client: int, batch: int) -> tuple[list[str], bytes]:
    """(event ids, JSON body) of one deterministic batch of canonical events."""
    events = []
    for k in range(BATCH_EVENTS):
        customer = f"w{client}-{(batch * BATCH_EVENTS + k) % 50:02d}"
        when = BASE + timedelta(hours=batch, minutes=k)
        event_id = f"wh-{client}-{batch}-{k}"
        if k % 2:
            event: OrderEvent | BrowseEvent = OrderEvent(
                type="order_created",
                event_id=event_id,
                store_id=STORE,
                customer_id=customer,
                occurred_at=when,
                order_id=event_id,
                amount="20.00",
                currency="USD",
            )
        else:
            event = BrowseEvent(
                type="product_view",
                event_id=event_id,
                store_id=STORE,
                customer_id=customer,
                occurred_at=when,
            )
        events.append(orjson.loads(encode_event(event)))
    return [e["event_id"] for e in events], orjson.dumps({"events": events})


def post_until_accepted(state: Client, url: str, stop: threading.Event) -> None:
    with httpx.Client(timeout=10.0) as http:
        began = time.monotonic()
        for batch in range(BATCHES):
            time.sleep(max(0.0, began + batch / REQUESTS_PER_S - time.monotonic()))
            ids, body = webhook_batch(state.number, batch)
            headers = {"X-Churnflow-Signature": sign_generic(body, SECRET)}
            while not stop.is_set():
                try:
                    answer = http.post(url, content=body, headers=headers)
                except httpx.TransportError:
                    answer = None
                if answer is not None and answer.status_code == 202:
                    state.acked.extend(ids)
                    break
                if answer is not None and answer.status_code not in (429, 503):
                    state.unexpected.append(f"{answer.status_code} {answer.text[:200]}")
                state.failed_attempts.update(ids)
                time.sleep(0.1)


def start_api(settings: Settings) -> subprocess.Popen[bytes]:
    """``churnflow api`` as a child; its output goes to ``run_dir/api.log``."""
    log_path = settings.run_dir / "api.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            api_command(settings), env=child_env(settings), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(settings.api_host, settings.api_port, proc, timeout_s=60.0)
    except Exception as exc:
        raise AssertionError(f"the API did not start: {log_path.read_text()[-2000:]}") from exc
    return proc


def test_api_kill9_under_webhook_load_loses_no_acknowledged_event(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    run = fresh(settings, tmp_path, "api").model_copy(
        update={
            "api_port": free_port(),
            "webhook_rate_limit_per_s": 1e6,
            "webhook_rate_limit_burst": 1_000_000,
        }
    )
    ensure_topics(run.brokers, [run.events_topic, run.dead_letter_topic])
    set_secret(redis_client, run.key_prefix, STORE, "events", SECRET)
    url = f"http://{run.api_host}:{run.api_port}/v1/stores/{STORE}/webhooks/events"
    rng = random.Random(SEED)
    clients = [Client(n) for n in range(CLIENTS)]
    stop = threading.Event()
    threads = [threading.Thread(target=post_until_accepted, args=(c, url, stop)) for c in clients]
    kills: list[dict[str, Any]] = []
    api = start_api(run)
    try:
        began = time.monotonic()
        for thread in threads:
            thread.start()
        restarted_at = 0
        for _ in range(API_KILLS):  # each kill after a seeded number of acks since a restart
            wait = rng.randint(8, 24) * BATCH_EVENTS
            deadline = time.monotonic() + 120
            while sum(len(c.acked) for c in clients) < restarted_at + wait:
                assert time.monotonic() < deadline, "the clients made no progress"
                time.sleep(0.01)
            acked = sum(len(c.acked) for c in clients)
            kill9(api)
            down_s = rng.uniform(0.3, 1.2)
            time.sleep(down_s)
            api = start_api(run)
            restarted_at = sum(len(c.acked) for c in clients)
            at = round(time.monotonic() - began, 2)
            kills.append({"at_s": at, "down_s": round(down_s, 2), "acked": acked})
        for thread in threads:
            thread.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "clients did not finish"
    finally:
        stop.set()
        kill9(api)
        delete_prefix(redis_client, run.key_prefix)
    reader = TopicReader(run, run.events_topic)
    try:
        in_topic = Counter(orjson.loads(m.value())["event_id"] for m in reader.drain(2.0))
    finally:
        reader.close()

    sent = {eid for c in range(CLIENTS) for b in range(BATCHES) for eid in webhook_batch(c, b)[0]}
    acked = [eid for c in clients for eid in c.acked]
    failed: Counter[str] = sum((c.failed_attempts for c in clients), Counter())
    copies = {eid: n - 1 for eid, n in in_topic.items() if n > 1}
    print(
        f"kills {kills}; acked {len(acked)} of {len(sent)} events; events with failed "
        f"attempts {len(failed)}; extra copies in the topic {sum(copies.values())}"
    )
    assert not [u for c in clients for u in c.unexpected]
    assert len(kills) == API_KILLS and failed, "the kills hit no request"
    assert sorted(acked) == sorted(sent)  # every batch was acknowledged in the end
    assert set(in_topic) == sent  # every acknowledged event is there, nothing else
    for eid, extra in copies.items():  # a copy only from a retried attempt
        assert extra <= failed[eid], (eid, extra, failed[eid])
