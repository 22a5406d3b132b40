"""Effect tracking of recall messages: sends, engagement, conversions, holdout, uplift.

Plain Python, no Bytewax (the adapter is :mod:`engine.effects_stage`). One
:class:`EffectsGroup` holds the state of one customer key group.

*Touches* are what attribution looks at: a recall send (a ``message_sent``
event with a ``rule_id``, produced by the delivery worker) or a holdout intent
(a :class:`RecallIntent` with ``holdout=True``, at its would-be send time
``send_at``). Each belongs to a *row* ``(rule_id, step, arm, channel)``.

* **Attribution.** A touch at ``ts`` is converted by the *first* order (least
  ``(ts, order_id)``) in ``(ts, ts + window]``; its revenue is that order's
  amount in the base currency. Matching is symmetric and in event time: recent
  orders and touches are kept per customer, and whichever arrives second finds
  the other; an earlier order arriving late replaces a later one. So any arrival
  order gives the same counts, as long as nothing arrives older than the pruning
  horizon ``max event time - window - allowed lateness`` (such records are
  still counted and matched against what is kept, and ``late`` counts them).
* **Holdout intents come the long way** (customer stage → model → trigger
  stage), so in processing order they can trail the orders that reach this
  stage directly by far more than the window (a Kafka batch of 1,000 events
  can span weeks of event time in a backfill). With ``EffectsConfig.gated``
  the horizon is held back to the trigger stage's progress instead: the
  trigger stage of the same key group emits :class:`TriggerProgress` (the
  newest score time it has evaluated) behind its intents, and
  ``on_progress`` lets pruning use ``min(max event time, progress)``. A
  holdout intent emitted after progress ``P`` is due at ``P - lateness`` or
  later (checkpoints fire when the watermark passes them), so it is inside
  the horizon and its orders are still kept.
* **Engagement** (``message_delivered/opened/clicked``) is matched to its send by
  ``message_id``, counted once per send and kind; one that arrives before its
  send waits for it (until the horizon; ``unmatched_engagement`` counts the
  ones that find no send).
* **Orders** are ``order_created`` events; the same ``order_id`` counts once.
* **Refunds** (``order_refunded``, ``amount`` = the refunded sum) are netted
  against their order by ``order_id``: an order's *net* amount is its amount
  minus its refunds (several partial refunds add up; never below 0), and an
  ``order_cancelled`` refunds it in full. Attributed revenue is the net amount.
  A fully refunded (or cancelled) order converts nothing: the touch is
  converted by the first order in its window that is not fully refunded, and
  un-converts (``converted`` - 1) when there is none. Returned goods are not a
  win-back, and the holdout is treated the same way, so the uplift compares
  like with like. A refund that arrives before its order is kept and applied
  when the order comes. Refunds come weeks after the order, so touches and
  the orders in their windows are kept ``refund_window_s`` (30 days) longer
  than the matching horizon; a refund later than that changes nothing.
* **Offer cost** of a converted send: ``percent_off`` of the converting order's
  net amount, plus ``free_shipping_cost`` when the offer had free shipping.
* **Exactly once.** Event ids (and holdout intents' idempotency keys) are
  deduplicated; the counters are absolute and published as snapshots (never
  increments), so a replay after a restart rewrites the same numbers.
* **Erasure** forgets the customer's touches and orders; the counters stay
  (they hold no personal data). Records of the customer no newer than the
  erasure are counted but not kept.

Money is kept in integer units of 1/10,000 of the base currency, so sums are
exact in any order.

>>> g = EffectsGroup(EffectsConfig(window_s=7 * DAY, lateness_s=DAY))
>>> g.on_order("s", "c1", "o1", 5 * DAY, 30.0)     # the order arrives first: kept
set()
>>> g.on_send("s", "c1", "m1", 1 * DAY, RowKey("winback", 0, None, "email"), 10, False)
{'s'}
>>> counts = g.rows["s"][RowKey("winback", 0, None, "email")]
>>> counts["sent"], counts["converted"], counts["revenue"] / MONEY_UNITS
(1, 1, 30.0)
>>> counts["offer_cost"] / MONEY_UNITS
3.0
"""

from __future__ import annotations

import hashlib
import math
import pickle
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.events import EraseRequest, Event, MessageEvent, OrderEvent
from engine.keygroups import EventIdDedup
from engine.pickles import refreshed_blobs
from engine.triggers.intent import RecallIntent

__all__ = [
    "COUNT_FIELDS",
    "DAY",
    "MONEY_UNITS",
    "EffectsConfig",
    "EffectsGroup",
    "EffectsSnapshot",
    "EffectsState",
    "RowKey",
    "first_in_window",
    "newcombe_interval",
    "offer_cost_units",
    "summarize",
    "to_units",
    "wilson_interval",
]

DAY = 86_400.0
MONEY_UNITS = 10_000
"""Money is counted in integer 1/10,000 of the base currency."""
SEP = "\x1f"
SNAPSHOT_VERSION = 3
"""Of :meth:`EffectsGroup.snapshot` (one pickle of the whole group)."""
STATE_FORMAT = "effects/4"
"""Of :meth:`EffectsGroup.epoch_snapshot` (kept per-customer pickles)."""

EffectsState = tuple[str, bytes, tuple[str, ...], tuple[bytes, ...]]
"""What :meth:`EffectsGroup.epoch_snapshot` returns: the format, the group's pickled
state without its customers, and the customers' keys and pickled records."""

COUNT_FIELDS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "revenue",
    "offer_cost",
    "holdout_intents",
    "holdout_converted",
    "holdout_revenue",
)
"""Per row; ``revenue``, ``offer_cost`` and ``holdout_revenue`` in money units."""
META_FIELDS = (
    "late",
    "untracked_sends",
    "unmatched_engagement",
    "duplicates",
    "erased",
)

ENGAGEMENT = {
    "message_delivered": "delivered",
    "message_opened": "opened",
    "message_clicked": "clicked",
}
_FLAGS = {"delivered": 1, "opened": 2, "clicked": 4}


class RowKey(NamedTuple):
    rule_id: str
    step: int | None
    arm: str | None
    channel: str


class Order(NamedTuple):
    ts: float
    order_id: str
    units: int


class Refund(NamedTuple):
    order_id: str
    ts: float
    units: int
    """Refunded money units; ``FULL_REFUND`` for a cancellation."""


FULL_REFUND = 1 << 62


@dataclass(slots=True)
class Touch:
    """A send (``holdout=False``) or a holdout intent, kept while orders can convert it."""

    key: str
    """``message_id`` of a send, idempotency key of a holdout intent."""
    ts: float
    row: RowKey
    holdout: bool
    percent_off: int = 0
    free_shipping: bool = False
    flags: int = 0
    conversion: Order | None = None
    """The converting order, ``units`` = its net amount when it was matched."""


@dataclass(slots=True)
class _Customer:
    touches: list[Touch] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    engagement: dict[str, tuple[int, float]] = field(default_factory=dict)
    """message_id → (flags, newest ts) of engagement that came before its send."""
    refunds: dict[str, Refund] = field(default_factory=dict)
    """Refund (or cancellation) event id → what it refunds."""

    def empty(self) -> bool:
        return not (self.touches or self.orders or self.engagement or self.refunds)

    def net_orders(self) -> list[Order]:
        """Orders with their net amounts (refunds subtracted), fully refunded ones left out.

        >>> c = _Customer(orders=[Order(1.0, "a", 100), Order(2.0, "b", 50)])
        >>> c.refunds = {"r1": Refund("a", 5.0, 30), "r2": Refund("a", 6.0, 20),
        ...              "r3": Refund("b", 7.0, 80)}
        >>> c.net_orders()
        [Order(ts=1.0, order_id='a', units=50)]
        """
        if not self.refunds:
            return self.orders
        refunded: dict[str, int] = {}
        for refund in self.refunds.values():
            refunded[refund.order_id] = refunded.get(refund.order_id, 0) + refund.units
        net = (o._replace(units=o.units - refunded.get(o.order_id, 0)) for o in self.orders)
        return [o for o in net if o.units > 0]


@dataclass(frozen=True, slots=True)
class EffectsConfig:
    window_s: float = 7 * DAY
    lateness_s: float = 3 * DAY
    dedup_retention_s: float = 30 * DAY
    free_shipping_cost_units: int = 0
    refund_window_s: float = 30 * DAY
    """How long after the matching horizon a refund can still undo a conversion."""
    gated: bool = False
    """Hold pruning back to the trigger stage's progress (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class EffectsSnapshot:
    """One key group's absolute counters of one store (the sink overwrites with it)."""

    key_group: int
    store_id: str
    rows: dict[RowKey, dict[str, int]]
    meta: dict[str, int]


def to_units(amount: float) -> int:
    """Money to integer units.

    >>> to_units(12.34), to_units(0.00005)
    (123400, 0)
    """
    return round(amount * MONEY_UNITS)


def offer_cost_units(units: int, percent_off: int, free_shipping: bool, shipping: int) -> int:
    """The offer's cost on an order of ``units`` (half up, exact in integers).

    >>> offer_cost_units(123_450, 10, False, 0), offer_cost_units(100_000, 0, True, 50_000)
    (12345, 50000)
    """
    return (units * percent_off + 50) // 100 + (shipping if free_shipping else 0)


def first_in_window(ts: float, orders: list[Order], window_s: float) -> Order | None:
    """The first order in ``(ts, ts + window]`` (least ``(ts, order_id)``), if any.

    >>> orders = [Order(9.0, "b", 1), Order(3.0, "a", 1), Order(1.0, "z", 1)]
    >>> first_in_window(1.0, orders, 5.0)
    Order(ts=3.0, order_id='a', units=1)
    >>> first_in_window(3.0, orders, 5.0) is None   # 9 is past 3 + 5; 3 itself is not after
    True
    """
    best: Order | None = None
    for order in orders:
        if ts < order.ts <= ts + window_s and (best is None or order[:2] < best[:2]):
            best = order
    return best


_PICKLED = ("rows", "meta", "dedup", "tombstones", "max_ts", "pruned_to", "progress")
"""The group's state besides its config, key group and customers, in pickled order."""


def _sizes(record: _Customer) -> tuple[int, int, int, int]:
    return len(record.touches), len(record.orders), len(record.refunds), len(record.engagement)


def _tombstone(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class EffectsGroup:
    """The effect-tracking state of one key group. Methods return the stores they changed."""

    def __init__(self, config: EffectsConfig, group_id: int = -1) -> None:
        self.config = config
        self.group_id = group_id
        self.customers: dict[str, _Customer] = {}
        self.rows: dict[str, dict[RowKey, dict[str, int]]] = {}
        self.meta: dict[str, dict[str, int]] = {}
        self.dedup = EventIdDedup(config.dedup_retention_s)
        self.tombstones: dict[int, float] = {}
        self.max_ts = float("-inf")
        self.pruned_to = float("-inf")
        self.progress = float("-inf")
        """Newest score time the trigger stage reported (used when ``config.gated``)."""
        self._blobs: dict[str, bytes] = {}
        """Each customer's record as pickled by the last :meth:`epoch_snapshot`."""
        self._touched: set[str] = set()
        """Customers whose records may have changed since the last epoch snapshot."""

    # -- counters -------------------------------------------------------------------

    def _counts(self, store: str, row: RowKey) -> dict[str, int]:
        rows = self.rows.setdefault(store, {})
        counts = rows.get(row)
        if counts is None:
            counts = rows[row] = dict.fromkeys(COUNT_FIELDS, 0)
        return counts

    def _meta(self, store: str, name: str) -> set[str]:
        meta = self.meta.setdefault(store, dict.fromkeys(META_FIELDS, 0))
        meta[name] += 1
        return {store}

    @property
    def horizon(self) -> float:
        """Records older than this are no longer needed (nor expected)."""
        newest = min(self.max_ts, self.progress) if self.config.gated else self.max_ts
        return newest - self.config.window_s - self.config.lateness_s

    def _observe(self, store: str, ts: float) -> None:
        if ts < self.horizon:
            self._meta(store, "late")
        if ts > self.max_ts:
            self.max_ts = ts
            if self.horizon - self.pruned_to >= DAY:
                self.prune()

    # -- input ---------------------------------------------------------------------

    def on_event(self, event: Event, amount_base: float) -> set[str]:
        """A decoded event (order, message or erasure; others change nothing)."""
        if not isinstance(event, (OrderEvent, MessageEvent, EraseRequest)):
            return set()
        if isinstance(event, OrderEvent) and event.type == "order_paid":
            return set()
        store, customer, ts = event.store_id, event.customer_id, event.ts
        if self.dedup.seen_before(event.event_id, ts):
            return self._meta(store, "duplicates")
        if isinstance(event, EraseRequest):
            return self.on_erase(store, customer, ts)
        if isinstance(event, OrderEvent):
            if event.type == "order_created":
                return self.on_order(store, customer, event.order_id, ts, amount_base)
            full = event.type == "order_cancelled"
            refund = Refund(event.order_id, ts, FULL_REFUND if full else to_units(amount_base))
            return self.on_refund(store, customer, event.event_id, refund)
        if event.type == "message_sent":
            if event.rule_id is None:
                return self._meta(store, "untracked_sends")
            row = RowKey(event.rule_id, event.step, event.variant, event.channel)
            key = event.message_id or event.event_id
            percent, shipping = event.offer_percent_off or 0, bool(event.offer_free_shipping)
            return self.on_send(store, customer, key, ts, row, percent, shipping)
        kind = ENGAGEMENT.get(event.type)
        if kind is None:
            return set()
        if event.message_id is None:
            return self._meta(store, "unmatched_engagement")
        return self.on_engagement(store, customer, event.message_id, kind, ts)

    def on_progress(self, t: float) -> set[str]:
        """The trigger stage evaluated every score up to ``t`` (changes no counter)."""
        if t > self.progress:
            self.progress = t
            if self.horizon - self.pruned_to >= DAY:
                self.prune()
        return set()

    def on_holdout(self, intent: RecallIntent) -> set[str]:
        """A holdout intent from the trigger stage (other intents change nothing)."""
        if not intent.holdout:
            return set()
        key = intent.idempotency_key
        store = intent.store_id
        if self.dedup.seen_before(f"holdout:{key}", intent.send_at):
            return self._meta(store, "duplicates")
        row = RowKey(intent.rule_id, intent.step, intent.variant, intent.channel)
        touch = Touch(key, intent.send_at, row, holdout=True)
        return self._add_touch(store, intent.customer_id, touch)

    def on_send(
        self,
        store: str,
        customer: str,
        key: str,
        ts: float,
        row: RowKey,
        percent_off: int,
        free_shipping: bool,
    ) -> set[str]:
        touch = Touch(key, ts, row, False, percent_off, free_shipping)
        return self._add_touch(store, customer, touch)

    def _add_touch(self, store: str, customer: str, touch: Touch) -> set[str]:
        self._observe(store, touch.ts)
        ckey = f"{store}{SEP}{customer}"
        self._touched.add(ckey)
        erased = self._erased(ckey, touch.ts)
        record = self.customers.get(ckey) or _Customer()
        if any(t.key == touch.key and t.holdout == touch.holdout for t in record.touches):
            return self._meta(store, "duplicates")
        counts = self._counts(store, touch.row)
        counts["holdout_intents" if touch.holdout else "sent"] += 1
        if erased:  # counted, not kept
            return {store}
        self.customers[ckey] = record
        record.touches.append(touch)
        self._rematch(counts, touch, record.net_orders())
        if not touch.holdout:
            flags, _ = record.engagement.pop(touch.key, (0, 0.0))
            self._engage(counts, touch, flags)
        return {store}

    def on_order(
        self, store: str, customer: str, order_id: str, ts: float, amount_base: float
    ) -> set[str]:
        self._observe(store, ts)
        ckey = f"{store}{SEP}{customer}"
        self._touched.add(ckey)
        if self._erased(ckey, ts):
            return set()
        record = self.customers.setdefault(ckey, _Customer())
        if any(o.order_id == order_id for o in record.orders):
            return self._meta(store, "duplicates")
        record.orders.append(Order(ts, order_id, to_units(amount_base)))
        return self._rematch_around(store, record, ts)

    def on_refund(self, store: str, customer: str, refund_id: str, refund: Refund) -> set[str]:
        """A refund or cancellation (``refund_id``: its event id) of one of the orders."""
        self._observe(store, refund.ts)
        ckey = f"{store}{SEP}{customer}"
        self._touched.add(ckey)
        if self._erased(ckey, refund.ts):
            return set()
        record = self.customers.setdefault(ckey, _Customer())
        if refund_id in record.refunds:
            return self._meta(store, "duplicates")
        record.refunds[refund_id] = refund
        for order in record.orders:
            if order.order_id == refund.order_id:
                return self._rematch_around(store, record, order.ts)
        return set()  # kept until its order comes

    def on_engagement(
        self, store: str, customer: str, message_id: str, kind: str, ts: float
    ) -> set[str]:
        self._observe(store, ts)
        ckey = f"{store}{SEP}{customer}"
        self._touched.add(ckey)
        if self._erased(ckey, ts):
            return self._meta(store, "unmatched_engagement")
        record = self.customers.setdefault(ckey, _Customer())
        for touch in record.touches:
            if touch.key == message_id and not touch.holdout:
                return (
                    {store}
                    if self._engage(self._counts(store, touch.row), touch, _FLAGS[kind])
                    else set()
                )
        flags, seen = record.engagement.get(message_id, (0, ts))
        record.engagement[message_id] = (flags | _FLAGS[kind], max(seen, ts))
        return set()

    def on_erase(self, store: str, customer: str, ts: float) -> set[str]:
        ckey = f"{store}{SEP}{customer}"
        self._observe(store, ts)
        self._touched.add(ckey)
        self.customers.pop(ckey, None)
        hashed = _tombstone(ckey)
        self.tombstones[hashed] = max(ts, self.tombstones.get(hashed, ts))
        return self._meta(store, "erased")

    # -- matching ------------------------------------------------------------------

    def _rematch_around(self, store: str, record: _Customer, order_ts: float) -> set[str]:
        """Re-match the touches whose window holds an order at ``order_ts``."""
        changed: set[str] = set()
        net: list[Order] | None = None
        for touch in record.touches:
            if touch.ts < order_ts <= touch.ts + self.config.window_s:
                net = record.net_orders() if net is None else net
                if self._rematch(self._counts(store, touch.row), touch, net):
                    changed.add(store)
        return changed

    def _rematch(self, counts: dict[str, int], touch: Touch, net_orders: list[Order]) -> bool:
        """Make the first net order in the touch's window its conversion; True if changed."""
        new = first_in_window(touch.ts, net_orders, self.config.window_s)
        old = touch.conversion
        if new == old:
            return False
        prefix = "holdout_" if touch.holdout else ""
        if old is not None:
            counts[f"{prefix}revenue"] -= old.units
            if not touch.holdout:
                counts["offer_cost"] -= self._offer_cost(touch, old)
        if new is not None:
            counts[f"{prefix}revenue"] += new.units
            if not touch.holdout:
                counts["offer_cost"] += self._offer_cost(touch, new)
        if (old is None) != (new is None):
            counts[f"{prefix}converted"] += 1 if old is None else -1
        touch.conversion = new
        return True

    def _offer_cost(self, touch: Touch, order: Order) -> int:
        return offer_cost_units(
            order.units,
            touch.percent_off,
            touch.free_shipping,
            self.config.free_shipping_cost_units,
        )

    @staticmethod
    def _engage(counts: dict[str, int], touch: Touch, flags: int) -> bool:
        new = flags & ~touch.flags
        touch.flags |= flags
        for kind, bit in _FLAGS.items():
            if new & bit:
                counts[kind] += 1
        return bool(new)

    def _erased(self, ckey: str, ts: float) -> bool:
        if not self.tombstones:
            return False
        erased_at = self.tombstones.get(_tombstone(ckey))
        return erased_at is not None and ts <= erased_at

    # -- memory --------------------------------------------------------------------

    def prune(self) -> None:
        """Forget what the horizon is past: touches, orders, refunds, pending engagement
        and tombstones. Converted touches, the orders in their windows and those
        orders' refunds stay ``refund_window_s`` longer, for refunds to undo them."""
        horizon = self.horizon
        self.pruned_to = horizon
        refund_horizon = horizon - self.config.refund_window_s
        window = self.config.window_s
        for ckey in list(self.customers):
            record = self.customers[ckey]
            sizes = _sizes(record)
            record.touches = [
                t
                for t in record.touches
                if t.ts >= horizon or (t.conversion is not None and t.ts >= refund_horizon)
            ]
            kept = [t.ts for t in record.touches if t.ts < horizon]
            record.orders = [
                o
                for o in record.orders
                if o.ts >= horizon or any(ts < o.ts <= ts + window for ts in kept)
            ]
            if record.refunds:
                ids = {o.order_id for o in record.orders}
                record.refunds = {
                    rid: r
                    for rid, r in record.refunds.items()
                    if r.ts >= horizon or r.order_id in ids
                }
            for message_id, (_, ts) in list(record.engagement.items()):
                if ts < horizon:
                    del record.engagement[message_id]
                    store = ckey.partition(SEP)[0]
                    self._meta(store, "unmatched_engagement")
            if _sizes(record) != sizes:  # pruning only removes
                self._touched.add(ckey)
            if record.empty():
                del self.customers[ckey]
                self._touched.add(ckey)
        self.tombstones = {h: at for h, at in self.tombstones.items() if at >= horizon}
        self.dedup.prune(self.max_ts - self.config.lateness_s)

    # -- output and recovery -------------------------------------------------------

    def snapshots(self, stores: set[str] | None = None) -> list[EffectsSnapshot]:
        """Absolute counters of the given stores (every store by default)."""
        names = sorted(self.rows.keys() | self.meta.keys() if stores is None else stores)
        return [
            EffectsSnapshot(
                self.group_id,
                store,
                {row: dict(counts) for row, counts in self.rows.get(store, {}).items()},
                dict(self.meta.get(store) or dict.fromkeys(META_FIELDS, 0)),
            )
            for store in names
        ]

    def epoch_snapshot(self) -> EffectsState:
        """An immutable copy of the group, cheap to take when nothing is stored.

        What the Bytewax step returns at every epoch close (see
        :meth:`engine.customers.KeyGroupCustomers.snapshot`, the same technique):
        each customer's record is pickled on its own and the bytes are kept; only
        the records changed since the last call (by an item or by pruning) are
        pickled again, the others' bytes are handed over as they are, in a tuple.
        The counters, the event-id dedup (two arrays) and the tombstones are
        pickled whole: they are small beside the records. Restore with
        :meth:`restore`.
        """
        blobs = self._customer_blobs()
        rest = pickle.dumps(self._state_without_customers(), protocol=pickle.HIGHEST_PROTOCOL)
        return (STATE_FORMAT, rest, tuple(blobs), tuple(blobs.values()))

    def _customer_blobs(self) -> dict[str, bytes]:
        """Every customer's pickled record; refreshes the ones touched since the last call."""
        self._blobs = refreshed_blobs(self._blobs, self._touched, self.customers)
        return self._blobs

    def _state_without_customers(self) -> tuple[Any, ...]:
        return (self.config, self.group_id, *(getattr(self, name) for name in _PICKLED))

    def _set_pickled(self, values: list[Any]) -> None:
        for name, value in zip(_PICKLED, values, strict=True):
            setattr(self, name, value)

    def snapshot(self) -> bytes:
        """The whole group as one pickle (the form snapshots had before
        :meth:`epoch_snapshot`; :meth:`restore` takes both)."""
        config, group_id, *rest = self._state_without_customers()
        state = (SNAPSHOT_VERSION, config, group_id, self.customers, *rest)
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(
        cls, data: EffectsState | bytes, config: EffectsConfig | None = None
    ) -> EffectsGroup:
        """The group of a snapshot (either form); ``config`` (today's settings) replaces
        the pickled one."""
        if isinstance(data, tuple):
            return cls._restore_state(data, config)
        version, pickled_config, group_id, customers, *rest = pickle.loads(data)
        if version not in (1, 2, SNAPSHOT_VERSION):
            raise ValueError(f"unknown effects snapshot version {version!r}")
        if version == 1:  # before trigger progress was tracked
            rest.append(float("-inf"))
        group = cls(config or pickled_config, group_id)
        group.customers = customers
        group._set_pickled(rest)
        if version < 3:  # before refunds were kept
            for record in group.customers.values():
                record.refunds = {}
        group._touched.update(group.customers)
        return group

    @classmethod
    def _restore_state(cls, data: EffectsState, config: EffectsConfig | None) -> EffectsGroup:
        version, rest, keys, blobs = data
        if version != STATE_FORMAT:
            raise ValueError(f"unknown effects snapshot format {version!r}")
        pickled_config, group_id, *pickled = pickle.loads(rest)
        group = cls(config or pickled_config, group_id)
        group._set_pickled(pickled)
        group._blobs = dict(zip(keys, blobs, strict=True))
        group.customers = {key: pickle.loads(blob) for key, blob in group._blobs.items()}
        return group


# -- read side: rates, uplift, ROI ----------------------------------------------------

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``n`` > 0).

    Newcombe (1998), *Two-sided confidence intervals for the single proportion*:

    >>> [round(x, 4) for x in wilson_interval(81, 263)]
    [0.2553, 0.3662]
    """
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: int, n1: int, x0: int, n0: int, z: float = Z95) -> tuple[float, float]:
    """95% CI of ``x1/n1 - x0/n0`` by Newcombe's hybrid score method (his method 10).

    Built from the two Wilson intervals, it stays inside [-1, 1] and behaves at
    small counts and at rates near 0 or 1, where the Wald interval does not.

    The worked examples of Newcombe (1998), Statistics in Medicine 17:873-890:

    >>> [round(x, 4) for x in newcombe_interval(56, 70, 48, 80)]
    [0.0524, 0.3339]
    >>> [round(x, 4) for x in newcombe_interval(5, 56, 0, 29)]
    [-0.0381, 0.1926]
    """
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_interval(x1, n1, z)
    l0, u0 = wilson_interval(x0, n0, z)
    diff = p1 - p0
    lower = diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    upper = diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return lower, upper


def _rate(x: int, n: int) -> float | None:
    return round(x / n, 4) if n else None


def _money(units: int | float) -> float:
    return round(units / MONEY_UNITS, 4)


def summarize(key: RowKey, counts: dict[str, int], send_cost: float) -> dict[str, Any]:
    """One ``/campaigns`` row: counts, rates, uplift with its CI, incremental revenue, ROI.

    ``send_cost`` is the cost of one message on the row's channel. Incremental
    revenue is ``revenue - sent * holdout revenue per holdout intent``; ROI is
    ``(incremental revenue - offer cost - send cost) / (offer cost + send cost)``.
    Whatever has a zero denominator (no sends, no holdout, no cost) is ``None``.

    >>> c = dict.fromkeys(COUNT_FIELDS, 0) | {"sent": 120, "converted": 14,
    ...      "revenue": 12_345_000, "offer_cost": 800_000, "holdout_intents": 40,
    ...      "holdout_converted": 2, "holdout_revenue": 1_500_000}
    >>> row = summarize(RowKey("winback", 0, "A", "email"), c, send_cost=0.0)
    >>> row["conversion_rate"], row["uplift"], row["uplift_ci"], row["incremental_revenue"]
    (0.1167, 0.0667, [-0.0572, 0.1452], 784.5)
    >>> row["roi"], row["holdout"]
    (8.8063, {'intents': 40, 'converted': 2, 'revenue': 150.0})
    """
    sent, intents = counts["sent"], counts["holdout_intents"]
    converted, held_converted = counts["converted"], counts["holdout_converted"]
    uplift = ci = incremental = roi = None
    if sent and intents:
        uplift = round(converted / sent - held_converted / intents, 4)
        ci = [
            round(bound, 4) for bound in newcombe_interval(converted, sent, held_converted, intents)
        ]
        incremental_units = counts["revenue"] - sent * counts["holdout_revenue"] / intents
        incremental = _money(incremental_units)
        cost = counts["offer_cost"] / MONEY_UNITS + sent * send_cost
        if cost > 0:
            roi = round((incremental_units / MONEY_UNITS - cost) / cost, 4)
    return {
        "rule_id": key.rule_id,
        "step": key.step,
        "arm": key.arm,
        "channel": key.channel,
        "sent": sent,
        "delivered": counts["delivered"],
        "opened": counts["opened"],
        "clicked": counts["clicked"],
        "converted": converted,
        "revenue": _money(counts["revenue"]),
        "offer_cost": _money(counts["offer_cost"]),
        "send_cost": round(sent * send_cost, 4),
        "holdout": {
            "intents": intents,
            "converted": held_converted,
            "revenue": _money(counts["holdout_revenue"]),
        },
        "conversion_rate": _rate(converted, sent),
        "holdout_conversion_rate": _rate(held_converted, intents),
        "uplift": uplift,
        "uplift_ci": ci,
        "incremental_revenue": incremental,
        "roi": roi,
    }
