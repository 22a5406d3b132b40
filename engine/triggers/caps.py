"""Frequency caps and per-rule cooldowns over sliding windows.

A cap ``Window(limit, seconds)`` means: in no half-open span of ``seconds``
(``[t, t + seconds)``) are there more than ``limit`` sends. Sends exactly
``seconds`` apart therefore both pass a 1-per-window cap. A rule's cooldown
``c`` means two sends of the same rule are at least ``c`` seconds apart.

The checks look at every window that would contain the new send, not only the
one ending at it, so a history filled by attempts arriving out of time order
still never exceeds a cap.

The history is an immutable, picklable value (a sorted tuple of small named
tuples); ``record`` returns a new history and prunes sends that no window of
the policy can see any more. Holdout intents should be recorded too, so that
the holdout group is capped exactly like the group that receives messages.

>>> policy = CapPolicy(overall=(Window(2, 7 * DAY),), per_channel={"sms": (Window(1, 7 * DAY),)})
>>> h = record(SendHistory(), "sms", "winback", 0.0, policy)
>>> allowed(h, "sms", "winback", DAY, policy), check(h, "sms", "winback", DAY, policy)
(False, 'cap:channel:sms')
>>> allowed(h, "email", "winback", DAY, policy)
True
>>> h = record(h, "email", "winback", DAY, policy)
>>> check(h, "push", "risk", 2 * DAY, policy)
'cap:overall'
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

DAY = 86_400.0

__all__ = ["CapPolicy", "Send", "SendHistory", "Window", "allowed", "check", "record"]


class Window(NamedTuple):
    """At most ``limit`` sends in any span of ``seconds``."""

    limit: int
    seconds: float


class Send(NamedTuple):
    ts: float
    channel: str
    rule_id: str
    key: str = ""
    """The recall intent's idempotency key ("" if unknown)."""


@dataclass(frozen=True)
class CapPolicy:
    overall: tuple[Window, ...] = ()
    per_channel: Mapping[str, tuple[Window, ...]] = field(default_factory=dict)
    cooldowns: Mapping[str, float] = field(default_factory=dict)
    """Seconds between two sends of the same rule, by rule id."""
    default_cooldown: float = 0.0

    def cooldown(self, rule_id: str) -> float:
        return self.cooldowns.get(rule_id, self.default_cooldown)

    @property
    def horizon(self) -> float:
        """How far back any check of this policy looks."""
        spans = [w.seconds for w in self.overall]
        spans += [w.seconds for ws in self.per_channel.values() for w in ws]
        spans += list(self.cooldowns.values()) + [self.default_cooldown]
        return max(spans, default=0.0)


@dataclass(frozen=True)
class SendHistory:
    """One customer's sends, sorted by time. Immutable and picklable."""

    sends: tuple[Send, ...] = ()
    pruned_until: float | None = None
    """Newest send time that pruning dropped; attempts that old windows could
    still see are refused (``"stale"``) rather than checked against a partial history."""

    def keys(self) -> frozenset[str]:
        return frozenset(s.key for s in self.sends if s.key)

    def __len__(self) -> int:
        return len(self.sends)


def _exceeds(times: list[float], ts: float, window: Window) -> bool:
    """Would adding ``ts`` to sorted ``times`` put more than ``limit`` into some window?"""
    if window.limit <= 0:
        return True
    span = window.seconds
    # Only windows [s, s + span) containing ts change; the fullest of them starts
    # at ts or at an existing send in (ts - span, ts].
    lo = bisect.bisect_right(times, ts - span)
    starts = [ts] + [t for t in times[lo:] if t <= ts]
    for s in starts:
        first = bisect.bisect_left(times, s)
        last = bisect.bisect_left(times, s + span)
        if last - first + 1 > window.limit:
            return True
    return False


def _too_close(times: Iterable[float], ts: float, cooldown: float) -> bool:
    return cooldown > 0 and any(abs(ts - t) < cooldown for t in times)


def check(
    history: SendHistory, channel: str, rule_id: str, ts: float, policy: CapPolicy
) -> str | None:
    """``None`` if a send is allowed, else why not.

    Reasons: ``"cooldown:<rule>"``, ``"cap:overall"``, ``"cap:channel:<channel>"``,
    ``"stale"`` (an attempt so far in the past that pruned sends may matter).
    """
    if history.pruned_until is not None and ts - policy.horizon < history.pruned_until:
        return "stale"
    sends = history.sends
    if _too_close((s.ts for s in sends if s.rule_id == rule_id), ts, policy.cooldown(rule_id)):
        return f"cooldown:{rule_id}"
    all_times = [s.ts for s in sends]
    if any(_exceeds(all_times, ts, w) for w in policy.overall):
        return "cap:overall"
    windows = policy.per_channel.get(channel, ())
    if windows:
        times = [s.ts for s in sends if s.channel == channel]
        if any(_exceeds(times, ts, w) for w in windows):
            return f"cap:channel:{channel}"
    return None


def allowed(history: SendHistory, channel: str, rule_id: str, ts: float, policy: CapPolicy) -> bool:
    """Whether one more send on ``channel`` for ``rule_id`` at ``ts`` keeps every cap."""
    return check(history, channel, rule_id, ts, policy) is None


def record(
    history: SendHistory,
    channel: str,
    rule_id: str,
    ts: float,
    policy: CapPolicy | None = None,
    key: str = "",
) -> SendHistory:
    """A new history with the send added; with a policy, sends out of its reach are pruned."""
    sends = list(history.sends)
    bisect.insort(sends, Send(ts, channel, rule_id, key))
    pruned_until = history.pruned_until
    if policy is not None:
        cutoff = sends[-1].ts - policy.horizon
        keep = bisect.bisect_right([s.ts for s in sends], cutoff)
        if keep:
            dropped = sends[keep - 1].ts
            pruned_until = dropped if pruned_until is None else max(pruned_until, dropped)
            sends = sends[keep:]
    return SendHistory(tuple(sends), pruned_until)
