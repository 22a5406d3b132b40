"""Quiet hours in the customer's own time zone.

A message that falls due during quiet hours is delayed to the first instant at
which the customer's local wall clock is outside the quiet window; it is never
dropped. The window ``[quiet_start, quiet_end)`` is in local wall-clock time and
wraps past midnight when ``quiet_start > quiet_end`` (21:00-09:00);
``quiet_start == quiet_end`` means no quiet hours.

The computation works on instants, not on local dates, so daylight-saving
changes need no special cases: inside a stretch of constant UTC offset the
local clock advances linearly, and at a transition the clock jumps (spring
forward: nonexistent local times are skipped; fall back: ambiguous local times
occur twice, and the first instant that is allowed wins).

>>> from datetime import time
>>> due = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC = 16:13 in Berlin
>>> next_allowed_time(due, "Europe/Berlin", time(21), time(9)) == due
True
>>> late = 1_790_030_000.0  # 00:33 in Berlin
>>> next_allowed_time(late, "Europe/Berlin", time(21), time(9)) - late  # until 09:00
30400.0
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

DAY = 86_400

__all__ = ["is_quiet", "next_allowed_time"]


@lru_cache(maxsize=512)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def _seconds(t: time, *, up: bool = False) -> int:
    whole = t.hour * 3600 + t.minute * 60 + t.second
    return whole + 1 if up and t.microsecond else whole


def _offset(ts: float, zone: tzinfo) -> int:
    off = datetime.fromtimestamp(ts, UTC).astimezone(zone).utcoffset() or timedelta(0)
    return int(off.total_seconds())


def _in_window(sod: int, start: int, end: int) -> bool:
    if start < end:
        return start <= sod < end
    if start > end:
        return sod >= start or sod < end
    return False


def _bounds(quiet_start: time, quiet_end: time) -> tuple[int, int]:
    # Whole seconds; a fractional end is rounded up so nothing is sent inside the window.
    return _seconds(quiet_start), _seconds(quiet_end, up=True) % DAY


def is_quiet(ts: float, tz: str, quiet_start: time, quiet_end: time) -> bool:
    """Whether the local wall-clock time of instant ``ts`` is inside quiet hours."""
    zone = _zone(tz)
    start, end = _bounds(quiet_start, quiet_end)
    base = math.floor(ts)
    return _in_window((base + _offset(base, zone)) % DAY, start, end)


def next_allowed_time(due_ts: float, tz: str, quiet_start: time, quiet_end: time) -> float:
    """The first instant ``>= due_ts`` whose local time in ``tz`` is not quiet.

    Quiet bounds are whole seconds, so a delayed message gets a whole-second
    time. Raises ``zoneinfo.ZoneInfoNotFoundError`` for an unknown zone.
    """
    zone = _zone(tz)
    start, end = _bounds(quiet_start, quiet_end)
    if start == end:
        return due_ts
    ts = due_ts
    # Each pass either returns or moves ts onto the next UTC-offset transition;
    # a quiet window is shorter than a day, so a handful of passes suffice.
    for _ in range(8):
        base = math.floor(ts)  # quietness only depends on the whole second
        off = _offset(base, zone)
        sod = (base + off) % DAY
        if not _in_window(sod, start, end):
            return ts
        candidate = base + (end - sod) % DAY  # the clock reaches quiet_end at this offset
        if _offset(candidate, zone) == off:
            return float(candidate)
        ts = _next_transition(base, candidate, off, zone)
    return ts  # unreachable for real tz data; still never earlier than due_ts


def _next_transition(lo: int, hi: int, off: int, zone: tzinfo) -> float:
    """First whole second in ``(lo, hi]`` whose UTC offset differs from ``off``.

    Transitions happen on whole seconds; ``hi`` is known to have another offset.
    """
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(mid, zone) == off:
            lo = mid
        else:
            hi = mid
    return float(hi)
