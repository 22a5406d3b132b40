"""Backtest recall rules on history: who each rule would message, and was it right.

Pure: :func:`backtest` takes the replayed events, the :class:`RecallIntent`\\ s the
trigger stage emitted during the replay, and the churn horizon ``H``; nothing is
read or written elsewhere. Definitions (``t`` is an intent's *time*: its
``send_at`` by default — when the message would go out; ``due_ts`` is a risk
rule's last order, not the moment it fired):

* A *purchase* is an ``order_created`` event on or before ``window_end`` (the
  replay's end); customers are ``(store_id, customer_id)``.
* **Precision** (per message): an intent is *resolved* when ``t + H <= window_end``
  and *churned* when the customer has no purchase in ``(t, t + H]``;
  ``precision = churned / resolved``. Intents too close to the end are counted
  (``messages``) but not resolved.
* **Recall** (per churner): a *churner* is a customer whose last purchase ``L`` is
  followed by at least ``H`` days of silence inside the window
  (``L + H <= window_end``); it became *dormant* at ``L + H``. A rule *reached* the
  churner if one of its intents has ``L <= t <= L + H``;
  ``recall = reached / churners``. The churners do not depend on the rules, so
  two rule sets replayed on the same history share the denominator.
* **Lead time**: for each reached churner, days from its earliest reaching
  intent to ``L + H``; the table shows the median (0 = reached the moment it
  became dormant).

Rows: one per ``(rule, step)`` (``step`` is the intent's 0-based step), one
``step=None`` row per rule with several steps (any of its steps), and a last
``("*", None)`` row for any rule. Holdout intents count by default: holdout is
assigned at random, and a backtest measures targeting, not sending
(``include_holdout=False`` drops them; ``holdout`` says how many there were).

:func:`assume_consent` is a replay-only event transformer: it gives every
customer consent on some channels (a ``customer_profile`` event at its first
event), for histories such as CDNOW that carry no consent, where the channel
choice would block every intent with ``no_consent``.

>>> from decimal import Decimal
>>> from engine.triggers.intent import RecallIntent
>>> T0 = 1_000_000_000.0
>>> def order(customer: str, day: float) -> OrderEvent:
...     return OrderEvent(type="order_created", event_id=f"{customer}{day}", store_id="s",
...                       customer_id=customer, occurred_at=datetime.fromtimestamp(
...                           T0 + day * DAY, UTC), order_id=f"{customer}{day}",
...                       amount=Decimal(10), currency="USD")
>>> def intent(customer: str, day: float) -> RecallIntent:
...     t = T0 + day * DAY
...     return RecallIntent("s", customer, "winback", 0, t, t, "email", "dormancy_1", "en")
>>> events = [order("a", 0), order("b", 0), order("b", 40)]
>>> bt = backtest(events, [intent("a", 30), intent("b", 30)], 60, window_end=T0 + 200 * DAY)
>>> row = bt.row("winback", 0)
>>> (bt.churners, row.messages, row.churned, row.precision, row.reached, row.recall)
(2, 2, 1, 0.5, 1, 0.5)
>>> row.median_lead_days  # a dormant at day 60, reached at day 30
30.0
"""

from __future__ import annotations

import csv
import hashlib
import statistics
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from engine.events import Channel, CustomerProfileEvent, OrderEvent
from engine.triggers.intent import RecallIntent
from engine.triggers.rules import DormancyRule, RuleSet

__all__ = [
    "ALL",
    "CSV_COLUMNS",
    "Backtest",
    "BacktestRow",
    "assume_consent",
    "backtest",
    "format_table",
    "rule_steps",
    "write_backtest_csv",
]

DAY = 86_400.0
ALL = "*"
"""``rule_id`` of the row that counts every rule."""

CSV_COLUMNS = (
    "rules",
    "rule",
    "step",
    "customers",
    "messages",
    "holdout",
    "resolved",
    "churned",
    "precision",
    "reached",
    "churners",
    "recall",
    "median_lead_days",
)

_Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class BacktestRow:
    rule_id: str
    """A rule id, or ``"*"``: every rule."""
    step: int | None
    """0-based step; ``None``: every step of the rule."""
    customers: int
    """Distinct customers messaged."""
    messages: int
    """Intents (holdout ones included unless excluded)."""
    holdout: int
    """Of ``messages``, how many were holdout intents."""
    resolved: int
    """Messages whose horizon ends inside the window."""
    churned: int
    """Resolved messages followed by no purchase within ``H`` days."""
    reached: int
    """Churners messaged between their last purchase and becoming dormant."""
    churners: int
    median_lead_days: float | None
    """Median days from first reaching message to dormancy; ``None`` if none reached."""

    @property
    def precision(self) -> float | None:
        return self.churned / self.resolved if self.resolved else None

    @property
    def recall(self) -> float | None:
        return self.reached / self.churners if self.churners else None


@dataclass(frozen=True, slots=True)
class Backtest:
    horizon_days: float
    window_end: float
    customers: int
    """Customers with a purchase in the window."""
    churners: int
    rows: tuple[BacktestRow, ...]

    def row(self, rule_id: str, step: int | None = None) -> BacktestRow:
        for row in self.rows:
            if row.rule_id == rule_id and row.step == step:
                return row
        raise KeyError((rule_id, step))


def _end_of_last_day(ts: float) -> float:
    day = datetime.fromtimestamp(ts, UTC).date() + timedelta(days=1)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return (start - timedelta(microseconds=1)).timestamp()


def rule_steps(rules: RuleSet) -> list[tuple[str, int]]:
    """Every ``(rule id, step)`` of the enabled rules, in file order (zero rows too)."""
    out: list[tuple[str, int]] = []
    for rule in rules.rules:
        if not rule.enabled:
            continue
        steps = len(rule.steps) if isinstance(rule, DormancyRule) else 1
        out.extend((rule.id, k) for k in range(steps))
    return out


def backtest(
    events: Iterable[Any],
    intents: Iterable[RecallIntent],
    horizon_days: float,
    *,
    window_end: float | None = None,
    rule_steps: Sequence[tuple[str, int]] = (),
    include_holdout: bool = True,
    time_of: Literal["send_at", "due_ts"] = "send_at",
) -> Backtest:
    """The backtest table (see the module docstring).

    ``window_end`` defaults to the end of the UTC day of the last event (what
    ``run_replay`` closes at without ``until``); ``rule_steps`` lists rows to
    show even when they have no intent (:func:`rule_steps` of the rules file).
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be > 0, got {horizon_days}")
    events = list(events)
    if window_end is None:
        if not events:
            raise ValueError("window_end is needed without events")
        window_end = _end_of_last_day(max(e.ts for e in events))
    horizon = horizon_days * DAY

    purchases: dict[_Key, list[float]] = {}
    for e in events:
        if isinstance(e, OrderEvent) and e.type == "order_created" and e.ts <= window_end:
            purchases.setdefault((e.store_id, e.customer_id), []).append(e.ts)
    for times in purchases.values():
        times.sort()
    dormant_at = {
        key: times[-1] + horizon
        for key, times in purchases.items()
        if times[-1] + horizon <= window_end
    }

    # group -> per-group accumulators; a group is (rule, step), (rule, None), (ALL, None)
    customers: dict[tuple[str, int | None], set[_Key]] = {}
    counts: dict[tuple[str, int | None], list[int]] = {}  # messages, holdout, resolved, churned
    leads: dict[tuple[str, int | None], dict[_Key, float]] = {}
    steps_of: dict[str, set[int]] = {}
    order: list[str] = []
    for rule_id, step in rule_steps:
        if rule_id not in steps_of:
            order.append(rule_id)
        steps_of.setdefault(rule_id, set()).add(step)

    for intent in intents:
        if intent.holdout and not include_holdout:
            continue
        key = (intent.store_id, intent.customer_id)
        t = intent.send_at if time_of == "send_at" else intent.due_ts
        steps_of.setdefault(intent.rule_id, set()).add(intent.step)
        resolved = t + horizon <= window_end
        churned = False
        if resolved:
            times = purchases.get(key, [])
            i = bisect_right(times, t)
            churned = i == len(times) or times[i] > t + horizon
        dormant = dormant_at.get(key)
        lead = None
        if dormant is not None and dormant - horizon <= t <= dormant:
            lead = (dormant - t) / DAY
        for group in (
            (intent.rule_id, intent.step),
            (intent.rule_id, None),
            (ALL, None),
        ):
            customers.setdefault(group, set()).add(key)
            c = counts.setdefault(group, [0, 0, 0, 0])
            c[0] += 1
            c[1] += intent.holdout
            c[2] += resolved
            c[3] += churned
            if lead is not None:
                best = leads.setdefault(group, {})
                best[key] = max(best.get(key, lead), lead)

    churners = len(dormant_at)

    def make(group: tuple[str, int | None]) -> BacktestRow:
        messages, holdout, resolved, churned = counts.get(group, [0, 0, 0, 0])
        reached = leads.get(group, {})
        median = statistics.median(reached.values()) if reached else None
        return BacktestRow(
            rule_id=group[0],
            step=group[1],
            customers=len(customers.get(group, ())),
            messages=messages,
            holdout=holdout,
            resolved=resolved,
            churned=churned,
            reached=len(reached),
            churners=churners,
            median_lead_days=median,
        )

    rows: list[BacktestRow] = []
    order.extend(sorted(r for r in steps_of if r not in order))
    for rule_id in order:
        steps = sorted(steps_of[rule_id])
        rows.extend(make((rule_id, k)) for k in steps)
        if len(steps) > 1:
            rows.append(make((rule_id, None)))
    rows.append(make((ALL, None)))
    return Backtest(horizon_days, window_end, len(purchases), churners, tuple(rows))


# -- output -----------------------------------------------------------------------


def _ratio(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _step(row: BacktestRow) -> str:
    return ALL if row.step is None else str(row.step)


def format_table(bt: Backtest, title: str = "") -> str:
    """The table as fixed-width text (what ``churnflow replay --rules`` prints)."""
    end = datetime.fromtimestamp(bt.window_end, UTC).date().isoformat()
    head = (
        f"backtest{f' {title}' if title else ''}: horizon {bt.horizon_days:g} days, "
        f"window end {end}, {bt.customers} customers, {bt.churners} churners"
    )
    header = (
        "rule",
        "step",
        "customers",
        "messages",
        "holdout",
        "resolved",
        "churned",
        "precision",
        "reached",
        "recall",
        "lead_days",
    )
    lines = [header]
    for row in bt.rows:
        lines.append(
            (
                row.rule_id,
                _step(row),
                str(row.customers),
                str(row.messages),
                str(row.holdout),
                str(row.resolved),
                str(row.churned),
                _ratio(row.precision),
                str(row.reached),
                _ratio(row.recall),
                _ratio(row.median_lead_days, 1),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [head]
    for line in lines:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def write_backtest_csv(backtests: Sequence[tuple[str, Backtest]], path: Path) -> int:
    """One CSV for one or more ``(rules name, backtest)``: ``CSV_COLUMNS``; returns rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for name, bt in backtests:
            for row in bt.rows:
                writer.writerow(
                    [
                        name,
                        row.rule_id,
                        _step(row),
                        row.customers,
                        row.messages,
                        row.holdout,
                        row.resolved,
                        row.churned,
                        "" if row.precision is None else f"{row.precision:.6f}",
                        row.reached,
                        row.churners,
                        "" if row.recall is None else f"{row.recall:.6f}",
                        "" if row.median_lead_days is None else f"{row.median_lead_days:.6f}",
                    ]
                )
                n += 1
    return n


# -- replay-only event transformer --------------------------------------------------


def _consent_event_id(store_id: str, customer_id: str) -> str:
    event_id = f"assume-consent:{store_id}:{customer_id}"
    if len(event_id) <= 200:
        return event_id
    digest = hashlib.blake2b(f"{store_id}\x1f{customer_id}".encode(), digest_size=16)
    return f"assume-consent:{digest.hexdigest()}"


def assume_consent(events: Iterable[Any], channels: Sequence[Channel]) -> Iterator[Any]:
    """``events`` with a consent profile before each customer's first event.

    The injected ``customer_profile`` event (id ``assume-consent:<store>:<customer>``)
    has the first event's time and grants every channel in ``channels``; it
    carries nothing else, so features and labels are unchanged (the customer
    stage emits one more score, which has no order and triggers nothing). A
    real profile later in the history overrides it (last writer wins), and a
    refusal at the same instant wins too. Event-time order is kept.
    """
    consent: dict[Channel, bool] = dict.fromkeys(channels, True)
    seen: set[_Key] = set()
    for event in events:
        key = (event.store_id, event.customer_id)
        if key not in seen:
            seen.add(key)
            yield CustomerProfileEvent(
                type="customer_profile",
                event_id=_consent_event_id(event.store_id, event.customer_id),
                store_id=event.store_id,
                customer_id=event.customer_id,
                occurred_at=event.occurred_at,
                consent=consent,
            )
        yield event
