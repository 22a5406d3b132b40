"""Evaluate a store's recall rules for one customer at one instant.

Pure: the time is a parameter, the send history is a value, nothing is read or
written elsewhere. For each enabled rule (in file order) whose conditions hold
and which is due, the engine builds an intent keyed (store, customer, rule,
step, nominal due time), moves its send time out of quiet hours, picks the
first consented channel that the caps allow, and assigns holdout and A/B arm.

* Dormancy step ``k`` is due at ``last_order_ts + after_days[k]``; only the
  latest step reached is considered, and not after ``grace_days`` (a step the
  engine missed is skipped, never sent late). An order moves ``last_order_ts``
  and so restarts the cadence.
* A risk rule's nominal due time is the last order (the silence episode), so it
  fires at most once per episode (plus its cooldown).
* Abandoned cart: due ``after_hours`` after the cart opened, if no order since.
* First-order follow-up: due ``after_days`` after the only order.

Intents blocked by a cap, a cooldown, missing consent or because the history
already holds their key are not emitted; ``evaluate_detailed`` says why.
Holdout intents are emitted with ``holdout=True``: record them (also in the
history, so the holdout is capped like everyone else), do not send them.
Customers from a marketplace that forbids marketing are never messaged.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from engine.triggers.assignment import assign_arm, in_holdout
from engine.triggers.caps import DAY, SendHistory, check, record
from engine.triggers.intent import Personalisation, RecallIntent, idempotency_key
from engine.triggers.quiet_hours import next_allowed_time
from engine.triggers.rules import (
    AbandonedCartRule,
    Conditions,
    DormancyRule,
    FirstOrderFollowupRule,
    Offered,
    RiskRule,
    Rule,
    RuleSet,
)

__all__ = ["Blocked", "CustomerView", "Evaluation", "evaluate", "evaluate_detailed"]

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class CustomerView:
    """What the trigger stage knows about one customer (built by the feature stage)."""

    store_id: str
    customer_id: str
    segment: str | None = None
    value_tier: str | None = None
    churn_probability: float | None = None
    previous_probability: float | None = None
    days_since_last_order: float | None = None
    """Informational; due times are computed from ``last_order_ts``."""
    last_order_ts: float | None = None
    order_count: int = 0
    spend: float = 0.0
    avg_order_value: float | None = None
    country: str | None = None
    timezone: str | None = None
    locale: str | None = None
    source: str | None = None
    consent: Mapping[str, bool] = field(default_factory=dict)
    """Channel → opted in; a channel missing here is not used."""
    first_name: str | None = None
    open_cart_since_ts: float | None = None
    favourite_categories: tuple[str, ...] = ()
    last_products: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Blocked:
    """A due intent that was not emitted, and why.

    Reasons: ``forbidden_source``, ``already_sent``, ``no_consent``, ``stale``,
    ``cooldown:<rule>``, ``cap:overall``, ``cap:channel:<channel>``.
    """

    rule_id: str
    step: int
    reason: str
    key: str = ""


@dataclass(frozen=True, slots=True)
class Evaluation:
    intents: tuple[RecallIntent, ...] = ()
    blocked: tuple[Blocked, ...] = ()


_NOTHING_DUE = Evaluation()


@dataclass(frozen=True, slots=True)
class _Due:
    step: int
    due_ts: float
    template: str
    offered: Offered
    reasons: tuple[str, ...]


def _conditions_hold(cond: Conditions, view: CustomerView, region: str | None) -> bool:
    if cond.segments is not None and view.segment not in cond.segments:
        return False
    if cond.value_tiers is not None and view.value_tier not in cond.value_tiers:
        return False
    if cond.min_spend is not None and view.spend < cond.min_spend:
        return False
    if cond.max_spend is not None and view.spend > cond.max_spend:
        return False
    if cond.min_orders is not None and view.order_count < cond.min_orders:
        return False
    if cond.max_orders is not None and view.order_count > cond.max_orders:
        return False
    if cond.countries is not None and (view.country or "").upper() not in cond.countries:
        return False
    if cond.regions is not None and region not in cond.regions:
        return False
    return cond.sources is None or (view.source or "").lower() in cond.sources


def _due(rule: Rule, view: CustomerView, now: float) -> _Due | None:
    last = view.last_order_ts
    if isinstance(rule, DormancyRule):
        if last is None:
            return None
        reached = [(k, s) for k, s in enumerate(rule.steps) if last + s.after_days * DAY <= now]
        if not reached:
            return None
        k, step = reached[-1]
        due = last + step.after_days * DAY
        if now - due > rule.grace_days * DAY:
            return None
        silent = (now - last) / DAY
        why = f"no order for {silent:.0f} days (step {k + 1} at {step.after_days:g} days)"
        return _Due(k, due, step.template, step, (why,))
    if isinstance(rule, RiskRule):
        p = view.churn_probability
        if p is None or p < rule.threshold:
            return None
        reasons = [f"churn probability {p:.2f} >= {rule.threshold:.2f}"]
        if rule.min_rise is not None:
            prev = view.previous_probability
            if prev is None or p - prev < rule.min_rise:
                return None
            reasons.append(f"rose by {p - prev:.2f} since last score")
        return _Due(0, last if last is not None else 0.0, rule.template, rule, tuple(reasons))
    if isinstance(rule, AbandonedCartRule):
        opened = view.open_cart_since_ts
        if opened is None or (last is not None and last >= opened):
            return None
        due = opened + rule.after_hours * HOUR
        if due > now or now - due > rule.grace_hours * HOUR:
            return None
        why = f"cart open {(now - opened) / HOUR:.0f} hours without an order"
        return _Due(0, due, rule.template, rule, (why,))
    if isinstance(rule, FirstOrderFollowupRule):
        if view.order_count != 1 or last is None:
            return None
        due = last + rule.after_days * DAY
        if due > now or now - due > rule.grace_days * DAY:
            return None
        return _Due(
            0, due, rule.template, rule, (f"first order {(now - last) / DAY:.0f} days ago",)
        )
    return None


@lru_cache(maxsize=1024)
def _is_zone(name: str) -> bool:
    """Whether ``name`` is a time zone that ``zoneinfo`` knows (asked once per name).

    >>> _is_zone("Europe/Berlin"), _is_zone("Mars/Olympus"), _is_zone("../etc")
    (True, False, False)
    """
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _zone_name(view: CustomerView, rules: RuleSet) -> str:
    """The customer's own time zone if it is a known one, else the store's."""
    if view.timezone and _is_zone(view.timezone):
        return view.timezone
    return rules.timezone


def _channels(rule: Rule, rules: RuleSet, region: str | None) -> list[str]:
    preferred = rule.channels
    if preferred is None:
        preferred = rules.channels.preferences.get(region or "", ())
    out: list[str] = []
    for ch in (*preferred, *rules.channels.default):
        if ch not in out:
            out.append(ch)
    return out


def evaluate_detailed(
    rules: RuleSet, view: CustomerView, now_ts: float, history: SendHistory
) -> Evaluation:
    """Intents to emit for ``view`` at ``now_ts``, and the due ones that were blocked."""
    if view.source and view.source.lower() in rules.channels.forbidden_sources:
        return Evaluation((), (Blocked("*", 0, "forbidden_source"),))
    region = rules.region_of(view.country)
    due_rules = [
        (rule, due)
        for rule in rules.rules
        if rule.enabled
        and _conditions_hold(rule.when, view, region)
        and (due := _due(rule, view, now_ts)) is not None
    ]
    if not due_rules:  # most evaluations: nothing else to work out
        return _NOTHING_DUE
    policy = rules.cap_policy()
    tz = _zone_name(view, rules)
    sent_keys = history.keys()
    pending = history  # plus what this evaluation emits, so caps hold across its rules
    holdout = in_holdout(
        view.store_id, view.customer_id, rules.holdout.salt, rules.holdout.fraction
    )
    personalisation = Personalisation(
        view.first_name, tuple(view.favourite_categories), tuple(view.last_products)
    )
    intents: list[RecallIntent] = []
    blocked: list[Blocked] = []
    for rule, due in due_rules:
        key = idempotency_key(view.store_id, view.customer_id, rule.id, due.step, due.due_ts)
        if key in sent_keys:
            blocked.append(Blocked(rule.id, due.step, "already_sent", key))
            continue
        send_at = max(due.due_ts, now_ts)
        if rules.quiet_hours is not None:
            send_at = next_allowed_time(send_at, tz, rules.quiet_hours.start, rules.quiet_hours.end)
        consented = [ch for ch in _channels(rule, rules, region) if view.consent.get(ch) is True]
        if not consented:
            blocked.append(Blocked(rule.id, due.step, "no_consent", key))
            continue
        channel, why_not = None, None
        for ch in consented:
            reason = check(pending, ch, rule.id, send_at, policy)
            if reason is None:
                channel = ch
                break
            why_not = why_not or reason
        if channel is None:
            blocked.append(Blocked(rule.id, due.step, why_not or "capped", key))
            continue
        template, variant = due.template, None
        if rule.arms:
            arm_name = assign_arm(
                view.store_id,
                view.customer_id,
                rule.id,
                [(a.name, a.weight) for a in rule.arms],
                salt=rules.holdout.salt,
            )
            arm = next(a for a in rule.arms if a.name == arm_name)
            template, variant = arm.template or template, arm.name
        intents.append(
            RecallIntent(
                store_id=view.store_id,
                customer_id=view.customer_id,
                rule_id=rule.id,
                step=due.step,
                due_ts=due.due_ts,
                send_at=send_at,
                channel=channel,
                template=template,
                locale=view.locale or rules.default_locale,
                variant=variant,
                offer=due.offered.offer_for(view.avg_order_value),
                churn_probability=view.churn_probability,
                reasons=(*due.reasons, f"channel {channel}"),
                personalisation=personalisation,
                holdout=holdout,
            )
        )
        pending = record(pending, channel, rule.id, send_at, key=key)
    return Evaluation(tuple(intents), tuple(blocked))


def evaluate(
    rules: RuleSet, view: CustomerView, now_ts: float, history: SendHistory
) -> list[RecallIntent]:
    """The recall intents due for ``view`` at ``now_ts`` (see ``evaluate_detailed``)."""
    return list(evaluate_detailed(rules, view, now_ts, history).intents)
