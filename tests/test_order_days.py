"""``order_days``: distinct UTC days with an order (engine/features/state.py), its
feature, older snapshots, and the prior's purchase count (engine/models/prior.py)."""

from __future__ import annotations

import pickle
import random
from array import array
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from engine.customers import _WIDTH, CustomerRecord
from engine.events import OrderEvent
from engine.features.state import DAY, ORDER_TS_KEEP, CustomerState
from engine.features.vector import FEATURE_NAMES, feature_vector
from engine.models.prior import summary

BASE = datetime(2026, 3, 1, tzinfo=UTC)


def order(i: int, at: datetime) -> OrderEvent:
    return OrderEvent(
        type="order_created",
        event_id=f"o{i}",
        store_id="s",
        customer_id="c",
        order_id=str(i),
        amount=Decimal("10"),
        currency="EUR",
        occurred_at=at,
    )


def folded(times: list[datetime]) -> CustomerState:
    state = CustomerState()
    for i, at in enumerate(times):
        state.apply(order(i, at), 10.0)
    return state


def test_orders_on_one_utc_day_are_one_occasion_in_any_arrival_order() -> None:
    times = [
        BASE + timedelta(hours=1),
        BASE + timedelta(hours=23, minutes=59),  # same UTC day
        BASE + timedelta(days=1),  # midnight: the next day
        BASE + timedelta(days=5, hours=12),
        BASE + timedelta(days=5, hours=12),  # the same second: still one day
        BASE + timedelta(days=40),
    ]
    for seed in range(20):
        shuffled = times[:]
        random.Random(seed).shuffle(shuffled)
        state = folded(shuffled)
        assert (state.order_count, state.order_days) == (6, 4)
    features = feature_vector(state, state.clock)
    assert features["order_days"] == 4.0 and features["order_count"] == 6.0
    assert list(features)[-1] == "order_days" == FEATURE_NAMES[-1]


def test_days_stay_counted_when_old_orders_are_folded() -> None:
    # more than ORDER_TS_KEEP orders, the oldest beyond 365 days: folded into a summary
    times = [BASE + timedelta(days=6 * i) for i in range(ORDER_TS_KEEP + 40)]
    times += [BASE + timedelta(days=6 * i, hours=2) for i in range(5)]  # old same-day repeats
    state = folded(sorted(times))
    assert state._fold_n > 0
    assert state.order_days == ORDER_TS_KEEP + 40
    # a same-day repeat of the latest folded order still counts as that day
    latest_folded = datetime.fromtimestamp(state._fold_last, UTC)
    state.apply(order(999, latest_folded + timedelta(minutes=1)), 10.0)
    assert state.order_days == ORDER_TS_KEEP + 40


def test_erase_resets_and_the_count_pickles() -> None:
    state = folded([BASE, BASE + timedelta(hours=3), BASE + timedelta(days=2)])
    assert pickle.loads(pickle.dumps(state)).order_days == 2
    state._erase(None, 0.0, 0.0)
    assert state.order_days == 0


def test_a_state_pickled_before_order_days_loads_with_them_counted() -> None:
    state = folded([BASE, BASE + timedelta(hours=3), BASE + timedelta(days=2)])
    version_one = (1, *state.__getstate__()[1:-1])  # the tuple without the new field
    old = CustomerState.__new__(CustomerState)
    old.__setstate__(version_one)
    assert (old.order_count, old.order_days) == (3, 2)
    assert feature_vector(old, old.clock) == feature_vector(state, state.clock)


def test_pending_points_pickled_31_wide_get_their_order_count_as_order_days() -> None:
    record = CustomerRecord()
    rows = [[float(10 * p + j) for j in range(_WIDTH - 1)] for p in range(3)]
    values = list(record.__getstate__())
    slots = list(CustomerRecord.__slots__)
    values[slots.index("pending_t0")] = array("d", [1.0, 2.0, 3.0])
    values[slots.index("pending_answer")] = array("d", [float("nan")] * 3)
    values[slots.index("pending_features")] = array("f", [v for row in rows for v in row])
    restored = CustomerRecord.__new__(CustomerRecord)
    restored.__setstate__(tuple(values))
    flat = restored.pending_features
    assert len(flat) == 3 * _WIDTH
    count_at = FEATURE_NAMES.index("order_count")
    for p, row in enumerate(rows):
        assert list(flat[p * _WIDTH : (p + 1) * _WIDTH - 1]) == row
        assert flat[(p + 1) * _WIDTH - 1] == row[count_at]


def test_the_prior_counts_purchase_days_not_records() -> None:
    x = {"order_count": 5.0, "order_days": 2.0, "tenure_days": 60.0, "days_since_last_order": 9.0}
    assert summary(x) == (1.0, 51.0, 60.0)
    del x["order_days"]  # a vector from before the feature
    assert summary(x)[0] == 4.0
    assert DAY == 86_400.0
