"""Epoch snapshots of the trigger and effects stages: cheap to take, exact to restore.

One random stream (scores of many customers in two stores, the intents they
trigger sent or held out, orders, refunds, engagement, erasures, progress marks)
goes through a trigger stage and an effects group, once straight and once
restored from a snapshot every few items; every output and the final state must
be the same. Snapshots taken and pickled later, snapshots of the older forms
(one pickle of the whole state) and the Bytewax builders are checked too.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from engine.customers import KeyGroupCustomers
from engine.effects import (
    DAY,
    EffectsConfig,
    EffectsGroup,
    EffectsSnapshot,
    Refund,
    RowKey,
    to_units,
)
from engine.effects_stage import EffectsLogic, build_effects_logic, effects_key, is_effect_input
from engine.flow import decode_item, stage_config
from engine.keygroups import key_group
from engine.messages import DeadLetter, Erased, Scored, ScoreRequest
from engine.settings import Settings
from engine.triggers.intent import RecallIntent
from engine.triggers.stage import (
    RulesBook,
    TriggerLogic,
    TriggerStage,
    build_trigger_logic,
    trigger_key,
)
from replay.simulate import SimulationConfig, simulate

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"
RULES = RulesBook(RULES_DIR)
"""Shared, so that a restore does not load the rules again."""
CONFIG = EffectsConfig(window_s=7 * DAY, lateness_s=DAY, refund_window_s=5 * DAY)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp()
ZONES = ("Europe/Berlin", "America/New_York", "Mars/Olympus", "", "Asia/Tokyo")


@dataclass
class Shopper:
    orders: list[tuple[str, float]] = field(default_factory=list)
    spend: float = 0.0
    messages: list[str] = field(default_factory=list)


def stream(seed: int, n: int) -> list[tuple[Any, ...]]:
    """``n`` random operations in roughly increasing event time (some late)."""
    rng = random.Random(seed)
    shoppers: dict[tuple[str, str], Shopper] = {}
    ops: list[tuple[Any, ...]] = []
    t = T0
    for i in range(n):
        t += rng.uniform(0.0, 0.15 * DAY)
        who = (rng.choice(("s1", "s2")), f"c{rng.randrange(40)}")
        shopper = shoppers.setdefault(who, Shopper())
        roll = rng.random()
        if ops and roll < 0.04:
            ops.append(rng.choice(ops))  # a duplicate delivery
        elif roll < 0.50:
            ops.append(("score", *who, t, score_features(rng, shopper, t), rng.random()))
        elif roll < 0.68:
            at = t - rng.uniform(0.0, 2 * DAY)
            shopper.orders.append((f"o{i}", at))
            shopper.spend += 40.0
            ops.append(("order", *who, f"o{i}", at, rng.choice((20.0, 45.5, 80.0))))
        elif roll < 0.76 and shopper.orders:
            order_id, at = rng.choice(shopper.orders)
            ops.append(("refund", *who, f"r{i}", order_id, t, rng.choice((5.0, 500.0))))
        elif roll < 0.90:
            ops.append(("engage", *who, rng.randrange(1 << 30), t, rng.random()))
        elif roll < 0.93:
            shoppers[who] = Shopper()
            ops.append(("erase", *who, t))
        else:
            ops.append(("progress", t))
    return ops


def score_features(rng: random.Random, shopper: Shopper, t: float) -> dict[str, Any]:
    last = max((at for _, at in shopper.orders), default=None)
    count = len(shopper.orders)
    return {
        "features": {
            "days_since_last_order": (t - last) / DAY if last is not None else 0.0,
            "order_count": float(count),
            "spend_total_base": shopper.spend,
            "avg_order_value": shopper.spend / count if count else 0.0,
            "open_cart": rng.choice((0.0, 0.0, 1.0)),
        },
        "cause": rng.choice(("event", "checkpoint", "cart", "final")),
        "warm": rng.random() < 0.8,
        "timezone": rng.choice(ZONES),
    }


def scored(store: str, customer: str, t: float, spec: dict[str, Any], p: float) -> Scored:
    profile = {
        "country": "DE",
        "timezone": spec["timezone"],
        "locale": "de",
        "consent_email": True,
        "consent_sms": True,
    }
    request = ScoreRequest(
        store, customer, t, spec["features"], "active", "mid", profile, spec["cause"]
    )
    return Scored(request, p, [], "v1", spec["warm"])


class Pair:
    """A trigger stage and an effects group fed together, as the dataflow does."""

    def __init__(self, trigger: TriggerStage, effects: EffectsGroup) -> None:
        self.trigger, self.effects = trigger, effects

    def apply(self, op: tuple[Any, ...]) -> list[Any]:
        kind, *args = op
        trigger, effects = self.trigger, self.effects
        out: list[Any] = []
        if kind == "score":
            store, customer, t, spec, p = args
            for intent in trigger.on_scored(scored(store, customer, t, spec, p)):
                out.append(intent)
                if intent.holdout:
                    stores = effects.on_holdout(intent)
                else:
                    row = RowKey(intent.rule_id, intent.step, intent.variant, intent.channel)
                    offer = intent.offer
                    stores = effects.on_send(
                        store,
                        customer,
                        intent.idempotency_key,
                        intent.send_at,
                        row,
                        offer.percent_off,
                        offer.free_shipping,
                    )
                out.append(effects.snapshots(stores))
        elif kind == "order":
            out.append(effects.snapshots(effects.on_order(*args)))
        elif kind == "refund":
            store, customer, refund_id, order_id, t, amount = args
            refund = Refund(order_id, t, to_units(amount))
            out.append(effects.snapshots(effects.on_refund(store, customer, refund_id, refund)))
        elif kind == "engage":
            store, _, pick, t, r = args
            # a customer of the store who was sent something, if any
            sent = sorted(
                (k, s.key)
                for k, c in trigger.customers.items()
                if c.history
                for s in c.history.sends
                if k.startswith(f"{store}\x1f")
            )
            customer, message = args[1], "unknown"
            if sent:
                key, message = sent[pick % len(sent)]
                customer = key.partition("\x1f")[2]
            engagement = "opened" if r < 0.5 else "clicked" if r < 0.8 else "delivered"
            out.append(
                effects.snapshots(effects.on_engagement(store, customer, message, engagement, t))
            )
        elif kind == "erase":
            store, customer, t = args
            trigger.on_erased(store, customer, t)
            out.append(effects.snapshots(effects.on_erase(store, customer, t)))
        else:
            out.append(effects.snapshots(effects.on_progress(args[0])))
        return out


def fresh() -> Pair:
    return Pair(TriggerStage(RULES), EffectsGroup(CONFIG))


def effects_state(g: EffectsGroup) -> tuple[Any, ...]:
    dedup = g.dedup.__getstate__()
    return (g.customers, g.rows, g.meta, dedup, g.tombstones, g.max_ts, g.pruned_to, g.progress)


def trigger_state(s: TriggerStage) -> tuple[Any, ...]:
    return s.customers, s.tombstones, s.counters


def through_pickle(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def old_trigger_blob(stage: TriggerStage) -> bytes:
    """What ``TriggerStage.snapshot()`` returned before (version 1, one pickle)."""
    state = (1, stage.customers, stage.tombstones, stage.counters)
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def old_effects_blob(g: EffectsGroup) -> bytes:
    """What ``EffectsGroup.snapshot()`` returned before (version 3, one pickle)."""
    kept = (g.customers, g.rows, g.meta, g.dedup, g.tombstones)
    state = (3, g.config, g.group_id, *kept, g.max_ts, g.pruned_to, g.progress)
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def restore_new(pair: Pair) -> Pair:
    trigger = TriggerStage.restore(through_pickle(pair.trigger.snapshot()), RULES)
    return Pair(trigger, EffectsGroup.restore(through_pickle(pair.effects.epoch_snapshot())))


def restore_old(pair: Pair) -> Pair:
    trigger = TriggerStage.restore(old_trigger_blob(pair.trigger), RULES)
    return Pair(trigger, EffectsGroup.restore(old_effects_blob(pair.effects), CONFIG))


OPS = stream(seed=11, n=2500)


@pytest.fixture(scope="module")
def straight() -> tuple[list[Any], Pair]:
    pair = fresh()
    return [pair.apply(op) for op in OPS], pair


def test_the_stream_exercises_what_snapshots_must_keep(straight: tuple[list[Any], Pair]) -> None:
    _, pair = straight
    trigger, effects = pair.trigger.counters, pair.effects
    assert trigger["intents"] > 50 and trigger["holdout_intents"] > 2
    assert trigger["erased"] > 5 and trigger["stale_scores"] > 0
    assert pair.trigger.customers and pair.trigger.tombstones
    counts = [c for rows in effects.rows.values() for c in rows.values()]
    assert sum(c["converted"] for c in counts) > 10 and sum(c["opened"] for c in counts) > 5
    assert sum(c["holdout_intents"] for c in counts) > 5
    meta = [m for m in effects.meta.values()]
    assert sum(m["late"] for m in meta) > 0 and sum(m["erased"] for m in meta) > 5
    assert sum(m["duplicates"] for m in meta) > 0
    assert effects.customers and effects.pruned_to > T0  # pruning happened


@pytest.mark.parametrize("every", [1, 7, 61])
@pytest.mark.parametrize("restore", [restore_new, restore_old])
def test_restoring_every_few_items_changes_no_output(
    straight: tuple[list[Any], Pair], every: int, restore: Any
) -> None:
    expected, reference = straight
    pair = fresh()
    outputs = []
    for n, item in enumerate(OPS, 1):
        outputs.append(pair.apply(item))
        if n % every == 0:
            pair = restore(pair)
        assert outputs[-1] == expected[n - 1], n
    assert effects_state(pair.effects) == effects_state(reference.effects)
    assert trigger_state(pair.trigger) == trigger_state(reference.trigger)
    assert pair.effects.snapshots() == reference.effects.snapshots()


def test_every_epoch_snapshot_is_the_state_it_was_taken_at() -> None:
    """Taken every few items and kept (as Bytewax keeps them), pickled later; each
    restores to exactly the state of its moment, as the old whole pickle did."""
    pair = fresh()
    taken: list[tuple[Any, Any, bytes, bytes]] = []
    for n, item in enumerate(OPS, 1):
        pair.apply(item)
        if n % 13 == 0:
            taken.append(
                (
                    pair.trigger.snapshot(),
                    pair.effects.epoch_snapshot(),
                    old_trigger_blob(pair.trigger),
                    old_effects_blob(pair.effects),
                )
            )
            if len(taken) % 2:  # pickled at once (recovery on) or later, or never
                pickle.dumps(taken[-1][0])
    for trigger_snap, effects_snap, trigger_blob, effects_blob in taken:
        new_trigger = TriggerStage.restore(through_pickle(trigger_snap), RULES)
        old_trigger = TriggerStage.restore(trigger_blob, RULES)
        assert trigger_state(new_trigger) == trigger_state(old_trigger)
        new_effects = EffectsGroup.restore(through_pickle(effects_snap))
        old_effects = EffectsGroup.restore(effects_blob)
        assert effects_state(new_effects) == effects_state(old_effects)


def test_unpickled_snapshots_restore_and_continue() -> None:
    pair = fresh()
    for item in OPS[:800]:
        pair.apply(item)
    snap = pair.trigger.snapshot()
    copy = Pair(
        TriggerStage.restore(snap, RULES),  # as taken, never pickled
        EffectsGroup.restore(pair.effects.epoch_snapshot(), CONFIG),
    )
    rest = OPS[800:1200]
    assert [copy.apply(item) for item in rest] == [pair.apply(item) for item in rest]
    assert trigger_state(copy.trigger) == trigger_state(pair.trigger)


def test_a_kept_snapshot_does_not_follow_the_stage() -> None:
    stage = TriggerStage(RULES)
    pair = Pair(stage, EffectsGroup(CONFIG))
    for item in OPS[:300]:
        pair.apply(item)
    before = old_trigger_blob(stage)
    snap = stage.snapshot()
    for item in OPS[300:600]:
        pair.apply(item)
    assert trigger_state(TriggerStage.restore(through_pickle(snap), RULES)) == trigger_state(
        TriggerStage.restore(before, RULES)
    )
    assert trigger_state(stage) != trigger_state(TriggerStage.restore(before, RULES))


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        TriggerStage.restore(("triggers/9", (), (), {}, {}), RULES)
    with pytest.raises(ValueError, match="unknown"):
        EffectsGroup.restore(("effects/9", b"", (), ()))


def test_bytewax_builders_resume_from_both_forms(straight: tuple[list[Any], Pair]) -> None:
    _, reference = straight
    settings = Settings(rules_dir=RULES_DIR)
    build_effects, build_trigger = build_effects_logic(settings), build_trigger_logic(RULES)
    effects_forms = [
        through_pickle(EffectsLogic(reference.effects, settings.key_groups).snapshot()),
        old_effects_blob(reference.effects),
    ]
    for resume in effects_forms:
        assert effects_state(build_effects(resume).group) == effects_state(reference.effects)
    trigger_forms = [
        through_pickle(TriggerLogic(reference.trigger).snapshot()),
        old_trigger_blob(reference.trigger),
    ]
    for resume in trigger_forms:
        assert trigger_state(build_trigger(resume).stage) == trigger_state(reference.trigger)


# -- through Bytewax's recovery --------------------------------------------------------


def simulated_items() -> list[Any]:
    """A simulated stream as the two stages get it: decoded events for the effects
    stage; the customer stage's scores (with a seeded probability) and erasures."""
    settings = Settings()
    groups: dict[int, KeyGroupCustomers] = {}
    rng = random.Random(5)
    items: list[Any] = []
    with simulate(SimulationConfig(customers=300, days=120, seed=5)) as run:
        lines = list(run.lines())
    for line in lines:
        decoded = decode_item(line, settings)
        if isinstance(decoded, DeadLetter):
            continue
        event, amount = decoded
        if is_effect_input(decoded):
            items.append(decoded)
        group = key_group(event.store_id, event.customer_id, settings.key_groups)
        stage = groups.setdefault(group, KeyGroupCustomers(stage_config(settings)))
        for out in stage.on_event(event, amount):
            if isinstance(out, ScoreRequest):
                items.append(Scored(out, rng.random(), [], "v1", rng.random() < 0.8))
            elif isinstance(out, Erased):
                items.append(out)
    return items


def recovering_flow(items: list[Any], out: list[Any]) -> Dataflow:
    settings = Settings(rules_dir=RULES_DIR)
    flow = Dataflow("snapshots")
    stream = op.input("in", flow, TestingSource(items, batch_size=37))
    to_trigger = op.filter("scores", stream, lambda x: isinstance(x, (Scored, Erased)))
    keyed = op.key_on("trigger_key", to_trigger, lambda x: trigger_key(x, settings.key_groups))
    intents = op.stateful("triggers", keyed, build_trigger_logic(RULES_DIR))
    to_effects = op.filter("events", stream, lambda x: isinstance(x, tuple))
    keyed_effects = op.key_on("effects_key", to_effects, lambda x: effects_key(x, 128))
    counters = op.stateful("effects", keyed_effects, build_effects_logic(settings))
    op.output("out", op.merge("both", intents, counters), TestingSink(out))
    return flow


def final_outputs(out: list[Any]) -> tuple[set[Any], dict[Any, Any]]:
    """The intents (as keys: a resumed run emits some twice) and the last counters
    of each key group and store (absolute: the last one wins)."""
    intents = {(i.idempotency_key, i.holdout) for _, i in out if isinstance(i, RecallIntent)}
    counters = {(s.key_group, s.store_id): s for _, s in out if isinstance(s, EffectsSnapshot)}
    return intents, counters


def test_bytewax_resumes_both_stages_from_their_stored_snapshots(tmp_path: Path) -> None:
    items = simulated_items()
    clean: list[Any] = []
    run_main(recovering_flow(items, clean), epoch_interval=timedelta(0))
    expected = final_outputs(clean)
    assert len(expected[0]) > 20 and len(expected[1]) > 20

    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    cuts = [len(items) // 4, len(items) // 2, 3 * len(items) // 4]
    aborting = list(items)
    for cut in reversed(cuts):
        aborting.insert(cut, TestingSource.ABORT())
    resumed: list[Any] = []
    flow = recovering_flow(aborting, resumed)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert final_outputs(resumed) != expected  # stopped at the first abort
    for _ in cuts:  # each run resumes from the stored snapshots, up to the next abort
        run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    assert final_outputs(resumed) == expected
