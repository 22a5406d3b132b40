"""Per-customer state: a small, picklable fold of a customer's events.

``CustomerState.apply(event, amount_base)`` folds one canonical event (see
``engine.events``) into the state; ``engine.features.vector.feature_vector``
turns the state and a time ``t`` into numbers. Deduplicating event ids is the
caller's job; everything else about arrival order is handled here.

Order independence
    Events may arrive in any order. Every quantity is either a commutative
    aggregate (counts, sums, min/max, decayed sums kept at a reference time,
    last-writer-wins by event time) or a *sorted* array of timestamps, so any
    permutation of the same events gives the same features (decayed sums and
    money sums up to float rounding).

The state's clock
    ``clock`` is the latest event time folded in, or the latest ``prune``
    horizon if that is later. Features are defined at ``te = max(t, clock)``:
    asking for an earlier ``t`` evaluates at ``clock`` (an event from "the
    future" counts as having just happened, recency is never negative).
    Because no query is ever evaluated before ``clock``, a timestamp at or
    before ``clock - W`` can never fall into a window ``(te - W, te]`` again,
    so windowed timestamp arrays drop such entries as they go (exactly, not
    approximately) and late events that old are counted only in totals.

Pruning
    ``prune(horizon_ts)`` advances the clock to ``horizon_ts`` (a promise by
    the caller that it will not ask about earlier times) and drops every
    window timestamp at or before ``horizon_ts - W`` for the stream's longest
    window ``W``. Features for ``t >= horizon_ts`` stay exact. Order
    timestamps are also needed for gap statistics over the whole history, so
    they are only folded into a gap summary (count, sum of squared gaps, last
    folded time) when more than ``ORDER_TS_KEEP`` are held *and* the oldest is
    outside the 365-day window (so only customers with more than 64 orders
    are affected). Only an order arriving late *before* the latest folded
    order makes ``gap_std_days`` approximate (it is counted, but its gaps are
    not added); counts, first/last order and ``gap_mean_days`` stay exact.

Order bookkeeping (kept minimal on purpose)
    ``order_created`` is an order (its amount is spend, at its own time);
    ``order_paid`` changes nothing; ``order_refunded`` adds one refund and its
    amount; ``order_cancelled`` adds one cancellation and subtracts its amount
    from ``spend_total`` (the cancelled order still counts as an order and its
    spend stays in the *decayed* spend — no order-id map is kept).
    Orders at the same second are separate orders. ``order_days`` counts the distinct
    UTC calendar days with an order (the "purchase occasions" of BTYD models: several
    orders on one day are one occasion); it is exact except for an order arriving late
    before the latest folded order on a day other than that order's (it counts as a
    new day).

Profile
    ``country``, ``timezone``, ``locale``, ``first_name`` and ``source`` are
    plain attributes, last writer (by event time) wins, ``None`` never
    overwrites. Consent is per channel, last writer wins; a
    ``message_unsubscribed`` or ``message_complained`` revokes the channel at
    its time (at equal times a revocation wins). ``EraseRequest`` resets the
    state to empty (the caller should drop it altogether).

>>> from datetime import UTC, datetime
>>> from decimal import Decimal
>>> from engine.events import OrderEvent
>>> def order(i, day):
...     return OrderEvent(type="order_created", event_id=f"o{i}", store_id="s",
...                       customer_id="c", order_id=str(i), amount=Decimal("10"),
...                       currency="EUR", occurred_at=datetime(2026, 1, day, tzinfo=UTC))
>>> s = CustomerState()
>>> s.has_orders, s.last_order_ts
(False, None)
>>> for e in (order(2, 20), order(1, 5)):  # out of order on purpose
...     s.apply(e, 10.0)
>>> s.order_count, s.first_order_ts == order(1, 5).ts, s.last_order_ts == order(2, 20).ts
(2, True, True)
>>> import pickle
>>> pickle.loads(pickle.dumps(s)).order_count
2
"""

from __future__ import annotations

import math
import zlib
from array import array
from bisect import bisect_left, bisect_right, insort
from typing import Any

from engine.events import CHANNELS

DAY = 86400.0
"""Seconds per day."""

HALF_LIVES_DAYS: tuple[float, float, float] = (7.0, 30.0, 90.0)
"""Half-lives of the decayed order count and spend."""

ORDER_WINDOW_MAX = 365 * DAY
"""Longest window over order timestamps (``orders_365d``)."""

ACTIVITY_WINDOW_MAX = 30 * DAY
"""Longest window over browse and message timestamps (``*_30d``)."""

ORDER_TS_KEEP = 64
"""Order timestamps kept before older ones (outside 365 days) are folded."""

CATEGORY_CAP = 32
"""At most this many distinct categories are remembered (the count saturates)."""

_NEG_INF = -math.inf
_POS_INF = math.inf
_LN2 = math.log(2.0)
_DECAY_RATES = tuple(_LN2 / (h * DAY) for h in HALF_LIVES_DAYS)
_CHANNEL_BIT: dict[str, int] = {c: 1 << i for i, c in enumerate(CHANNELS)}
_CHANNEL_INDEX: dict[str, int] = {c: i for i, c in enumerate(CHANNELS)}
# Last-writer-wins timestamps: 5 profile fields, then one per consent channel.
_F_COUNTRY, _F_TIMEZONE, _F_LOCALE, _F_FIRST_NAME, _F_SOURCE = range(5)
_N_LWW = 5 + len(CHANNELS)
_STATE_VERSION = 2
"""Version 2 added ``_order_days``; version 1 states still load (see ``__setstate__``)."""


def _insert_windowed(arr: array[float], ts: float, cutoff: float) -> None:
    """Insert ``ts`` into sorted ``arr``; drop it and all entries ``<= cutoff``."""
    if ts <= cutoff:
        return
    if not arr or ts >= arr[-1]:
        arr.append(ts)
    else:
        insort(arr, ts)
    if arr[0] <= cutoff:
        del arr[: bisect_right(arr, cutoff)]


def _drop_until(arr: array[float], cutoff: float) -> None:
    if arr and arr[0] <= cutoff:
        del arr[: bisect_right(arr, cutoff)]


def category_code(category: str) -> int:
    """A stable small code for a category (CRC-32, stable across processes).

    >>> category_code("shoes") == category_code("shoes"), category_code("shoes") < 2**32
    (True, True)
    """
    return zlib.crc32(category.encode("utf-8"))


class CustomerState:
    """Everything the features of one customer need; see the module docstring."""

    __slots__ = (
        "clock",
        "first_seen_ts",
        "_order_n",
        "_order_days",
        "_first_order",
        "_last_order",
        "_order_ts",
        "_fold_n",
        "_fold_sq",
        "_fold_last",
        "_decay_ref",
        "_decay",
        "_spend",
        "_refund_n",
        "_refund_amount",
        "_cancel_n",
        "_discount_n",
        "_categories",
        "_last_visit",
        "_last_cart",
        "_views",
        "_carts",
        "_opened",
        "_clicked",
        "_unsubscribed",
        "country",
        "timezone",
        "locale",
        "first_name",
        "source",
        "_consent_known",
        "_consent_granted",
        "_lww",
        "gap_cache",
        "profile_cache",
    )

    def __init__(self) -> None:
        self.clock = _NEG_INF
        self.first_seen_ts = _POS_INF
        self._order_n = 0
        self._order_days = 0  # distinct UTC days with an order
        self._first_order = _POS_INF
        self._last_order = _NEG_INF
        self._order_ts: array[float] = array("d")
        self._fold_n = 0  # orders folded out of _order_ts
        self._fold_sq = 0.0  # sum of squared gaps (seconds²) among the folded orders
        self._fold_last = _NEG_INF  # latest folded order time
        self._decay_ref = _NEG_INF  # time at which _decay holds its values
        # orders at the three half-lives, then spend at the three half-lives
        self._decay: tuple[float, ...] = (0.0,) * 6
        self._spend = 0.0
        self._refund_n = 0
        self._refund_amount = 0.0
        self._cancel_n = 0
        self._discount_n = 0
        self._categories: array[int] = array("I")  # sorted distinct category codes
        self._last_visit = _NEG_INF
        self._last_cart = _NEG_INF
        self._views: array[float] = array("d")
        self._carts: array[float] = array("d")
        self._opened: array[float] = array("d")
        self._clicked: array[float] = array("d")
        self._unsubscribed: array[float] = array("d")
        self.country: str | None = None
        self.timezone: str | None = None
        self.locale: str | None = None
        self.first_name: str | None = None
        self.source: str | None = None
        self._consent_known = 0  # bit per channel in CHANNELS order
        self._consent_granted = 0
        self._lww: array[float] | None = None  # created at the first LWW write
        # (mean, std) of the gaps in days, filled by engine.features.vector,
        # reset by every order; not pickled.
        self.gap_cache: tuple[float, float] | None = None
        # engine.features.vector.profile_attributes, reset when a profile field or a
        # consent changes; not pickled.
        self.profile_cache: dict[str, str | bool | None] | None = None

    # -- public read-only view ------------------------------------------------

    @property
    def order_count(self) -> int:
        """Number of ``order_created`` events folded in."""
        return self._order_n

    @property
    def order_days(self) -> int:
        """Distinct UTC calendar days with an ``order_created`` (see the module docstring)."""
        return self._order_days

    @property
    def has_orders(self) -> bool:
        return self._order_n > 0

    @property
    def first_order_ts(self) -> float | None:
        """Epoch seconds of the earliest order, ``None`` without orders."""
        return self._first_order if self._order_n else None

    @property
    def last_order_ts(self) -> float | None:
        """Epoch seconds of the latest order, ``None`` without orders."""
        return self._last_order if self._order_n else None

    @property
    def consent(self) -> dict[str, bool]:
        """Known consent per channel (channels never mentioned are absent)."""
        known, granted = self._consent_known, self._consent_granted
        return {c: bool(granted & b) for c, b in _CHANNEL_BIT.items() if known & b}

    # -- folding --------------------------------------------------------------

    def apply(self, event: Any, amount_base: float) -> None:
        """Fold one canonical event in; ``amount_base`` is its money in base currency."""
        ts = event.ts
        if ts > self.clock:
            self.clock = ts
        if ts < self.first_seen_ts:
            self.first_seen_ts = ts
        source = event.source
        if source is not None:
            self._lww_set(_F_SOURCE, "source", source, ts)
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, ts, amount_base)

    def _order_created(self, event: Any, ts: float, amount: float) -> None:
        self._order_n += 1
        self.gap_cache = None
        if ts < self._first_order:
            self._first_order = ts
        if ts > self._last_order:
            self._last_order = ts
        arr = self._order_ts
        if not self._has_order_on_day_of(ts):
            self._order_days += 1
        if ts < self._fold_last:
            # Older than orders already folded: count it into the folded prefix.
            self._fold_n += 1
        elif not arr or ts >= arr[-1]:
            arr.append(ts)
        else:
            insort(arr, ts)
        self._spend += amount
        self._add_decayed(ts, amount)
        discounted = bool(event.discount_codes)
        for item in event.line_items:
            if item.discount_code:
                discounted = True
            if item.category:
                self._add_category(item.category)
        if discounted:
            self._discount_n += 1
        if len(arr) > ORDER_TS_KEEP:
            self._fold_orders()

    def _has_order_on_day_of(self, ts: float) -> bool:
        """Whether an order already folded in fell on ``ts``'s UTC day (the kept
        timestamps, and the latest folded one; older folded days are not known)."""
        day_start = (ts // DAY) * DAY
        arr = self._order_ts
        i = bisect_left(arr, day_start)
        if i < len(arr) and arr[i] < day_start + DAY:
            return True
        return self._fold_last != _NEG_INF and self._fold_last // DAY == ts // DAY

    def _add_decayed(self, ts: float, amount: float) -> None:
        # A tuple rebuilt per order is ~4x faster than in-place updates of an array.
        o7, o30, o90, s7, s30, s90 = self._decay
        ref = self._decay_ref
        r7, r30, r90 = _DECAY_RATES
        if ts > ref:
            if ref == _NEG_INF:
                f7 = f30 = f90 = 0.0
            else:
                dt = ts - ref
                f7 = math.exp(-r7 * dt)
                f30 = math.exp(-r30 * dt)
                f90 = math.exp(-r90 * dt)
            self._decay_ref = ts
            self._decay = (
                o7 * f7 + 1.0,
                o30 * f30 + 1.0,
                o90 * f90 + 1.0,
                s7 * f7 + amount,
                s30 * f30 + amount,
                s90 * f90 + amount,
            )
        else:
            dt = ref - ts
            f7 = math.exp(-r7 * dt)
            f30 = math.exp(-r30 * dt)
            f90 = math.exp(-r90 * dt)
            self._decay = (
                o7 + f7,
                o30 + f30,
                o90 + f90,
                s7 + amount * f7,
                s30 + amount * f30,
                s90 + amount * f90,
            )

    def _add_category(self, category: str) -> None:
        cats = self._categories
        code = zlib.crc32(category.encode("utf-8"))
        i = bisect_right(cats, code)
        if (i and cats[i - 1] == code) or len(cats) >= CATEGORY_CAP:
            return
        cats.insert(i, code)

    def _fold_orders(self) -> None:
        """Fold the oldest order timestamps, outside every window, into the gap summary."""
        arr = self._order_ts
        cutoff = self.clock - ORDER_WINDOW_MAX
        k = 0
        prev = self._fold_last
        sq = self._fold_sq
        while len(arr) - k > ORDER_TS_KEEP and arr[k] <= cutoff:
            ts = arr[k]
            if prev != _NEG_INF:
                sq += (ts - prev) ** 2
            prev = ts
            k += 1
        if k:
            self.gap_cache = None
            del arr[:k]
            self._fold_n += k
            self._fold_sq = sq
            self._fold_last = prev

    def _order_paid(self, event: Any, ts: float, amount: float) -> None:
        pass

    def _order_refunded(self, event: Any, ts: float, amount: float) -> None:
        self._refund_n += 1
        self._refund_amount += amount

    def _order_cancelled(self, event: Any, ts: float, amount: float) -> None:
        self._cancel_n += 1
        self._spend -= amount

    def _browse(self, event: Any, ts: float, amount: float) -> None:
        if ts > self._last_visit:
            self._last_visit = ts

    def _product_view(self, event: Any, ts: float, amount: float) -> None:
        if ts > self._last_visit:
            self._last_visit = ts
        _insert_windowed(self._views, ts, self.clock - ACTIVITY_WINDOW_MAX)

    def _add_to_cart(self, event: Any, ts: float, amount: float) -> None:
        if ts > self._last_visit:
            self._last_visit = ts
        if ts > self._last_cart:
            self._last_cart = ts
        _insert_windowed(self._carts, ts, self.clock - ACTIVITY_WINDOW_MAX)

    def _message_opened(self, event: Any, ts: float, amount: float) -> None:
        _insert_windowed(self._opened, ts, self.clock - ACTIVITY_WINDOW_MAX)

    def _message_clicked(self, event: Any, ts: float, amount: float) -> None:
        _insert_windowed(self._clicked, ts, self.clock - ACTIVITY_WINDOW_MAX)

    def _message_unsubscribed(self, event: Any, ts: float, amount: float) -> None:
        _insert_windowed(self._unsubscribed, ts, self.clock - ACTIVITY_WINDOW_MAX)
        self._set_consent(event.channel, False, ts)

    def _message_complained(self, event: Any, ts: float, amount: float) -> None:
        self._set_consent(event.channel, False, ts)

    def _profile(self, event: Any, ts: float, amount: float) -> None:
        if event.country is not None:
            self._lww_set(_F_COUNTRY, "country", event.country, ts)
        if event.timezone is not None:
            self._lww_set(_F_TIMEZONE, "timezone", event.timezone, ts)
        if event.locale is not None:
            self._lww_set(_F_LOCALE, "locale", event.locale, ts)
        if event.first_name is not None:
            self._lww_set(_F_FIRST_NAME, "first_name", event.first_name, ts)
        for channel, granted in event.consent.items():
            self._set_consent(channel, granted, ts)

    def _erase(self, event: Any, ts: float, amount: float) -> None:
        self.__init__()  # type: ignore[misc]

    def _lww_times(self) -> array[float]:
        lww = self._lww
        if lww is None:
            lww = self._lww = array("d", (_NEG_INF,) * _N_LWW)
        return lww

    def _lww_set(self, index: int, attr: str, value: str, ts: float) -> None:
        lww = self._lww_times()
        old_ts = lww[index]
        if ts > old_ts or (ts == old_ts and value > (getattr(self, attr) or "")):
            lww[index] = ts
            if getattr(self, attr) != value:
                setattr(self, attr, value)
                self.profile_cache = None

    def _set_consent(self, channel: str, granted: bool, ts: float) -> None:
        lww = self._lww_times()
        index = 5 + _CHANNEL_INDEX[channel]
        bit = _CHANNEL_BIT[channel]
        old_ts = lww[index]
        if ts > old_ts or (ts == old_ts and not granted):
            lww[index] = ts
            self.profile_cache = None
            self._consent_known |= bit
            if granted:
                self._consent_granted |= bit
            else:
                self._consent_granted &= ~bit

    # -- maintenance ----------------------------------------------------------

    def prune(self, horizon_ts: float) -> None:
        """Promise no query before ``horizon_ts``; drop what no later window needs.

        Advances the clock to ``horizon_ts`` (if later) and drops browse and
        message timestamps at or before ``horizon_ts - 30 days``; order
        timestamps are folded into the gap summary only beyond
        ``ORDER_TS_KEEP`` of them. Features at ``t >= horizon_ts`` are unchanged.
        """
        if horizon_ts > self.clock:
            self.clock = horizon_ts
        cutoff = self.clock - ACTIVITY_WINDOW_MAX
        _drop_until(self._views, cutoff)
        _drop_until(self._carts, cutoff)
        _drop_until(self._opened, cutoff)
        _drop_until(self._clicked, cutoff)
        _drop_until(self._unsubscribed, cutoff)
        if len(self._order_ts) > ORDER_TS_KEEP:
            self._fold_orders()

    # -- pickling: a flat tuple, arrays as raw bytes (no slot names) ------------

    def __getstate__(self) -> tuple[Any, ...]:
        return (
            _STATE_VERSION,
            self.clock,
            self.first_seen_ts,
            self._order_n,
            self._first_order,
            self._last_order,
            self._order_ts.tobytes(),
            self._fold_n,
            self._fold_sq,
            self._fold_last,
            self._decay_ref,
            self._decay,
            self._spend,
            self._refund_n,
            self._refund_amount,
            self._cancel_n,
            self._discount_n,
            self._categories.tobytes(),
            self._last_visit,
            self._last_cart,
            self._views.tobytes(),
            self._carts.tobytes(),
            self._opened.tobytes(),
            self._clicked.tobytes(),
            self._unsubscribed.tobytes(),
            self.country,
            self.timezone,
            self.locale,
            self.first_name,
            self.source,
            self._consent_known,
            self._consent_granted,
            None if self._lww is None else self._lww.tobytes(),
            self._order_days,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if state[0] == 1:  # before order_days: counted from what the state keeps
            state = (*state, None)
        elif state[0] != _STATE_VERSION:
            raise ValueError(f"unknown CustomerState version {state[0]!r}")
        (
            _,
            self.clock,
            self.first_seen_ts,
            self._order_n,
            self._first_order,
            self._last_order,
            order_ts,
            self._fold_n,
            self._fold_sq,
            self._fold_last,
            self._decay_ref,
            self._decay,
            self._spend,
            self._refund_n,
            self._refund_amount,
            self._cancel_n,
            self._discount_n,
            categories,
            self._last_visit,
            self._last_cart,
            views,
            carts,
            opened,
            clicked,
            unsubscribed,
            self.country,
            self.timezone,
            self.locale,
            self.first_name,
            self.source,
            self._consent_known,
            self._consent_granted,
            lww,
            order_days,
        ) = state
        self._order_ts = _floats(order_ts)
        self._categories = array("I")
        self._categories.frombytes(categories)
        self._views = _floats(views)
        self._carts = _floats(carts)
        self._opened = _floats(opened)
        self._clicked = _floats(clicked)
        self._unsubscribed = _floats(unsubscribed)
        self._lww = None if lww is None else _floats(lww)
        if order_days is None:  # version 1: each folded order counts as its own day
            order_days = len({ts // DAY for ts in self._order_ts}) + self._fold_n
        self._order_days = order_days
        self.gap_cache = None
        self.profile_cache = None

    def __repr__(self) -> str:
        return (
            f"CustomerState(orders={self._order_n}, last_order_ts={self.last_order_ts}, "
            f"clock={self.clock})"
        )


def _floats(raw: bytes) -> array[float]:
    arr = array("d")
    arr.frombytes(raw)
    return arr


_HANDLERS = {
    "order_created": CustomerState._order_created,
    "order_paid": CustomerState._order_paid,
    "order_refunded": CustomerState._order_refunded,
    "order_cancelled": CustomerState._order_cancelled,
    "page_view": CustomerState._browse,
    "search": CustomerState._browse,
    "remove_from_cart": CustomerState._browse,
    "checkout_started": CustomerState._browse,
    "product_view": CustomerState._product_view,
    "add_to_cart": CustomerState._add_to_cart,
    "message_opened": CustomerState._message_opened,
    "message_clicked": CustomerState._message_clicked,
    "message_unsubscribed": CustomerState._message_unsubscribed,
    "message_complained": CustomerState._message_complained,
    "customer_profile": CustomerState._profile,
    "erase_request": CustomerState._erase,
}
