"""The trigger stage: scores in event time → recall intents, once each, replay-stable."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from engine.messages import Erased, Scored, ScoreRequest
from engine.triggers.assignment import in_holdout
from engine.triggers.caps import DAY, SendHistory, record
from engine.triggers.intent import RecallIntent
from engine.triggers.quiet_hours import is_quiet
from engine.triggers.rules import load_rules
from engine.triggers.stage import (
    RulesBook,
    TriggerLogic,
    TriggerStage,
    build_trigger_logic,
    prune_history,
    store_rules,
    trigger_key,
    view_from_scored,
)

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"
STORE = "demo-store"
# 22:30 in Berlin (CET): +30/+60 days are 22:30 CET, +90 days 23:30 CEST, all in quiet hours
T0 = datetime(2026, 1, 5, 21, 30, tzinfo=UTC).timestamp()
HOUR = 3600.0


def profile(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "country": "DE",
        "source": "shopify",
        "timezone": "Europe/Berlin",
        "locale": "de",
        "first_name": "Anna",
        "consent_email": True,
        "consent_sms": None,
        "consent_push": False,
        "consent_social": None,
        "consent_webhook": None,
    }
    out.update(overrides)
    return out


def scored(
    t: float,
    *,
    customer: str = "c1",
    last_order: float | None = T0,
    orders: int = 3,
    spend: float = 90.0,
    p: float = 0.2,
    warm: bool = True,
    cause: str = "checkpoint",
    open_cart: float = 0.0,
    value_tier: str = "mid",
    store: str = STORE,
    **profile_overrides: Any,
) -> Scored:
    features = {
        "days_since_last_order": (t - last_order) / DAY if last_order is not None else 0.0,
        "order_count": float(orders),
        "spend_total_base": spend,
        "avg_order_value": spend / orders if orders else 0.0,
        "open_cart": open_cart,
    }
    request = ScoreRequest(
        store, customer, t, features, "active", value_tier, profile(**profile_overrides), cause
    )
    return Scored(request, p, [], "v1", warm)


def silent_100_days(customer: str = "c1", **kw: Any) -> list[Scored]:
    """An order at T0 (event score), then one score a day for 100 days of silence."""
    out = [scored(T0, customer=customer, cause="event", **kw)]
    out += [scored(T0 + k * DAY, customer=customer, **kw) for k in range(1, 101)]
    return out


def run(stage: TriggerStage, items: list[Scored]) -> list[RecallIntent]:
    return [intent for item in items for intent in stage.on_scored(item)]


def keys(intents: list[RecallIntent]) -> list[str]:
    return [i.idempotency_key for i in intents]


@pytest.fixture()
def stage() -> TriggerStage:
    return TriggerStage(RULES_DIR)


def test_view_from_scored_maps_features_and_profile() -> None:
    s = scored(T0 + 10 * DAY, p=0.4, consent_sms=False, open_cart=1.0)
    view = view_from_scored(s, 0.3)
    assert view.store_id == STORE and view.customer_id == "c1"
    assert view.last_order_ts == pytest.approx(T0, abs=1e-3)
    assert view.days_since_last_order == pytest.approx(10.0)
    assert (view.order_count, view.spend, view.avg_order_value) == (3, 90.0, 30.0)
    assert (view.churn_probability, view.previous_probability) == (0.4, 0.3)
    assert (view.country, view.timezone, view.locale, view.source) == (
        "DE",
        "Europe/Berlin",
        "de",
        "shopify",
    )
    assert dict(view.consent) == {"email": True, "sms": False, "push": False}
    assert view.first_name == "Anna" and view.open_cart_since_ts is None
    assert view_from_scored(s, None, open_cart_since_ts=5.0).open_cart_since_ts == 5.0
    # a cold model scores the prior: not a probability the risk rules may use
    assert view_from_scored(scored(T0, warm=False), None).churn_probability is None
    # no orders: no last order, no average
    empty = view_from_scored(scored(T0, orders=0, last_order=None, spend=0.0), None)
    assert (empty.last_order_ts, empty.avg_order_value, empty.days_since_last_order) == (
        None,
        None,
        None,
    )


def test_dormancy_steps_once_each_outside_quiet_hours(stage: TriggerStage) -> None:
    assert not in_holdout(STORE, "c1", "2026-h2", 0.1)
    intents = run(stage, silent_100_days())
    assert [(i.rule_id, i.step) for i in intents] == [
        ("winback", 0),
        ("winback", 1),
        ("winback", 2),
    ]
    assert [i.due_ts for i in intents] == [T0 + d * DAY for d in (30, 60, 90)]
    for intent in intents:
        assert intent.channel == "email" and not intent.holdout
        assert intent.send_at > intent.due_ts  # due at 22:30/23:30 local: moved
        assert not is_quiet(intent.send_at, "Europe/Berlin", time(21), time(9))
        assert intent.send_at - intent.due_ts < 12 * HOUR  # the next morning, 09:00
        assert intent.locale == "de" and intent.personalisation.first_name == "Anna"
    assert [i.offer.describe() for i in intents] == ["none", "10%", "20%+free_shipping"]
    assert len(stage.history_of(STORE, "c1")) >= 1
    assert stage.counters["intents"] == 3 and stage.counters["scores"] == 101


def test_replay_from_midway_snapshot_gives_the_clean_keys() -> None:
    items = silent_100_days()
    clean = keys(run(TriggerStage(RULES_DIR), items))
    assert keys(run(TriggerStage(RULES_DIR), items)) == clean  # deterministic
    for cut in (1, 30, 31, 45, 61, 90, 100):
        first = TriggerStage(RULES_DIR)
        before = keys(run(first, items[:cut]))
        data = pickle.loads(pickle.dumps(first.snapshot()))
        # the restart replays everything since the last snapshot; here: all of it
        restored = TriggerStage.restore(data, RULES_DIR)
        assert keys(run(restored, items)) == clean[len(before) :], cut
        # or exactly what followed the snapshot
        restored = TriggerStage.restore(data, RULES_DIR)
        assert before + keys(run(restored, items[cut:])) == clean, cut
        # the Bytewax logic pickles whole too (rules are reloaded, not pickled)
        logic = pickle.loads(pickle.dumps(TriggerLogic(TriggerStage.restore(data, RULES_DIR))))
        after = [i for item in items[cut:] for i in logic.on_item(item)[0]]
        assert before + keys(after) == clean, cut


def test_amazon_customers_never_get_intents(stage: TriggerStage) -> None:
    assert run(stage, silent_100_days(source="Amazon")) == []
    cart = [
        scored(T0, cause="event", open_cart=1.0, source="amazon"),
        scored(T0 + 5 * HOUR, cause="event", open_cart=1.0, source="amazon"),
    ]
    assert run(stage, cart) == []


def test_final_scores_trigger_nothing(stage: TriggerStage) -> None:
    finals = [scored(T0 + k * DAY, cause="final") for k in range(0, 101)]
    assert run(stage, finals) == []
    assert stage.customers == {} and stage.counters["ignored_final"] == 101


def test_holdout_intents_are_emitted_flagged_and_recorded(stage: TriggerStage) -> None:
    customer = "c9"
    assert in_holdout(STORE, customer, "2026-h2", 0.1)
    intents = run(stage, silent_100_days(customer))
    assert [i.step for i in intents] == [0, 1, 2] and all(i.holdout for i in intents)
    recorded = stage.history_of(STORE, customer).keys()
    assert intents[-1].idempotency_key in recorded
    assert stage.counters["holdout_intents"] == 3


def test_no_consent_no_intent(stage: TriggerStage) -> None:
    assert run(stage, silent_100_days(consent_email=False)) == []
    assert stage.counters["blocked"] > 0


def test_abandoned_cart_uses_the_first_score_that_saw_the_cart(stage: TriggerStage) -> None:
    opened = T0 + 20 * DAY + 16 * HOUR  # 14:30 Berlin
    items = [
        scored(T0, cause="event"),
        scored(opened, cause="event", open_cart=1.0),
        scored(opened + 2 * HOUR, cause="event", open_cart=1.0),  # another add: still since
        scored(opened + 5 * HOUR, cause="event", open_cart=1.0),
        scored(opened + 6 * HOUR, cause="event", open_cart=1.0),
    ]
    intents = run(stage, items)
    assert [(i.rule_id, i.due_ts) for i in intents] == [("cart", opened + 4 * HOUR)]
    # an order closes the cart; a new cart after it is a new episode
    later = opened + 3 * DAY
    items = [
        scored(later, cause="event", last_order=later, orders=4),
        scored(later + HOUR, cause="event", last_order=later, orders=4, open_cart=1.0),
        scored(later + 5 * HOUR, cause="event", last_order=later, orders=4, open_cart=1.0),
    ]
    intents = run(stage, items)
    assert [(i.rule_id, i.due_ts) for i in intents] == [("cart", later + 5 * HOUR)]


def test_risk_rule_needs_a_warm_rise(stage: TriggerStage) -> None:
    rich: dict[str, Any] = {"value_tier": "high", "spend": 300.0, "cause": "event"}
    cold_then_warm = [
        scored(T0, p=0.3, warm=False, **rich),
        scored(T0 + DAY, p=0.8, **rich),  # first warm score: no previous, no rise
    ]
    assert run(stage, cold_then_warm) == []
    intents = run(stage, [scored(T0 + 2 * DAY, p=0.5, **rich), scored(T0 + 3 * DAY, p=0.9, **rich)])
    assert [i.rule_id for i in intents] == ["high-value-risk"]
    assert intents[0].offer.free_shipping and intents[0].churn_probability == 0.9


def test_older_scores_are_skipped_and_erase_forgets(stage: TriggerStage) -> None:
    run(stage, silent_100_days()[:40])
    assert run(stage, [scored(T0 + 30 * DAY)]) == []  # older than day 39
    assert stage.counters["stale_scores"] == 1
    stage.on_erased(STORE, "c1", T0 + 44 * DAY)
    assert stage.customers == {} and stage.counters["erased"] == 1
    # scores still in flight through the model stage do not bring the customer back
    assert run(stage, silent_100_days()[39:45]) == []
    assert stage.customers == {} and stage.counters["erased_in_flight"] == 6
    # a score after the erasure (the customer came back): a new customer
    assert run(stage, [scored(T0 + 46 * DAY, cause="event", last_order=T0 + 46 * DAY)]) == []
    assert list(stage.customers) == [f"{STORE}\x1fc1"] and stage.tombstones == {}
    # tombstones expire with event time
    stage.on_erased(STORE, "x", T0)
    stage.on_erased(STORE, "y", T0 + 8 * DAY)
    assert len(stage.tombstones) == 1
    assert len(TriggerStage.restore(stage.snapshot(), RULES_DIR).tombstones) == 1


def test_store_rules_file_and_fallback(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text((RULES_DIR / "default.yaml").read_text())
    (tmp_path / "shop2.yaml").write_text(
        "store_id: something-else\nquiet_hours: null\nrules:\n"
        "  - {id: early, type: dormancy, steps: [{after_days: 10, template: dormancy_1}]}\n"
    )
    book = RulesBook(tmp_path)
    own = book.get("shop2")
    assert own is not None and own[0].store_id == "shop2" and own[0].rules[0].id == "early"
    fallback = book.get("other")
    assert fallback is not None and fallback[0].store_id == "other"
    assert book.path_for("..") == book.path_for("default") == tmp_path / "default.yaml"
    stage = TriggerStage(book)
    intents = run(stage, silent_100_days(store="shop2"))
    assert [(i.rule_id, i.due_ts, i.send_at) for i in intents] == [
        ("early", T0 + 10 * DAY, T0 + 10 * DAY)
    ]
    assert intents[0].store_id == "shop2"
    assert sorted(book.preload()) == ["default", "shop2"]
    # a broken file: that store gets no rules (logged), the others keep theirs
    (tmp_path / "broken.yaml").write_text("store_id: broken\nrules: [{id: x, type: nope}]\n")
    assert RulesBook(tmp_path).get("broken") is None
    assert stage.on_scored(scored(T0, store="broken")) == []
    # no rules directory content at all: nothing triggers
    assert TriggerStage(tmp_path / "missing").on_scored(scored(T0 + 30 * DAY)) == []


def test_trigger_logic_in_a_dataflow() -> None:
    items: list[Any] = [*silent_100_days("c1"), *silent_100_days("c9"), Erased(STORE, "c1", T0)]
    items += silent_100_days("c2", source="amazon")
    out: list[Any] = []
    flow = Dataflow("triggers")
    stream = op.input("in", flow, TestingSource(items))
    keyed = op.key_on("key", stream, lambda x: trigger_key(x, 16))
    intents = op.key_rm("out", op.stateful("triggers", keyed, build_trigger_logic(RULES_DIR)))
    op.output("sink", intents, TestingSink(out))
    run_main(flow)
    assert all(isinstance(i, RecallIntent) for i in out)
    assert sorted((i.customer_id, i.step, i.holdout) for i in out) == [
        ("c1", 0, False),
        ("c1", 1, False),
        ("c1", 2, False),
        ("c9", 0, True),
        ("c9", 1, True),
        ("c9", 2, True),
    ]


def test_history_keeps_keys_while_their_rule_can_produce_them() -> None:
    rules = load_rules(
        "store_id: s\ncaps: {overall: [{max: 5, per_days: 7}]}\nrules:\n"
        "  - id: d\n    type: dormancy\n    grace_days: 20\n"
        "    steps: [{after_days: 30, template: dormancy_1}]\n"
        "  - {id: r, type: risk, threshold: 0.5}\n"
    )
    entry = store_rules(rules)
    due = T0 + 30 * DAY
    h = record(SendHistory(), "email", "d", due, key=f"s:c:d:0:{round(due * 1000)}")
    h = record(h, "email", "r", T0 + DAY, key=f"s:c:r:0:{round(T0 * 1000)}")
    # inside the caps' horizon: everything stays
    assert prune_history(h, due + 6 * DAY, entry, T0) is h
    # past the horizon, inside the dormancy grace; the risk key's silence goes on
    assert len(prune_history(h, due + 15 * DAY, entry, T0)) == 2
    # grace over: the dormancy key cannot come back; the risk key can until an order
    later = prune_history(h, due + 21 * DAY, entry, T0)
    assert [s.rule_id for s in later.sends] == ["r"] and later.pruned_until == due
    assert len(prune_history(h, due + 21 * DAY, entry, T0 + 40 * DAY)) == 0
