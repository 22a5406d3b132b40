"""Abandoned carts fire on the customer stage's cart timer, in event time, through the flow.

The cart rule (4 hours, quiet hours 21:00-09:00 in the customer's zone) needs a
score of the customer 4 to 52 hours after the cart opened. Before the cart timer
it only got one if another event of the customer happened to arrive then; now an
``add_to_cart`` schedules a ``cart`` score at cart time + 4 hours.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import recall_events
from bytewax.testing import TestingSink, TestingSource, run_main
from recall_events import contactable

from engine.customers import KeyGroupCustomers, StageConfig
from engine.events import BrowseEvent, CustomerProfileEvent, OrderEvent, encode_event
from engine.flow import FlowSinks, build_flow
from engine.messages import ScoreRequest
from engine.settings import Settings
from engine.triggers.intent import RecallIntent
from engine.triggers.quiet_hours import is_quiet

STORE = "carts"
RULES = f"""
store_id: {STORE}
timezone: UTC
quiet_hours: {{start: "21:00", end: "09:00"}}
channels:
  default: [email]
rules:
  - {{id: cart, type: abandoned_cart, after_hours: 4, channels: [email]}}
"""
HOUR = 3600.0
# 19:30 in Berlin (CET): due 23:30 local, in quiet hours; sent 09:00 local = 08:00 UTC
CART = datetime(2026, 1, 12, 18, 30, tzinfo=UTC)
NEXT_MORNING = datetime(2026, 1, 13, 8, 0, tzinfo=UTC)


def profile(customer: str) -> CustomerProfileEvent:
    return contactable(STORE, customer, CART - timedelta(days=20))


def order(customer: str, at: datetime, n: int = 0) -> OrderEvent:
    return recall_events.order(STORE, customer, n, at, "30.00", "EUR")


def browse(customer: str, kind: str, at: datetime) -> BrowseEvent:
    return BrowseEvent(
        type=kind,
        event_id=f"{kind}-{customer}-{at.timestamp()}",
        store_id=STORE,
        customer_id=customer,
        occurred_at=at,
        sku="sku-1",
    )


def stream() -> list[Any]:
    """Four customers with an order 10 days before their cart, and a ticker."""
    events: list[Any] = []
    for customer in ("silent", "buyer", "back-later", "two-adds"):
        events += [profile(customer), order(customer, CART - timedelta(days=10))]
        events.append(browse(customer, "add_to_cart", CART))
    events.append(order("buyer", CART + timedelta(hours=2), n=1))  # bought: no recall
    events.append(browse("back-later", "page_view", CART + timedelta(hours=30)))
    events.append(browse("two-adds", "add_to_cart", CART + timedelta(hours=1)))
    # another customer of the (single) key group moves the watermark on for 5 days
    events += [browse("ticker", "page_view", CART + timedelta(hours=6 * k)) for k in range(21)]
    return sorted(events, key=lambda e: e.ts)


def run_flow(tmp_path: Path, cart_check_hours: float) -> tuple[list[RecallIntent], list[Any]]:
    (tmp_path / f"{STORE}.yaml").write_text(RULES)
    settings = Settings(
        rules_dir=tmp_path,
        key_groups=1,
        model_warm_examples=5,
        cart_check_hours=cart_check_hours,
    )
    intents: list[RecallIntent] = []
    scores: list[Any] = []
    sinks = FlowSinks(
        redis=TestingSink([]),
        dead_letter=TestingSink([]),
        recalls=TestingSink(intents),
        scores=TestingSink(scores),
    )
    lines = [encode_event(e) for e in stream()]
    run_main(build_flow(TestingSource(lines), sinks, settings))
    return intents, scores


def test_cart_then_silence_recalls_once_at_the_due_time_out_of_quiet_hours(
    tmp_path: Path,
) -> None:
    intents, scores = run_flow(tmp_path, cart_check_hours=4)
    due = CART.timestamp() + 4 * HOUR
    by_customer = {i.customer_id: i for i in intents}
    assert sorted(i.customer_id for i in intents) == ["back-later", "silent", "two-adds"]
    for customer in ("silent", "back-later", "two-adds"):
        intent = by_customer[customer]
        assert (intent.rule_id, intent.due_ts) == ("cart", due)
        # due at 23:30 Berlin: delayed to 09:00 Berlin the next morning, not dropped
        assert intent.send_at == NEXT_MORNING.timestamp()
        assert not is_quiet(intent.send_at, "Europe/Berlin", time(21), time(9))
    # the silent customer's recall came from its cart check, scored at the due time
    cart_scores = [s.request for s in scores if s.request.cause == "cart"]
    assert {(r.customer_id, r.t) for r in cart_scores} >= {("silent", due), ("back-later", due)}
    assert all(r.features["open_cart"] == 1.0 for r in cart_scores)
    assert "buyer" not in {r.customer_id for r in cart_scores}  # the order cancelled it


def test_without_the_cart_timer_a_silent_cart_is_missed(tmp_path: Path) -> None:
    intents, scores = run_flow(tmp_path, cart_check_hours=0)
    # only the customer whose next event landed inside the rule's grace got a recall,
    # evaluated when that event came (30 hours later, at night): a day late
    assert [(i.customer_id, i.send_at) for i in intents] == [
        ("back-later", (NEXT_MORNING + timedelta(days=1)).timestamp())
    ]
    assert not any(s.request.cause == "cart" for s in scores)


def stage(check_s: float = 4 * HOUR) -> KeyGroupCustomers:
    return KeyGroupCustomers(StageConfig(allowed_lateness_s=0.0, cart_check_s=check_s))


def cart_requests(out: list[Any]) -> list[tuple[str, float]]:
    return [(r.customer_id, r.t) for r in out if isinstance(r, ScoreRequest) and r.cause == "cart"]


@pytest.mark.parametrize("order_delay_h", [0.0, 1.0, 3.99])
def test_an_order_before_the_check_cancels_it(order_delay_h: float) -> None:
    group = stage()
    out = group.on_event(order("c", CART - timedelta(days=3)), 30.0)
    out += group.on_event(browse("c", "add_to_cart", CART), 0.0)
    out += group.on_event(order("c", CART + timedelta(hours=order_delay_h), n=1), 30.0)
    out += group.advance_to(CART.timestamp() + 10 * HOUR)
    assert cart_requests(out) == [] and group.cart_checks == {}


def test_checks_fire_in_time_order_with_checkpoints_and_survive_a_snapshot() -> None:
    group = stage(check_s=2 * 86_400.0)
    t0 = CART - timedelta(days=29)
    out = group.on_event(order("c", t0), 30.0)
    out += group.on_event(browse("c", "add_to_cart", t0 + timedelta(days=29)), 0.0)
    group = KeyGroupCustomers.restore(group.snapshot())
    # the next event comes long after both the 30-day checkpoint and the cart check
    out += group.on_event(browse("c", "page_view", t0 + timedelta(days=40)), 0.0)
    requests = [r for r in out if isinstance(r, ScoreRequest) and r.cause != "event"]
    assert [(r.cause, r.t) for r in requests] == [
        ("checkpoint", (t0 + timedelta(days=30)).timestamp()),
        ("cart", (t0 + timedelta(days=31)).timestamp()),
    ]
    assert group.cart_checks == {}
    assert cart_requests(group.advance_to((t0 + timedelta(days=50)).timestamp())) == []
