"""Delivery workers on the real redis-server and broker, a real SMTP server (aiosmtpd)
and a real HTTP receiver (http.server), all on loopback."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import orjson
import pytest
import redis
from aiosmtpd.controller import Controller
from confluent_kafka import Consumer, Producer, TopicPartition
from recall_events import smtp_provider

from api.webhooks.signing import verify_generic
from engine.cli import build_parser, main
from engine.connectors.kafka import ensure_topics, idempotent_producer
from engine.connectors.recall_sink import enqueue_intents, queue_key
from engine.delivery.providers import (
    OutboundMessage,
    ProviderError,
    RedisDirectory,
    SmtpProvider,
    WebhookProvider,
    message_id_for,
)
from engine.delivery.worker import (
    DeliveryWorker,
    PassResult,
    WorkerConfig,
    dead_key,
    intent_from_payload,
    state_key,
)
from engine.errors import ServiceError
from engine.events import MessageEvent, decode_event
from engine.services import free_port
from engine.settings import Settings
from engine.triggers.intent import Offer, Personalisation, RecallIntent

pytestmark = pytest.mark.integration

STORE = "shop"
DUE = 1_790_000_000.0
NOW = DUE + 3600.0
SECRET = "whsec-test"


class Clock:
    """A hand-driven clock (event time and back-off timer in tests)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def intent(
    n: int,
    *,
    channel: str = "email",
    locale: str = "en",
    send_at: float = DUE,
    name: str = "Anna",
) -> RecallIntent:
    return RecallIntent(
        store_id=STORE,
        customer_id=f"c:{n}",
        rule_id="winback",
        step=0,
        due_ts=DUE + n,
        send_at=send_at,
        channel=channel,
        template="dormancy_2",
        locale=locale,
        offer=Offer(15, False, "BACK15"),
        personalisation=Personalisation(name, ("Shoes",), ()),
    )


# -- loopback SMTP and HTTP receivers ----------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                cast(EmailMessage, message_from_bytes(envelope.content, policy=policy.default)),
            )
        )
        return "250 OK"


@pytest.fixture()
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


class Receiver:
    """Records POSTs; answers the queued status codes first, then ``default``."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.default = 200
        self.lock = threading.Lock()


@pytest.fixture()
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append((dict(self.headers.items()), body))
                status = state.statuses.pop(0) if state.statuses else state.default
            reply = orjson.dumps({"id": f"r-{len(state.requests)}"}) if status == 200 else b"no"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def producer(settings: Settings) -> Iterator[Producer]:
    ensure_topics(settings.brokers, [settings.events_topic])
    prod = idempotent_producer(settings.brokers)
    yield prod
    prod.flush(10)


def read_events(settings: Settings, expected: int, timeout_s: float = 15.0) -> list[MessageEvent]:
    """The first ``expected`` events of partition 0, then whatever follows within 1 s."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"delivery-{settings.key_prefix}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(settings.events_topic, 0, 0)])
    found: list[MessageEvent] = []
    deadline = time.monotonic() + timeout_s
    extra_until: float | None = None
    try:
        while time.monotonic() < (extra_until or deadline):
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            event = decode_event(msg.value())
            assert isinstance(event, MessageEvent)
            found.append(event)
            if len(found) >= expected and extra_until is None:
                extra_until = time.monotonic() + 1.0
    finally:
        consumer.close()
    return found


def email_worker(
    settings: Settings,
    client: redis.Redis,
    port: int,
    *,
    producer: Producer | None = None,
    clock: Clock | None = None,
    timer: Clock | None = None,
    **config: Any,
) -> DeliveryWorker:
    return DeliveryWorker(
        client,
        settings.key_prefix,
        "email",
        smtp_provider(client, settings.key_prefix, port),
        producer=producer,
        events_topic=settings.events_topic if producer else None,
        stores=[STORE],
        config=WorkerConfig(**{"consumer": "w1", **config}),
        clock=clock or Clock(NOW),
        timer=timer or Clock(1000.0),
    )


def webhook_worker(
    settings: Settings, client: redis.Redis, url: str, timer: Clock, **config: Any
) -> DeliveryWorker:
    directory = RedisDirectory(client, settings.key_prefix)
    directory.set_secret(STORE, SECRET)
    directory.set_endpoint(STORE, "sms", url)
    provider = WebhookProvider(endpoint_for=directory.endpoint, secret_for=directory.secret)
    return DeliveryWorker(
        client,
        settings.key_prefix,
        "sms",
        provider,
        stores=[STORE],
        config=WorkerConfig(**{"consumer": "w1", "backoff_base_s": 10.0, **config}),
        clock=Clock(NOW),
        timer=timer,
    )


def add_addresses(settings: Settings, client: redis.Redis, *numbers: int) -> None:
    directory = RedisDirectory(client, settings.key_prefix)
    for n in numbers:
        directory.set_address(STORE, f"c:{n}", f"customer{n}@example.org")


def pending(client: redis.Redis, stream: str) -> int:
    return int(cast(dict[str, Any], client.xpending(stream, "delivery"))["pending"])


# -- tests ---------------------------------------------------------------------------


def test_intent_round_trips_through_the_payload(
    settings: Settings, redis_client: redis.Redis
) -> None:
    original = intent(1, locale="de-AT")
    enqueue_intents(redis_client, settings.key_prefix, [original])
    [(_, fields)] = redis_client.xrange(queue_key(settings.key_prefix, STORE, "email"))
    assert intent_from_payload(fields[b"payload"]) == original


def test_email_rendered_sent_once_when_due_and_reported(
    settings: Settings, redis_client: redis.Redis, smtp: tuple[Inbox, int], producer: Producer
) -> None:
    inbox, port = smtp
    prefix = settings.key_prefix
    batch = [intent(1), intent(2, locale="de", name="Jörg"), intent(3, send_at=NOW + 600)]
    enqueue_intents(redis_client, prefix, batch)
    add_addresses(settings, redis_client, 1, 2, 3)
    clock = Clock(NOW)
    worker = email_worker(settings, redis_client, port, producer=producer, clock=clock)

    assert worker.run_once() == PassResult(sent=2, not_due=1)
    assert len(inbox.messages) == 2
    by_rcpt = {rcpt[0]: mail for _, rcpt, mail in inbox.messages}
    en, de = by_rcpt["customer1@example.org"], by_rcpt["customer2@example.org"]
    assert en["Subject"] == "Something new for you"
    en_body = en.get_content()
    assert "Hi Anna," in en_body and "15% off" in en_body and "BACK15" in en_body
    assert "Shoes" in en_body
    assert de["Subject"] == "Etwas Neues für Sie"
    de_body = de.get_content()
    assert "Hallo Jörg," in de_body and "15 % Rabatt" in de_body
    assert en["Message-ID"] == f"<{message_id_for(batch[0].idempotency_key)}@example.com>"
    stream = queue_key(prefix, STORE, "email")
    assert pending(redis_client, stream) == 1  # the one not due yet

    # nothing new while the clock stands still; the third goes out once due
    assert worker.run_once() == PassResult(not_due=1)
    clock.t = NOW + 600
    assert worker.run_once() == PassResult(sent=1)
    assert len(inbox.messages) == 3
    assert pending(redis_client, stream) == 0
    state = redis_client.hgetall(state_key(prefix, STORE, batch[2].idempotency_key))
    assert state[b"state"] == b"sent" and state[b"reported"] == b"1"

    events = read_events(settings, 3)
    assert sorted(e.event_id for e in events) == sorted(
        f"dlv:message_sent:{i.idempotency_key}" for i in batch
    )
    assert {e.type for e in events} == {"message_sent"}
    assert {(e.channel, e.rule_id, e.source) for e in events} == {("email", "winback", "churnflow")}
    # what effect tracking needs: step, arm, offer, and the id engagement events refer to
    assert {(e.step, e.variant, e.offer_percent_off, e.offer_free_shipping) for e in events} == {
        (0, None, 15, False)
    }
    ids = {e.event_id: e.message_id or "" for e in events}
    for i in batch:  # the SMTP Message-ID (which bounces and opens quote)
        assert message_id_for(i.idempotency_key) in ids[f"dlv:message_sent:{i.idempotency_key}"]
    third = next(e for e in events if e.customer_id == "c:3")
    assert third.ts == NOW + 600


def test_webhook_is_signed_with_the_store_secret(
    settings: Settings, redis_client: redis.Redis, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    sms = intent(1, channel="sms")
    enqueue_intents(redis_client, settings.key_prefix, [sms])
    worker = webhook_worker(settings, redis_client, url, Clock(0.0))
    assert worker.run_once() == PassResult(sent=1)

    [(headers, body)] = state.requests
    signature = headers["X-Churnflow-Signature"]
    assert verify_generic(body, signature, SECRET)
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert not verify_generic(body, signature, "another-secret")
    assert headers["Idempotency-Key"] == sms.idempotency_key
    payload = orjson.loads(body)
    assert payload["channel"] == "sms" and payload["customer_id"] == "c:1"
    assert "Anna" in payload["body"] and "15% off" in payload["body"]
    assert payload["offer"] == {"percent_off": 15, "free_shipping": False, "code": "BACK15"}
    skey = state_key(settings.key_prefix, STORE, sms.idempotency_key)
    assert redis_client.hget(skey, "message_id") == b"r-1"


def test_two_failures_then_success_delivers_once_with_backoff(
    settings: Settings, redis_client: redis.Redis, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    state.statuses = [503, 503]
    sms = intent(1, channel="sms")
    enqueue_intents(redis_client, settings.key_prefix, [sms])
    timer = Clock(1000.0)
    worker = webhook_worker(settings, redis_client, url, timer)
    skey = state_key(settings.key_prefix, STORE, sms.idempotency_key)

    assert worker.run_once() == PassResult(retried=1)
    assert redis_client.hget(skey, "next_at") == b"1010.0"  # base 10 s
    assert worker.run_once() == PassResult(backing_off=1)  # not before the back-off
    timer.t = 1010.0
    assert worker.run_once() == PassResult(retried=1)
    assert redis_client.hget(skey, "next_at") == b"1030.0"  # doubled
    timer.t = 1030.0
    assert worker.run_once() == PassResult(sent=1)
    assert worker.run_once() == PassResult()
    assert len(state.requests) == 3
    assert len({h["Idempotency-Key"] for h, _ in state.requests}) == 1
    assert redis_client.hget(skey, "attempts") == b"3"
    assert pending(redis_client, queue_key(settings.key_prefix, STORE, "sms")) == 0


def test_always_failing_and_rejected_entries_go_to_the_dead_stream(
    settings: Settings, redis_client: redis.Redis, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    state.default = 500
    prefix = settings.key_prefix
    enqueue_intents(redis_client, prefix, [intent(1, channel="sms")])
    timer = Clock(0.0)
    worker = webhook_worker(settings, redis_client, url, timer, max_attempts=3)
    for _ in range(2):
        assert worker.run_once() == PassResult(retried=1)
        timer.t += 1000
    assert worker.run_once() == PassResult(dead=1)
    assert worker.run_once() == PassResult()
    assert len(state.requests) == 3
    [(_, dead)] = redis_client.xrange(dead_key(prefix, STORE, "sms"))
    assert dead[b"reason"] == b"gave up after 3 attempts: http 500"
    assert dead[b"attempts"] == b"3" and dead[b"customer_id"] == b"c:1"
    assert b"payload" in dead and b"entry" in dead
    assert pending(redis_client, queue_key(prefix, STORE, "sms")) == 0

    # a 4xx is not retried
    state.default = 400
    enqueue_intents(redis_client, prefix, [intent(2, channel="sms")])
    assert worker.run_once() == PassResult(dead=1)
    reasons = [f[b"reason"] for _, f in redis_client.xrange(dead_key(prefix, STORE, "sms"))]
    assert reasons[-1] == b"rejected: http 400"


def test_email_without_address_is_rejected_and_reported_as_bounced(
    settings: Settings, redis_client: redis.Redis, smtp: tuple[Inbox, int], producer: Producer
) -> None:
    inbox, port = smtp
    enqueue_intents(redis_client, settings.key_prefix, [intent(7)])
    worker = email_worker(settings, redis_client, port, producer=producer)
    assert worker.run_once() == PassResult(dead=1)
    assert inbox.messages == []
    [(_, dead)] = redis_client.xrange(dead_key(settings.key_prefix, STORE, "email"))
    assert dead[b"reason"] == b"rejected: no email address for customer"
    [event] = read_events(settings, 1)
    assert event.type == "message_bounced" and event.customer_id == "c:7"


def test_second_worker_claims_a_dead_workers_entries(
    settings: Settings, redis_client: redis.Redis, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    prefix = settings.key_prefix
    stream = queue_key(prefix, STORE, "email")
    enqueue_intents(redis_client, prefix, [intent(1), intent(2), intent(3, send_at=NOW + 60)])
    add_addresses(settings, redis_client, 1, 2, 3)
    # (a long min idle for this one, so only the rescuer below claims)
    alive = email_worker(settings, redis_client, port, consumer="alive", claim_min_idle_ms=60_000)
    alive.refresh_streams()
    # the third entry: read by a live worker that keeps it (not due yet)
    assert alive.run_once() == PassResult(sent=2, not_due=1)
    # two more: read by a worker that dies before handling them
    enqueue_intents(redis_client, prefix, [intent(4), intent(5)])
    add_addresses(settings, redis_client, 4, 5)
    redis_client.xreadgroup("delivery", "crashed", {stream: ">"}, count=10)
    assert pending(redis_client, stream) == 3

    rescuer = email_worker(settings, redis_client, port, consumer="rescuer", claim_min_idle_ms=150)
    assert rescuer.run_once() == PassResult()  # not idle long enough yet
    time.sleep(0.2)
    assert alive.run_once() == PassResult(not_due=1)  # touches its entry
    assert rescuer.run_once() == PassResult(sent=2, claimed=2)
    assert len(inbox.messages) == 4
    consumers = {
        c["name"].decode(): c["pending"] for c in redis_client.xinfo_consumers(stream, "delivery")
    }
    assert consumers == {"alive": 1, "crashed": 0, "rescuer": 0}


def test_already_sent_entries_are_never_sent_again(
    settings: Settings, redis_client: redis.Redis, smtp: tuple[Inbox, int], producer: Producer
) -> None:
    inbox, port = smtp
    prefix = settings.key_prefix
    stream = queue_key(prefix, STORE, "email")
    batch = [intent(1), intent(2)]
    enqueue_intents(redis_client, prefix, batch)
    add_addresses(settings, redis_client, 1, 2)

    # crash window: sent, but the outcome event is not acknowledged -> not acked.
    # A real producer whose broker is unreachable (a closed loopback port) fails.
    unreachable = Producer(
        {"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 1000}
    )
    first = email_worker(
        settings,
        redis_client,
        port,
        producer=unreachable,
        consumer="first",
        claim_min_idle_ms=50,
    )
    with pytest.raises(ServiceError):
        first.run_once()
    assert len(inbox.messages) == 2 and pending(redis_client, stream) == 2

    second = email_worker(
        settings, redis_client, port, producer=producer, consumer="second", claim_min_idle_ms=50
    )
    time.sleep(0.1)
    assert second.run_once() == PassResult(already_sent=2, claimed=2)
    assert len(inbox.messages) == 2
    assert pending(redis_client, stream) == 0

    # the whole stream delivered again (group rewound): still nothing sent
    redis_client.xgroup_setid(stream, "delivery", "0")
    assert second.run_once() == PassResult(already_sent=2)
    assert len(inbox.messages) == 2
    events = read_events(settings, 2)
    assert len(events) == 2 and {e.type for e in events} == {"message_sent"}


def test_interrupted_send_is_not_resent_by_default(
    settings: Settings, redis_client: redis.Redis, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    prefix = settings.key_prefix
    batch = [intent(1), intent(2)]
    enqueue_intents(redis_client, prefix, batch)
    add_addresses(settings, redis_client, 1, 2)
    for item in batch:  # a worker died inside the provider call, long ago
        redis_client.hset(
            state_key(prefix, STORE, item.idempotency_key),
            mapping={"state": "sending", "owner": "ghost", "since": "0"},
        )
    timer = Clock(100.0)
    worker = email_worker(settings, redis_client, port, timer=timer, send_lease_s=200.0)
    assert worker.run_once() == PassResult(busy=2)  # the ghost's lease still holds
    timer.t = 201.0
    assert worker.run_once() == PassResult(dead=2)
    assert inbox.messages == []
    reasons = {f[b"reason"] for _, f in redis_client.xrange(dead_key(prefix, STORE, "email"))}
    assert reasons == {b"outcome unknown: send interrupted (owner ghost)"}

    # opting into at-least-once resends such entries
    enqueue_intents(redis_client, prefix, [intent(3)])
    add_addresses(settings, redis_client, 3)
    redis_client.hset(
        state_key(prefix, STORE, intent(3).idempotency_key),
        mapping={"state": "sending", "owner": "ghost", "since": "0"},
    )
    resender = email_worker(
        settings, redis_client, port, timer=timer, send_lease_s=200.0, resend_unknown=True
    )
    assert resender.run_once() == PassResult(sent=1)
    assert len(inbox.messages) == 1


def test_smtp_errors_map_to_retryable(smtp: tuple[Inbox, int]) -> None:
    _, port = smtp
    message = OutboundMessage(
        idempotency_key="k",
        store_id=STORE,
        customer_id="c",
        channel="email",
        rule_id="r",
        template="risk",
        locale="en",
        subject="s",
        body="b",
    )
    closed = SmtpProvider(
        "127.0.0.1", free_port(), sender="a@b.c", address_for=lambda s, c: "x@y.z", timeout_s=2
    )
    with pytest.raises(ProviderError) as info:
        closed.send(message)
    assert info.value.retryable


def test_all_stores_discovery_and_cli(
    settings: Settings,
    redis_client: redis.Redis,
    smtp: tuple[Inbox, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox, port = smtp
    prefix = settings.key_prefix
    other = dataclasses.replace(intent(9), store_id="other")
    enqueue_intents(redis_client, prefix, [intent(1), other])
    directory = RedisDirectory(redis_client, prefix)
    directory.set_address(STORE, "c:1", "one@example.org")
    directory.set_address("other", "c:9", "nine@example.org")

    args = build_parser().parse_args(["deliver", "--channel", "email", "--all-stores", "--once"])
    assert args.all_stores and args.channel == "email"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["deliver", "--channel", "fax", "--store", STORE])

    for name, value in {
        "CHURNFLOW_KAFKA_BROKERS": settings.kafka_brokers,
        "CHURNFLOW_REDIS_URL": settings.redis_url,
        "CHURNFLOW_KEY_PREFIX": prefix,
        "CHURNFLOW_EVENTS_TOPIC": settings.events_topic,
        "CHURNFLOW_SMTP_PORT": str(port),
    }.items():
        monkeypatch.setenv(name, value)
    # send_at lies in the past of the wall clock: both are due
    assert main(["deliver", "--channel", "email", "--all-stores", "--once"]) == 0
    assert sorted(r[0] for _, r, _ in inbox.messages) == ["nine@example.org", "one@example.org"]
    assert len(read_events(settings, 2)) == 2
