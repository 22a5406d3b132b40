"""The customer stage of one key group (``engine.customers``), without a dataflow.

Labels are checked against an oracle computed straight from the raw events: a
point (customer, t0) has ``y == 0`` iff some distinct order time ``o`` of that
customer satisfies ``t0 < o <= t0 + H``.

Edge cases found by these tests (cascaded timers at ``final``, one point per
t0, flips of older labels, events exactly at the watermark) have their own tests
at the end of the file.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.customers import DAY, KeyGroupCustomers, StageConfig
from engine.events import BrowseEvent, EraseRequest, OrderEvent
from engine.messages import Erased, Example, ScoreRequest, SegmentChange, StageCounters

BASE = datetime(2020, 1, 1, 12, tzinfo=UTC)
T0 = BASE.timestamp()
H_DAYS = 90
STEP_DAYS = 30
MAX_SILENT = 6
LATENESS_DAYS = 3
CONFIG = StageConfig(
    horizon_days=H_DAYS,
    allowed_lateness_s=LATENESS_DAYS * DAY,
    checkpoint_days=STEP_DAYS,
    max_silent_checkpoints=MAX_SILENT,
    max_pending_points=1000,  # the cap is not what these tests are about
    dedup_retention_s=7 * DAY,
)
H = H_DAYS * DAY
CUSTOMERS = ("c0", "c1", "c2", "c3")


def ts(day: float) -> float:
    return T0 + day * DAY


def order(customer: str, day: float, event_id: str, amount: str = "10") -> OrderEvent:
    return OrderEvent(
        type="order_created",
        event_id=event_id,
        store_id="s",
        customer_id=customer,
        order_id=event_id,
        amount=Decimal(amount),
        currency="USD",
        occurred_at=BASE + timedelta(days=day),
    )


def view(customer: str, day: float, event_id: str) -> BrowseEvent:
    return BrowseEvent(
        type="page_view",
        event_id=event_id,
        store_id="s",
        customer_id=customer,
        occurred_at=BASE + timedelta(days=day),
    )


def erase(customer: str, day: float, event_id: str) -> EraseRequest:
    return EraseRequest(
        type="erase_request",
        event_id=event_id,
        store_id="s",
        customer_id=customer,
        occurred_at=BASE + timedelta(days=day),
    )


def feed(group: KeyGroupCustomers, events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for event in events:
        amount = float(event.amount) if isinstance(event, OrderEvent) else 0.0
        out.extend(group.on_event(event, amount))
    return out


def drain(group: KeyGroupCustomers, end_ts: float) -> list[Any]:
    """Advance to ``end_ts`` until no due timer is left (works around the single
    pass of ``_fire_timers``; see ``test_final_resolves_cascaded_checkpoints``)."""
    out = group.advance_to(end_ts)
    while (nxt := group.timers.next_at()) is not None and nxt <= group.watermark.value:
        out.extend(group.advance_to(end_ts))
    return out


def examples(out: list[Any]) -> list[Example]:
    return [o for o in out if isinstance(o, Example)]


def oracle_label(order_times: set[float], t0: float) -> int:
    return 0 if any(t0 < o <= t0 + H for o in order_times) else 1


def orders_by_customer(events: list[Any]) -> dict[str, set[float]]:
    times: dict[str, set[float]] = {}
    for e in events:
        if isinstance(e, OrderEvent):
            times.setdefault(e.customer_id, set()).add(e.ts)
    return times


# -- strategies -------------------------------------------------------------------

# (customer, day, kind) with at most one event per customer and day; same-second
# orders have their own test (test_same_second_orders_make_one_point).
raw_events = st.lists(
    st.tuples(
        st.sampled_from(CUSTOMERS),
        st.integers(0, 400),
        st.sampled_from(("order", "order", "order", "view")),
    ),
    min_size=1,
    max_size=25,
    unique_by=lambda x: (x[0], x[1]),
)


def build(raw: list[tuple[str, int, str]]) -> list[Any]:
    return [
        order(c, d, f"e{i}") if kind == "order" else view(c, d, f"e{i}")
        for i, (c, d, kind) in enumerate(raw)
    ]


END_DAY = 500


def check_examples(
    exs: list[Example], events: list[Any], group: KeyGroupCustomers, end_ts: float
) -> None:
    times = orders_by_customer(events)
    keys = [(e.customer_id, e.t0) for e in exs]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"points emitted more than once: {dupes}"
    for ex in exs:
        assert ex.customer_id in times, "an example for a customer without orders"
        assert ex.t0 + H <= end_ts
        assert ex.y == oracle_label(times[ex.customer_id], ex.t0), (ex.customer_id, ex.t0)
        # features as of t0: no order after t0 is in them
        mine = times[ex.customer_id]
        assert ex.features["order_count"] <= sum(1 for o in mine if o <= ex.t0)
    assert group.counters["labels_0"] + group.counters["labels_1"] == len(exs)
    assert group.counters["late_events"] == 0
    assert group.counters["late_label_flips"] == 0


# -- properties -----------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=raw_events,
    jitter=st.lists(st.integers(0, LATENESS_DAYS - 1), min_size=50, max_size=50),
    dup_idx=st.lists(st.integers(0, 24), max_size=6),
    tiebreak=st.randoms(use_true_random=False),
)
def test_labels_match_oracle_under_bounded_disorder(
    raw: list[tuple[str, int, str]], jitter: list[int], dup_idx: list[int], tiebreak: Any
) -> None:
    """Events arrive reordered by up to ``lateness - 1`` day (so none is late) and
    some are delivered twice; every emitted label equals the oracle."""
    events = build(raw)
    deliveries = list(events) + [events[i] for i in dup_idx if i < len(events)]
    keys = [
        (d.ts + jitter[n % len(jitter)] * DAY, tiebreak.random()) for n, d in enumerate(deliveries)
    ]
    order_ = sorted(range(len(deliveries)), key=lambda n: keys[n])
    stream = [deliveries[n] for n in order_]
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, stream)
    end_ts = ts(END_DAY)
    out += drain(group, end_ts)
    out += group.final(end_ts)
    check_examples(examples(out), events, group, end_ts)

    n_dups = len(deliveries) - len(events)
    assert group.counters["duplicates"] == n_dups
    assert group.counters["events"] == len(events)
    # duplicates are applied once: the final order_count is the distinct orders
    finals = {o.customer_id: o for o in out if isinstance(o, ScoreRequest) and o.cause == "final"}
    times = orders_by_customer(events)
    assert set(finals) == set(times)
    for customer, request in finals.items():
        assert request.features["order_count"] == len(times[customer])


def expected_points(order_days: list[int]) -> set[float]:
    """In-order stream: a point at every order and at each of the at most
    ``MAX_SILENT`` checkpoints of the silence that follows it."""
    days = sorted(order_days)
    points = set()
    for i, d in enumerate(days):
        points.add(ts(d))
        nxt = days[i + 1] if i + 1 < len(days) else None
        for k in range(1, MAX_SILENT + 1):
            at = d + k * STEP_DAYS
            if nxt is not None and at >= nxt:
                break
            points.add(ts(at))
    return points


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_events, dup_idx=st.lists(st.integers(0, 24), max_size=6))
def test_in_order_stream_every_point_once(
    raw: list[tuple[str, int, str]], dup_idx: list[int]
) -> None:
    events = sorted(build(raw), key=lambda e: e.ts)
    stream: list[Any] = []
    for i, e in enumerate(events):
        stream.append(e)
        stream.extend(e for _ in range(dup_idx.count(i)))  # immediate redeliveries
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, stream)
    end_ts = ts(END_DAY)
    out += drain(group, end_ts)
    out += group.final(end_ts)
    exs = examples(out)
    check_examples(exs, events, group, end_ts)
    assert group.counters["duplicates"] == len(stream) - len(events)
    assert group.counters["points_skipped_out_of_order"] == 0

    times = orders_by_customer(events)
    for customer in CUSTOMERS:
        days = sorted(round((t - T0) / DAY) for t in times.get(customer, set()))
        want = {t0 for t0 in expected_points(days) if t0 + H <= end_ts}
        got = {e.t0 for e in exs if e.customer_id == customer}
        assert got == want, customer
    for ex in exs:
        mine = sorted(t for t in times[ex.customer_id] if t <= ex.t0)
        assert ex.features["order_count"] == len(mine)
        assert ex.features["days_since_last_order"] == pytest.approx((ex.t0 - mine[-1]) / DAY)


# -- checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize("end_day", [100, 200, 280, 400])
def test_checkpoints_of_a_single_silence(end_day: int) -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1")])
    out += drain(group, ts(end_day))
    out += group.final(ts(end_day))
    exs = examples(out)
    ks = range(0, MAX_SILENT + 1)
    want = [ts(k * STEP_DAYS) for k in ks if k * STEP_DAYS + H_DAYS <= end_day]
    assert [e.t0 for e in exs] == want
    for ex in exs:
        assert ex.y == 1  # no order ever follows
        assert ex.features["order_count"] == 1
        assert ex.features["days_since_last_order"] == pytest.approx((ex.t0 - ts(0)) / DAY)
        assert ex.features["tenure_days"] == pytest.approx((ex.t0 - ts(0)) / DAY)
    assert group.counters["points_created"] == 1 + min(MAX_SILENT, (end_day // STEP_DAYS))


def test_checkpoint_features_exclude_the_order_that_ends_the_silence() -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1", "10"), order("a", 75, "o2", "30")])
    out += drain(group, ts(400))
    out += group.final(ts(400))
    by_t0 = {e.t0: e for e in examples(out)}
    assert sorted(by_t0) == [ts(d) for d in (0, 30, 60, 75, 105, 135, 165, 195, 225, 255)]
    for day in (30, 60):
        ex = by_t0[ts(day)]
        assert ex.y == 0  # the order at day 75 answers it
        assert ex.features["order_count"] == 1
        assert ex.features["spend_total_base"] == 10.0
        assert ex.features["days_since_last_order"] == pytest.approx(day)
    assert by_t0[ts(0)].y == 0
    assert by_t0[ts(75)].features["order_count"] == 2
    assert all(by_t0[ts(d)].y == 1 for d in (75, 105, 135, 165, 195, 225, 255))


# -- late events --------------------------------------------------------------------


def test_late_event_applied_and_flips_counted() -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1"), order("b", 100, "o2")])
    assert group.watermark.value == ts(97)
    # the point of a at t0=0 was labelled 1 when the watermark passed day 90
    assert [(e.customer_id, e.t0, e.y) for e in examples(out)] == [("a", ts(0), 1)]
    late = feed(group, [order("a", 10, "o3", "25")])
    assert group.counters["late_events"] == 1
    assert group.counters["late_label_flips"] == 1
    requests = [o for o in late if isinstance(o, ScoreRequest) and o.customer_id == "a"]
    assert requests and requests[-1].features["order_count"] == 2
    assert requests[-1].features["spend_total_base"] == 35.0


def test_late_non_order_event_is_not_a_flip() -> None:
    group = KeyGroupCustomers(CONFIG)
    feed(group, [order("a", 0, "o1"), order("b", 100, "o2"), view("a", 10, "v1")])
    assert group.counters["late_events"] == 1
    assert group.counters["late_label_flips"] == 0


def test_duplicate_is_ignored_entirely() -> None:
    group = KeyGroupCustomers(CONFIG)
    first = feed(group, [order("a", 0, "o1")])
    assert first
    again = feed(group, [order("a", 0, "o1")])
    assert again == []
    assert group.counters["duplicates"] == 1 and group.counters["events"] == 1
    assert group.customers["s\x1fa"].state.order_count == 1


# -- erase ------------------------------------------------------------------------


def test_erase_removes_customer_and_its_timers_are_harmless() -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1"), order("b", 1, "o2"), erase("a", 5, "x1")])
    erased = [o for o in out if isinstance(o, Erased)]
    assert erased == [Erased("s", "a", ts(5))]
    assert "s\x1fa" not in group.customers
    assert group.counters["erased"] == 1
    out = drain(group, ts(400)) + group.final(ts(400))
    assert all(getattr(o, "customer_id", "b") == "b" for o in out)
    assert {e.customer_id for e in examples(out)} == {"b"}
    # an erase of an unknown customer still answers with Erased, counts nothing
    out = feed(group, [erase("zz", 401, "x2")])
    assert Erased("s", "zz", ts(401)) in out
    assert group.counters["erased"] == 1


# -- segments ---------------------------------------------------------------------


def segment_changes(out: list[Any]) -> list[tuple[str | None, str]]:
    return [(o.old, o.new) for o in out if isinstance(o, SegmentChange)]


def test_segments_new_silent_churned_returned() -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1")])
    assert segment_changes(out) == [("prospect", "new")]
    assert segment_changes(group.advance_to(ts(44))) == []
    out = group.advance_to(ts(46))  # silent after H/2 = 45 days without a gap
    assert segment_changes(out) == [("new", "silent")]
    assert segment_changes(group.advance_to(ts(89))) == []
    out = group.advance_to(ts(91))
    assert segment_changes(out) == [("silent", "churned")]
    change = next(o for o in out if isinstance(o, SegmentChange))
    assert change.t == ts(H_DAYS) + 1.0
    out = feed(group, [order("a", 200, "o2")])
    assert segment_changes(out) == [("churned", "returned")]


def test_segments_active_customer() -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1"), order("a", 10, "o2"), order("a", 20, "o3")])
    assert segment_changes(out) == [("prospect", "new"), ("new", "active")]
    # mean gap 10 days: silent after max(2 * 10, 14) = 20 days
    out = group.advance_to(ts(41))
    assert segment_changes(out) == [("active", "silent")]


def test_segment_timer_never_scores_behind_a_later_event() -> None:
    # the view at day 50 moves the watermark past the silent timer (day 45) and is
    # scored first; the timer must not then score the customer back at day 45
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1"), view("a", 50, "v1")])
    times = [o.t for o in out if isinstance(o, ScoreRequest)]
    assert times == sorted(times)
    assert segment_changes(out) == [("prospect", "new"), ("new", "silent")]


# -- snapshots --------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(raw=raw_events, cut=st.integers(0, 25))
def test_snapshot_round_trip_continues_identically(
    raw: list[tuple[str, int, str]], cut: int
) -> None:
    events = sorted(build(raw), key=lambda e: e.ts)
    cut = min(cut, len(events))
    original = KeyGroupCustomers(CONFIG)
    feed(original, events[:cut])
    copy = KeyGroupCustomers.restore(original.snapshot())
    rest = events[cut:] + [erase("c1", 450, "x")]
    a = feed(original, rest) + original.final(ts(END_DAY))
    b = feed(copy, rest) + copy.final(ts(END_DAY))
    assert a == b
    assert original.counters == copy.counters
    assert isinstance(a[-1], StageCounters)


# -- edge cases ------------------------------------------------------------------------


def test_final_resolves_cascaded_checkpoints() -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1")]) + group.final(ts(400))
    assert [e.t0 for e in examples(out)] == [ts(k * STEP_DAYS) for k in range(MAX_SILENT + 1)]


def test_late_label_flip_of_an_older_point_is_counted() -> None:
    group = KeyGroupCustomers(CONFIG)
    # points at 0 and 30 are both labelled 1 by day 124
    out = feed(group, [order("a", 0, "o1"), order("b", 123, "o2"), order("b", 124, "o3")])
    assert [(e.t0, e.y) for e in examples(out) if e.customer_id == "a"] == [(ts(0), 1), (ts(30), 1)]
    feed(group, [order("a", 20, "o4")])  # late; answers the point at 0, not the one at 30
    assert group.counters["late_events"] == 1
    assert group.counters["late_label_flips"] == 1


def test_order_at_watermark_boundary_is_late_and_counted() -> None:
    # Timers at the watermark have fired, so an event exactly at the watermark is
    # late: the label already emitted stays, and the flip is counted, not hidden.
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1"), order("b", 93, "o2"), order("a", 90, "o3")])
    assert group.counters["late_events"] == 1  # day 90 == watermark
    labels = {e.t0: e.y for e in examples(out) if e.customer_id == "a"}
    assert labels[ts(0)] == 1
    assert oracle_label({ts(0), ts(90)}, ts(0)) == 0
    assert group.counters["late_label_flips"] == 1


def test_same_second_orders_make_one_point() -> None:
    group = KeyGroupCustomers(CONFIG)
    out = feed(group, [order("a", 0, "o1"), order("a", 0, "o2")])
    out += drain(group, ts(100)) + group.final(ts(100))
    assert [e.t0 for e in examples(out)] == [ts(0)]
