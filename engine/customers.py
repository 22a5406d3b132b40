"""The customer stage of one key group: features, prediction points, labels, segments.

This is plain Python; :mod:`engine.flow` only adapts it to a Bytewax
``StatefulLogic``. One :class:`KeyGroupCustomers` holds every customer of its key
group, one watermark, one timer heap and one event-id dedup, and turns events
and watermark moves into outputs (:mod:`engine.messages`).

Labels. A *prediction point* is taken at each in-order order and every
``checkpoint_days`` of silence after it (at most ``max_silent_checkpoints``); it
stores the features as of its time t0. When the watermark passes t0 + H it is
emitted as an :class:`Example`: ``y = 0`` if an order arrived in (t0, t0 + H],
else ``y = 1``. Both labels wait for the full horizon, so the model never sees
recent non-churners before the churners of the same period (label-delay bias).
A point's features contain only events at or before t0: a checkpoint is
taken either when the watermark passes it (the customer had no later event) or,
eagerly, just before the customer's first later event is applied. An event
older than the customer's newest event updates the features but takes no
point (counted as ``points_skipped_out_of_order``); an order that arrives after
its point was labelled 1 is counted as ``late_label_flips``.

Cart checks. An ``add_to_cart`` with no check pending schedules a score request
(cause ``cart``) at ``cart time + cart_check_s``, so the trigger stage can
evaluate an abandoned cart even if nothing else arrives; it fires when the
watermark passes it or, eagerly, before the customer's next later event, and an
order at or after the cart cancels it (event time only).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from array import array
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

from engine.cohorts import CohortTable, CustomerPeriods, LifecycleCounts, week_index
from engine.events import EraseRequest, Event, OrderEvent
from engine.features.state import CustomerState
from engine.features.vector import (
    FEATURE_NAMES,
    feature_vector,
    features_from_values,
    profile_attributes,
)
from engine.keygroups import EventIdDedup, Timer, TimerHeap, Watermark
from engine.messages import (
    Erased,
    Example,
    GroupAggregates,
    ScoreRequest,
    SegmentChange,
    StageCounters,
)
from engine.pickles import refreshed_blobs
from engine.segments import lifecycle_segment, silent_after_days, value_tier

DAY = 86400.0
SEP = "\x1f"
_T = TypeVar("_T")

_WIDTH = len(FEATURE_NAMES)
"""Values per pending point in ``CustomerRecord.pending_features``."""

MAX_CHURN_T0S = 8
"""How many points labelled 1 a customer remembers for ``late_label_flips``."""

COUNTER_NAMES = (
    "events",
    "duplicates",
    "late_events",
    "out_of_order_events",
    "points_created",
    "points_skipped_out_of_order",
    "points_skipped_cap",
    "labels_0",
    "labels_1",
    "late_label_flips",
    "erased",
)


@dataclass(frozen=True)
class StageConfig:
    """The customer stage's parameters (taken from :class:`engine.settings.Settings`)."""

    horizon_days: float = 90.0
    allowed_lateness_s: float = 3 * DAY
    checkpoint_days: float = 30.0
    max_silent_checkpoints: int = 6
    max_pending_points: int = 32
    dedup_retention_s: float = 7 * DAY
    value_thresholds: tuple[float, float] = (50.0, 200.0)
    cart_check_s: float = 4 * 3600.0
    """Cart check delay after an ``add_to_cart`` (0: none); match the cart rule's hours."""
    publish_daily: bool = True
    """Publish the counters and the cohort and lifecycle tables at every event-time day
    (live: the sinks show them as they go). A replay keeps only the newest of each, which
    :meth:`KeyGroupCustomers.final` publishes for every store anyway, so it skips them."""

    @property
    def horizon_s(self) -> float:
        return self.horizon_days * DAY


SNAPSHOT_FORMAT = "customers/2"

StageSnapshot = tuple[str, bytes, tuple[str, ...], tuple[bytes, ...]]
"""What :meth:`KeyGroupCustomers.snapshot` returns: the format, the group's pickled
state without its customers, and the customers' keys and pickled records."""


def joined_blobs(blobs: dict[str, bytes]) -> tuple[str, array, bytes, array]:
    """``blobs`` as four flat objects that pickle with no Python code per entry.

    >>> split_blobs(joined_blobs({"s/a": b"xy", "s/bc": b"", "t/ü": b"z"}))
    {'s/a': b'xy', 's/bc': b'', 't/ü': b'z'}
    """
    keys = list(blobs)
    values = list(blobs.values())
    return (
        "".join(keys),
        array("L", map(len, keys)),
        b"".join(values),
        array("L", map(len, values)),
    )


def split_blobs(joined: tuple[str, array, bytes, array]) -> dict[str, bytes]:
    """The dict that :func:`joined_blobs` flattened."""
    keys, key_lengths, data, data_lengths = joined
    blobs: dict[str, bytes] = {}
    key_at = data_at = 0
    for key_length, data_length in zip(key_lengths, data_lengths, strict=True):
        key = keys[key_at : key_at + key_length]
        blobs[key] = data[data_at : data_at + data_length]
        key_at += key_length
        data_at += data_length
    return blobs


def positional_constructor(cls: type[_T]) -> Callable[..., _T]:
    """``cls(*values)`` for a frozen dataclass with slots, without its ``__init__``.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``,
    about half the cost of creating one; this sets the slots directly. The object is
    the same (equal, same repr and pickle). Every field must be given, positionally;
    for a class with defaults, ``__post_init__`` or no slots, ``cls`` itself is returned.

    >>> from engine.messages import SegmentChange
    >>> new = positional_constructor(SegmentChange)
    >>> new("s", "c", 1.0, None, "new") == SegmentChange("s", "c", 1.0, None, "new")
    True
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if (
        hasattr(cls, "__post_init__")
        or "__slots__" not in cls.__dict__
        or any(f.default is not MISSING or f.default_factory is not MISSING for f in fields)
    ):
        return cls
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def new({', '.join(f'v{i}' for i in range(len(fields)))}):", "    obj = _new(_cls)"]
    for i, f in enumerate(fields):
        namespace[f"_set{i}"] = cls.__dict__[f.name].__set__
        lines.append(f"    _set{i}(obj, v{i})")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)
    new: Callable[..., _T] = namespace["new"]
    return new


_new_example = positional_constructor(Example)
_new_score_request = positional_constructor(ScoreRequest)
_new_segment_change = positional_constructor(SegmentChange)


class CustomerRecord:
    """A customer's state plus the stage's bookkeeping for it."""

    __slots__ = (
        "state",
        "last_event_ts",
        "last_order_ts",
        "prev_order_ts",
        "next_checkpoint_ts",
        "pending_t0",
        "pending_features",
        "pending_answer",
        "segment",
        "tier",
        "churn_t0s",
        "periods",
        "timers",
    )

    def __init__(self) -> None:
        self.state = CustomerState()
        self.last_event_ts = float("-inf")
        self.last_order_ts: float | None = None
        self.prev_order_ts: float | None = None
        self.next_checkpoint_ts: float | None = None
        self.pending_t0 = array("d")
        self.pending_features = array("f")
        self.pending_answer = array("d")
        """Per pending point: time of the first order in its horizon, NaN while none."""
        self.segment = "prospect"
        self.tier: str | None = None
        """Value tier once the customer has ordered (prospects have none)."""
        self.periods = CustomerPeriods()
        self.churn_t0s = array("d")
        """The newest prediction points labelled 1 (at most MAX_CHURN_T0S), to count
        late orders that would have answered them."""
        self.timers: list[tuple[float, int, str, float]] = []
        """The customer's pending timers as (at, seq, kind, ref): the group's timer heap
        is rebuilt from them on restore, so it is never pickled whole."""

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, values: tuple[Any, ...]) -> None:
        if len(values) == len(self.__slots__) - 1:  # pickled before records held timers
            values = (*values, [])
        for name, value in zip(self.__slots__, values, strict=True):
            setattr(self, name, value)
        points = len(self.pending_t0)
        if points and len(self.pending_features) == points * (_WIDTH - 1):
            self.pending_features = _widened(self.pending_features, points)

    def note_order(self, ts: float) -> None:
        """Keep the two newest order times (exact whatever the arrival order)."""
        if self.last_order_ts is None or ts >= self.last_order_ts:
            self.prev_order_ts, self.last_order_ts = self.last_order_ts, ts
        elif self.prev_order_ts is None or ts > self.prev_order_ts:
            self.prev_order_ts = ts


_ORDER_COUNT_AT = FEATURE_NAMES.index("order_count")


def _widened(flat: array[float], points: int) -> array[float]:
    """Pending points pickled before ``order_days`` (the last feature) was added, with
    it appended to each: their order count, the closest value they keep (equal unless
    two orders fell on one day).

    >>> old = array("f", [float(i) for i in range(2 * (_WIDTH - 1))])
    >>> new = _widened(old, 2)
    >>> len(new) == 2 * _WIDTH, new[_WIDTH - 1] == old[_ORDER_COUNT_AT]
    (True, True)
    >>> new[2 * _WIDTH - 1] == old[_WIDTH - 1 + _ORDER_COUNT_AT]
    True
    """
    width = _WIDTH - 1
    out = array("f")
    for i in range(points):
        row = flat[i * width : (i + 1) * width]
        out.extend(row)
        out.append(row[_ORDER_COUNT_AT])
    return out


@dataclass
class KeyGroupCustomers:
    """All customers of one key group, with its watermark and timers."""

    config: StageConfig
    customers: dict[str, CustomerRecord] = field(default_factory=dict)
    watermark: Watermark = field(init=False)
    timers: TimerHeap = field(default_factory=TimerHeap)
    dedup: EventIdDedup = field(init=False)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    group_id: int = -1
    """The key group number, learned from the first event (Bytewax builders get no key)."""
    cohorts: CohortTable = field(default_factory=CohortTable)
    lifecycle: LifecycleCounts = field(default_factory=LifecycleCounts)
    published_day: float = float("-inf")
    """The event-time day (watermark // DAY) of the last published aggregates."""
    cart_checks: dict[str, float] = field(default_factory=dict)
    """Customer key → time of its pending cart check."""
    orphan_timers: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    """Timers of erased customers still in the heap (number → the timer as a tuple)."""
    _history_cache: dict[str, tuple[int | None, list[dict[str, Any]]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """Per store: the lifecycle history rows as of ``lifecycle.open_week`` (not pickled)."""
    _blobs: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Each customer's record as pickled by the last snapshot."""
    _touched: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    """Customers whose records may have changed since the last snapshot."""

    def __post_init__(self) -> None:
        self.watermark = Watermark(self.config.allowed_lateness_s)
        self.dedup = EventIdDedup(self.config.dedup_retention_s)
        self._touched.update(self.customers)

    # -- snapshots ---------------------------------------------------------------

    def snapshot(self) -> StageSnapshot:
        """An immutable copy of the whole group, cheap to take when nothing is stored.

        Bytewax takes one at the end of every epoch in which the group saw an item,
        with or without recovery, and pickles it only when recovery is on. Each
        customer's record (its pending timers included) is pickled on its own and
        the bytes are kept; a snapshot re-pickles only the customers touched (by an
        event or a timer) since the last one and hands over the others' bytes as
        they are, in a tuple (immutable, no copy). The timer heap is not pickled (it
        is rebuilt from the records on restore) and the event-id dedup pickles as
        two arrays, so the work of a snapshot follows the epoch's activity, not the
        group's size, until recovery stores it. The kept bytes cost about the
        pickled size per customer in memory.
        """
        blobs = self._customer_blobs()
        rest = pickle.dumps(self._state_without_customers(), protocol=pickle.HIGHEST_PROTOCOL)
        return (SNAPSHOT_FORMAT, rest, tuple(blobs), tuple(blobs.values()))

    def _customer_blobs(self) -> dict[str, bytes]:
        """Every customer's pickled record; refreshes the ones touched since the last call."""
        self._blobs = refreshed_blobs(self._blobs, self._touched, self.customers)
        return self._blobs

    def _state_without_customers(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for derived in ("_history_cache", "_blobs", "_touched", "timers", "customers"):
            state.pop(derived, None)
        state["timer_seq"] = self.timers.seq
        return state

    def __getstate__(self) -> dict[str, Any]:
        state = self._state_without_customers()
        state["customers"] = joined_blobs(self._customer_blobs())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        heap: TimerHeap | None = state.pop("timers", None)  # before timers lived in records
        seq = state.pop("timer_seq", 0)
        state.setdefault("orphan_timers", {})
        customers = state["customers"]
        blobs: dict[str, bytes] = {}
        if isinstance(customers, tuple):  # joined blobs (see joined_blobs)
            blobs = split_blobs(customers)
        elif state.pop("customer_blobs", False):  # from a snapshot() tuple
            blobs = customers
        elif state.pop("customers_pickled", False):  # one pickle per customer, older records
            state["customers"] = {key: pickle.loads(blob) for key, blob in customers.items()}
        if blobs:
            state["customers"] = {key: pickle.loads(blob) for key, blob in blobs.items()}
        self.__dict__.update(state)
        self._history_cache = {}
        self._blobs = blobs
        self._touched = set() if blobs else set(self.customers)
        if heap is None:
            self.timers = TimerHeap.rebuild(seq, self._held_timers())
        else:  # the records get the timers: their bytes change
            self.timers = heap
            self._hand_timers_to_records(heap)
            self._blobs = {}
            self._touched = set(self.customers)

    @staticmethod
    def restore(snapshot: StageSnapshot | bytes) -> KeyGroupCustomers:
        """The group of a :meth:`snapshot` (or of a whole-group pickle, older snapshots)."""
        if isinstance(snapshot, bytes):
            group = pickle.loads(snapshot)
            assert isinstance(group, KeyGroupCustomers)
            return group
        version, rest, keys, blobs = snapshot
        if version != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown customer-stage snapshot {version!r}")
        state = pickle.loads(rest)
        state["customers"] = dict(zip(keys, blobs, strict=True))
        state["customer_blobs"] = True
        group = KeyGroupCustomers.__new__(KeyGroupCustomers)
        group.__setstate__(state)
        return group

    def _held_timers(self) -> list[Timer]:
        """Every pending timer, from the records and the erased customers' leftovers."""
        timers = [
            Timer(at, seq, kind, key, ref)
            for key, record in self.customers.items()
            for at, seq, kind, ref in record.timers
        ]
        timers.extend(Timer(*timer) for timer in self.orphan_timers.values())
        return timers

    def _hand_timers_to_records(self, heap: TimerHeap) -> None:
        """Give each record the timers of a heap pickled whole (an older snapshot)."""
        for timer in sorted(heap, key=lambda t: t.seq):
            record = self.customers.get(timer.customer_key)
            if record is None:
                self.orphan_timers[timer.seq] = tuple(timer)
            else:
                record.timers.append((timer.at, timer.seq, timer.kind, timer.ref))

    def _push_timer(
        self, record: CustomerRecord, at: float, kind: str, key: str, ref: float
    ) -> None:
        """Schedule a timer of the customer ``key`` (kept in its record for snapshots)."""
        timer = self.timers.push(at, kind, key, ref)
        record.timers.append((at, timer.seq, kind, ref))

    def _drop_timer(self, record: CustomerRecord | None, timer: Timer) -> None:
        """Forget a timer that was popped from the heap (from its record, or leftovers)."""
        if record is not None:
            try:  # one search in C; the tuple is unique (its number is)
                record.timers.remove((timer.at, timer.seq, timer.kind, timer.ref))
                return
            except ValueError:
                pass
        self.orphan_timers.pop(timer.seq, None)

    # -- events ------------------------------------------------------------------

    def on_event(self, event: Event, amount_base: float) -> list[Any]:
        """Fold one event in; return the outputs it causes (timers included)."""
        ts = event.ts
        counters = self.counters
        if self.dedup.seen_before(event.event_id, ts):
            counters["duplicates"] += 1
            return []
        counters["events"] += 1
        if self.watermark.observe(ts):
            counters["late_events"] += 1
        key = f"{event.store_id}{SEP}{event.customer_id}"
        self._touched.add(key)
        out: list[Any] = []
        if isinstance(event, EraseRequest):
            erased = self.customers.pop(key, None)
            self.cart_checks.pop(key, None)
            if erased is not None:
                counters["erased"] += 1
                for at, seq, kind, ref in erased.timers:  # they stay in the heap
                    self.orphan_timers[seq] = (at, seq, kind, key, ref)
                self.cohorts.remove_customer(event.store_id, erased.periods)
                self.lifecycle.move(event.store_id, erased.segment, None, erased.tier, None)
            out.append(Erased(event.store_id, event.customer_id, ts))
            out.extend(self._fire_timers())
            return out

        record = self.customers.get(key)
        if record is None:
            record = self.customers[key] = CustomerRecord()
            self.lifecycle.move(event.store_id, None, record.segment, None, None)
        in_order = ts >= record.last_event_ts
        if in_order:
            # checkpoints the customer's silence reached before this event
            cart_due = self.cart_checks.get(key, ts)
            while record.next_checkpoint_ts is not None and record.next_checkpoint_ts < ts:
                if cart_due < record.next_checkpoint_ts:  # in time order
                    self._cart_check(key, record, cart_due, out)
                    cart_due = ts
                self._take_checkpoint(key, record, record.next_checkpoint_ts, out)
            if cart_due < ts:
                self._cart_check(key, record, cart_due, out)
        else:
            counters["out_of_order_events"] += 1

        record.state.apply(event, amount_base)
        if in_order:
            record.last_event_ts = ts
        t = record.last_event_ts
        features = feature_vector(record.state, t)
        if isinstance(event, OrderEvent) and event.type == "order_created":
            self.cohorts.add_order(event.store_id, record.periods, ts)
            out.extend(self._on_order(key, record, ts, in_order, features))
            pending = self.cart_checks.get(key)
            if pending is not None and ts >= pending - self.config.cart_check_s:
                del self.cart_checks[key]  # the order closed the cart
        elif event.type == "add_to_cart" and self.config.cart_check_s > 0:
            if key not in self.cart_checks and in_order:
                self.cart_checks[key] = ts + self.config.cart_check_s
                self._push_timer(record, ts + self.config.cart_check_s, "cart", key, ts)
        self._score_request(key, record, t, "event", out, features)
        out.extend(self._fire_timers())
        return out

    def _on_order(
        self,
        key: str,
        record: CustomerRecord,
        ts: float,
        in_order: bool,
        features: dict[str, float],
    ) -> list[Any]:
        out: list[Any] = []
        horizon = self.config.horizon_s
        # answer the pending points this order falls in the horizon of (y = 0); they
        # are emitted when the watermark passes t0 + H, like the points labelled 1,
        # so that the model never learns recent non-churners before recent churners
        for i, t0 in enumerate(record.pending_t0):
            if t0 < ts <= t0 + horizon:
                answered = record.pending_answer[i]
                record.pending_answer[i] = ts if answered != answered else min(answered, ts)
        if any(t0 < ts <= t0 + horizon for t0 in record.churn_t0s):
            # a late order answers a point that was already labelled 1
            self.counters["late_label_flips"] += 1
        previous_last = record.last_order_ts
        record.note_order(ts)
        if record.last_order_ts != previous_last:
            # a newer last order: a new silence, a new checkpoint schedule
            start = max(record.last_order_ts or ts, record.last_event_ts)
            record.next_checkpoint_ts = self._next_checkpoint_after(record, start)
            gap = features["gap_mean_days"] if record.state.order_count >= 2 else None
            self._schedule_segment_timers(key, record, gap)
        if in_order:
            self._add_point(key, record, ts, features)
        else:
            self.counters["points_skipped_out_of_order"] += 1
        return out

    # -- timers ------------------------------------------------------------------

    def advance_to(self, ts: float) -> list[Any]:
        """Move the watermark to ``ts`` (idle wall clock, replay end) and fire timers."""
        self.watermark.advance_to(ts)
        return self._fire_timers()

    def _fire_timers(self) -> list[Any]:
        watermark = self.watermark.value
        pop_next_due = self.timers.pop_next_due
        customers = self.customers
        touched = self._touched
        close_weeks_before = self.lifecycle.close_weeks_before
        drop_timer = self._drop_timer
        out: list[Any] = []
        week = None
        timer = pop_next_due(watermark)
        while timer is not None:
            at, seq, kind, key, ref = timer
            # lifecycle weeks close in event-time order, between the timers (timers pop
            # in time order and closing the same week again changes nothing)
            if (timer_week := week_index(at)) != week:
                close_weeks_before(timer_week)
                week = timer_week
            record = customers.get(key)
            drop_timer(record, timer)
            if record is None:  # erased since
                timer = pop_next_due(watermark)
                continue
            touched.add(key)
            if kind == "label":
                self._resolve(key, record, ref, at, out)
            elif kind == "checkpoint":
                # re-check: the schedule may have moved since this timer was set
                if record.next_checkpoint_ts == ref and record.last_event_ts <= ref:
                    self._take_checkpoint(key, record, ref, out)
            elif kind == "cart":
                if self.cart_checks.get(key) == at:
                    self._cart_check(key, record, at, out)
            elif (
                kind == "segment"
                and ref == record.last_order_ts
                and record.last_event_ts <= at  # a later event was scored already
            ):
                self._score_request(key, record, at, "checkpoint", out)
            timer = pop_next_due(watermark)
        if watermark > float("-inf"):
            close_weeks_before(week_index(watermark))
            if watermark // DAY > self.published_day:
                self.published_day = watermark // DAY
                if self.config.publish_daily:
                    out.extend(self.aggregates_messages())
        self.dedup.prune(watermark)
        return out

    def _next_checkpoint_after(self, record: CustomerRecord, start: float) -> float | None:
        last_order = record.last_order_ts
        if last_order is None:
            return None
        step = self.config.checkpoint_days * DAY
        k = int((start - last_order) // step) + 1
        if k > self.config.max_silent_checkpoints:
            return None
        at = last_order + k * step
        return at

    def _cart_check(self, key: str, record: CustomerRecord, at: float, out: list[Any]) -> None:
        """The pending cart check at ``at``: a score request (into ``out``) for the
        trigger stage."""
        del self.cart_checks[key]
        self._score_request(key, record, at, "cart", out)

    def _take_checkpoint(self, key: str, record: CustomerRecord, at: float, out: list[Any]) -> None:
        """The silent checkpoint at ``at``: a prediction point and a score request (into
        ``out``), then the next checkpoint's timer."""
        features = feature_vector(record.state, at)
        self._add_point(key, record, at, features)
        self._score_request(key, record, at, "checkpoint", out, features)
        record.next_checkpoint_ts = self._next_checkpoint_after(record, at)
        if record.next_checkpoint_ts is not None:
            self._push_timer(
                record, record.next_checkpoint_ts, "checkpoint", key, record.next_checkpoint_ts
            )

    def _schedule_segment_timers(
        self, key: str, record: CustomerRecord, gap_mean_days: float | None
    ) -> None:
        last_order = record.last_order_ts
        if last_order is None:
            return
        if record.next_checkpoint_ts is not None:
            self._push_timer(
                record, record.next_checkpoint_ts, "checkpoint", key, record.next_checkpoint_ts
            )
        silent_days = silent_after_days(gap_mean_days, self.config.horizon_days)
        for days in (silent_days, self.config.horizon_days):
            self._push_timer(record, last_order + days * DAY + 1.0, "segment", key, last_order)

    # -- prediction points and labels -------------------------------------------

    def _add_point(
        self, key: str, record: CustomerRecord, t0: float, features: dict[str, float]
    ) -> None:
        pending_t0 = record.pending_t0
        if t0 in pending_t0:  # same-second orders, or an order at a checkpoint
            return
        if len(pending_t0) >= self.config.max_pending_points:
            self.counters["points_skipped_cap"] += 1
            return
        pending_t0.append(t0)
        record.pending_answer.append(math.nan)
        record.pending_features.extend(features.values())  # in FEATURE_NAMES order
        self._push_timer(record, t0 + self.config.horizon_s, "label", key, t0)
        self.counters["points_created"] += 1

    def _resolve(
        self, key: str, record: CustomerRecord, t0: float, at: float, out: list[Any]
    ) -> None:
        """The watermark passed t0 + H: emit the point into ``out``, y = 0 if an order
        answered it."""
        try:
            i = record.pending_t0.index(t0)
        except ValueError:
            return
        answered = record.pending_answer[i]
        churned = answered != answered  # NaN: no order within the horizon
        start, end = i * _WIDTH, (i + 1) * _WIDTH
        flat = record.pending_features
        store_id, customer_id = key.split(SEP, 1)
        out.append(
            _new_example(
                store_id,
                customer_id,
                t0,
                features_from_values(*flat[start:end]),
                int(churned),
                at if churned else answered,
            )
        )
        del record.pending_t0[i]
        del record.pending_answer[i]
        del flat[start:end]
        if churned:
            self.counters["labels_1"] += 1
            record.churn_t0s.append(t0)
            if len(record.churn_t0s) > MAX_CHURN_T0S:
                del record.churn_t0s[0]
        else:
            self.counters["labels_0"] += 1

    # -- scoring -------------------------------------------------------------------

    def _score_request(
        self,
        key: str,
        record: CustomerRecord,
        t: float,
        cause: str,
        out: list[Any],
        features: dict[str, float] | None = None,
    ) -> None:
        """Append the customer's score request at ``t`` to ``out``, after a
        :class:`SegmentChange` when the lifecycle segment changed."""
        state = record.state
        if features is None:
            features = feature_vector(state, t)
        order_count = state.order_count
        days_since = features["days_since_last_order"] if order_count > 0 else None
        last_gap = None
        if record.last_order_ts is not None and record.prev_order_ts is not None:
            last_gap = (record.last_order_ts - record.prev_order_ts) / DAY
        gap_mean = features["gap_mean_days"] if order_count >= 2 else None
        config = self.config
        segment = lifecycle_segment(
            order_count, days_since, gap_mean, last_gap, config.horizon_days
        )
        tier = (
            value_tier(features["spend_total_base"], config.value_thresholds)
            if order_count > 0
            else None
        )
        store_id, customer_id = key.split(SEP, 1)
        if segment != record.segment or tier != record.tier:
            self.lifecycle.move(store_id, record.segment, segment, record.tier, tier)
            if segment != record.segment:
                out.append(_new_segment_change(store_id, customer_id, t, record.segment, segment))
            record.segment, record.tier = segment, tier
        profile = profile_attributes(state)
        out.append(
            _new_score_request(
                store_id, customer_id, t, features, segment, tier or "low", profile, cause
            )
        )

    def final(self, end_ts: float) -> list[Any]:
        """Close a replay: advance to its end, then score every customer with an order."""
        out = self.advance_to(end_ts)
        self._touched.update(self.customers)
        for key in sorted(self.customers):
            record = self.customers[key]
            if record.state.has_orders:
                self._score_request(key, record, end_ts, "final", out)
        out.extend(self.aggregates_messages(every_store=True))
        return out

    def aggregates_messages(self, every_store: bool = False) -> list[Any]:
        """The counters, and the cohort and lifecycle tables of the stores that changed.

        Published as absolute values (never increments), so a restart that re-emits
        them leaves the sinks as they were.
        """
        stores = set(self.lifecycle.current) if every_store else set()
        stores |= self.cohorts.dirty | self.lifecycle.dirty
        self.cohorts.dirty.clear()
        self.lifecycle.dirty.clear()
        out: list[Any] = [
            GroupAggregates(
                self.group_id,
                store_id,
                self.cohorts.as_dict(store_id),
                self._lifecycle_history(store_id),
            )
            for store_id in sorted(stores)
        ]
        out.append(self.counters_message())
        return out

    def _lifecycle_history(self, store_id: str) -> list[dict[str, Any]]:
        """``lifecycle.history(store_id)``, rebuilt only when a week has closed since.

        The recorded weeks change only in ``close_weeks_before``, which moves
        ``open_week``; in between the rows are the same, and a replay publishes
        them once per key group and event-time day. Each call returns a new list
        of shared row dicts (never mutated).
        """
        open_week = self.lifecycle.open_week
        cached = self._history_cache.get(store_id)
        if cached is None or cached[0] != open_week:
            cached = self._history_cache[store_id] = (open_week, self.lifecycle.history(store_id))
        return list(cached[1])

    def counters_message(self) -> StageCounters:
        counts = dict(self.counters)
        counts["customers"] = len(self.customers)
        counts["timers"] = len(self.timers)
        return StageCounters(self.group_id, counts, self.watermark.value)
