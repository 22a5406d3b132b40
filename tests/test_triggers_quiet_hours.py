"""Quiet hours: unit cases around DST and a property test over several zones."""

from __future__ import annotations

from datetime import UTC, datetime, time
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.triggers.quiet_hours import is_quiet, next_allowed_time

ZONES = (
    "America/New_York",
    "Europe/Berlin",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "UTC",
)
NIGHT = (time(21), time(9))


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def oracle_quiet(t: float, tz: str, start: time, end: time) -> bool:
    """Independent check via datetime: local wall time of the whole second ``t``."""
    local = datetime.fromtimestamp(int(t // 1), ZoneInfo(tz)).time().replace(microsecond=0)
    if start < end:
        return start <= local < end
    if start > end:
        return local >= start or local < end
    return False


def test_daytime_is_not_delayed() -> None:
    due = ts("2026-06-10T12:00:00+00:00")  # 14:00 in Berlin
    assert next_allowed_time(due, "Europe/Berlin", *NIGHT) == due


def test_night_is_delayed_to_next_morning_not_dropped() -> None:
    due = ts("2026-06-10T23:30:00+02:00")
    assert next_allowed_time(due, "Europe/Berlin", *NIGHT) == ts("2026-06-11T09:00:00+02:00")
    early = ts("2026-06-11T08:59:59+02:00")
    assert next_allowed_time(early, "Europe/Berlin", *NIGHT) == ts("2026-06-11T09:00:00+02:00")
    assert next_allowed_time(ts("2026-06-11T09:00:00+02:00"), "Europe/Berlin", *NIGHT) == ts(
        "2026-06-11T09:00:00+02:00"
    )


def test_non_wrapping_window_and_empty_window() -> None:
    due = ts("2026-06-10T13:15:00+05:30")
    assert next_allowed_time(due, "Asia/Kolkata", time(13), time(14)) == ts(
        "2026-06-10T14:00:00+05:30"
    )
    assert next_allowed_time(due, "Asia/Kolkata", time(13), time(13)) == due


def test_spring_forward_end_of_quiet_in_the_gap() -> None:
    # New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC); 02:30 never exists.
    due = ts("2026-03-08T01:00:00-05:00")
    got = next_allowed_time(due, "America/New_York", time(0), time(2, 30))
    assert got == ts("2026-03-08T07:00:00+00:00")  # 03:00 EDT, the first allowed instant


def test_fall_back_ambiguous_end_of_quiet() -> None:
    # New York, 2026-11-01: 01:00-01:59 happens twice (EDT, then EST).
    tz = "America/New_York"
    first = ts("2026-11-01T00:50:00-04:00")
    assert next_allowed_time(first, tz, time(21), time(1, 30)) == ts("2026-11-01T01:30:00-04:00")
    second = ts("2026-11-01T01:10:00-05:00")  # second 01:10, after 01:30 EDT has passed
    assert next_allowed_time(second, tz, time(21), time(1, 30)) == ts("2026-11-01T01:30:00-05:00")


def test_fall_back_jumps_out_of_quiet_window() -> None:
    # Quiet 01:30-02:30; at 02:00 EDT the clock falls back to 01:00 EST, outside the window.
    due = ts("2026-11-01T01:45:00-04:00")
    got = next_allowed_time(due, "America/New_York", time(1, 30), time(2, 30))
    assert got == ts("2026-11-01T06:00:00+00:00")


def test_chatham_quarter_hour_offsets() -> None:
    # Pacific/Chatham is +12:45 / +13:45.
    due = ts("2026-01-15T22:00:00+13:45")
    assert next_allowed_time(due, "Pacific/Chatham", *NIGHT) == ts("2026-01-16T09:00:00+13:45")


def test_unknown_zone_raises() -> None:
    with pytest.raises(Exception, match="Nowhere"):
        next_allowed_time(0.0, "Nowhere/Atlantis", *NIGHT)


@cache
def transitions(tz: str) -> tuple[int, ...]:
    """UTC hours 2025-2027 at which the zone's offset changes (hourly scan)."""
    zone = ZoneInfo(tz)
    start = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    out, prev = [], None
    for h in range(start, start + 3 * 366 * 86400, 3600):
        off = datetime.fromtimestamp(h, zone).utcoffset()
        if prev is not None and off != prev:
            out.append(h)
        prev = off
    return tuple(out)


def test_sample_zones_have_transitions() -> None:
    assert len(transitions("Pacific/Chatham")) >= 4
    assert transitions("Asia/Kolkata") == ()


times = st.builds(
    time, st.integers(0, 23), st.sampled_from([0, 0, 15, 30, 45, 59]), st.sampled_from([0, 0, 30])
)


@st.composite
def due_times(draw: st.DrawFn, tz: str) -> float:
    near = transitions(tz)
    if len(near) > 0 and draw(st.booleans()):
        centre = draw(st.sampled_from(near))
        base = centre + draw(st.integers(-36 * 3600, 36 * 3600))
    else:
        base = draw(st.integers(1_577_836_800, 1_893_456_000))  # 2020-2030
    return base + draw(st.sampled_from([0.0, 0.25, 0.5]))


@st.composite
def cases(draw: st.DrawFn) -> tuple[float, str, time, time]:
    tz = draw(st.sampled_from(ZONES))
    start, end = draw(st.one_of(st.just(NIGHT), st.tuples(times, times)))
    return draw(due_times(tz)), tz, start, end


@settings(max_examples=300, deadline=None)
@given(cases())
def test_quiet_hours_respected_and_delay_minimal(case: tuple[float, str, time, time]) -> None:
    due, tz, start, end = case
    got = next_allowed_time(due, tz, start, end)
    assert got >= due
    assert got - due <= 25 * 3600
    assert not oracle_quiet(got, tz, start, end)
    assert is_quiet(got, tz, start, end) is False
    if got > due:
        # minimal: every whole second between due and the answer is quiet
        assert oracle_quiet(due, tz, start, end)
        assert oracle_quiet(got - 1, tz, start, end)
        t = float(int(due))
        while t < got - 1:
            assert oracle_quiet(t, tz, start, end), (t, got)
            t += 61.0
