"""Lifecycle segment and value tier: pure functions of a few numbers and a time.

Segments, from the customer's own rhythm and the store's churn horizon H:

- ``prospect``: no order yet (not in the churn population);
- ``churned``: no order for more than H days;
- ``silent``: quiet for longer than their usual gap allows (twice the mean
  gap, clamped to [14 days, H]; H/2 before a second order gives a gap);
- ``new``: one order, still within that allowance;
- ``returned``: won back — the last order came after more than H days of silence;
- ``active``: everyone else.

>>> DAY = 86400.0
>>> lifecycle_segment(order_count=3, days_since_last_order=10, gap_mean_days=30,
...                   last_gap_days=25, horizon_days=90)
'active'
>>> lifecycle_segment(3, 70, 30, 25, 90), lifecycle_segment(3, 91, 30, 25, 90)
('silent', 'churned')
>>> lifecycle_segment(1, 10, None, None, 90), lifecycle_segment(2, 5, 120, 120, 90)
('new', 'returned')
>>> value_tier(spend=250.0, thresholds=(50.0, 200.0))
'high'
"""

from __future__ import annotations

SEGMENTS = ("prospect", "new", "active", "silent", "churned", "returned")
VALUE_TIERS = ("low", "mid", "high")
MIN_SILENT_DAYS = 14.0


def silent_after_days(gap_mean_days: float | None, horizon_days: float) -> float:
    """Days of silence after which this customer counts as silent."""
    if gap_mean_days is None:
        return horizon_days / 2
    return min(max(2.0 * gap_mean_days, MIN_SILENT_DAYS), float(horizon_days))


def lifecycle_segment(
    order_count: int,
    days_since_last_order: float | None,
    gap_mean_days: float | None,
    last_gap_days: float | None,
    horizon_days: float,
) -> str:
    """The lifecycle segment of a customer at one moment (see the module doc)."""
    if order_count <= 0 or days_since_last_order is None:
        return "prospect"
    if days_since_last_order > horizon_days:
        return "churned"
    if days_since_last_order > silent_after_days(gap_mean_days, horizon_days):
        return "silent"
    if order_count == 1:
        return "new"
    if last_gap_days is not None and last_gap_days > horizon_days:
        return "returned"
    return "active"


def value_tier(spend: float, thresholds: tuple[float, float]) -> str:
    """``low``, ``mid`` or ``high`` by spend in the store's base currency."""
    low_max, mid_max = thresholds
    if spend >= mid_max:
        return "high"
    if spend >= low_max:
        return "mid"
    return "low"
