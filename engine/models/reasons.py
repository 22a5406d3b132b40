"""Per-customer reasons in plain words, from signed feature contributions.

>>> x = {"days_since_last_order": 82.0, "gap_mean_days": 30.0, "order_count": 4.0}
>>> [r["text"] for r in describe_reasons(x, {"days_since_last_order": 1.2,
...      "order_count": -0.4, "gap_mean_days": 0.1}, top=2)]
['82 days since last order, usually orders every 30', '4 orders so far']
>>> describe_reasons(x, None, top=1)[0]["feature"]
'overdue_ratio'
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np


def _plural(count: float, noun: str) -> str:
    """``count`` and ``noun``, plural unless exactly one.

    >>> _plural(1, "order"), _plural(2.0, "day"), _plural(0.4, "order")
    ('1 order', '2 days', '0.4 orders')
    """
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


def _recency(x: dict[str, float]) -> str:
    days = x.get("days_since_last_order", 0.0)
    gap = x.get("gap_mean_days", 0.0)
    if x.get("order_count", 0.0) >= 2 and gap > 0:
        return f"{days:.0f} days since last order, usually orders every {gap:.0f}"
    return f"{days:.0f} days since last order"


def _last_visit(x: dict[str, float]) -> str:
    """Days since the last visit, or that there is none (the count then runs from
    when the customer was first seen, which is not a visit).

    >>> _last_visit({"days_since_last_visit": 3.0, "tenure_days": 40.0})
    'last visit 3 days ago'
    >>> _last_visit({"days_since_last_visit": 512.0, "tenure_days": 512.0})
    'no site visit on record'
    """
    days = x.get("days_since_last_visit", 0.0)
    if days >= x.get("tenure_days", float("inf")):
        return "no site visit on record"
    return f"last visit {_plural(round(days), 'day')} ago"


_FROM_VECTOR = {
    "recency": _recency,  # the recency inputs, reported together (see RECENCY_INPUTS)
    "overdue_ratio": _recency,  # the cold prior's reason
    "days_since_last_visit": _last_visit,
}
"""Phrases read from the whole feature vector rather than the one value."""

_WINDOWS = {"7d": "7 days", "30d": "30 days", "90d": "90 days", "365d": "year"}
_WORDS: dict[str, Any] = {
    "tenure_days": lambda v: f"customer for {v:.0f} days",
    "order_count": lambda v: f"{_plural(round(v), 'order')} so far",
    "order_days": lambda v: f"ordered on {_plural(round(v), 'day')}",
    "spend_total_base": lambda v: f"spent {v:,.2f} in all",
    "avg_order_value": lambda v: f"average order {v:,.2f}",
    "gap_mean_days": lambda v: f"orders every {v:.0f} days on average",
    "gap_std_days": lambda v: f"order gaps vary by about {v:.0f} days",
    "refund_count": lambda v: f"{_plural(round(v), 'refund')}",
    "refund_amount_base": lambda v: f"refunded {v:,.2f}",
    "cancel_count": lambda v: f"{_plural(round(v), 'cancelled order')}",
    "discount_order_share": lambda v: f"{v:.0%} of orders used a discount",
    "category_count": lambda v: f"bought from {v:.0f} categor{'y' if round(v) == 1 else 'ies'}",
    "open_cart": lambda v: "has an open cart" if v else "no open cart",
}


def _windowed(name: str, value: float) -> str | None:
    """Phrases of the windowed counts, e.g. ``orders_90d`` or ``cart_adds_7d``.

    >>> _windowed("orders_90d", 2.0), _windowed("product_views_7d", 0.0)
    ('2 orders in the last 90 days', '0 product views in the last 7 days')
    >>> _windowed("spend_decayed_30d_halflife", 12.5)
    'recent spend 12.50 (30-day half-life)'
    """
    form = _windowed_form(name)
    if form is None:
        return None
    decayed, what, span = form
    if decayed:
        amount = f"{value:,.2f}" if what == "spend" else f"{value:.1f}"
        return f"recent {what} {amount} ({span}-day half-life)"
    return f"{_plural(round(value), what)} in the last {span}"


@cache
def _windowed_form(name: str) -> tuple[bool, str, str] | None:
    """What ``_windowed`` reads from a feature name: (decayed, noun, span); parsed once.

    >>> _windowed_form("orders_decayed_7d_halflife"), _windowed_form("cart_adds_30d")
    ((True, 'orders', '7'), (False, 'cart add', '30 days'))
    """
    if "_decayed_" in name:
        what, rest = name.split("_decayed_")
        days = rest.removesuffix("_halflife").removesuffix("d")
        return True, "spend" if what == "spend" else "orders", days
    stem, _, window = name.rpartition("_")
    if window not in _WINDOWS or not stem:
        return None
    noun = {"orders": "order", "product_views": "product view", "cart_adds": "cart add"}.get(
        stem, stem.replace("_", " ").removesuffix("s")
    )
    return False, noun, _WINDOWS[window]


def _phrase(name: str, x: dict[str, float]) -> str:
    """A feature's value in plain words.

    >>> _phrase("gap_std_days", {"gap_std_days": 24.6351})
    'order gaps vary by about 25 days'
    >>> _phrase("messages_opened_30d", {"messages_opened_30d": 1.0})
    '1 message opened in the last 30 days'
    """
    value = x.get(name, 0.0)
    from_vector = _FROM_VECTOR.get(name)
    if from_vector is not None:
        return from_vector(x)
    words = _WORDS.get(name)
    if words is not None:
        return str(words(value))
    if name.startswith("messages_") or name == "unsubscribed_30d":
        verb = name.removeprefix("messages_").removesuffix("_30d")
        noun = "unsubscribe" if verb == "unsubscribed" else "message"
        phrase = _plural(round(value), noun)
        return phrase + ("" if noun == "unsubscribe" else f" {verb}") + " in the last 30 days"
    return _windowed(name, value) or f"{name.replace('_', ' ')}: {value:g}"


RECENCY_INPUTS = ("days_since_last_order", "overdue_ratio", "dropout_evidence")
"""Inputs that all measure one thing, the silence since the last order: their
contributions are added up and reported as one reason, ``recency`` (apart, strongly
correlated inputs get weights of opposite signs, and "0 days since last order"
would read as raising the risk)."""


def describe_reasons(
    x: dict[str, float], contributions: dict[str, float] | None, top: int = 3
) -> list[dict[str, Any]]:
    """The ``top`` features that push the score most, signed, in plain words.

    ``contributions`` are every model input's signed contribution to the log-odds
    (the recency inputs, :data:`RECENCY_INPUTS`, are added up and reported together as
    ``recency``; ties rank by name). Without them (the cold prior), the reason is how
    overdue the customer is. One vector's case of :func:`describe_reasons_batch`.

    >>> x = {"days_since_last_order": 0.0, "order_count": 3.0, "gap_mean_days": 40.0}
    >>> [(r["feature"], r["direction"]) for r in describe_reasons(x, {"order_count": -0.3,
    ...     "days_since_last_order": 0.4, "dropout_evidence": -1.0}, top=2)]
    [('recency', 'lowers'), ('order_count', 'lowers')]
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
    names = list(contributions)
    row = np.array([list(contributions.values())], dtype=float).reshape(1, len(names))
    return describe_reasons_batch([x], row, names, top)[0]


def describe_reasons_batch(
    batch: list[dict[str, float]], contributions: np.ndarray, names: list[str], top: int = 3
) -> list[list[dict[str, Any]]]:
    """:func:`describe_reasons` of every row at once: ``contributions[i, j]`` is input
    ``names[j]``'s contribution for ``batch[i]``. The recency inputs are added up in
    ``names`` order, element by element (starting from 0.0), and a stable sort of the
    grouped inputs, which are in name order, breaks ties by name.

    >>> x = {"days_since_last_order": 82.0, "gap_mean_days": 30.0, "order_count": 4.0}
    >>> rows = np.array([[1.2, -0.4, 0.1], [0.0, 0.0, -0.2]])
    >>> names = ["days_since_last_order", "order_count", "gap_mean_days"]
    >>> got = describe_reasons_batch([x, x], rows, names, top=2)
    >>> [r["feature"] for r in got[0]]
    ['recency', 'order_count']
    >>> [r["feature"] for r in got[1]]
    ['gap_mean_days', 'order_count']
    """
    if not batch:
        return []
    keys = sorted({"recency" if name in RECENCY_INPUTS else name for name in names})
    grouped_columns = np.empty((len(batch), len(keys)))
    for k, key in enumerate(keys):
        column = np.zeros(len(batch))  # 0.0 + each input, in names order
        for j, name in enumerate(names):
            if name == key or (key == "recency" and name in RECENCY_INPUTS):
                column = column + contributions[:, j]
        grouped_columns[:, k] = column
    order = np.argsort(-np.abs(grouped_columns), axis=1, kind="stable")[:, :top]
    values = np.take_along_axis(grouped_columns, order, axis=1).tolist()
    return [
        [
            {
                "feature": keys[k],
                "contribution": round(value, 4),
                "direction": "raises" if value > 0 else "lowers",
                "text": _phrase(keys[k], x),
            }
            for k, value in zip(picked, row_values, strict=True)
        ]
        for x, picked, row_values in zip(batch, order.tolist(), values, strict=True)
    ]
