"""The trigger engine: due times, keys, quiet hours, caps, channels, holdout, arms."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from datetime import datetime, time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.triggers.assignment import in_holdout
from engine.triggers.caps import DAY, SendHistory, record
from engine.triggers.engine import Blocked, CustomerView, evaluate, evaluate_detailed
from engine.triggers.intent import Offer, RecallIntent
from engine.triggers.quiet_hours import is_quiet, next_allowed_time
from engine.triggers.rules import RuleSet, load_rules

RULES = load_rules(
    """\
store_id: demo
timezone: Europe/Berlin
quiet_hours: {start: "21:00", end: "09:00"}
caps:
  overall: [{max: 2, per_days: 7}]
  channels:
    sms: [{max: 1, per_days: 7}]
holdout: {fraction: 0.0, salt: s1}
channels:
  preferences:
    EU: [email, push, sms]
    NA: [email, sms, push]
    SEA: [social, push, email]
  default: [email, push]
  forbidden_sources: [amazon]
rules:
  - id: winback
    type: dormancy
    cooldown_days: 14
    arms: [{name: subject_a}, {name: subject_b}]
    steps:
      - {after_days: 30, template: dormancy_1}
      - after_days: 60
        template: dormancy_2
        offer: "10%"
        offer_tiers: [{min_aov: 150, offer: "15%"}]
      - {after_days: 90, template: dormancy_3, offer: "20% + free_shipping"}
  - id: risk
    type: risk
    threshold: 0.7
    min_rise: 0.15
    cooldown_days: 30
    when: {value_tiers: [high, vip], min_spend: 100}
    offer: free_shipping
  - id: cart
    type: abandoned_cart
    after_hours: 4
    cooldown_days: 3
    channels: [email, push]
  - id: second
    type: first_order_followup
    after_days: 21
    when: {regions: [EU, NA]}
    offer: {percent_off: 10, code: SECOND10}
"""
)

T0 = datetime.fromisoformat("2026-03-02T10:00:00+00:00").timestamp()  # 11:00 in Berlin
HOUR = 3600.0


def view(**kw: object) -> CustomerView:
    base: dict[str, object] = {
        "store_id": "demo",
        "customer_id": "c-1",
        "last_order_ts": T0,
        "order_count": 3,
        "spend": 120.0,
        "avg_order_value": 40.0,
        "country": "DE",
        "timezone": "Europe/Berlin",
        "locale": "de-DE",
        "consent": {"email": True},
        "first_name": "Anna",
        "favourite_categories": ("Schuhe",),
        "last_products": ("sku-1",),
    }
    base.update(kw)
    return CustomerView(**base)  # type: ignore[arg-type]


def only(intents: Sequence[RecallIntent]) -> RecallIntent:
    assert len(intents) == 1, intents
    return intents[0]


def test_nothing_before_the_first_step() -> None:
    assert evaluate(RULES, view(), T0 + 29 * DAY, SendHistory()) == []


def test_dormancy_steps_are_due_at_last_order_plus_n_days() -> None:
    intent = only(evaluate(RULES, view(), T0 + 30 * DAY + HOUR, SendHistory()))
    assert (intent.rule_id, intent.step, intent.template) == ("winback", 0, "dormancy_1")
    assert intent.due_ts == T0 + 30 * DAY
    assert intent.send_at == T0 + 30 * DAY + HOUR  # not before evaluation
    assert intent.offer == Offer()
    assert intent.channel == "email" and intent.locale == "de-DE"
    assert intent.variant in {"subject_a", "subject_b"}
    assert intent.personalisation.first_name == "Anna"
    assert intent.personalisation.favourite_categories == ("Schuhe",)
    assert intent.holdout is False
    assert intent.idempotency_key == f"demo:c-1:winback:0:{round((T0 + 30 * DAY) * 1000)}"
    assert any("30 days" in r for r in intent.reasons)

    step2 = only(evaluate(RULES, view(), T0 + 61 * DAY, SendHistory()))
    assert (step2.step, step2.template, step2.offer) == (1, "dormancy_2", Offer(10))
    rich = only(evaluate(RULES, view(avg_order_value=200.0), T0 + 61 * DAY, SendHistory()))
    assert rich.offer == Offer(15)
    step3 = only(evaluate(RULES, view(), T0 + 95 * DAY, SendHistory()))
    assert (step3.step, step3.offer) == (2, Offer(20, True))


def test_reevaluation_gives_the_same_key_and_history_blocks_it() -> None:
    first = only(evaluate(RULES, view(), T0 + 30 * DAY + HOUR, SendHistory()))
    again = only(evaluate(RULES, view(), T0 + 33 * DAY, SendHistory()))
    assert again.idempotency_key == first.idempotency_key
    history = record(
        SendHistory(),
        first.channel,
        first.rule_id,
        first.send_at,
        RULES.cap_policy(),
        key=first.idempotency_key,
    )
    result = evaluate_detailed(RULES, view(), T0 + 33 * DAY, history)
    assert result.intents == ()
    assert result.blocked == (Blocked("winback", 0, "already_sent", first.idempotency_key),)


def test_an_order_restarts_the_cadence() -> None:
    now = T0 + 45 * DAY
    assert evaluate(RULES, view(last_order_ts=T0 + 40 * DAY), now, SendHistory()) == []


def test_a_missed_step_is_not_sent_late() -> None:
    assert evaluate(RULES, view(), T0 + 50 * DAY, SendHistory()) == []  # step 1, 20 days late


def test_quiet_hours_shift_send_time_not_key() -> None:
    last = datetime.fromisoformat("2026-03-02T22:00:00+01:00").timestamp()
    due = last + 30 * DAY  # 2026-04-01 23:00 CEST
    intent = only(evaluate(RULES, view(last_order_ts=last), due + 60, SendHistory()))
    assert intent.due_ts == due
    assert intent.send_at == datetime.fromisoformat("2026-04-02T09:00:00+02:00").timestamp()
    assert intent.idempotency_key.endswith(f":{round(due * 1000)}")


def test_unknown_customer_zone_uses_store_zone() -> None:
    last = datetime.fromisoformat("2026-03-02T22:00:00+01:00").timestamp()
    v = view(last_order_ts=last, timezone="Not/AZone")
    intent = only(evaluate(RULES, v, last + 30 * DAY, SendHistory()))
    assert intent.send_at == datetime.fromisoformat("2026-04-02T09:00:00+02:00").timestamp()


def test_caps_block_and_say_why() -> None:
    now = T0 + 30 * DAY + HOUR
    h = record(SendHistory(), "email", "other", now - DAY)
    h = record(h, "push", "other", now - 2 * DAY)
    result = evaluate_detailed(RULES, view(consent={"email": True, "push": True}), now, h)
    assert result.intents == ()
    assert [(b.rule_id, b.reason) for b in result.blocked] == [("winback", "cap:overall")]


def test_cooldown_blocks_the_same_rule() -> None:
    now = T0 + 61 * DAY
    h = record(SendHistory(), "email", "winback", now - 10 * DAY)
    result = evaluate_detailed(RULES, view(), now, h)
    assert [b.reason for b in result.blocked] == ["cooldown:winback"]


def test_channel_by_consent_then_region() -> None:
    now = T0 + 30 * DAY + HOUR
    pick = lambda **kw: only(evaluate(RULES, view(**kw), now, SendHistory())).channel  # noqa: E731
    assert pick(consent={"email": True, "sms": True}) == "email"
    assert pick(consent={"sms": True}) == "sms"
    assert pick(consent={"email": False, "push": True}) == "push"
    assert (
        pick(country="SG", timezone="Asia/Singapore", consent={"email": True, "social": True})
        == "social"
    )
    assert (
        pick(country="BR", timezone="America/Sao_Paulo", consent={"push": True, "sms": True})
        == "push"
    )
    result = evaluate_detailed(RULES, view(consent={"sms": False}), now, SendHistory())
    assert [b.reason for b in result.blocked] == ["no_consent"]


def test_channel_cap_falls_back_to_next_channel() -> None:
    now = T0 + 30 * DAY + HOUR
    h = record(SendHistory(), "sms", "other", now - DAY)
    v = view(country="US", timezone="America/New_York", consent={"sms": True, "push": True})
    assert only(evaluate(RULES, v, now + 5 * HOUR, h)).channel == "push"


def test_forbidden_marketplace_is_never_messaged() -> None:
    result = evaluate_detailed(RULES, view(source="Amazon"), T0 + 30 * DAY + HOUR, SendHistory())
    assert result.intents == ()
    assert result.blocked == (Blocked("*", 0, "forbidden_source"),)


def test_holdout_intents_are_emitted_flagged() -> None:
    rules = RULES.model_copy(update={"holdout": RULES.holdout.model_copy(update={"fraction": 0.5})})
    ids = [f"c-{i}" for i in range(40)]
    inside = next(c for c in ids if in_holdout("demo", c, "s1", 0.5))
    outside = next(c for c in ids if not in_holdout("demo", c, "s1", 0.5))
    now = T0 + 30 * DAY + HOUR
    assert only(evaluate(rules, view(customer_id=inside), now, SendHistory())).holdout is True
    assert only(evaluate(rules, view(customer_id=outside), now, SendHistory())).holdout is False


def test_risk_rule_needs_threshold_rise_and_conditions() -> None:
    now = T0 + 10 * DAY
    v = view(value_tier="high", churn_probability=0.8, previous_probability=0.6)
    intent = only(evaluate(RULES, v, now, SendHistory()))
    assert (intent.rule_id, intent.template, intent.offer) == ("risk", "risk", Offer(0, True))
    assert intent.churn_probability == 0.8 and intent.due_ts == T0
    assert (
        evaluate(RULES, dataclasses.replace(v, previous_probability=0.75), now, SendHistory()) == []
    )
    assert evaluate(RULES, dataclasses.replace(v, value_tier="low"), now, SendHistory()) == []
    assert evaluate(RULES, dataclasses.replace(v, spend=50.0), now, SendHistory()) == []
    assert evaluate(RULES, dataclasses.replace(v, churn_probability=0.6), now, SendHistory()) == []


def test_abandoned_cart() -> None:
    opened = T0 + 10 * DAY
    v = view(open_cart_since_ts=opened, consent={"sms": True, "push": True})
    intent = only(evaluate(RULES, v, opened + 5 * HOUR, SendHistory()))
    assert (intent.rule_id, intent.channel, intent.due_ts) == ("cart", "push", opened + 4 * HOUR)
    assert evaluate(RULES, v, opened + 3 * HOUR, SendHistory()) == []
    ordered = dataclasses.replace(v, last_order_ts=opened + HOUR)
    assert evaluate(RULES, ordered, opened + 5 * HOUR, SendHistory()) == []


def test_first_order_followup_by_region() -> None:
    v = view(order_count=1)
    intent = only(evaluate(RULES, v, T0 + 22 * DAY, SendHistory()))
    assert (intent.rule_id, intent.offer) == ("second", Offer(10, False, "SECOND10"))
    jp = dataclasses.replace(v, country="JP", timezone="Asia/Tokyo")
    assert evaluate(RULES, jp, T0 + 22 * DAY, SendHistory()) == []


def test_caps_hold_across_rules_in_one_evaluation() -> None:
    now = T0 + 30 * DAY + 5 * HOUR
    v = view(
        value_tier="vip",
        churn_probability=0.9,
        previous_probability=0.5,
        open_cart_since_ts=T0 + 30 * DAY,
        last_order_ts=T0,
    )
    result = evaluate_detailed(RULES, v, now, SendHistory())
    assert [i.rule_id for i in result.intents] == ["winback", "risk"]
    assert [(b.rule_id, b.reason) for b in result.blocked] == [("cart", "cap:overall")]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules(Path(__file__).resolve().parents[1] / "rules" / "default.yaml")


def test_default_rules_evaluate(rules: RuleSet) -> None:
    intent = only(evaluate(rules, view(store_id="demo-store"), T0 + 30 * DAY + HOUR, SendHistory()))
    assert (intent.rule_id, intent.template, intent.channel) == ("winback", "dormancy_1", "email")
    assert intent.holdout == in_holdout("demo-store", "c-1", "2026-h2", 0.1)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 3 * 365).map(lambda d: T0 + d * DAY / 7),
    st.floats(0, 14 * DAY - 1),
    st.floats(0, 14 * DAY - 1),
    st.sampled_from([0, 1, 2]),
)
def test_idempotency_keys_stable_on_reevaluation(last: float, a: float, b: float, k: int) -> None:
    due = last + (30, 60, 90)[k] * DAY
    v = view(last_order_ts=last)
    one = only(evaluate(RULES, v, due + a, SendHistory()))
    two = only(evaluate(RULES, v, due + b, SendHistory()))
    assert one.idempotency_key == two.idempotency_key
    assert (one.step, one.due_ts) == (k, due)
    assert one.send_at >= due + a


def test_simulated_customer_gets_each_step_once_within_caps() -> None:
    policy = RULES.cap_policy()
    v = view(consent={"email": True, "sms": True, "push": True})
    history = SendHistory()
    sent = []
    t = T0
    while t < T0 + 120 * DAY:
        for intent in evaluate(RULES, v, t, history):
            sent.append(intent)
            history = record(
                history,
                intent.channel,
                intent.rule_id,
                intent.send_at,
                policy,
                key=intent.idempotency_key,
            )
        t += 6 * HOUR
    assert [(i.rule_id, i.step) for i in sent] == [("winback", 0), ("winback", 1), ("winback", 2)]
    assert len({i.idempotency_key for i in sent}) == 3


ZONES = ("America/New_York", "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata", "Pacific/Chatham")


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1_767_225_600, 1_830_297_600).map(float),  # 2026-2027
    st.floats(0, 2 * DAY),
    st.sampled_from(ZONES),
)
def test_intents_never_scheduled_in_quiet_hours(last: float, late: float, tz: str) -> None:
    now = last + 30 * DAY + late
    intent = only(evaluate(RULES, view(last_order_ts=last, timezone=tz), now, SendHistory()))
    assert intent.send_at >= now
    assert not is_quiet(intent.send_at, tz, time(21), time(9))
    assert intent.send_at == next_allowed_time(now, tz, time(21), time(9))


def test_intent_and_view_are_picklable() -> None:
    v = view()
    intent = only(evaluate(RULES, v, T0 + 30 * DAY + HOUR, SendHistory()))
    assert pickle.loads(pickle.dumps(intent)) == intent
    assert pickle.loads(pickle.dumps(v)) == v
