"""Per-customer reasons in plain words, from signed feature contributions.

>>> x = {"days_since_last_order": 82.0, "gap_mean_days": 30.0, "order_count": 4.0}
>>> [r["text"] for r in describe_reasons(x, {"days_since_last_order": 1.2,
...      "order_count": -0.4, "gap_mean_days": 0.1}, top=2)]
['82 days since last order, usually orders every 30', '4 orders so far']
>>> describe_reasons(x, None, top=1)[0]["feature"]
'overdue_ratio'
"""

from __future__ import annotations

from typing import Any


def _phrase(name: str, x: dict[str, float]) -> str:
    value = x.get(name, 0.0)
    if name in ("days_since_last_order", "overdue_ratio"):
        days = x.get("days_since_last_order", 0.0)
        gap = x.get("gap_mean_days", 0.0)
        if x.get("order_count", 0.0) >= 2 and gap > 0:
            return f"{days:.0f} days since last order, usually orders every {gap:.0f}"
        return f"{days:.0f} days since last order"
    if name == "order_count":
        return f"{value:.0f} order{'s' if value != 1 else ''} so far"
    if name == "tenure_days":
        return f"customer for {value:.0f} days"
    if name.startswith("spend") or name == "avg_order_value":
        return f"{name.replace('_', ' ')}: {value:,.2f}"
    return f"{name.replace('_', ' ')}: {value:g}"


def describe_reasons(
    x: dict[str, float], contributions: dict[str, float] | None, top: int = 3
) -> list[dict[str, Any]]:
    """The ``top`` features that push the score most, signed, in plain words.

    Without contributions (the cold prior), the reason is how overdue the customer is.
    """
    if contributions is None:
        return [
            {
                "feature": "overdue_ratio",
                "contribution": None,
                "direction": "raises" if x.get("overdue_ratio", 0.0) >= 1.0 else "lowers",
                "text": _phrase("overdue_ratio", x),
            }
        ]
    ranked = sorted(contributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
    return [
        {
            "feature": name,
            "contribution": round(value, 4),
            "direction": "raises" if value > 0 else "lowers",
            "text": _phrase(name, x),
        }
        for name, value in ranked
    ]
