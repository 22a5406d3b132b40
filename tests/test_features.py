"""Unit tests of engine.features: state folding, feature values, pickling, currency."""

from __future__ import annotations

import math
import pickle
import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.errors import ChurnflowError, ConfigError
from engine.events import (
    BrowseEvent,
    CustomerProfileEvent,
    EraseRequest,
    LineItem,
    MessageEvent,
    OrderEvent,
)
from engine.features import (
    FEATURE_NAMES,
    CustomerState,
    UnknownCurrency,
    feature_vector,
    profile_attributes,
    to_base,
)
from engine.features.state import CATEGORY_CAP, ORDER_TS_KEEP
from engine.features.vector import PRIOR_GAP_DAYS

DAY = 86400.0
BASE = datetime(2026, 1, 1, tzinfo=UTC)
T0 = BASE.timestamp()
_ids = iter(range(10**9))


def at(days: float) -> datetime:
    return BASE + timedelta(days=days)


def common(days: float, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{next(_ids)}",
        "store_id": "s",
        "customer_id": "c",
        "occurred_at": at(days),
        **kw,
    }


def order(days: float, amount: str = "10", kind: str = "order_created", **kw: Any) -> OrderEvent:
    return OrderEvent(
        type=kind,  # type: ignore[arg-type]
        order_id=str(next(_ids)),
        amount=Decimal(amount),
        currency="EUR",
        **common(days, **kw),
    )


def browse(days: float, kind: str = "product_view") -> BrowseEvent:
    return BrowseEvent(type=kind, **common(days))  # type: ignore[arg-type]


def message(days: float, kind: str, channel: str = "email") -> MessageEvent:
    return MessageEvent(type=kind, channel=channel, **common(days))  # type: ignore[arg-type]


def profile(days: float, **kw: Any) -> CustomerProfileEvent:
    return CustomerProfileEvent(type="customer_profile", **common(days, **kw))


def fold(*events: Any) -> CustomerState:
    s = CustomerState()
    for e in events:
        amount = float(e.amount) if isinstance(e, OrderEvent) else 0.0
        s.apply(e, amount)
    return s


def fv(s: CustomerState, days: float) -> dict[str, float]:
    return feature_vector(s, T0 + days * DAY)


def test_empty_state() -> None:
    s = CustomerState()
    assert (s.order_count, s.has_orders, s.first_order_ts, s.last_order_ts) == (
        0,
        False,
        None,
        None,
    )
    v = fv(s, 10)
    assert list(v) == list(FEATURE_NAMES)
    assert all(isinstance(x, float) for x in v.values())
    assert all(x == 0.0 for x in v.values())


def test_feature_names_unique_and_descriptive() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    for name in (
        "days_since_last_order",
        "orders_decayed_7d_halflife",
        "spend_decayed_90d_halflife",
        "orders_365d",
        "overdue_ratio",
        "unsubscribed_30d",
    ):
        assert name in FEATURE_NAMES


def test_order_semantics() -> None:
    s = fold(
        order(0, "30"),
        order(0, "30", kind="order_paid"),
        order(10, "20", discount_codes=("WELCOME",)),
        order(10, "5", kind="order_refunded"),
        order(12, "20", kind="order_cancelled"),
    )
    assert s.order_count == 2
    assert s.first_order_ts == at(0).timestamp() and s.last_order_ts == at(10).timestamp()
    v = fv(s, 12)
    assert v["spend_total_base"] == 30.0
    assert v["avg_order_value"] == 15.0
    assert (v["refund_count"], v["refund_amount_base"], v["cancel_count"]) == (1.0, 5.0, 1.0)
    assert v["discount_order_share"] == 0.5
    assert v["days_since_last_order"] == 2.0
    assert v["tenure_days"] == 12.0


def test_same_second_orders_are_separate() -> None:
    s = fold(order(1), order(1), order(1))
    v = fv(s, 2)
    assert v["order_count"] == 3.0 and v["orders_30d"] == 3.0
    assert (v["gap_mean_days"], v["gap_std_days"]) == (0.0, 0.0)


def test_windows_are_half_open() -> None:
    s = fold(order(0), order(60), order(100), browse(93.5), browse(99.5, "add_to_cart"))
    v = fv(s, 100)
    assert v["orders_30d"] == 1.0  # day 70 < ts <= 100
    assert v["orders_90d"] == 2.0  # day 60 is in, day 0 is not
    assert v["orders_365d"] == 3.0
    assert fv(s, 130)["orders_30d"] == 0.0  # exactly 30 days ago: out
    assert v["product_views_7d"] == 1.0 and v["product_views_30d"] == 1.0
    assert fv(s, 100.5)["product_views_7d"] == 0.0  # exactly 7 days ago: out
    assert v["cart_adds_7d"] == 1.0 and v["open_cart"] == 0.0  # cart before last order


def test_decay_halves_per_half_life() -> None:
    s = fold(order(0, "8"))
    v = fv(s, 7)
    assert v["orders_decayed_7d_halflife"] == pytest.approx(0.5)
    assert v["spend_decayed_7d_halflife"] == pytest.approx(4.0)
    assert fv(s, 30)["orders_decayed_30d_halflife"] == pytest.approx(0.5)
    assert fv(s, 180)["spend_decayed_90d_halflife"] == pytest.approx(2.0)


def test_gaps_and_overdue() -> None:
    s = fold(order(30), order(0), order(10))  # out of order: gaps 10 and 20
    v = fv(s, 45)
    assert v["gap_mean_days"] == pytest.approx(15.0)
    assert v["gap_std_days"] == pytest.approx(5.0)
    usual = (2 * 15.0 + PRIOR_GAP_DAYS) / 3
    assert v["overdue_ratio"] == pytest.approx(15.0 / usual)
    one = fv(fold(order(0)), PRIOR_GAP_DAYS)
    assert one["overdue_ratio"] == pytest.approx(1.0)  # the prior gap when n < 2
    assert one["gap_mean_days"] == 0.0


def test_fallbacks_to_first_seen() -> None:
    s = fold(message(5, "message_opened"), browse(8, "page_view"))
    v = fv(s, 10)
    assert v["days_since_last_order"] == 5.0 and v["tenure_days"] == 5.0
    assert v["days_since_last_visit"] == 2.0
    assert v["overdue_ratio"] == 0.0
    assert v["messages_opened_30d"] == 1.0


def test_open_cart_and_categories() -> None:
    items = (LineItem(category="shoes"), LineItem(category="hats"), LineItem(category="shoes"))
    s = fold(order(0, line_items=items), browse(1, "add_to_cart"))
    v = fv(s, 2)
    assert v["open_cart"] == 1.0 and v["category_count"] == 2.0
    s.apply(order(3, line_items=(LineItem(category="bags", discount_code="X"),)), 10.0)
    v = fv(s, 3)
    assert v["open_cart"] == 0.0 and v["category_count"] == 3.0
    assert v["discount_order_share"] == 0.5
    many = tuple(LineItem(category=f"c{i}") for i in range(CATEGORY_CAP + 10))
    assert fv(fold(order(0, line_items=many)), 1)["category_count"] == CATEGORY_CAP


def test_messages_and_consent() -> None:
    s = fold(
        profile(
            0, country="de", timezone="Europe/Berlin", first_name="Ann", consent={"email": True}
        ),
        profile(5, locale="de-DE", consent={"sms": True}),
        profile(-1, country="FR", first_name="Old"),  # older: loses
        message(6, "message_opened"),
        message(6, "message_clicked"),
        message(7, "message_unsubscribed", "email"),
        order(1, source="shopify"),
    )
    assert (s.country, s.timezone, s.locale, s.first_name) == (
        "DE",
        "Europe/Berlin",
        "de-DE",
        "Ann",
    )
    assert s.consent == {"email": False, "sms": True}
    attrs = profile_attributes(s)
    assert attrs["source"] == "shopify" and attrs["consent_email"] is False
    assert attrs["consent_push"] is None and attrs["country"] == "DE"
    v = fv(s, 8)
    assert (v["messages_opened_30d"], v["messages_clicked_30d"], v["unsubscribed_30d"]) == (
        1.0,
        1.0,
        1.0,
    )
    s.apply(profile(9, consent={"email": True}), 0.0)  # re-opted in later
    assert s.consent["email"] is True


def test_erase_resets() -> None:
    s = fold(order(0), profile(0, country="DE"))
    s.apply(EraseRequest(type="erase_request", **common(1)), 0.0)
    assert s.order_count == 0 and s.country is None
    assert all(x == 0.0 for x in fv(s, 2).values())


def test_query_before_clock_is_clamped() -> None:
    s = fold(order(10), browse(20))
    assert fv(s, 5) == fv(s, 20)
    assert fv(s, 5)["days_since_last_order"] == 10.0


def test_prune_keeps_features_exact_and_drops_old() -> None:
    events = [browse(d) for d in range(0, 100, 2)] + [order(d) for d in (1, 50, 99)]
    s = fold(*events)
    full = fv(s, 120)
    before = len(s._views)
    s.prune(T0 + 110 * DAY)
    assert len(s._views) < before
    assert fv(s, 120) == full
    assert fv(s, 130) == fv(fold(*events), 130)
    # a late event older than every window only counts in totals
    s.apply(browse(60), 0.0)
    assert fv(s, 120)["product_views_30d"] == full["product_views_30d"]


def test_many_orders_fold_into_gap_summary_exactly() -> None:
    days = [i * 9.5 for i in range(ORDER_TS_KEEP + 60)]  # ~5 years of orders
    s = fold(*(order(d) for d in days))
    assert len(s._order_ts) < len(days)
    t = days[-1] + 3
    v = fv(s, t)
    gaps = [b - a for a, b in zip(days, days[1:], strict=False)]
    assert v["order_count"] == len(days)
    assert v["gap_mean_days"] == pytest.approx(statistics.fmean(gaps))
    assert v["gap_std_days"] == pytest.approx(statistics.pstdev(gaps), abs=1e-6)
    assert v["orders_365d"] == sum(1 for d in days if t - 365 < d <= t)


def test_pickle_round_trip_and_size() -> None:
    items = (LineItem(category="shoes", price=Decimal("19.9")),)
    events: list[Any] = [order(i * 17, "25.50", line_items=items) for i in range(10)]
    events += [browse(150 + i * 0.3, "product_view") for i in range(20)]
    events += [browse(155, "add_to_cart"), message(152, "message_opened")]
    events += [profile(0, country="DE", timezone="Europe/Berlin", consent={"email": True})]
    s = fold(*events)
    raw = pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(raw) <= 1024, len(raw)
    back = pickle.loads(raw)
    assert fv(back, 160) == fv(s, 160)
    assert profile_attributes(back) == profile_attributes(s)
    back.apply(order(170), 10.0)  # still usable after the round trip
    assert back.order_count == 11
    assert len(pickle.dumps(fold(order(0)), protocol=pickle.HIGHEST_PROTOCOL)) < 400


def test_to_base() -> None:
    rates = {"USD": 0.5, "GBP": 1.25}
    assert to_base(Decimal("10"), "EUR", rates, "EUR") == 10.0
    assert to_base(Decimal("10"), "usd", rates, "EUR") == 5.0
    assert to_base(Decimal("2"), "GBP", rates, "EUR") == 2.5
    with pytest.raises(UnknownCurrency) as info:
        to_base(Decimal("1"), "JPY", rates, "EUR")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ChurnflowError)
    with pytest.raises(UnknownCurrency):
        to_base(Decimal("1"), "XXX", {"XXX": math.nan}, "EUR")


@pytest.mark.parametrize(
    ("events", "at_day"),
    [
        ((), 0.0),  # nothing seen yet
        ((browse(1), browse(2, "add_to_cart"), message(3, "message_clicked")), 40.0),
        (
            (
                order(0, "12"),
                order(9, "3"),
                browse(10, "add_to_cart"),
                message(11, "message_opened"),
            ),
            12.0,
        ),
        ((order(0, "12"), order(0, "5"), order(0.5, "1")), 0.5),  # same-day repeats
        (
            (
                order(0, "20"),
                order(30, "4", kind="order_refunded"),
                order(31, kind="order_cancelled"),
            ),
            400.0,
        ),
        (
            tuple(order(d * 7.5, "9") for d in range(60)) + (message(200, "message_unsubscribed"),),
            900.0,
        ),
    ],
)
def test_inlined_vector_matches_the_family_table(events: tuple[Any, ...], at_day: float) -> None:
    """``feature_vector`` inlines the families for speed: it must give the same floats."""
    from engine.features.vector import _FAMILIES

    s = fold(*events)
    te = T0 + at_day * DAY
    for t in (te, te - 5 * DAY):  # also before the state's clock (clamped to it)
        clamped = t if t > s.clock else s.clock
        expected: dict[str, float] = {}
        for names, fn in _FAMILIES:
            values = fn(s, clamped)
            assert len(values) == len(names)
            expected.update(zip(names, values, strict=True))
        assert feature_vector(s, t) == expected


def test_consent_ties_revoke_and_string_ties_are_order_independent() -> None:
    grant = profile(3, consent={"email": True}, country="DE")
    unsub = message(3, "message_unsubscribed", "email")
    other = profile(3, country="FR")
    for events in ((grant, unsub, other), (other, unsub, grant)):
        s = fold(*events)
        assert s.consent == {"email": False}
        assert s.country == "FR"  # equal times: the larger value wins, whatever the order


def test_late_order_before_folded_prefix_keeps_counts_exact() -> None:
    days = [i * 9.5 for i in range(1, ORDER_TS_KEEP + 60)]
    s = fold(*(order(d) for d in days))
    s.apply(order(0), 10.0)  # older than every folded order
    v = fv(s, days[-1])
    assert v["order_count"] == len(days) + 1
    assert s.first_order_ts == T0
    assert v["gap_mean_days"] == pytest.approx(days[-1] / len(days))


def test_gap_cache_is_invalidated_by_new_orders() -> None:
    s = fold(order(0))
    assert fv(s, 1)["gap_mean_days"] == 0.0  # fills the cache
    s.apply(order(10), 10.0)
    assert fv(s, 11)["gap_mean_days"] == 10.0
    s.apply(order(4), 10.0)  # late
    assert fv(s, 11)["gap_std_days"] == pytest.approx(1.0)
