"""The recall intent: the trigger stage's output, one message the engine wants sent.

Its idempotency key is built from (store, customer, rule, step, nominal due
time) only, so evaluating the same customer again yields the same key and the
enqueue can refuse the duplicate. The nominal due time is the one before
quiet hours shift it (``send_at`` is the shifted time).

>>> intent = RecallIntent(store_id="demo", customer_id="c:1", rule_id="winback", step=1,
...                       due_ts=1_790_000_000.25, send_at=1_790_000_000.25, channel="email",
...                       template="dormancy_2", locale="en")
>>> intent.idempotency_key
'demo:c%3A1:winback:1:1790000000250'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

__all__ = ["Offer", "Personalisation", "RecallIntent", "idempotency_key"]


@dataclass(frozen=True, slots=True)
class Offer:
    """An incentive; the default (no discount, no free shipping) means no offer."""

    percent_off: int = 0
    free_shipping: bool = False
    code: str | None = None

    def __bool__(self) -> bool:
        return self.percent_off > 0 or self.free_shipping

    def describe(self) -> str:
        """Short language-neutral form for logs and reasons: ``none``, ``10%+free_shipping``."""
        parts = [f"{self.percent_off}%"] if self.percent_off else []
        if self.free_shipping:
            parts.append("free_shipping")
        return "+".join(parts) or "none"


NO_OFFER = Offer()


@dataclass(frozen=True, slots=True)
class Personalisation:
    first_name: str | None = None
    favourite_categories: tuple[str, ...] = ()
    last_products: tuple[str, ...] = ()


def idempotency_key(store: str, customer: str, rule: str, step: int, due_ts: float) -> str:
    """``store:customer:rule:step:due_ms``; ids are percent-escaped so ``:`` stays a separator."""
    due_ms = round(due_ts * 1000)
    return (
        f"{quote(store, safe='')}:{quote(customer, safe='')}:{quote(rule, safe='')}:{step}:{due_ms}"
    )


@dataclass(frozen=True, slots=True)
class RecallIntent:
    store_id: str
    customer_id: str
    rule_id: str
    step: int
    """Dormancy step index (0-based); 0 for single-step rules."""
    due_ts: float
    """Nominal due time (epoch seconds, UTC) — part of the idempotency key."""
    send_at: float
    """When to send: not before evaluation time, moved out of quiet hours."""
    channel: str
    template: str
    locale: str
    variant: str | None = None
    """A/B arm name, if the rule runs an experiment."""
    offer: Offer = NO_OFFER
    churn_probability: float | None = None
    reasons: tuple[str, ...] = ()
    personalisation: Personalisation = field(default_factory=Personalisation)
    holdout: bool = False
    """Holdout intents are recorded, not sent (for uplift measurement)."""

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(
            self.store_id, self.customer_id, self.rule_id, self.step, self.due_ts
        )
