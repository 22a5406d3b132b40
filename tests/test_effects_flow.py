"""Effect tracking end to end: broker → the real dataflow → Redis → ``GET /campaigns``.

A rules file with a dormancy cadence (30 and 60 days of silence), two A/B arms
and a 30 % holdout. Customers order, go silent and get recalls; the test plays
the delivery worker and the customers: for every recall the rules call for it
produces ``message_sent`` (and some delivered/opened/clicked) events, and then
orders inside and outside the 7-day attribution window, some of them refunded
in part or in full or cancelled later, a few events twice (webhook retries).
Everything goes through the real Tansu broker into :func:`engine.flow.build_flow`
with the real Redis sinks.

The expectation is computed here from the input events alone (an oracle that
knows the rules, not the engine's state): which intents the cadence produces
(a step is due at last order + N days unless an order came first, and fires
once the key group's watermark or the customer's own next event passes it),
which of them are holdout, and per (rule, step, arm, channel) the sends,
engagement, conversions (the first order in ``(touch, touch + 7 days]`` that
is not fully refunded), revenue net of refunds, offer cost and the holdout's
intents, conversions and revenue. The queues, the suppressed log, the effects
hashes and the API must match it exactly.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import recall_events
import redis
from bytewax.connectors.kafka import KafkaSource
from bytewax.testing import TestingSink, TestingSource, run_main
from fastapi.testclient import TestClient
from recall_events import contactable

from api.keys import create_key
from api.main import create_app
from engine.cli import produce_lines
from engine.connectors.effects_sink import effects_sink, read_effects
from engine.connectors.recall_sink import RecallSink, queue_key, suppressed_key
from engine.connectors.redis_sink import RedisSink
from engine.delivery.providers import message_id_for
from engine.effects import COUNT_FIELDS, EffectsSnapshot, RowKey
from engine.events import (
    BrowseEvent,
    CustomerProfileEvent,
    MessageEvent,
    OrderEvent,
    encode_event,
)
from engine.flow import FlowSinks, build_flow
from engine.keygroups import key_group
from engine.settings import Settings
from engine.triggers.assignment import assign_arm, in_holdout
from engine.triggers.intent import idempotency_key

pytestmark = pytest.mark.integration

STORE = "fx"
SALT = "fx-2026"
HOLDOUT = 0.3
ARMS = (("subject_a", 1.0), ("subject_b", 1.0))
STEP_DAYS = (30, 60)
STEP_OFFER = (0, 10)
"""Percent off per step (the rules file below says the same)."""
WINDOW_S = 7 * 86_400
LATENESS_S = 3 * 86_400
KEY_GROUPS = 8
CUSTOMERS = 80
TICKER_END_DAY = 80
DAY = 86_400
BASE = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())

RULES = f"""
store_id: {STORE}
timezone: UTC
quiet_hours: null
holdout: {{fraction: {HOLDOUT}, salt: "{SALT}"}}
channels:
  default: [email]
rules:
  - id: winback
    type: dormancy
    when: {{min_orders: 1}}
    arms:
      - {{name: subject_a, weight: 1}}
      - {{name: subject_b, weight: 1}}
    steps:
      - {{after_days: 30, template: dormancy_1}}
      - {{after_days: 60, template: dormancy_2, offer: "10%"}}
"""


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class Touch:
    """What attribution looks at: a send or a holdout intent, at ``ts``."""

    customer: str
    row: RowKey
    ts: int
    holdout: bool
    percent_off: int
    engagement: frozenset[str] = frozenset()


@dataclass
class Stream:
    events: list[Any]
    """Unique events (the oracle's input)."""
    lines: list[bytes]
    """What is produced: the events in time order plus retried duplicates."""
    duplicate_effect_lines: int
    queued_keys: set[str]
    suppressed_keys: set[str]
    touches: list[Touch]
    orders: dict[str, list[tuple[int, str, int]]]
    """Customer → (ts, order id, net amount in 1/10,000 USD) of orders not fully refunded."""
    refunded_conversions: int
    """Touches whose first order in the window was refunded (the scenario needs some)."""


# -- the input --------------------------------------------------------------------------


def profile(customer: str) -> CustomerProfileEvent:
    return contactable(STORE, customer, at(BASE), first_name=customer.upper())


def order(customer: str, n: int, ts: int, amount: str) -> OrderEvent:
    return recall_events.order(STORE, customer, n, at(ts), amount)


def message(kind: str, customer: str, key: str, ts: int, row: RowKey, pct: int) -> MessageEvent:
    return MessageEvent(
        type=kind,
        event_id=f"{kind}-{key}",
        store_id=STORE,
        customer_id=customer,
        occurred_at=at(ts),
        channel="email",
        message_id=message_id_for(key),
        rule_id=row.rule_id if kind == "message_sent" else None,
        step=row.step if kind == "message_sent" else None,
        variant=row.arm if kind == "message_sent" else None,
        offer_percent_off=pct if kind == "message_sent" else None,
    )


def tickers() -> list[BrowseEvent]:
    """One browsing-only customer per key group: every group's watermark moves to the end."""
    names: dict[int, str] = {}
    n = 0
    while len(names) < KEY_GROUPS:
        names.setdefault(key_group(STORE, f"tick{n}", KEY_GROUPS), f"tick{n}")
        n += 1
    out = []
    for group, name in sorted(names.items()):
        for half_day in range(2 * TICKER_END_DAY + 1):
            out.append(
                BrowseEvent(
                    type="page_view",
                    event_id=f"v-{name}-{half_day}",
                    store_id=STORE,
                    customer_id=name,
                    occurred_at=at(BASE + half_day * DAY // 2 + group * 60),
                )
            )
    return out


def money(rng: random.Random) -> str:
    return f"{rng.randint(10, 250)}.{rng.randint(0, 99):02d}"


def outcome_orders(rng: random.Random, customer: str, first_order: int) -> list[OrderEvent]:
    """A first order, then orders placed relative to where the recalls will fall."""
    out = [order(customer, 0, first_order, money(rng))]
    due0 = first_order + STEP_DAYS[0] * DAY
    due1 = first_order + STEP_DAYS[1] * DAY
    fate = rng.choice(["in_window", "in_window_twice", "after_window", "silent"])
    if fate.startswith("in_window"):
        ts = due0 + rng.randint(DAY // 5, 6 * DAY + DAY // 2)
        out.append(order(customer, 1, ts, money(rng)))
        if fate == "in_window_twice":  # the first order in the window converts, not this
            out.append(order(customer, 2, ts + rng.randint(3600, DAY // 2), money(rng)))
    elif fate == "after_window":
        out.append(order(customer, 1, due0 + rng.randint(7 * DAY + 3600, 20 * DAY), money(rng)))
    else:  # silent past the second step; maybe an order after it
        after = rng.choice([None, *[rng.randint(DAY // 5, 6 * DAY)] * 2, 8 * DAY + 3600])
        if after is not None:
            out.append(order(customer, 1, due1 + after, money(rng)))
    return out


def refunds_for(rng: random.Random, placed: list[OrderEvent]) -> list[OrderEvent]:
    """Some later orders are refunded, in part or in full, days to weeks later, or cancelled."""
    out = []
    for placed_order in placed[1:]:
        kind = rng.choice(["none", "none", "partial", "full", "cancelled"])
        if kind == "none":
            continue
        amount = placed_order.amount
        if kind == "partial":
            amount = (amount / 2).quantize(Decimal("0.01"))
        elif kind == "cancelled":
            amount = Decimal(0)
        delay = 3600 if kind == "cancelled" else rng.randint(2 * DAY, 20 * DAY)
        out.append(
            placed_order.model_copy(
                update={
                    "type": "order_cancelled" if kind == "cancelled" else "order_refunded",
                    "event_id": f"r-{placed_order.order_id}",
                    "occurred_at": at(int(placed_order.ts) + delay),
                    "amount": amount,
                }
            )
        )
    return out


def net_orders(placed: list[OrderEvent], refunds: list[OrderEvent]) -> list[tuple[int, str, int]]:
    """(ts, order id, amount - refunds in 1/10,000 USD) of the orders not fully refunded."""
    refunded: dict[str, int] = defaultdict(int)
    for refund in refunds:
        full = refund.type == "order_cancelled"
        refunded[refund.order_id] += 10**12 if full else int(refund.amount * 10_000)
    net = [(int(o.ts), o.order_id, int(o.amount * 10_000) - refunded[o.order_id]) for o in placed]
    return [o for o in net if o[2] > 0]


# -- the oracle -------------------------------------------------------------------------


def due_steps(orders: list[int], fires_by: int, events_after: list[int]) -> list[tuple[int, int]]:
    """(step, due time) of every dormancy step the cadence reaches.

    A step is due at an order + N days if no other order came before it, and is
    evaluated once the key group's watermark (``fires_by``) or one of the
    customer's own later events passes it.
    """
    out = []
    orders = sorted(set(orders))
    for i, last in enumerate(orders):
        following = orders[i + 1] if i + 1 < len(orders) else None
        for step, days in enumerate(STEP_DAYS):
            due = last + days * DAY
            if following is not None and following <= due:
                break
            if due <= fires_by or any(ts > due for ts in events_after):
                out.append((step, due))
    return out


def first_in_window(ts: int, orders: list[tuple[int, str, int]]) -> tuple[int, str, int] | None:
    inside = [o for o in orders if ts < o[0] <= ts + WINDOW_S]
    return min(inside) if inside else None


def expected_rows(stream: Stream) -> dict[RowKey, dict[str, int]]:
    rows: dict[RowKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for touch in stream.touches:
        counts = rows[touch.row]
        first = first_in_window(touch.ts, stream.orders[touch.customer])
        prefix = "holdout_" if touch.holdout else ""
        counts["holdout_intents" if touch.holdout else "sent"] += 1
        for kind in touch.engagement:
            counts[kind] += 1
        if first is not None:
            counts[f"{prefix}converted"] += 1
            counts[f"{prefix}revenue"] += first[2]
            if not touch.holdout:
                counts["offer_cost"] += (first[2] * touch.percent_off + 50) // 100
    return {row: dict(counts) for row, counts in rows.items()}


# -- building the stream ---------------------------------------------------------------


def build_stream(seed: int = 20261123) -> Stream:
    rng = random.Random(seed)
    events: list[Any] = [*tickers()]
    orders: dict[str, list[tuple[int, str, int]]] = {}
    gross_orders: dict[str, list[tuple[int, str, int]]] = {}
    refunded_ids: set[str] = set()
    own_times: dict[str, list[int]] = {}
    order_times: dict[str, list[int]] = {}
    for n in range(CUSTOMERS):  # first what the customers do on their own
        customer = f"c{n:02d}"
        first_order = BASE + 2 * DAY + rng.randint(0, DAY - 1)
        placed = outcome_orders(rng, customer, first_order)
        refunds = refunds_for(rng, placed)
        events += [profile(customer), *placed, *refunds]
        orders[customer] = net_orders(placed, refunds)
        gross_orders[customer] = net_orders(placed, [])
        refunded_ids |= {r.order_id for r in refunds}
        order_times[customer] = [int(o.ts) for o in placed]
        own_times[customer] = [int(e.ts) for e in (*placed, *refunds)]
    fires_by: dict[int, int] = defaultdict(lambda: -(2**62))
    for event in events:  # each key group's final watermark
        group = key_group(STORE, event.customer_id, KEY_GROUPS)
        fires_by[group] = max(fires_by[group], int(event.ts) - LATENESS_S)
    last_event = max(int(e.ts) for e in events)
    queued: set[str] = set()
    suppressed: set[str] = set()
    touches: list[Touch] = []
    for n in range(CUSTOMERS):  # then the recalls the rules call for, and the sends
        customer = f"c{n:02d}"
        holdout = in_holdout(STORE, customer, SALT, HOLDOUT)
        arm = assign_arm(STORE, customer, "winback", ARMS, salt=SALT)
        group = key_group(STORE, customer, KEY_GROUPS)
        for step, due in due_steps(order_times[customer], fires_by[group], own_times[customer]):
            row = RowKey("winback", step, arm, "email")
            key = idempotency_key(STORE, customer, "winback", step, due)
            if holdout:
                suppressed.add(key)
                touches.append(Touch(customer, row, due, True, 0))
                continue
            queued.add(key)
            sent_at = due + 60
            assert sent_at + 3 * 3600 < last_event  # moves no watermark
            pct = STEP_OFFER[step]
            events.append(message("message_sent", customer, key, sent_at, row, pct))
            engaged = set()
            if rng.random() < 0.9:
                events.append(message("message_delivered", customer, key, sent_at + 300, row, pct))
                engaged.add("delivered")
                if rng.random() < 0.6:
                    events.append(message("message_opened", customer, key, sent_at + 3600, row, 0))
                    engaged.add("opened")
                    if rng.random() < 0.5:
                        events.append(
                            message("message_clicked", customer, key, sent_at + 7200, row, 0)
                        )
                        engaged.add("clicked")
            touches.append(Touch(customer, row, sent_at, False, pct, frozenset(engaged)))
    events.sort(key=lambda e: (e.ts, e.event_id))
    lines: list[bytes] = []
    duplicates = 0
    for event in events:
        line = encode_event(event)
        lines.append(line)
        if rng.random() < 0.05:  # a webhook retry, a few events later
            lines.insert(len(lines) + rng.randint(0, 2), line)
            duplicates += isinstance(event, (OrderEvent, MessageEvent))
    refunded_conversions = 0
    for touch in touches:
        first = first_in_window(touch.ts, gross_orders[touch.customer])
        refunded_conversions += first is not None and first[1] in refunded_ids
    return Stream(
        events, lines, duplicates, queued, suppressed, touches, orders, refunded_conversions
    )


# -- the tests --------------------------------------------------------------------------


def assert_counts(
    rows: dict[RowKey, dict[str, int]],
    meta: dict[str, int],
    stream: Stream,
    expected: dict[RowKey, dict[str, int]],
) -> None:
    assert rows.keys() == expected.keys()
    differences = [
        (row, name, counts[name], expected[row].get(name, 0))
        for row, counts in rows.items()
        for name in counts
        if counts[name] != expected[row].get(name, 0)
    ]
    assert differences == []
    assert meta["duplicates"] == stream.duplicate_effect_lines
    assert meta["late"] == 0 and meta["unmatched_engagement"] == 0


def test_holdout_intents_trailing_a_big_batch_still_convert(tmp_path: Path) -> None:
    """The effects stage reads 1,000 events (weeks of event time) before the holdout
    intents they cause come back from the trigger stage: nothing is pruned too early."""
    (tmp_path / f"{STORE}.yaml").write_text(RULES)
    settings = Settings(rules_dir=tmp_path, key_groups=KEY_GROUPS, model_warm_examples=5)
    stream = build_stream()
    snapshots: list[EffectsSnapshot] = []
    sinks = FlowSinks(
        redis=TestingSink([]),
        dead_letter=TestingSink([]),
        recalls=TestingSink([]),
        effects=TestingSink(snapshots),
    )
    run_main(build_flow(TestingSource(stream.lines, batch_size=1000), sinks, settings))
    latest = {(s.store_id, s.key_group): s for s in snapshots}
    rows: dict[RowKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNT_FIELDS, 0))
    meta: dict[str, int] = defaultdict(int)
    for snapshot in latest.values():
        for row, counts in snapshot.rows.items():
            for name, value in counts.items():
                rows[row][name] += value
        for name, value in snapshot.meta.items():
            meta[name] += value
    assert_counts(dict(rows), meta, stream, expected_rows(stream))


def stream_ids(client: redis.Redis, key: str) -> list[str]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key)  # type: ignore[assignment]
    return [fields[b"idempotency_key"].decode() for _, fields in entries]


def test_effects_through_the_real_flow(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    (tmp_path / f"{STORE}.yaml").write_text(RULES)
    settings = settings.model_copy(update={"rules_dir": tmp_path, "key_groups": KEY_GROUPS})
    assert settings.attribution_window_days * DAY == WINDOW_S
    assert settings.allowed_lateness_s == LATENESS_S
    stream = build_stream()
    expected = expected_rows(stream)
    # the scenario exercises what it claims: both arms, both steps, holdout and not
    assert {row.arm for row in expected} == {"subject_a", "subject_b"}
    assert {row.step for row in expected} == {0, 1}
    assert sum(c.get("holdout_converted", 0) for c in expected.values()) > 0
    assert sum(c.get("converted", 0) for c in expected.values()) > 0
    assert sum(c.get("offer_cost", 0) for c in expected.values()) > 0
    assert stream.duplicate_effect_lines > 0 and stream.refunded_conversions > 0

    assert produce_lines(settings, iter(stream.lines)) == len(stream.lines)
    dead: list[Any] = []
    prefix = settings.key_prefix
    sinks = FlowSinks(
        redis=RedisSink(settings.redis_url, prefix),
        dead_letter=TestingSink(dead),
        recalls=RecallSink(settings.redis_url, prefix),
        effects=effects_sink(settings.redis_url, prefix),
    )
    source = KafkaSource(settings.brokers, [settings.events_topic], tail=False)
    run_main(build_flow(source, sinks, settings))
    assert dead == []

    # exactly the intents the rules call for: sends queued, holdout ones suppressed
    queued = stream_ids(redis_client, queue_key(prefix, STORE, "email"))
    suppressed = stream_ids(redis_client, suppressed_key(prefix, STORE))
    assert sorted(queued) == sorted(stream.queued_keys)
    assert sorted(suppressed) == sorted(stream.suppressed_keys)

    # the effects hashes, summed over key groups, hold the oracle's counts
    rows, meta = read_effects(redis_client, prefix, STORE, KEY_GROUPS)
    assert_counts(rows, meta, stream, expected)

    # and so does the API
    key = create_key(redis_client, prefix, STORE, ("read",))
    with TestClient(create_app(settings)) as api:
        response = api.get(
            f"/v1/stores/{STORE}/campaigns", headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200
    served = {
        RowKey(r["rule_id"], r["step"], r["arm"], r["channel"]): r for r in response.json()["rows"]
    }
    assert served.keys() == expected.keys()
    for row, counts in expected.items():
        body = served[row]
        for name in ("sent", "delivered", "opened", "clicked", "converted"):
            assert body[name] == counts.get(name, 0), (row, name)
        assert body["revenue"] == round(counts.get("revenue", 0) / 10_000, 4), row
        assert body["offer_cost"] == round(counts.get("offer_cost", 0) / 10_000, 4), row
        assert body["holdout"] == {
            "intents": counts.get("holdout_intents", 0),
            "converted": counts.get("holdout_converted", 0),
            "revenue": round(counts.get("holdout_revenue", 0) / 10_000, 4),
        }, row
