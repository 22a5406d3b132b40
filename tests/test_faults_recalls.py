"""Exactly-once recalls under kill -9: dataflow and delivery workers crash, nothing is lost.

A rules file fires dormancy recalls (30 and 60 days after a customer's last
order; event time, no quiet hours, no caps) for a known set of customers, half
with email consent (sent over SMTP to a local aiosmtpd server) and half with
webhook consent (a signed POST to a local HTTP receiver). The stream is produced
to the real broker while the live dataflow (``python -m bytewax.run
engine.live:get_flow()`` with recovery, as ``churnflow run``) and one ``churnflow
deliver`` worker per channel run as child processes. At seeded random moments
one of them is killed with SIGKILL and restarted shortly after; six kills, each
target twice.

The expected messages come from a clean run: the same dataflow, in process, over
the same bytes. At the end

* the recall queues hold exactly the expected idempotency keys, each once
  (the enqueue script refuses what a restarted dataflow re-emits);
* every expected key reached its receiver and no other key did (0 lost);
* receptions of the same key beyond the first (duplicates) are counted. A kill
  -9 that lands between the provider accepting a message and the worker
  recording ``sent`` cannot be told apart from one that landed before the send;
  the workers run with ``resend_unknown`` (at least once), so such a message is
  sent again with the same ``Message-ID`` / ``Idempotency-Key`` and a receiver
  drops it. Each worker kill can cause at most one such resend (a worker sends
  one message at a time), so duplicates ≤ worker kills; the test asserts that
  bound and that a duplicate always carries the same id. The default
  (``resend_unknown`` off) would lose such a message instead.
* every message's ``message_sent`` outcome event is in the outcomes topic
  (at least once; its id is deterministic, the dataflow drops repeats).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiosmtpd.controller import Controller
from bytewax.testing import TestingSink, TestingSource, run_main
from procs import TopicReader, delete_prefix, kill9, paced, start_dataflow, start_deliver

from engine.cli import produce_lines
from engine.connectors.recall_sink import queue_key
from engine.delivery.providers import RedisDirectory, message_id_for
from engine.delivery.worker import GROUP, dead_key, state_key
from engine.events import BrowseEvent, CustomerProfileEvent, OrderEvent, encode_event
from engine.flow import FlowSinks, build_flow
from engine.keygroups import key_group
from engine.services import free_port
from engine.settings import Settings
from engine.triggers.intent import RecallIntent

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

SEED = 20261124
STORE = "shop"
CUSTOMERS = 96
KEY_GROUPS = 8
SPAN_DAYS = 260
BASE = datetime(2023, 1, 2, tzinfo=UTC)
PRODUCE_SECONDS = 14.0
KILLS = ("dataflow", "dataflow", "email", "email", "webhook", "webhook")
SEND_DELAY_S = 0.05
"""Each receiver takes this long to accept a message: a kill often lands mid-send."""
SECRET = "whsec-faults"

RULES = """
store_id: shop
timezone: UTC
quiet_hours: null
channels:
  default: [email, webhook]
rules:
  - id: winback
    type: dormancy
    when: {min_orders: 1}
    steps:
      - {after_days: 30, template: dormancy_1}
      - {after_days: 60, template: dormancy_2, offer: "10%"}
"""


def channel_of(n: int) -> str:
    return "email" if n % 2 == 0 else "webhook"


def make_stream(seed: int = SEED) -> list[bytes]:
    """Profiles with consent, orders, and per-key-group ticks that move every watermark."""
    rng = random.Random(seed)
    events: list[tuple[float, bytes]] = []
    for n in range(CUSTOMERS):
        customer = f"c{n:02d}"
        start = rng.uniform(0, 60)
        profile = CustomerProfileEvent(
            type="customer_profile",
            event_id=f"p-{customer}",
            store_id=STORE,
            customer_id=customer,
            occurred_at=BASE + timedelta(days=start),
            country="DE",
            first_name=f"Name{n}",
            consent={channel_of(n): True},
        )
        events.append((start, encode_event(profile)))
        for k, day in enumerate(sorted(rng.uniform(start, 170) for _ in range(rng.randint(1, 3)))):
            order = OrderEvent(
                type="order_created",
                event_id=f"o-{customer}-{k}",
                store_id=STORE,
                customer_id=customer,
                occurred_at=BASE + timedelta(days=day),
                order_id=f"{customer}-{k}",
                amount=f"{rng.randint(10, 90)}.00",
                currency="USD",
            )
            events.append((day, encode_event(order)))
    # one ticker per key group views a product every 5 days: every group's watermark moves
    tickers: dict[int, str] = {}
    n = 0
    while len(tickers) < KEY_GROUPS:
        tickers.setdefault(key_group(STORE, f"tick{n}", KEY_GROUPS), f"tick{n}")
        n += 1
    for group, ticker in sorted(tickers.items()):
        for day in range(0, SPAN_DAYS, 5):
            t = day + group / 100
            view = BrowseEvent(
                type="product_view",
                event_id=f"v-{ticker}-{day}",
                store_id=STORE,
                customer_id=ticker,
                occurred_at=BASE + timedelta(days=t),
                sku="sku-1",
            )
            events.append((t, encode_event(view)))
    events.sort(key=lambda pair: pair[0])
    lines: list[bytes] = []
    for _, line in events:
        lines.append(line)
        if rng.random() < 0.05:  # a webhook retry
            lines.insert(len(lines) + rng.randint(0, 3), line)
    return lines


def expected_intents(settings: Settings, lines: list[bytes]) -> list[RecallIntent]:
    """The clean run: the same dataflow in process over the same bytes."""
    intents: list[Any] = []
    sinks = FlowSinks(
        redis=TestingSink([]), dead_letter=TestingSink([]), recalls=TestingSink(intents)
    )
    run_main(build_flow(TestingSource(lines), sinks, settings))
    return intents


# -- receivers -------------------------------------------------------------------------


class Inbox:
    """SMTP: records the Message-ID of every accepted mail (after a short delay)."""

    def __init__(self) -> None:
        self.message_ids: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        await asyncio.sleep(SEND_DELAY_S)
        mail = message_from_bytes(envelope.content, policy=policy.default)
        self.message_ids.append(str(mail["Message-ID"]).strip("<>").split("@", 1)[0])
        return "250 OK"


class Hooks:
    """HTTP: records the Idempotency-Key of every POST (after a short delay)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.lock = threading.Lock()


@dataclass
class Receivers:
    inbox: Inbox
    smtp_port: int
    hooks: Hooks
    url: str

    def received(self) -> list[str]:
        """Idempotency keys as the receivers saw them (email: via the Message-ID)."""
        with self.hooks.lock:
            return [*self.inbox.message_ids, *self.hooks.keys]


@pytest.fixture()
def receivers() -> Iterator[Receivers]:
    inbox, hooks = Inbox(), Hooks()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(SEND_DELAY_S)
            with hooks.lock:
                hooks.keys.append(self.headers["Idempotency-Key"])
                n = len(hooks.keys)
            reply = orjson.dumps({"id": f"r-{n}"})
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receivers(inbox, port, hooks, f"http://127.0.0.1:{server.server_address[1]}/hook")
    finally:
        server.shutdown()
        server.server_close()
        controller.stop()


# -- the crashing run ------------------------------------------------------------------


@dataclass
class Crashing:
    settings: Settings
    worker_env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)

    def start(self, target: str) -> None:
        if target == "dataflow":
            self.procs[target] = start_dataflow(self.settings)
        else:  # a stable consumer name: a restarted worker finds its own pending entries
            self.procs[target] = start_deliver(
                self.settings, target, f"{target}-1", STORE, self.worker_env
            )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            kill9(proc)


def keys_in(client: redis.Redis, stream: str) -> list[str]:
    return [f[b"idempotency_key"].decode() for _, f in client.xrange(stream)]


def delivery_done(client: redis.Redis, prefix: str, keys: set[str]) -> bool:
    """Every key sent and reported, and no queue entry pending."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(state_key(prefix, STORE, key), "state", "reported")
    if any(state != [b"sent", b"1"] for state in pipe.execute()):
        return False
    for channel in ("email", "webhook"):
        stream = queue_key(prefix, STORE, channel)
        if client.exists(stream) and client.xpending(stream, GROUP)["pending"]:
            return False
    return True


def test_recalls_delivered_once_through_kill9_of_dataflow_and_workers(
    settings: Settings, redis_client: redis.Redis, receivers: Receivers, tmp_path: Path
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / f"{STORE}.yaml").write_text(RULES)
    settings = settings.model_copy(
        update={
            "rules_dir": rules_dir,
            "run_dir": tmp_path,
            "recovery_dir": tmp_path / "recovery",
            "epoch_interval_s": 1.0,
            "key_groups": KEY_GROUPS,
        }
    )
    prefix = settings.key_prefix
    lines = make_stream()
    expected = {i.idempotency_key: i for i in expected_intents(settings, lines)}
    by_channel = Counter(i.channel for i in expected.values())
    assert by_channel["email"] > 10 and by_channel["webhook"] > 10, by_channel
    assert {i.step for i in expected.values()} == {0, 1}

    directory = RedisDirectory(redis_client, prefix)
    for n in range(0, CUSTOMERS, 2):
        directory.set_address(STORE, f"c{n:02d}", f"customer{n}@example.org")
    directory.set_secret(STORE, SECRET)
    directory.set_endpoint(STORE, "webhook", receivers.url)
    outcomes = f"outcomes-{prefix}"  # message_sent events: not fed back into this run
    worker_env = {
        "CHURNFLOW_SMTP_HOST": "127.0.0.1",
        "CHURNFLOW_SMTP_PORT": str(receivers.smtp_port),
        "CHURNFLOW_DELIVERY_RESEND_UNKNOWN": "true",
        "CHURNFLOW_EVENTS_TOPIC": outcomes,
        "CHURNFLOW_DELIVERY_BACKOFF_BASE_S": "1",
    }
    run = Crashing(settings, worker_env)
    rng = random.Random(SEED)
    # one kill in each of len(KILLS) equal slots of the busy period, at a seeded point
    slot = (PRODUCE_SECONDS - 1.0) / len(KILLS)
    schedule = [3.0 + slot * (k + rng.random()) for k in range(len(KILLS))]
    targets = rng.sample(KILLS, len(KILLS))
    try:
        for target in ("dataflow", "email", "webhook"):
            run.start(target)
        producer = threading.Thread(
            target=produce_lines, args=(settings, paced(lines, PRODUCE_SECONDS))
        )
        began = time.monotonic()
        producer.start()
        for at, target in zip(schedule, targets, strict=True):
            time.sleep(max(0.0, began + at - time.monotonic()))
            down_s = rng.uniform(0.2, 1.5)
            queued = sum(
                redis_client.xlen(queue_key(prefix, STORE, ch)) for ch in ("email", "webhook")
            )
            kill9(run.procs[target])
            run.kills.append(
                {
                    "at_s": round(time.monotonic() - began, 2),
                    "target": target,
                    "down_s": round(down_s, 2),
                    "queued": queued,
                    "received": len(receivers.received()),
                }
            )
            time.sleep(down_s)
            run.start(target)
        producer.join()

        deadline = time.monotonic() + 150
        stable_since, last = time.monotonic(), -1
        while time.monotonic() < deadline:
            for target, proc in run.procs.items():
                assert proc.poll() is None, f"{target} exited with {proc.returncode}"
            queued = [
                *keys_in(redis_client, queue_key(prefix, STORE, "email")),
                *keys_in(redis_client, queue_key(prefix, STORE, "webhook")),
            ]
            size = len(queued) + len(receivers.received())
            if size != last:
                stable_since, last = time.monotonic(), size
            elif (
                set(queued) >= set(expected)
                and delivery_done(redis_client, prefix, set(queued))
                and time.monotonic() - stable_since > 3.0
            ):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"recalls not all delivered in time; kills {run.kills}")
        dead = redis_client.exists(
            dead_key(prefix, STORE, "email"), dead_key(prefix, STORE, "webhook")
        )
        reader = TopicReader(settings, outcomes)
        try:
            reported = [orjson.loads(m.value())["event_id"] for m in reader.drain(2.0)]
        finally:
            reader.close()
    finally:
        run.stop_all()
        delete_prefix(redis_client, prefix)

    ids_to_keys = {message_id_for(k): k for k in expected}
    received = [ids_to_keys.get(r, r) for r in receivers.received()]
    counts = Counter(received)
    duplicates = sum(n - 1 for n in counts.values())
    worker_kills = sum(1 for k in run.kills if k["target"] != "dataflow")
    print(
        f"kills: {run.kills}\nexpected {len(expected)} messages {dict(by_channel)}; queued "
        f"{len(queued)} entries ({len(set(queued))} keys); received {len(received)} "
        f"({len(counts)} keys, {duplicates} duplicates); outcome events {len(reported)} "
        f"({len(set(reported))} ids)"
    )
    assert len(run.kills) == len(KILLS)
    # the queue: each expected key exactly once, nothing else
    assert sorted(queued) == sorted(expected)
    # the receivers: every expected key, nothing else (0 lost)
    assert set(counts) == set(expected), (set(expected) - set(counts), set(counts) - set(expected))
    # a resend after a kill in the send window carries the same id; at most one per worker kill
    assert duplicates <= worker_kills, counts.most_common(3)
    assert not dead, "a message went to the dead stream"
    # every message's outcome was reported (at least once, deterministic ids)
    assert set(reported) == {f"dlv:message_sent:{k}" for k in expected}
