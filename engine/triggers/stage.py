"""The trigger stage: scored customers in, recall intents out.

Plain Python (:class:`TriggerStage`), adapted to Bytewax by :class:`TriggerLogic`
(keyed by the customer stage's key group, so a customer's scores arrive in the
order the customer stage emitted them).

For every ``Scored`` item with ``cause`` ``event``, ``checkpoint`` or ``cart`` (never the
``final`` scores that close a replay) the stage builds a :class:`CustomerView`,
evaluates the store's rules at the score's *event time* ``request.t`` and
records every emitted intent (holdout ones too) in the customer's send history,
so caps, cooldowns and the ``already_sent`` check hold across scores. The wall
clock is never read: a replay gives the same intents and the same idempotency
keys as the live run.

What the score does not carry, and how the stage fills it in:

* ``last_order_ts``: ``t - days_since_last_order`` (rounded to the millisecond).
  The customer stage computes features at ``max(t, newest event applied)``, so
  this is exact for event and checkpoint scores and can only be *too early*
  otherwise; the stage keeps the latest value seen for the same
  ``order_count``, so the estimate never moves backwards within one silence
  and due times (hence keys) stay stable.
* ``open_cart_since_ts``: the features only say whether a cart is open
  (``open_cart``), not since when. The stage remembers the event time of the
  first score that showed the cart open (normally the ``add_to_cart`` event's
  own score) and forgets it when the cart closes or a later order arrives.
  The stage has no timers of its own: the cart rule fires only if a score of
  the customer arrives between ``after_hours`` and ``after_hours + grace_hours``
  after that. The customer stage makes sure one does: a ``cart`` score
  ``CHURNFLOW_CART_CHECK_HOURS`` after the cart opened (cancelled by an order);
  dormancy steps at multiples of ``checkpoint_days`` are reached by its
  checkpoint scores.
* ``churn_probability``: only a warm model's score is used (a cold model scores
  the prior; a jump from prior to first real score is not a "rise"); cold
  scores give ``None``, so risk rules do not fire on them.
* ``favourite_categories`` / ``last_products``: not in the features; empty.

Scores older than the newest one already evaluated for the customer are
skipped (their features can be newer than their time).

Erasure: ``Erased`` reaches this stage directly from the customer stage while
the customer's last scores may still be in the model stage. The stage forgets
the customer and keeps a tombstone (a 64-bit hash of the customer's key and the
erasure's event time) so that such in-flight scores do not recreate it; a
score newer than the erasure (the customer came back) clears the tombstone.
Tombstones are dropped ``TOMBSTONE_S`` of event time after the erasure.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bytewax.operators import StatefulLogic

from engine.errors import ConfigError
from engine.events import CHANNELS
from engine.keygroups import key_group
from engine.messages import Erased, Scored
from engine.triggers.caps import DAY, CapPolicy, SendHistory, record
from engine.triggers.engine import HOUR, CustomerView, evaluate_detailed
from engine.triggers.intent import RecallIntent
from engine.triggers.rules import (
    AbandonedCartRule,
    DormancyRule,
    FirstOrderFollowupRule,
    RiskRule,
    RulesError,
    RuleSet,
    cart_window_misses,
    load_rules,
)

__all__ = [
    "TRIGGER_CAUSES",
    "RulesBook",
    "TriggerLogic",
    "TriggerProgress",
    "TriggerSnapshot",
    "TriggerStage",
    "StoreRules",
    "build_trigger_logic",
    "prune_history",
    "store_rules",
    "trigger_key",
    "view_from_scored",
]

log = logging.getLogger(__name__)

TRIGGER_CAUSES = frozenset({"event", "checkpoint", "cart"})
"""Score causes that may trigger messages (``final`` replay scores do not)."""

SEP = "\x1f"
SNAPSHOT_VERSION = 1
"""Of :meth:`TriggerStage.snapshot_bytes` (one pickle of the whole state)."""
STATE_FORMAT = "triggers/2"
"""Of a pickled :class:`TriggerSnapshot` (one pickle per customer)."""
TOMBSTONE_S = 7 * 86_400.0
"""How long (event time) scores that were in flight at an erasure are refused."""
_EMPTY = SendHistory()
_SAFE_STORE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def derived_last_order_ts(scored: Scored) -> float | None:
    """``t - days_since_last_order`` to the millisecond; ``None`` without orders."""
    features = scored.request.features
    if features.get("order_count", 0.0) < 1:
        return None
    days = features.get("days_since_last_order")
    if days is None:
        return None
    return round(scored.request.t - days * DAY, 3)


def view_from_scored(
    scored: Scored,
    previous_probability: float | None,
    *,
    last_order_ts: float | None = None,
    open_cart_since_ts: float | None = None,
) -> CustomerView:
    """The trigger engine's view of a scored customer.

    ``last_order_ts`` defaults to the value derived from the features (see the
    module docstring); ``open_cart_since_ts`` cannot be derived from one score
    and defaults to ``None`` (the stage tracks it across scores). A cold
    model's probability is dropped (``churn_probability=None``).
    """
    request = scored.request
    features, profile = request.features, request.profile
    order_count = int(features.get("order_count", 0.0))
    has_orders = order_count > 0
    if last_order_ts is None:
        last_order_ts = derived_last_order_ts(scored)
    consent: dict[str, bool] = {}
    for channel in CHANNELS:
        value = profile.get(f"consent_{channel}")
        if isinstance(value, bool):
            consent[channel] = value
    return CustomerView(
        store_id=request.store_id,
        customer_id=request.customer_id,
        segment=request.segment,
        value_tier=request.value_tier,
        churn_probability=scored.churn_probability if scored.model_warm else None,
        previous_probability=previous_probability,
        days_since_last_order=features.get("days_since_last_order") if has_orders else None,
        last_order_ts=last_order_ts if has_orders else None,
        order_count=order_count,
        spend=features.get("spend_total_base", 0.0),
        avg_order_value=features.get("avg_order_value") if has_orders else None,
        country=_str_or_none(profile.get("country")),
        timezone=_str_or_none(profile.get("timezone")),
        locale=_str_or_none(profile.get("locale")),
        source=_str_or_none(profile.get("source")),
        consent=consent,
        first_name=_str_or_none(profile.get("first_name")),
        open_cart_since_ts=open_cart_since_ts,
    )


class StoreRules(NamedTuple):
    rules: RuleSet
    policy: CapPolicy
    key_lifetimes: dict[str, float | None]
    """Rule id → how long after its due time a key can be produced again
    (``None``: while the last order is the due time, i.e. a risk rule)."""


def key_lifetimes(rules: RuleSet) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for rule in rules.rules:
        if isinstance(rule, RiskRule):
            out[rule.id] = None
        elif isinstance(rule, (DormancyRule, FirstOrderFollowupRule)):
            out[rule.id] = rule.grace_days * DAY
        elif isinstance(rule, AbandonedCartRule):
            out[rule.id] = rule.grace_hours * HOUR
    return out


def store_rules(rules: RuleSet) -> StoreRules:
    return StoreRules(rules, rules.cap_policy(), key_lifetimes(rules))


def _due_of(key: str) -> float | None:
    """The nominal due time at the end of an idempotency key (see ``intent.py``)."""
    tail = key.rpartition(":")[2]
    return int(tail) / 1000 if tail.lstrip("-").isdigit() else None


def prune_history(
    history: SendHistory, now: float, store: StoreRules, last_order_ts: float | None
) -> SendHistory:
    """Drop the sends that neither a cap nor the ``already_sent`` check can need again.

    ``record(..., policy)`` prunes by the caps' horizon only, which can forget a
    key its rule would still produce (a dormancy step is due for ``grace_days``,
    a risk rule for the whole silence). A send is kept while it is inside the
    caps' horizon of ``now`` or its key can still be produced.
    """
    sends = history.sends
    horizon = now - store.policy.horizon
    if not sends or sends[0].ts >= horizon:
        return history
    kept = []
    dropped_until = history.pruned_until
    last_ms = round(last_order_ts * 1000) if last_order_ts is not None else None
    for send in sends:
        keep = send.ts >= horizon
        due = _due_of(send.key) if not keep else None
        if due is not None and send.rule_id in store.key_lifetimes:
            lifetime = store.key_lifetimes[send.rule_id]
            if lifetime is None:
                keep = last_ms is not None and round(due * 1000) == last_ms
            else:
                keep = now <= due + lifetime
        if keep:
            kept.append(send)
        else:
            dropped_until = send.ts if dropped_until is None else max(dropped_until, send.ts)
    if len(kept) == len(sends):
        return history
    return SendHistory(tuple(kept), dropped_until)


class RulesBook:
    """Rule sets by store, loaded once per process from ``rules_dir``.

    ``rules_dir/<store>.yaml`` if it exists, else ``rules_dir/default.yaml``
    (its ``store_id`` replaced by the store's); neither → no rules. A file that
    does not validate is logged and the store gets no rules (one store's typo
    must not stop every store); call :meth:`preload` at start-up to fail fast.
    Picklable: the cache is not pickled.
    """

    def __init__(self, rules_dir: str | Path) -> None:
        self.rules_dir = Path(rules_dir)
        self._cache: dict[str, StoreRules | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"rules_dir": self.rules_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rules_dir = state["rules_dir"]
        self._cache = {}

    def path_for(self, store_id: str) -> Path | None:
        if _SAFE_STORE.match(store_id) and store_id != "default":
            own = self.rules_dir / f"{store_id}.yaml"
            if own.is_file():
                return own
        default = self.rules_dir / "default.yaml"
        return default if default.is_file() else None

    def get(self, store_id: str) -> StoreRules | None:
        """The store's rules (with their cap policy), or ``None``."""
        try:
            return self._cache[store_id]
        except KeyError:
            pass
        entry: StoreRules | None = None
        path = self.path_for(store_id)
        if path is not None:
            try:
                rules = load_rules(path)
            except RulesError as exc:
                log.error("store %s: rules not usable, no recalls: %s", store_id, exc)
            else:
                if rules.store_id != store_id:
                    rules = rules.model_copy(update={"store_id": store_id})
                entry = store_rules(rules)
        self._cache[store_id] = entry
        return entry

    def preload(self) -> list[str]:
        """Load and validate every ``*.yaml`` of the directory; raises ``RulesError``."""
        names = []
        for path in sorted(self.rules_dir.glob("*.yaml")):
            rules = load_rules(path)
            names.append(path.stem)
            if path.stem != "default":
                self._cache[path.stem] = store_rules(rules)
        return names

    def check_cart_hours(self, check_hours: float) -> None:
        """``ConfigError`` unless a cart check ``check_hours`` after a cart opened (the
        customer stage's cart timer, ``CHURNFLOW_CART_CHECK_HOURS``) lies in the window of
        every enabled abandoned-cart rule of every rules file. ``0`` (no cart timer) and
        files that do not load (reported by :meth:`get` / :meth:`preload`) pass."""
        if check_hours <= 0:
            return
        for path in sorted(self.rules_dir.glob("*.yaml")):
            try:
                misses = cart_window_misses(load_rules(path), check_hours)
            except RulesError:
                continue
            if misses:
                raise ConfigError(
                    f"{path}: {'; '.join(misses)}: set CHURNFLOW_CART_CHECK_HOURS inside "
                    "every abandoned-cart rule's window (after_hours .. after_hours + "
                    "grace_hours) or change the rule"
                )


class _Customer(NamedTuple):
    """What the stage keeps per customer (a plain tuple when pickled)."""

    last_t: float
    probability: float | None
    """Latest warm churn probability (``previous_probability`` of the next score)."""
    order_count: int
    last_order_ts: float | None
    cart_since: float | None
    history: SendHistory | None
    """``None`` while nothing was sent."""


COUNTER_NAMES = (
    "scores",
    "ignored_final",
    "stale_scores",
    "no_rules",
    "intents",
    "holdout_intents",
    "blocked",
    "erased",
    "erased_in_flight",
)


def _tombstone(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


TriggerState = tuple[str, tuple[str, ...], tuple[bytes, ...], dict[int, float], dict[str, int]]
"""A :class:`TriggerSnapshot` once pickled and loaded: the format, the customers' keys
and pickled entries, the tombstones and the counters."""


class _PickleCache:
    """Customer key → (the entry last pickled, its bytes), shared by a stage's snapshots."""

    __slots__ = ("entries",)

    def __init__(self, entries: dict[str, tuple[_Customer, bytes]] | None = None) -> None:
        self.entries = entries or {}


class TriggerSnapshot:
    """The state of a :class:`TriggerStage` at one instant, pickled only if asked.

    Bytewax takes one at every epoch close, with or without recovery, and pickles
    it only when recovery is on. A customer's entry is an immutable tuple that an
    item replaces, never changes, so the snapshot is shallow copies of the dicts
    (no pickling). When pickled, each entry is pickled on its own and the bytes
    are kept with the entry they came from: the next snapshot re-pickles only the
    entries that are not the same objects any more (the customers scored since;
    the bytes of erased ones are dropped). It pickles as a plain
    :data:`TriggerState` tuple, which :meth:`TriggerStage.restore` takes.
    """

    __slots__ = ("customers", "tombstones", "counters", "_cache")

    def __init__(self, stage: TriggerStage) -> None:
        self.customers = dict(stage.customers)
        self.tombstones = dict(stage.tombstones)
        self.counters = dict(stage.counters)
        self._cache = stage._pickles

    def state(self) -> TriggerState:
        """The snapshot as plain data (what it pickles as)."""
        customers, kept = self.customers, self._cache.entries
        blobs: list[bytes] = []
        for key, customer in customers.items():
            entry = kept.get(key)
            if entry is None or entry[0] is not customer:
                blob = pickle.dumps(customer, protocol=pickle.HIGHEST_PROTOCOL)
                entry = kept[key] = (customer, blob)
            blobs.append(entry[1])
        if len(kept) > len(customers):  # customers erased since: forget their bytes
            self._cache.entries = {key: kept[key] for key in customers}
        return (STATE_FORMAT, tuple(customers), tuple(blobs), self.tombstones, self.counters)

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (self.state(),))


class TriggerStage:
    """The trigger state of one key group: per customer, send history and last score."""

    def __init__(self, rules: RulesBook | str | Path) -> None:
        self.rules = rules if isinstance(rules, RulesBook) else RulesBook(rules)
        self.customers: dict[str, _Customer] = {}
        self.tombstones: dict[int, float] = {}
        """Hash of an erased customer's key → erasure time (see the module docstring)."""
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._pickles = _PickleCache()
        """Pickled entries of the last pickled snapshot (see :class:`TriggerSnapshot`)."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_pickles"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pickles = _PickleCache()

    def on_scored(self, scored: Scored) -> list[RecallIntent]:
        """The intents this score triggers (recorded in the customer's history)."""
        request = scored.request
        counters = self.counters
        if request.cause not in TRIGGER_CAUSES:
            counters["ignored_final"] += 1
            return []
        counters["scores"] += 1
        key = f"{request.store_id}{SEP}{request.customer_id}"
        t = request.t
        prev = self.customers.get(key)
        if prev is not None and t < prev.last_t:
            counters["stale_scores"] += 1
            return []
        if self.tombstones and prev is None:
            erased_at = self.tombstones.get(_tombstone(key))
            if erased_at is not None:
                if t <= erased_at:
                    counters["erased_in_flight"] += 1
                    return []
                del self.tombstones[_tombstone(key)]

        order_count = int(request.features.get("order_count", 0.0))
        last_order = derived_last_order_ts(scored)
        if (
            prev is not None
            and prev.order_count == order_count
            and prev.last_order_ts is not None
            and last_order is not None
        ):
            last_order = max(last_order, prev.last_order_ts)
        cart_since: float | None = None
        if request.features.get("open_cart", 0.0) >= 0.5:
            cart_since = prev.cart_since if prev is not None else None
            if cart_since is None or (last_order is not None and last_order >= cart_since):
                cart_since = t
        probability = scored.churn_probability if scored.model_warm else None
        previous = prev.probability if prev is not None else None
        history = prev.history if prev is not None else None

        intents: list[RecallIntent] = []
        entry = self.rules.get(request.store_id)
        if entry is None:
            counters["no_rules"] += 1
        else:
            view = view_from_scored(
                scored, previous, last_order_ts=last_order, open_cart_since_ts=cart_since
            )
            result = evaluate_detailed(entry.rules, view, t, history or _EMPTY)
            counters["blocked"] += sum(1 for b in result.blocked if b.reason != "already_sent")
            for intent in result.intents:
                history = record(
                    history or _EMPTY,
                    intent.channel,
                    intent.rule_id,
                    intent.send_at,
                    key=intent.idempotency_key,
                )
                counters["holdout_intents" if intent.holdout else "intents"] += 1
                intents.append(intent)
            if history is not None:
                history = prune_history(history, t, entry, last_order) or None
        self.customers[key] = _Customer(
            t,
            probability if probability is not None else previous,
            order_count,
            last_order,
            cart_since,
            history,
        )
        return intents

    def on_erased(self, store_id: str, customer_id: str, t: float) -> None:
        """Forget the customer (its send history too); refuse its in-flight scores."""
        key = f"{store_id}{SEP}{customer_id}"
        prev = self.customers.pop(key, None)
        if prev is not None:
            self.counters["erased"] += 1
        erased_at = max(t, prev.last_t) if prev is not None else t
        self.tombstones[_tombstone(key)] = erased_at
        horizon = erased_at - TOMBSTONE_S
        self.tombstones = {h: at for h, at in self.tombstones.items() if at >= horizon}

    def history_of(self, store_id: str, customer_id: str) -> SendHistory:
        entry = self.customers.get(f"{store_id}{SEP}{customer_id}")
        return (entry.history if entry is not None else None) or _EMPTY

    # -- recovery ------------------------------------------------------------------

    def snapshot(self) -> TriggerSnapshot:
        """The state now (rules are not included: they are reloaded from files)."""
        return TriggerSnapshot(self)

    def snapshot_bytes(self) -> bytes:
        """The state as one pickle (the form snapshots had before :class:`TriggerSnapshot`)."""
        state = (SNAPSHOT_VERSION, self.customers, self.tombstones, self.counters)
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(
        cls, data: TriggerSnapshot | TriggerState | bytes, rules: RulesBook | str | Path
    ) -> TriggerStage:
        """The stage of a snapshot: as taken, as pickled and loaded, or an older pickle."""
        stage = cls(rules)
        if isinstance(data, TriggerSnapshot):
            data = data.state()
        if isinstance(data, tuple):
            version, keys, blobs, tombstones, counters = data
            if version != STATE_FORMAT:
                raise ValueError(f"unknown trigger snapshot format {version!r}")
            stage.customers = {
                key: pickle.loads(blob) for key, blob in zip(keys, blobs, strict=True)
            }
            stage._pickles.entries = {
                key: (customer, blob)
                for (key, customer), blob in zip(stage.customers.items(), blobs, strict=True)
            }
        else:
            version, customers, tombstones, counters = pickle.loads(data)
            if version != SNAPSHOT_VERSION:
                raise ValueError(f"unknown trigger snapshot version {version!r}")
            stage.customers = customers
        stage.tombstones = dict(tombstones)
        stage.counters.update(counters)
        return stage


# -- Bytewax ------------------------------------------------------------------------


class TriggerProgress(NamedTuple):
    """The trigger stage of ``key_group`` evaluated every score up to event time ``t``.

    Emitted behind the intents of those scores (only when asked for, see
    :func:`build_trigger_logic`), so the effects stage knows how far holdout
    intents can still be behind (:mod:`engine.effects`).
    """

    key_group: int
    t: float


PROGRESS_EVERY_S = 6 * HOUR
"""Event time between two :class:`TriggerProgress` items of a key group."""


def trigger_key(item: Scored | Erased, key_groups: int) -> str:
    """The key group string of a ``Scored`` or ``Erased`` item (as the customer stage)."""
    if isinstance(item, Scored):
        return str(key_group(item.request.store_id, item.request.customer_id, key_groups))
    return str(key_group(item.store_id, item.customer_id, key_groups))


class TriggerLogic(StatefulLogic[Any, Any, TriggerSnapshot | TriggerState | bytes]):
    """Adapts :class:`TriggerStage`: ``Scored`` → intents, ``Erased`` → forget.

    With ``progress_groups`` (the number of key groups) it also emits a
    :class:`TriggerProgress` after the intents whenever the newest score time
    moved ``PROGRESS_EVERY_S`` past the last one reported. That mark is not
    snapshotted: after a restart the first score reports again (harmless, the
    effects stage keeps the maximum).
    """

    def __init__(self, stage: TriggerStage, progress_groups: int | None = None) -> None:
        self.stage = stage
        self.progress_groups = progress_groups
        self.reported = float("-inf")

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        if isinstance(value, Scored):
            out: list[Any] = list(self.stage.on_scored(value))
            t = value.request.t
            if self.progress_groups is not None and t >= self.reported + PROGRESS_EVERY_S:
                self.reported = t
                group = int(trigger_key(value, self.progress_groups))
                out.append(TriggerProgress(group, t))
            return out, StatefulLogic.RETAIN
        if isinstance(value, Erased):
            self.stage.on_erased(value.store_id, value.customer_id, value.t)
        return [], StatefulLogic.RETAIN

    def snapshot(self) -> TriggerSnapshot:
        """Taken at every epoch close: cheap unless Bytewax pickles it (recovery)."""
        return self.stage.snapshot()


def build_trigger_logic(
    rules: RulesBook | str | Path,
    progress_groups: int | None = None,
    cart_check_hours: float | None = None,
) -> Callable[[TriggerSnapshot | TriggerState | bytes | None], TriggerLogic]:
    """The ``op.stateful`` builder; all key groups of a worker share one ``RulesBook``.

    ``progress_groups``: emit :class:`TriggerProgress` items too (for effect tracking).
    ``cart_check_hours``: the customer stage's cart timer; checked against the rules'
    abandoned-cart windows now (``ConfigError``, see :meth:`RulesBook.check_cart_hours`).
    """
    book = rules if isinstance(rules, RulesBook) else RulesBook(rules)
    if cart_check_hours is not None:
        book.check_cart_hours(cart_check_hours)

    def build(resume: TriggerSnapshot | TriggerState | bytes | None) -> TriggerLogic:
        """``resume``: a pickled :class:`TriggerSnapshot`, or an older whole pickle."""
        if resume is not None:
            return TriggerLogic(TriggerStage.restore(resume, book), progress_groups)
        return TriggerLogic(TriggerStage(book), progress_groups)

    return build
