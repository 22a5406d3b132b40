"""Frequency caps and cooldowns: unit cases and a property over attempt sequences."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.triggers.caps import (
    DAY,
    CapPolicy,
    Send,
    SendHistory,
    Window,
    allowed,
    check,
    record,
)

POLICY = CapPolicy(
    overall=(Window(2, 7 * DAY),),
    per_channel={"sms": (Window(1, 7 * DAY),)},
    cooldowns={"winback": 14 * DAY},
)


def test_overall_cap_two_per_week() -> None:
    h = record(SendHistory(), "email", "a", 0.0, POLICY)
    h = record(h, "push", "b", DAY, POLICY)
    assert check(h, "email", "c", 2 * DAY, POLICY) == "cap:overall"
    assert allowed(h, "email", "c", 7 * DAY, POLICY)  # first send left the window


def test_channel_cap_only_blocks_that_channel() -> None:
    h = record(SendHistory(), "sms", "a", 0.0, POLICY)
    assert check(h, "sms", "b", 6.9 * DAY, POLICY) == "cap:channel:sms"
    assert allowed(h, "email", "b", 6.9 * DAY, POLICY)
    assert allowed(h, "sms", "b", 7 * DAY, POLICY)


def test_rule_cooldown() -> None:
    h = record(SendHistory(), "email", "winback", 0.0, POLICY)
    assert check(h, "email", "winback", 13 * DAY, POLICY) == "cooldown:winback"
    assert allowed(h, "email", "other", 13 * DAY, POLICY)
    assert allowed(h, "email", "winback", 14 * DAY, POLICY)


def test_out_of_order_attempt_cannot_overfill_a_window() -> None:
    p = CapPolicy(overall=(Window(2, 10.0),))
    h = record(record(SendHistory(), "email", "a", 5.0), "email", "a", 14.0)
    # [5, 14] already holds 2; an attempt at 8 sits in windows starting at 5.
    assert check(h, "email", "a", 8.0, p) == "cap:overall"
    assert allowed(h, "email", "a", 15.0, p)


def test_zero_limit_blocks_everything() -> None:
    p = CapPolicy(per_channel={"sms": (Window(0, DAY),)})
    assert check(SendHistory(), "sms", "a", 0.0, p) == "cap:channel:sms"


def test_record_prunes_and_refuses_stale_attempts() -> None:
    h = SendHistory()
    for i in range(10):
        h = record(h, "email", "r", i * 8 * DAY, POLICY, key=f"k{i}")
    assert len(h) <= 2  # horizon is the 14-day cooldown
    assert h.pruned_until is not None
    assert "k9" in h.keys()
    assert check(h, "email", "x", 10 * DAY, POLICY) == "stale"
    assert allowed(h, "email", "x", 80 * DAY, POLICY)


def test_history_is_picklable_and_compact() -> None:
    h = SendHistory()
    for i in range(5):
        h = record(h, "email", "winback", i * 20 * DAY, key=f"demo:c:winback:{i}:0")
    back = pickle.loads(pickle.dumps(h))
    assert back == h
    assert isinstance(back.sends[0], Send)
    assert len(pickle.dumps(h)) < 600


def test_horizon() -> None:
    assert POLICY.horizon == 14 * DAY
    assert CapPolicy().horizon == 0.0


def count_max_in_window(times: list[float], span: float) -> int:
    times = sorted(times)
    return max(
        (sum(1 for u in times if t <= u < t + span) for t in times),
        default=0,
    )


attempts = st.lists(
    st.tuples(
        st.integers(0, 60).map(lambda h: h * 3600.0),  # hour offsets, ties included
        st.sampled_from(["email", "sms", "push"]),
        st.sampled_from(["winback", "risk", "cart"]),
    ),
    max_size=40,
)
policies = st.builds(
    lambda o, ow, s, sw, c: CapPolicy(
        overall=(Window(o, ow * 3600.0),),
        per_channel={"sms": (Window(s, sw * 3600.0),)},
        cooldowns={"winback": c * 3600.0},
        default_cooldown=3600.0,
    ),
    st.integers(0, 4),
    st.integers(1, 48),
    st.integers(0, 2),
    st.integers(1, 48),
    st.integers(0, 30),
)


@settings(max_examples=300, deadline=None)
@given(attempts, policies, st.booleans())
def test_caps_and_cooldowns_never_exceeded(
    seq: list[tuple[float, str, str]], policy: CapPolicy, sort: bool
) -> None:
    if sort:
        seq = sorted(seq)  # time-ordered; otherwise arbitrary order
    h = SendHistory()
    sent: list[tuple[float, str, str]] = []
    for t, ch, rule in seq:
        if allowed(h, ch, rule, t, policy):
            h = record(h, ch, rule, t, policy)  # prunes; stale attempts are refused
            sent.append((t, ch, rule))
    for w in policy.overall:
        assert count_max_in_window([t for t, _, _ in sent], w.seconds) <= w.limit
    for ch, ws in policy.per_channel.items():
        for w in ws:
            assert count_max_in_window([t for t, c, _ in sent if c == ch], w.seconds) <= w.limit
    for rule in ("winback", "risk", "cart"):
        ts = sorted(t for t, _, r in sent if r == rule)
        assert all(b - a >= policy.cooldown(rule) for a, b in zip(ts, ts[1:], strict=False))
