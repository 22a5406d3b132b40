"""Cohort retention and weekly lifecycle counts, kept incrementally per key group.

Cohorts. A customer's cohort is the period (calendar month, or ISO week) of their
first order; ``active[k]`` of a cohort counts its customers with at least one
order in period ``cohort + k`` (``active[0]`` is the cohort's size). Each
customer remembers the sorted, distinct periods they ordered in, so an order
that arrives out of order — even one older than the first order, which moves
the customer to an earlier cohort — gives exactly the table that in-order
arrival gives.

>>> DAY = 86400.0
>>> table = CohortTable()
>>> jan5, feb3, mar9 = 852422400.0, 854928000.0, 858038400.0  # 1997-01-05, 02-03, 03-09
>>> mine = CustomerPeriods()
>>> table.add_order("s", mine, feb3)
>>> table.add_order("s", mine, mar9)
>>> table.as_dict("s")["month"]
{'1997-02': [1, 1]}
>>> table.add_order("s", mine, jan5)  # late: an earlier first order moves the cohort
>>> table.as_dict("s")["month"]
{'1997-01': [1, 1, 1]}
>>> table.remove_customer("s", mine)
>>> table.as_dict("s")["month"]
{}

Lifecycle. :class:`LifecycleCounts` holds the current number of customers per
segment and value tier of each store and, each time the key group's watermark
passes the end of an event-time week (Monday 00:00 UTC), records those counts
for the week that ended; the newest ``weeks_kept`` weeks are kept.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

from engine.segments import SEGMENTS, VALUE_TIERS

WEEK_S = 7 * 86400.0
EPOCH_MONDAY = datetime(1970, 1, 5, tzinfo=UTC).timestamp()
"""The first Monday after the Unix epoch: weeks are counted from it."""


def month_index(ts: float) -> int:
    """Months since year 0 of the UTC calendar month of ``ts``.

    >>> month_index(852422400.0), month_label(month_index(852422400.0))
    (23964, '1997-01')
    """
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.year * 12 + moment.month - 1


@cache  # a replay publishes every cohort's label once per key group and day
def month_label(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def week_index(ts: float) -> int:
    """Whole weeks (Monday to Sunday, UTC) since 1970-01-05.

    >>> week_label(week_index(852422400.0))  # Sunday 1997-01-05 is in ISO week 1
    '1997-W01'
    """
    return int((ts - EPOCH_MONDAY) // WEEK_S)


def week_start(index: int) -> date:
    return (datetime.fromtimestamp(EPOCH_MONDAY, UTC) + timedelta(weeks=index)).date()


@cache
def week_label(index: int) -> str:
    year, week, _ = week_start(index).isocalendar()
    return f"{year:04d}-W{week:02d}"


class CustomerPeriods:
    """The distinct months and weeks a customer ordered in, sorted."""

    __slots__ = ("months", "weeks")

    def __init__(self) -> None:
        self.months = array("H")
        self.weeks = array("H")

    def __getstate__(self) -> tuple[array, array]:
        return self.months, self.weeks

    def __setstate__(self, state: tuple[array, array]) -> None:
        self.months, self.weeks = state


PERIOD_KINDS = (("month", month_index, month_label), ("week", week_index, week_label))


class CohortTable:
    """Per store and period kind: cohort → active counts by periods since the cohort."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[int, list[int]]]] = {}
        self.dirty: set[str] = set()

    def _table(self, store_id: str, kind: str) -> dict[int, list[int]]:
        return self.tables.setdefault(store_id, {"month": {}, "week": {}})[kind]

    def _count(self, store_id: str, kind: str, cohort: int, period: int, delta: int) -> None:
        table = self._table(store_id, kind)
        active = table.setdefault(cohort, [])
        offset = period - cohort
        if offset >= len(active):
            active.extend([0] * (offset + 1 - len(active)))
        active[offset] += delta
        while active and active[-1] == 0:
            active.pop()
        if not active:
            del table[cohort]

    def add_order(self, store_id: str, periods: CustomerPeriods, ts: float) -> None:
        """Count an order at ``ts`` of the customer whose periods are ``periods``."""
        for kind, index_of, _ in PERIOD_KINDS:
            held: array = getattr(periods, kind + "s")
            period = index_of(ts)
            at = bisect_left(held, period)
            if at < len(held) and held[at] == period:
                continue  # already active in that period
            self.dirty.add(store_id)
            if held and period < held[0]:  # a new first order: a new cohort
                for old in held:
                    self._count(store_id, kind, held[0], old, -1)
                held.insert(at, period)
                for new in held:
                    self._count(store_id, kind, period, new, +1)
            else:
                held.insert(at, period)
                self._count(store_id, kind, held[0], period, +1)

    def remove_customer(self, store_id: str, periods: CustomerPeriods) -> None:
        """Take an erased customer out of every count."""
        for kind, _, _ in PERIOD_KINDS:
            held: array = getattr(periods, kind + "s")
            for period in held:
                self._count(store_id, kind, held[0], period, -1)
            del held[:]
        self.dirty.add(store_id)

    def as_dict(self, store_id: str) -> dict[str, dict[str, list[int]]]:
        """``{"month": {"1997-01": [size, active_1, ...]}, "week": {...}}``."""
        kinds = self.tables.get(store_id, {"month": {}, "week": {}})
        return {
            kind: {label(cohort): list(kinds[kind][cohort]) for cohort in sorted(kinds[kind])}
            for kind, _, label in PERIOD_KINDS
        }


class LifecycleCounts:
    """Customers per segment and value tier of each store, and their weekly history.

    >>> counts = LifecycleCounts(weeks_kept=2)
    >>> counts.move("s", None, "new", None, "low")
    >>> counts.move("s", "new", "active", "low", "mid")
    >>> counts.close_weeks_before(week_index(852422400.0) + 1)  # first call: starts the clock
    >>> counts.close_weeks_before(week_index(852422400.0) + 2)
    >>> [(w["week_start"], w["counts"]["active"], w["tiers"]["mid"]) for w in counts.history("s")]
    [('1997-01-06', 1, 1)]
    """

    def __init__(self, weeks_kept: int = 52) -> None:
        self.weeks_kept = weeks_kept
        self.current: dict[str, dict[str, int]] = {}
        self.weeks: dict[str, dict[int, dict[str, int]]] = {}
        self.open_week: int | None = None
        """The event-time week in progress at the last :meth:`close_weeks_before`."""
        self.dirty: set[str] = set()
        self._rows: dict[str, dict[int, tuple[dict[str, int], dict[str, Any]]]] = {}
        """history() rows per store and week, with the counts they were built from."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_rows", None)  # derived
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._rows = {}

    def move(
        self, store_id: str, old_segment: str | None, segment: str | None, old_tier: str | None,
        tier: str | None,
    ) -> None:  # fmt: skip
        """One customer left ``old_*`` (None: was not counted) for the new values."""
        counts = self.current.setdefault(store_id, dict.fromkeys(SEGMENTS + VALUE_TIERS, 0))
        for old, new in ((old_segment, segment), (old_tier, tier)):
            if old != new:
                if old is not None:
                    counts[old] -= 1
                if new is not None:
                    counts[new] += 1

    def close_weeks_before(self, week: int) -> None:
        """The watermark reached week ``week``: record the counts of the weeks that ended.

        Each ended week gets the counts as they are now, at its end (give or take the
        allowed lateness: events up to that much after the week are already in).
        """
        if self.open_week is None or week <= self.open_week:
            self.open_week = week if self.open_week is None else self.open_week
            return
        for store_id, counts in self.current.items():
            history = self.weeks.setdefault(store_id, {})
            for closed in range(max(self.open_week, week - self.weeks_kept), week):
                history[closed] = dict(counts)
            for old in sorted(history)[: -self.weeks_kept]:
                del history[old]
            self.dirty.add(store_id)
        self.open_week = week

    def history(self, store_id: str) -> list[dict[str, Any]]:
        """The recorded weeks of a store, oldest first (the contract's ``weeks`` items)."""
        rows = []
        built = self._rows.setdefault(store_id, {})  # a recorded week's counts never change
        for week, counts in sorted(self.weeks.get(store_id, {}).items()):
            cached = built.get(week)
            if cached is None or cached[0] is not counts:
                row = {
                    "week_start": week_start(week).isoformat(),
                    "counts": {name: counts[name] for name in SEGMENTS if name != "prospect"},
                    "tiers": {name: counts[name] for name in VALUE_TIERS},
                }
                cached = built[week] = (counts, row)
            rows.append(cached[1])
        if len(built) > len(rows):  # weeks dropped from the history
            for week in [w for w in built if w not in self.weeks.get(store_id, {})]:
                del built[week]
        return rows
