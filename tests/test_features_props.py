"""Property tests: features from any arrival order equal a brute-force oracle.

For any list of events, applied in any permutation, with ``prune`` calls and a
pickle round trip at arbitrary points, every feature at any ``t`` at or after
the latest event time and the latest prune horizon equals ``oracle`` — a
direct recomputation from the raw events that shares no code with the engine.
"""

from __future__ import annotations

import math
import pickle
import statistics
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import (
    CHANNELS,
    BrowseEvent,
    CustomerProfileEvent,
    LineItem,
    MessageEvent,
    OrderEvent,
)
from engine.features import (
    FEATURE_NAMES,
    CustomerState,
    feature_vector,
    profile_attributes,
    to_base,
)
from engine.features.state import CATEGORY_CAP
from engine.features.vector import MIN_GAP_DAYS, PRIOR_GAP_DAYS, PRIOR_WEIGHT

DAY = 86400.0
BASE = datetime(2026, 1, 1, tzinfo=UTC)
RATES = {"USD": 0.9, "GBP": 1.17}
CATEGORIES = ("shoes", "hats", "bags", "socks", "belts")

# -- the oracle ----------------------------------------------------------------


def amount_base(e: Any) -> float:
    return to_base(e.amount, e.currency, RATES, "EUR") if isinstance(e, OrderEvent) else 0.0


def oracle(events: list[Any], t: float) -> dict[str, float]:
    """Every feature at ``t`` (>= every event time) straight from the raw events."""
    days = lambda seconds: seconds / DAY  # noqa: E731
    ts_of = lambda kind: sorted(e.ts for e in events if e.type == kind)  # noqa: E731

    def count(times: list[float], window_days: float) -> float:
        return float(sum(1 for x in times if t - window_days * DAY < x <= t))

    created = [e for e in events if e.type == "order_created"]
    orders = sorted(e.ts for e in created)
    n = len(orders)
    seen = min((e.ts for e in events), default=None)
    visits = [e.ts for e in events if isinstance(e, BrowseEvent)]

    def since(ts: float | None) -> float:
        ts = ts if ts is not None else seen
        return 0.0 if ts is None else days(t - ts)

    out: dict[str, float] = {
        "days_since_last_order": since(orders[-1] if orders else None),
        "tenure_days": since(orders[0] if orders else None),
        "days_since_last_visit": since(max(visits) if visits else None),
        "order_count": float(n),
        "orders_30d": count(orders, 30),
        "orders_90d": count(orders, 90),
        "orders_365d": count(orders, 365),
    }
    for h in (7, 30, 90):
        out[f"orders_decayed_{h}d_halflife"] = sum(2 ** (-(t - e.ts) / (h * DAY)) for e in created)
    for h in (7, 30, 90):
        out[f"spend_decayed_{h}d_halflife"] = sum(
            amount_base(e) * 2 ** (-(t - e.ts) / (h * DAY)) for e in created
        )
    cancelled = [e for e in events if e.type == "order_cancelled"]
    spend = math.fsum([amount_base(e) for e in created] + [-amount_base(e) for e in cancelled])
    spend = max(spend, 0.0)
    out["spend_total_base"] = spend
    out["avg_order_value"] = spend / n if n else 0.0
    gaps = [days(b - a) for a, b in zip(orders, orders[1:], strict=False)]
    out["gap_mean_days"] = statistics.fmean(gaps) if gaps else 0.0
    out["gap_std_days"] = statistics.pstdev(gaps) if gaps else 0.0
    if n:
        usual = (len(gaps) * out["gap_mean_days"] + PRIOR_WEIGHT * PRIOR_GAP_DAYS) / (
            len(gaps) + PRIOR_WEIGHT
        )
        out["overdue_ratio"] = out["days_since_last_order"] / max(usual, MIN_GAP_DAYS)
    else:
        out["overdue_ratio"] = 0.0
    refunds = [e for e in events if e.type == "order_refunded"]
    out["refund_count"] = float(len(refunds))
    out["refund_amount_base"] = math.fsum(amount_base(e) for e in refunds)
    out["cancel_count"] = float(len(cancelled))
    discounted = [
        e for e in created if e.discount_codes or any(li.discount_code for li in e.line_items)
    ]
    out["discount_order_share"] = len(discounted) / n if n else 0.0
    cats = {zlib.crc32(li.category.encode()) for e in created for li in e.line_items if li.category}
    out["category_count"] = float(min(len(cats), CATEGORY_CAP))
    views, carts = ts_of("product_view"), ts_of("add_to_cart")
    out["product_views_7d"] = count(views, 7)
    out["product_views_30d"] = count(views, 30)
    out["cart_adds_7d"] = count(carts, 7)
    out["cart_adds_30d"] = count(carts, 30)
    out["open_cart"] = 1.0 if carts and (not orders or carts[-1] > orders[-1]) else 0.0
    out["messages_opened_30d"] = count(ts_of("message_opened"), 30)
    out["messages_clicked_30d"] = count(ts_of("message_clicked"), 30)
    out["unsubscribed_30d"] = count(ts_of("message_unsubscribed"), 30)
    out["order_days"] = float(len({ts // DAY for ts in orders}))  # distinct UTC days
    return out


def oracle_profile(events: list[Any]) -> dict[str, Any]:
    """Last writer by event time wins; ties: larger string, revocation of consent."""
    out: dict[str, Any] = {}
    for field in ("country", "source", "timezone", "locale", "first_name"):
        values = [(e.ts, getattr(e, field)) for e in events if getattr(e, field, None) is not None]
        out[field] = max(values)[1] if values else None
    for channel in CHANNELS:
        votes = [
            (e.ts, not g)
            for e in events
            if e.type == "customer_profile"
            for c, g in e.consent.items()
            if c == channel
        ]
        votes += [
            (e.ts, True)
            for e in events
            if e.type in ("message_unsubscribed", "message_complained") and e.channel == channel
        ]
        out[f"consent_{channel}"] = (not max(votes)[1]) if votes else None
    return out


# -- strategies ----------------------------------------------------------------


def offsets(span_days: int) -> st.SearchStrategy[float]:
    """A few shared instants (ties, same-second orders) and a spread over the span."""
    return st.one_of(
        st.sampled_from([0, 1, 86400 * 7, 86400 * 30, 86400 * 90, 86400 * 365]),
        st.integers(0, 86400 * span_days),
        st.floats(0, 86400 * span_days, allow_nan=False).map(lambda x: round(x, 3)),
    )


money = st.decimals(min_value=0, max_value=500, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def events_st(draw: Any, span_days: int, kinds: list[str]) -> Any:
    i = draw(st.integers(0, 10**9))
    common = {
        "event_id": f"e{i}",
        "store_id": "s",
        "customer_id": "c",
        "occurred_at": BASE + timedelta(seconds=draw(offsets(span_days))),
        "source": draw(st.sampled_from([None, None, "shopify", "amazon"])),
    }
    kind = draw(st.sampled_from(kinds))
    if kind.startswith("order_"):
        items = draw(
            st.lists(
                st.builds(
                    LineItem,
                    category=st.sampled_from((None,) + CATEGORIES),
                    discount_code=st.sampled_from([None, None, None, "SALE"]),
                ),
                max_size=3,
            )
        )
        return OrderEvent(
            type=kind,
            order_id=str(i),
            amount=draw(money),
            currency=draw(st.sampled_from(["EUR", "USD", "GBP"])),
            line_items=tuple(items),
            discount_codes=draw(st.sampled_from([(), (), ("WELCOME",)])),
            **common,
        )
    if kind in ("product_view", "add_to_cart", "page_view"):
        return BrowseEvent(type=kind, **common)
    if kind.startswith("message_"):
        return MessageEvent(type=kind, channel=draw(st.sampled_from(["email", "sms"])), **common)
    return CustomerProfileEvent(
        type="customer_profile",
        country=draw(st.sampled_from([None, "DE", "FR"])),
        first_name=draw(st.sampled_from([None, "Ann", "Bo"])),
        consent=draw(st.dictionaries(st.sampled_from(["email", "sms"]), st.booleans(), max_size=2)),
        **common,
    )


KINDS = [
    "order_created",
    "order_paid",
    "order_refunded",
    "order_cancelled",
    "product_view",
    "add_to_cart",
    "page_view",
    "message_opened",
    "message_clicked",
    "message_unsubscribed",
    "message_complained",
    "customer_profile",
]
# Per example: events spread over 2 years or dense within 40 days (full windows),
# of all kinds or of a few (so that each kind often has several events).
event_lists = st.tuples(
    st.sampled_from([700, 40]),
    st.one_of(st.just(KINDS), st.lists(st.sampled_from(KINDS), min_size=1, max_size=3)),
).flatmap(lambda p: st.lists(events_st(p[0], p[1]), max_size=24))
later = st.one_of(st.just(0.0), st.floats(0, 40 * DAY), st.floats(0, 400 * DAY))


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def assert_matches(got: dict[str, float], want: dict[str, float]) -> None:
    assert list(got) == list(FEATURE_NAMES)
    bad = {k: (got[k], want[k]) for k in FEATURE_NAMES if not close(got[k], want[k])}
    assert not bad, bad


# -- properties ----------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), events=event_lists)
def test_any_order_with_prune_and_pickle_equals_oracle(data: Any, events: list[Any]) -> None:
    perm = data.draw(st.permutations(events), label="arrival order")
    latest = max((e.ts for e in events), default=BASE.timestamp())
    first = min((e.ts for e in events), default=BASE.timestamp())
    # Where to prune (position in the arrival order, horizon) and where to pickle.
    prune_at = data.draw(st.integers(0, len(perm)), label="prune position")
    horizon = data.draw(st.floats(first - 400 * DAY, latest + 60 * DAY), label="horizon")
    pickle_at = data.draw(st.integers(0, len(perm)), label="pickle position")
    peek_at = data.draw(st.integers(0, len(perm)), label="intermediate query position")
    state = CustomerState()
    for i, e in enumerate(perm):
        if i == peek_at:  # fills any caches; later events must invalidate them
            feature_vector(state, latest)
        if i == prune_at:
            state.prune(horizon)
        if i == pickle_at:
            state = pickle.loads(pickle.dumps(state))
        state.apply(e, amount_base(e))
    if prune_at == len(perm):
        state.prune(horizon)
    t = max(latest, horizon) + data.draw(later, label="t - latest")
    assert_matches(feature_vector(state, t), oracle(events, t))
    assert profile_attributes(state) == oracle_profile(events)
    orders = sorted(e.ts for e in events if e.type == "order_created")
    assert state.order_count == len(orders)
    assert state.last_order_ts == (orders[-1] if orders else None)
    assert state.first_order_ts == (orders[0] if orders else None)


@settings(max_examples=60, deadline=None)
@given(events=event_lists, data=st.data())
def test_two_permutations_agree_at_every_later_time(events: list[Any], data: Any) -> None:
    a, b = CustomerState(), CustomerState()
    for e in events:
        a.apply(e, amount_base(e))
    for e in data.draw(st.permutations(events)):
        b.apply(e, amount_base(e))
    latest = max((e.ts for e in events), default=0.0)
    for dt in (0.0, 0.5 * DAY, 7 * DAY, 31 * DAY, 400 * DAY):
        assert_matches(feature_vector(a, latest + dt), feature_vector(b, latest + dt))
