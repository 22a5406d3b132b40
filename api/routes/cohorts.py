"""Cohort retention and weekly lifecycle counts, as the dataflow keeps them.

The customer stage keeps both tables incrementally, per key group, and publishes
them as absolute JSON documents (``cf:{store}:cohorts:<group>``,
``cf:{store}:lifecycle:<group>``); a request reads every group's document with one
``MGET`` and adds them up — nothing is recomputed from customers per request.

A lifecycle week is shown once every key group that holds customers of the store
has closed it (each group closes weeks as its own watermark passes them), so a
week's total never mixes finished and unfinished groups.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import ApiKeyDep, RedisDep, SettingsDep, require_store
from api.routes.segments import ERRORS
from engine.connectors.redis_sink import aggregates_key

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["cohorts"])


class Cohort(BaseModel):
    cohort: str
    """``YYYY-MM`` (month) or ISO week ``YYYY-Www`` of the customers' first order."""
    size: int
    active: list[int]
    """``active[k]``: customers of the cohort with an order ``k`` periods after it."""


class CohortRetention(BaseModel):
    store_id: str
    period: Literal["month", "week"]
    cohorts: list[Cohort]


class LifecycleWeek(BaseModel):
    week_start: str
    counts: dict[str, int]
    """Customers per segment (new, active, silent, churned, returned) at the week's end."""
    tiers: dict[str, int]
    """Customers with orders per value tier at the week's end."""


class LifecycleHistory(BaseModel):
    store_id: str
    weeks: list[LifecycleWeek]


def read_tables(client: Any, prefix: str, store_id: str, table: str, groups: int) -> list[Any]:
    """Every key group's published ``table`` document of a store (absent ones left out)."""
    keys = [aggregates_key(prefix, store_id, table, group) for group in range(groups)]
    return [orjson.loads(blob) for blob in client.mget(keys) if blob is not None]


def sum_cohorts(tables: list[dict[str, dict[str, list[int]]]], period: str) -> list[Cohort]:
    """Add the key groups' cohort tables up, element by element.

    >>> a = {"month": {"1997-01": [2, 1]}}
    >>> b = {"month": {"1997-01": [1, 1, 1], "1997-02": [4]}}
    >>> [(c.cohort, c.active) for c in sum_cohorts([a, b], "month")]
    [('1997-01', [3, 2, 1]), ('1997-02', [4])]
    """
    totals: dict[str, list[int]] = {}
    for table in tables:
        for cohort, active in table.get(period, {}).items():
            total = totals.setdefault(cohort, [])
            total.extend([0] * (len(active) - len(total)))
            for offset, count in enumerate(active):
                total[offset] += count
    return [
        Cohort(cohort=cohort, size=active[0] if active else 0, active=active)
        for cohort, active in sorted(totals.items())
    ]


def sum_lifecycle(histories: list[list[dict[str, Any]]], weeks: int) -> list[LifecycleWeek]:
    """Add up the weeks that every non-empty history has closed; the newest ``weeks``.

    >>> w = lambda day, n: {"week_start": day, "counts": {"new": n}, "tiers": {"low": n}}
    >>> rows = sum_lifecycle([[w("1997-01-06", 1), w("1997-01-13", 2)], [w("1997-01-06", 5)]], 4)
    >>> [(r.week_start, r.counts["new"]) for r in rows]
    [('1997-01-06', 6)]
    """
    histories = [history for history in histories if history]
    if not histories:
        return []
    closed_by_all = min(history[-1]["week_start"] for history in histories)
    totals: dict[str, LifecycleWeek] = {}
    for history in histories:
        for row in history:
            if row["week_start"] > closed_by_all:
                continue
            total = totals.setdefault(
                row["week_start"], LifecycleWeek(week_start=row["week_start"], counts={}, tiers={})
            )
            for name, count in row["counts"].items():
                total.counts[name] = total.counts.get(name, 0) + count
            for name, count in row["tiers"].items():
                total.tiers[name] = total.tiers.get(name, 0) + count
    return [totals[week] for week in sorted(totals)][-weeks:]


@router.get("/cohorts", response_model=CohortRetention, responses=ERRORS)
def cohort_retention(
    store_id: str,
    key: ApiKeyDep,
    client: RedisDep,
    settings: SettingsDep,
    period: Literal["month", "week"] = "month",
) -> CohortRetention:
    """Retention by first-order cohort: who of each cohort ordered again, period by period."""
    require_store(store_id, key, "read")
    tables = read_tables(client, settings.key_prefix, store_id, "cohorts", settings.key_groups)
    return CohortRetention(store_id=store_id, period=period, cohorts=sum_cohorts(tables, period))


@router.get("/lifecycle", response_model=LifecycleHistory, responses=ERRORS)
def lifecycle_history(
    store_id: str,
    key: ApiKeyDep,
    client: RedisDep,
    settings: SettingsDep,
    weeks: Annotated[int, Query(ge=1, le=260)] = 12,
) -> LifecycleHistory:
    """Customers per segment and value tier at the end of each of the last ``weeks`` weeks."""
    require_store(store_id, key, "read")
    histories = read_tables(client, settings.key_prefix, store_id, "lifecycle", settings.key_groups)
    return LifecycleHistory(store_id=store_id, weeks=sum_lifecycle(histories, weeks))
