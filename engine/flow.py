"""The one dataflow of churnflow, for live and replay: composition only.

::

    input ─► decode ─┬─► dead letters ─► dead-letter sink
                     └─► key group ─► customers (stateful) ─┬─► model (stateful_batch) ─► redis
                                                            ├─► examples sink (optional)
                                                            └─► segment changes, counters ─► redis
    orders, messages, erasures + holdout intents (triggers) ─► effects (stateful) ─► effects sink

Input items are raw bytes (or Kafka messages carrying them); the domain logic
lives in :mod:`engine.customers` and :mod:`engine.models.online`, which the
classes here only adapt to Bytewax.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic, StatefulLogic
from bytewax.outputs import Sink

from engine.clock import wall_now, wall_now_dt
from engine.customers import KeyGroupCustomers, StageConfig, StageSnapshot
from engine.effects_stage import build_effects_logic, effects_key, is_effect_input
from engine.errors import ChurnflowError
from engine.events import Event, EventDecodeError, OrderEvent, decode_event
from engine.features.currency import to_base
from engine.keygroups import key_group
from engine.messages import DeadLetter, Erased, Example, Learned, ModelStatus, Scored, ScoreRequest
from engine.models.online import ChurnModel
from engine.settings import Settings
from engine.triggers.intent import RecallIntent
from engine.triggers.stage import build_trigger_logic, trigger_key

log = logging.getLogger(__name__)

WALL_TICK = timedelta(seconds=5)


@dataclass(frozen=True)
class FlowSinks:
    """Where the dataflow's outputs go; tests pass ``TestingSink``s."""

    redis: Sink[Any]
    dead_letter: Sink[Any]
    examples: Sink[Any] | None = None
    scores: Sink[Any] | None = None
    learned: Sink[Any] | None = None
    recalls: Sink[Any] | None = None
    """Receives :class:`RecallIntent` items from the trigger stage (when given)."""
    """Receives a :class:`Learned` per example (the pre-learn probability): reports."""
    effects: Sink[Any] | None = None
    """Receives :class:`engine.effects.EffectsSnapshot` items (effect tracking, when given)."""
    requests: Sink[Any] | None = None
    """Receives every :class:`ScoreRequest` the customer stage emits (scored or not)."""


def stage_config(settings: Settings) -> StageConfig:
    return StageConfig(
        horizon_days=settings.horizon_days,
        allowed_lateness_s=settings.allowed_lateness_s,
        checkpoint_days=settings.checkpoint_days,
        max_silent_checkpoints=settings.max_silent_checkpoints,
        dedup_retention_s=settings.dedup_retention_s,
        value_thresholds=(settings.value_tier_low_max, settings.value_tier_mid_max),
        cart_check_s=settings.cart_check_hours * 3600.0,
    )


# -- step 1: decode ---------------------------------------------------------------


def decode_item(item: Any, settings: Settings) -> tuple[Event, float] | DeadLetter:
    """Raw input → (event, amount in base currency), or a dead letter saying why."""
    if isinstance(item, KafkaSourceMessage):
        raw, source = item.value, f"{item.topic}/{item.partition}/{item.offset}"
    elif isinstance(item, KafkaError):
        return DeadLetter(b"", f"broker error: {item.err}", "decode", "kafka")
    elif isinstance(item, tuple) and len(item) == 2:
        source, raw = item
    else:
        raw, source = item, "input"
    if raw is None:
        return DeadLetter(b"", "empty message value", "decode", str(source))
    raw_bytes = raw if isinstance(raw, bytes) else str(raw).encode()
    try:
        event = decode_event(raw_bytes)
        amount = 0.0
        if isinstance(event, OrderEvent):
            amount = to_base(
                event.amount, event.currency, settings.currency_rates, settings.base_currency
            )
    except (EventDecodeError, ChurnflowError) as exc:
        return DeadLetter(raw_bytes, str(exc), "decode", str(source))
    return event, amount


def _is_event(item: tuple[Event, float] | DeadLetter) -> TypeGuard[tuple[Event, float]]:
    return not isinstance(item, DeadLetter)


# -- step 3: customers ------------------------------------------------------------


NO_SNAPSHOT: StageSnapshot = ("none", b"", (), ())
"""The customer stage's epoch snapshot in a run without recovery (``build_flow(...,
durable=False)``: a replay): Bytewax would discard it, so the customers are not pickled
for it; resuming from it fails (:meth:`KeyGroupCustomers.restore`: unknown format)."""


class KeyGroupLogic(StatefulLogic[tuple[Event, float], Any, StageSnapshot | bytes]):
    """Adapts :class:`KeyGroupCustomers` to Bytewax (state: its :meth:`snapshot`)."""

    def __init__(
        self,
        group: KeyGroupCustomers,
        clock: str,
        final_ts: float | None,
        key_groups: int,
        durable: bool = True,
    ) -> None:
        self.group = group
        self.key_groups = key_groups
        self.clock = clock
        self.final_ts = final_ts
        self.durable = durable

    def on_item(self, value: tuple[Event, float]) -> tuple[list[Any], bool]:
        event, amount = value
        if self.group.group_id < 0:
            self.group.group_id = key_group(event.store_id, event.customer_id, self.key_groups)
        return self.group.on_event(event, amount), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Any], bool]:
        # Bytewax calls this once the scheduled time passed, even if on_item just
        # moved things: advance_to() re-checks every timer against the watermark.
        out = self.group.advance_to(wall_now() - self.group.config.allowed_lateness_s)
        out.extend(self.group.aggregates_messages())
        return out, StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        if self.final_ts is not None:
            return self.group.final(self.final_ts), StatefulLogic.RETAIN
        return self.group.aggregates_messages(every_store=True), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.clock == "wall":
            return wall_now_dt() + WALL_TICK
        return None

    def snapshot(self) -> StageSnapshot | bytes:
        """The group's snapshot; without ``durable``, :data:`NO_SNAPSHOT`, which no
        group can be restored from:

        >>> KeyGroupCustomers.restore(NO_SNAPSHOT)
        Traceback (most recent call last):
        ...
        ValueError: unknown customer-stage snapshot 'none'
        """
        return self.group.snapshot() if self.durable else NO_SNAPSHOT


# -- step 4: model ---------------------------------------------------------------


class ModelLogic(StatefulBatchLogic[Any, Any, bytes]):
    """Adapts :class:`ChurnModel`: learn examples, score requests in batches.

    Items are handled in arrival order; consecutive score requests are scored
    together. ``final`` requests (a replay's end) wait for EOF so that they are
    scored by the model after everything before the end was learned.

    With ``event_order`` (replays: a finite input), nothing is learned or scored
    before EOF; then every example and request is handled in event-time order
    (:func:`event_order_key`), so the model learns the same sequence whatever the
    number of workers and however the input was batched — the scores are then
    identical, not only the features.
    """

    def __init__(
        self,
        model: ChurnModel,
        trace: bool = False,
        shards: int = 1,
        score_causes: frozenset[str] | None = None,
        event_order: bool = False,
        horizon_s: float = 90 * 86_400.0,
    ) -> None:
        self.model = model
        self.trace = trace
        self.shards = shards
        self.score_causes = score_causes
        """Score only requests of these causes (None: all); the others are dropped."""
        self.final_requests: list[ScoreRequest] = []
        self.event_order = event_order
        self.horizon_s = horizon_s
        """The label horizon: an example is emitted at its ``t0`` plus this."""
        self.held: list[ScoreRequest | Example] = []
        """With ``event_order``: every item, until EOF."""

    def _score(self, requests: list[ScoreRequest]) -> list[Scored]:
        results = self.model.score_batch(
            [r.features for r in requests],
            store_ids=[r.store_id for r in requests],
            at=max(r.t for r in requests),
        )
        version, warm = self.model.version, self.model.warm
        return [
            Scored(request, p, reasons, version, warm)
            for request, (p, reasons) in zip(requests, results, strict=True)
        ]

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        if values:  # Bytewax builders get no key: learn the shard number from an item
            self.model.shard = int(model_shard(values[0], self.shards))
        if self.event_order:  # _handle sorts out the final requests at EOF
            self.held.extend(values)
            return [], StatefulBatchLogic.RETAIN
        return self._handle(values), StatefulBatchLogic.RETAIN

    def _handle(self, values: list[Any]) -> list[Any]:
        """Learn the examples and score the requests of ``values`` in their order."""
        out: list[Any] = []
        pending: list[ScoreRequest] = []
        run: list[Example] = []  # consecutive examples, learned together
        touched: set[str] = set()
        for item in values:
            if isinstance(item, ScoreRequest):
                if run and not self.model.warm:  # the examples before it may warm it
                    self._learn(run, out, touched)
                    run = []
                # the fitted prior's sample (it scores while cold, then blends)
                self.model.priors.observe(item.store_id, item.customer_id, item.t, item.features)
                if item.cause == "final":
                    self.final_requests.append(item)
                elif self.score_causes is None or item.cause in self.score_causes:
                    if run:
                        self._learn(run, out, touched)
                        run = []
                    pending.append(item)
            elif isinstance(item, Example):
                if pending:
                    out.extend(self._score(pending))
                    pending = []
                run.append(item)
        if run:
            self._learn(run, out, touched)
        if pending:
            out.extend(self._score(pending))
        if touched:
            out.append(self._status(touched))
        return out

    def _learn(self, run: list[Example], out: list[Any], touched: set[str]) -> None:
        """Learn ``run`` in order (as ``learn`` one by one would), tracing into ``out``."""
        batch = [(item.features, item.y, item.store_id) for item in run]
        probabilities = self.model.learn_many(batch)
        touched.update(item.store_id for item in run)
        if self.trace:
            out.extend(
                Learned(item.resolved_at, item.y, p)
                for item, p in zip(run, probabilities, strict=True)
            )

    def _status(self, stores: set[str] | None = None) -> ModelStatus:
        """The shard's status, with the own view of ``stores`` (default: every store)."""
        status = self.model.status()
        names = sorted(self.model.store_metrics if stores is None else stores)
        views = {name: self.model.store_status(name) for name in names}
        return ModelStatus(self.model.shard, self.model.version, self.model.warm, status, views)

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        if self.held:
            held, self.held = self._in_event_order(self.held), []
            out.extend(self._handle(held))
        if self.final_requests:
            requests = sorted(self.final_requests, key=lambda r: (r.store_id, r.customer_id))
            self.final_requests = []
            out.extend(self._score(requests))
        out.append(self._status())
        return out, StatefulBatchLogic.RETAIN

    def _in_event_order(self, held: list[Any]) -> list[Any]:
        """``held`` sorted by :func:`event_order_key`, without the requests that would
        not be scored: their cause is not in ``score_causes`` (a replay without rules
        scores only its final requests) and they come after the example that warms the
        model. The prior's sample does not see them; it loses nothing that matters:
        with nothing scored between, the only fit after them is the final one, and every
        customer's final request carries their latest summary."""
        horizon_s = self.horizon_s
        spreads: dict[tuple[str, str], int] = {}  # one crc32 per customer, not per item

        def key(item: ScoreRequest | Example) -> tuple[Any, ...]:
            return event_order_key(item, horizon_s, spreads)

        causes = self.score_causes
        examples = [(key(x), x) for x in held if isinstance(x, Example)]
        if causes is None:
            kept = [x for x in held if not isinstance(x, Example)]
        else:
            need = self.model.warm_examples - self.model.learned
            if need <= 0:
                warm: tuple[Any, ...] = (-math.inf,)
            elif need > len(examples):
                warm = (math.inf,)
            else:  # the key of the example after which the model is warm
                warm = heapq.nsmallest(need, (k for k, _ in examples))[-1]
            kept = [
                x
                for x in held
                if isinstance(x, ScoreRequest)
                and (
                    x.cause == "final"
                    or x.cause in causes
                    or x.t < warm[0]
                    or (x.t == warm[0] and key(x) < warm)
                )
            ]
        decorated = examples + [(key(x), x) for x in kept]
        decorated.sort(key=itemgetter(0))  # stable; an example's and a request's keys differ
        return [x for _, x in decorated]

    def snapshot(self) -> bytes:
        return self.model.snapshot()


def event_order_key(
    item: ScoreRequest | Example,
    horizon_s: float,
    spreads: dict[tuple[str, str], int] | None = None,
) -> tuple[Any, ...]:
    """Where an example or a score request falls in event time.

    An example counts when the customer stage emits it, at ``t0 + horizon`` (not at
    ``resolved_at``, which for a customer who came back is the earlier order: sorting
    by it would bunch the returning customers' examples ahead of the churners'); a
    request when it was made. At the same instant examples come first, then customers
    in the order of a hash of their key — ids often follow sign-up order, and SGD
    learns better from a shuffled run than from one cohort after the other — then by
    store, customer, prediction time and cause: a total order that does not depend
    on arrival. ``spreads`` (optional) caches the hash per (store, customer).

    >>> ex = Example("s", "c", 100.0, {}, 0, 150.0)
    >>> event_order_key(ex, 90.0)
    (190.0, 0, 1491394944, 's', 'c', 100.0, '')
    """
    if isinstance(item, Example):
        when, kind, t0, cause = item.t0 + horizon_s, 0, item.t0, ""
    else:
        when, kind, t0, cause = item.t, 1, 0.0, item.cause
    ident = (item.store_id, item.customer_id)
    spread = None if spreads is None else spreads.get(ident)
    if spread is None:
        spread = key_group(*ident, 1 << 32)  # the whole crc32
        if spreads is not None:
            spreads[ident] = spread
    return (when, kind, spread, item.store_id, item.customer_id, t0, cause)


def model_shard(item: Any, shards: int) -> str:
    """Model shard key of a score request or example (``"0"`` with one shard)."""
    if shards == 1:
        return "0"
    return str(key_group(item.store_id, item.customer_id, shards))


# -- composition ------------------------------------------------------------------


def build_flow(
    source: Source[Any],
    sinks: FlowSinks,
    settings: Settings,
    *,
    final_ts: float | None = None,
    flow_id: str = "churnflow",
    score_causes: frozenset[str] | None = None,
    model_event_order: bool = False,
    publish_daily: bool = True,
    durable: bool = True,
) -> Dataflow:
    """The churnflow dataflow. ``final_ts`` closes a replay at that event time.

    ``score_causes`` limits which score requests the model scores (``final`` ones
    always are): a replay that reads only its final scores skips the rest.
    ``model_event_order`` (replays only: it waits for EOF) makes the model learn and
    score in event-time order, so scores do not depend on the number of workers.
    ``publish_daily=False`` (replays) publishes the customer stage's counters and tables
    only at the end (:attr:`StageConfig.publish_daily`). ``durable=False`` (a run without
    recovery: replays) skips the customer stage's epoch snapshots (:data:`NO_SNAPSHOT`).
    """
    flow = Dataflow(flow_id)
    raw = op.input("input", flow, source)
    decoded = op.map("decode", raw, lambda item: decode_item(item, settings))
    branches = op.branch("valid", decoded, _is_event)
    op.output("dead_letter", branches.falses, sinks.dead_letter)

    groups = settings.key_groups
    keyed = op.key_on(
        "key_group",
        branches.trues,
        lambda ev: str(key_group(ev[0].store_id, ev[0].customer_id, groups)),
    )

    def build_group(resume: StageSnapshot | bytes | None) -> KeyGroupLogic:
        group = (
            KeyGroupCustomers.restore(resume)
            if resume is not None
            else KeyGroupCustomers(replace(stage_config(settings), publish_daily=publish_daily))
        )
        return KeyGroupLogic(group, settings.clock, final_ts, groups, durable)

    customers = op.stateful("customers", keyed, build_group)
    stage_out = op.key_rm("customers_out", customers)

    # one predicate per item for each split (a filter per consumer was four)
    for_model = op.branch("to_model", stage_out, lambda x: isinstance(x, (ScoreRequest, Example)))
    to_model = for_model.trues  # requests and examples, interleaved as emitted
    if sinks.requests is not None or sinks.examples is not None:
        kinds = op.branch("requests", to_model, lambda x: isinstance(x, ScoreRequest))
        if sinks.requests is not None:
            op.output("requests_out", kinds.trues, sinks.requests)
        if sinks.examples is not None:
            op.output("examples_out", kinds.falses, sinks.examples)
    shards = settings.model_shards
    model_keyed = op.key_on("model_shard", to_model, lambda x: model_shard(x, shards))

    trace = sinks.learned is not None

    def build_model(resume: bytes | None) -> ModelLogic:
        if resume is not None:
            model = ChurnModel.restore(resume)
            model.priors.horizon_days = settings.horizon_days  # the setting, not the snapshot's
            model.prior_weight_examples = settings.model_prior_weight_examples
        else:
            model = ChurnModel(
                settings.model_warm_examples,
                kind=settings.model,
                horizon_days=settings.horizon_days,
                prior_weight_examples=settings.model_prior_weight_examples,
            )
        horizon_s = settings.horizon_days * 86_400.0
        return ModelLogic(model, trace, shards, score_causes, model_event_order, horizon_s)

    model_out = op.key_rm("model_out", op.stateful_batch("model", model_keyed, build_model))
    if sinks.learned is not None:
        learned = op.filter("learned", model_out, lambda x: isinstance(x, Learned))
        op.output("learned_out", learned, sinks.learned)
        scored = op.filter("not_learned", model_out, lambda x: not isinstance(x, Learned))
    else:
        scored = model_out
    if sinks.scores is not None:
        op.output(
            "scores_out", op.filter("scored", scored, lambda x: isinstance(x, Scored)), sinks.scores
        )

    recalls = None
    if sinks.recalls is not None:
        to_triggers = op.merge(
            "to_triggers",
            op.filter("trigger_scored", scored, lambda x: isinstance(x, Scored)),
            op.filter("trigger_erased", for_model.falses, lambda x: isinstance(x, Erased)),
        )
        trigger_keyed = op.key_on("trigger_key", to_triggers, lambda x: trigger_key(x, groups))
        # with effect tracking, the trigger stage also reports its progress (TriggerProgress)
        progress = groups if sinks.effects is not None else None
        triggers = build_trigger_logic(settings.rules_dir, progress, settings.cart_check_hours)
        intents = op.stateful("triggers", trigger_keyed, triggers)
        recalls = op.key_rm("triggers_out", intents)
        only_intents = op.filter("recall_intents", recalls, lambda x: isinstance(x, RecallIntent))
        op.output("recalls", only_intents, sinks.recalls)
    if sinks.effects is not None:  # orders, messages, erasures, holdout intents, progress
        effects_in = op.filter("effect_inputs", branches.trues, is_effect_input)
        if recalls is not None:
            holdouts = op.filter("holdout_intents", recalls, is_effect_input)
            effects_in = op.merge("to_effects", effects_in, holdouts)
        effects_keyed = op.key_on("effects_key", effects_in, lambda x: effects_key(x, groups))
        gated = recalls is not None
        effects = op.stateful("effects", effects_keyed, build_effects_logic(settings, gated))
        op.output("effects_out", op.key_rm("effects_rm", effects), sinks.effects)

    others = for_model.falses  # segment changes, erasures, counters, tables
    op.output("redis", op.merge("to_redis", scored, others), sinks.redis)
    return flow
