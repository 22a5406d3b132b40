"""The feature vector: a pure function of a ``CustomerState`` and a time ``t``.

``feature_vector(state, t)`` returns ``{name: float}`` with the names of
``FEATURE_NAMES`` in that order. Times are float epoch seconds; durations in
the output are in days. Features are evaluated at ``te = max(t, state.clock)``
(see ``engine.features.state``), so recency is never negative.

Conventions for missing history (documented here, tested in tests/):

- ``days_since_last_order`` and ``tenure_days`` (days since the first order)
  fall back to days since the customer was first seen when there are no
  orders; ``days_since_last_visit`` likewise when there was no browse event;
  all three are 0 for an empty state.
- ``gap_mean_days``/``gap_std_days`` (population std) are over the ``n - 1``
  gaps between the sorted order times; 0 when ``n < 2``. Gaps of 0 (orders at
  the same second) count.
- ``overdue_ratio = days_since_last_order / usual_gap`` where ``usual_gap`` is
  the mean gap shrunk towards a prior of ``PRIOR_GAP_DAYS`` with the weight of
  ``PRIOR_WEIGHT`` gaps: ``((n-1)*mean + w*prior) / (n-1 + w)``, at least
  ``MIN_GAP_DAYS``. With fewer than 2 orders that is the prior itself; without
  orders the ratio is 0.
- Windows ``*_7d``/``*_30d``/``*_365d`` count events with ``te - W < ts <= te``.
- Decayed values weigh an order at time ``ts`` by ``2 ** (-(te - ts) / h)``.
- ``spend_total_base`` is created minus cancelled spend, floored at 0;
  ``avg_order_value`` is that over ``order_count`` (0 without orders).
- ``category_count`` is the number of distinct line-item categories bought,
  saturating at ``CATEGORY_CAP``; ``open_cart`` is 1 when the latest
  ``add_to_cart`` is later than the latest order.
- ``order_days`` is the number of distinct UTC days with an order (several orders
  on one day are one purchase occasion, as BTYD models count them).

>>> from engine.features.state import CustomerState
>>> v = feature_vector(CustomerState(), 1_700_000_000.0)
>>> list(v) == list(FEATURE_NAMES), v["order_count"], v["overdue_ratio"]
(True, 0.0, 0.0)
>>> len(FEATURE_NAMES)
32
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.events import CHANNELS
from engine.features.state import DAY, HALF_LIVES_DAYS, CustomerState

if TYPE_CHECKING:
    from array import array

PRIOR_GAP_DAYS = 30.0
"""Usual inter-purchase gap assumed before a customer has shown one."""

PRIOR_WEIGHT = 1.0
"""How many observed gaps the prior is worth."""

MIN_GAP_DAYS = 1.0
"""Floor of the usual gap in ``overdue_ratio`` (same-day repeat orders)."""

_W7 = 7 * DAY
_W30 = 30 * DAY
_W90 = 90 * DAY
_W365 = 365 * DAY
_INV_DAY = 1.0 / DAY
_INV_H = tuple(1.0 / (h * DAY) for h in HALF_LIVES_DAYS)


def _count_window(arr: array[float], te: float, window: float) -> float:
    """Entries of sorted ``arr`` (all ``<= te``) with ``te - window < ts``."""
    return float(len(arr) - bisect_right(arr, te - window))


def _days_since(ts: float, fallback: float, te: float) -> float:
    if ts == -math.inf or ts == math.inf:
        ts = fallback
        if ts == math.inf:
            return 0.0
    return (te - ts) * _INV_DAY


Family = Callable[[CustomerState, float], tuple[float, ...]]


def recency(s: CustomerState, te: float) -> tuple[float, ...]:
    """days_since_last_order, tenure_days, days_since_last_visit."""
    seen = s.first_seen_ts
    return (
        _days_since(s._last_order, seen, te),
        _days_since(s._first_order, seen, te),
        _days_since(s._last_visit, seen, te),
    )


def frequency(s: CustomerState, te: float) -> tuple[float, ...]:
    """order_count and exact order counts over 30, 90 and 365 days."""
    arr = s._order_ts
    return (
        float(s._order_n),
        _count_window(arr, te, _W30),
        _count_window(arr, te, _W90),
        _count_window(arr, te, _W365),
    )


def decayed(s: CustomerState, te: float) -> tuple[float, ...]:
    """Orders, then spend, decayed at each half-life of ``HALF_LIVES_DAYS``."""
    d = s._decay
    if s._order_n == 0:
        return (0.0,) * 6
    dt = te - s._decay_ref
    f7 = 2.0 ** (-dt * _INV_H[0])
    f30 = 2.0 ** (-dt * _INV_H[1])
    f90 = 2.0 ** (-dt * _INV_H[2])
    return (d[0] * f7, d[1] * f30, d[2] * f90, d[3] * f7, d[4] * f30, d[5] * f90)


def monetary(s: CustomerState, te: float) -> tuple[float, ...]:
    """spend_total_base (created minus cancelled, >= 0) and avg_order_value."""
    spend = s._spend if s._spend > 0.0 else 0.0
    return (spend, spend / s._order_n if s._order_n else 0.0)


def gap_stats(s: CustomerState) -> tuple[float, float]:
    """Mean and population std of the inter-purchase gaps, in days.

    >>> s = CustomerState()
    >>> s._order_n, s._first_order, s._last_order = 3, 0.0, 4 * DAY
    >>> s._order_ts.extend([0.0, DAY, 4 * DAY])
    >>> gap_stats(s)
    (2.0, 1.0)
    """
    n = s._order_n
    if n < 2:
        return 0.0, 0.0
    m = n - 1
    mean = (s._last_order - s._first_order) / m
    arr = s._order_ts
    if s._fold_n == 0:
        acc = 0.0
        for i in range(1, len(arr)):
            g = arr[i] - arr[i - 1] - mean
            acc += g * g
        var = acc / m
    else:
        sq = s._fold_sq
        if arr:
            sq += (arr[0] - s._fold_last) ** 2
            for i in range(1, len(arr)):
                sq += (arr[i] - arr[i - 1]) ** 2
        var = sq / m - mean * mean
    return mean * _INV_DAY, math.sqrt(var) * _INV_DAY if var > 0.0 else 0.0


def gaps(s: CustomerState, te: float) -> tuple[float, ...]:
    """gap_mean_days, gap_std_days and overdue_ratio (see the module docstring)."""
    cached = s.gap_cache
    if cached is None:
        cached = s.gap_cache = gap_stats(s)
    mean, std = cached
    n = s._order_n
    if n == 0:
        return mean, std, 0.0
    m = n - 1
    usual = (m * mean + PRIOR_WEIGHT * PRIOR_GAP_DAYS) / (m + PRIOR_WEIGHT)
    if usual < MIN_GAP_DAYS:
        usual = MIN_GAP_DAYS
    return mean, std, (te - s._last_order) * _INV_DAY / usual


def returns(s: CustomerState, te: float) -> tuple[float, ...]:
    """refund_count, refund_amount_base, cancel_count."""
    return float(s._refund_n), s._refund_amount, float(s._cancel_n)


def basket(s: CustomerState, te: float) -> tuple[float, ...]:
    """discount_order_share and category_count."""
    n = s._order_n
    return (s._discount_n / n if n else 0.0, float(len(s._categories)))


def browsing(s: CustomerState, te: float) -> tuple[float, ...]:
    """product_views_7d/30d, cart_adds_7d/30d and open_cart."""
    views, carts = s._views, s._carts
    return (
        _count_window(views, te, _W7),
        _count_window(views, te, _W30),
        _count_window(carts, te, _W7),
        _count_window(carts, te, _W30),
        1.0 if s._last_cart > s._last_order else 0.0,
    )


def occasions(s: CustomerState, te: float) -> tuple[float, ...]:
    """order_days: distinct UTC days with an order (BTYD's purchase occasions)."""
    return (float(s._order_days),)


def engagement(s: CustomerState, te: float) -> tuple[float, ...]:
    """messages_opened_30d, messages_clicked_30d, unsubscribed_30d."""
    return (
        _count_window(s._opened, te, _W30),
        _count_window(s._clicked, te, _W30),
        _count_window(s._unsubscribed, te, _W30),
    )


_FAMILIES: tuple[tuple[tuple[str, ...], Family], ...] = (
    (("days_since_last_order", "tenure_days", "days_since_last_visit"), recency),
    (("order_count", "orders_30d", "orders_90d", "orders_365d"), frequency),
    (
        tuple(f"orders_decayed_{h:g}d_halflife" for h in HALF_LIVES_DAYS)
        + tuple(f"spend_decayed_{h:g}d_halflife" for h in HALF_LIVES_DAYS),
        decayed,
    ),
    (("spend_total_base", "avg_order_value"), monetary),
    (("gap_mean_days", "gap_std_days", "overdue_ratio"), gaps),
    (("refund_count", "refund_amount_base", "cancel_count"), returns),
    (("discount_order_share", "category_count"), basket),
    (
        ("product_views_7d", "product_views_30d", "cart_adds_7d", "cart_adds_30d", "open_cart"),
        browsing,
    ),
    (("messages_opened_30d", "messages_clicked_30d", "unsubscribed_30d"), engagement),
    (("order_days",), occasions),  # last: pending points of older snapshots lack it
)

FEATURE_NAMES: tuple[str, ...] = tuple(name for names, _ in _FAMILIES for name in names)
"""Names of the features, in the order ``feature_vector`` returns them."""

_FUNCS = tuple(fn for _, fn in _FAMILIES)
"""The family functions, in ``FEATURE_NAMES`` order (``feature_vector`` inlines them)."""


def _dict_display(names: tuple[str, ...]) -> Callable[..., dict[str, float]]:
    """A function of ``len(names)`` values returning ``{name: value}`` in ``names`` order.

    It is a dict display with constant keys, which CPython builds presized: faster
    than ``dict(zip(names, values))``, and the same dict (a missing or extra value
    is a ``TypeError``).

    >>> _dict_display(("a", "b"))(1.0, 2.0)
    {'a': 1.0, 'b': 2.0}
    """
    params = ", ".join(f"v{i}" for i in range(len(names)))
    items = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names))
    namespace: dict[str, Any] = {}
    exec(f"def display({params}):\n    return {{{items}}}\n", namespace)
    display: Callable[..., dict[str, float]] = namespace["display"]
    return display


features_from_values = _dict_display(FEATURE_NAMES)
"""``features_from_values(*values)``: the feature dict of values in ``FEATURE_NAMES`` order."""


def _since(ts: float, fallback: float, te: float) -> float:
    """:func:`_days_since` for the inlined vector (the same operations)."""
    if ts == _NEG_INF_F or ts == _POS_INF_F:
        ts = fallback
        if ts == _POS_INF_F:
            return 0.0
    return (te - ts) * _INV_DAY


_NEG_INF_F = -math.inf
_POS_INF_F = math.inf


def feature_vector(state: CustomerState, t: float) -> dict[str, float]:
    """All features of ``state`` at time ``t`` (epoch seconds), as floats.

    The families above, inlined (the same operations in the same order, so the same
    floats; ``tests/test_features.py`` compares them): a function call per family
    and per window count was most of its time, and the replay computes one vector
    per event and per silent checkpoint. Windows over an empty array count 0
    without a search.
    """
    s = state
    te = t if t > s.clock else s.clock
    seen = s.first_seen_ts
    n = s._order_n
    last_order = s._last_order
    # frequency
    arr = s._order_ts
    if arr:
        size = len(arr)
        o30 = float(size - bisect_right(arr, te - _W30))
        o90 = float(size - bisect_right(arr, te - _W90))
        o365 = float(size - bisect_right(arr, te - _W365))
    else:
        o30 = o90 = o365 = 0.0
    # decayed
    if n == 0:
        d7 = d30 = d90 = s7 = s30 = s90 = 0.0
    else:
        d = s._decay
        dt = te - s._decay_ref
        f7 = 2.0 ** (-dt * _INV_H[0])
        f30 = 2.0 ** (-dt * _INV_H[1])
        f90 = 2.0 ** (-dt * _INV_H[2])
        d7, d30, d90, s7, s30, s90 = (
            d[0] * f7,
            d[1] * f30,
            d[2] * f90,
            d[3] * f7,
            d[4] * f30,
            d[5] * f90,
        )
    # monetary
    spend = s._spend if s._spend > 0.0 else 0.0
    # gaps
    cached = s.gap_cache
    if cached is None:
        cached = s.gap_cache = gap_stats(s)
    gap_mean, gap_std = cached
    if n == 0:
        overdue = 0.0
    else:
        m = n - 1
        usual = (m * gap_mean + PRIOR_WEIGHT * PRIOR_GAP_DAYS) / (m + PRIOR_WEIGHT)
        if usual < MIN_GAP_DAYS:
            usual = MIN_GAP_DAYS
        overdue = (te - last_order) * _INV_DAY / usual
    views, carts = s._views, s._carts
    opened, clicked, unsubscribed = s._opened, s._clicked, s._unsubscribed
    return features_from_values(
        _since(last_order, seen, te),
        _since(s._first_order, seen, te),
        _since(s._last_visit, seen, te),
        float(n),
        o30,
        o90,
        o365,
        d7,
        d30,
        d90,
        s7,
        s30,
        s90,
        spend,
        spend / n if n else 0.0,
        gap_mean,
        gap_std,
        overdue,
        float(s._refund_n),
        s._refund_amount,
        float(s._cancel_n),
        s._discount_n / n if n else 0.0,
        float(len(s._categories)),
        _count_window(views, te, _W7) if views else 0.0,
        _count_window(views, te, _W30) if views else 0.0,
        _count_window(carts, te, _W7) if carts else 0.0,
        _count_window(carts, te, _W30) if carts else 0.0,
        1.0 if s._last_cart > last_order else 0.0,
        _count_window(opened, te, _W30) if opened else 0.0,
        _count_window(clicked, te, _W30) if clicked else 0.0,
        _count_window(unsubscribed, te, _W30) if unsubscribed else 0.0,
        float(s._order_days),
    )


def profile_attributes(state: CustomerState) -> dict[str, str | bool | None]:
    """The categorical profile, flat: country, source, timezone, locale,
    first_name and ``consent_<channel>`` (True/False, None when unknown).

    Built once per change of the profile and then shared (``state.profile_cache``):
    callers must not modify it.

    >>> attrs = profile_attributes(CustomerState())
    >>> attrs["country"], attrs["consent_email"]
    (None, None)
    """
    cached = state.profile_cache
    if cached is None:
        cached = state.profile_cache = _profile_attributes(state)
    return cached


def _profile_attributes(state: CustomerState) -> dict[str, str | bool | None]:
    out: dict[str, str | bool | None] = {
        "country": state.country,
        "source": state.source,
        "timezone": state.timezone,
        "locale": state.locale,
        "first_name": state.first_name,
    }
    consent = state.consent
    for channel in CHANNELS:
        out[f"consent_{channel}"] = consent.get(channel)
    return out
