"""The replay report: one self-contained HTML page (inline SVG, no JavaScript, nothing
fetched) and a Markdown summary beside it (same stem, ``.md``).

Sections: headline numbers, metrics over time (from ``scored_examples`` when given),
calibration, score distribution by segment, cumulative gain and lift (when ``labels``
are given), the cohort retention matrix of the replayed store (when ``events`` are
given) and the stage counters. A section whose input is missing is replaced by a note
saying what it needs; nothing is computed with look-ahead.

The helpers are pure functions of plain values:

>>> gain_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
[(0.0, 0.0), (0.25, 0.5), (0.5, 0.5), (0.75, 1.0), (1.0, 1.0)]
>>> roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1])
0.75
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.segments import SEGMENTS
from replay.harness import ReplayResult

__all__ = [
    "CohortMatrix",
    "MonthMetrics",
    "Series",
    "gain_curve",
    "interpolate",
    "log_loss",
    "monthly_cohorts",
    "monthly_metrics",
    "month_key",
    "month_label",
    "nice_ticks",
    "order_times",
    "roc_auc",
    "svg_bar_chart",
    "svg_line_chart",
    "write_report",
]

EPS = 1e-15
"""Probability clipping of log loss (the same as the engine's progressive metrics)."""

PLACED_ORDER_TYPES = frozenset({"order_created", "order_paid"})
"""Event types that count as "ordered in that month" for cohort retention."""

HIST_BINS = 20
MAX_COHORTS = 36
LIFT_AT = (0.05, 0.1, 0.2, 0.3, 0.5)

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
SEGMENT_COLORS = dict(zip(SEGMENTS, ("#7f7f7f", *PALETTE), strict=False))

# ----------------------------------------------------------------------------- numbers


def _finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(x: Any, digits: int = 4) -> str:
    value = _finite(x)
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(x: Any, digits: int = 1) -> str:
    value = _finite(x)
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _int(x: Any) -> str:
    value = _finite(x)
    return "—" if value is None else f"{int(value):,}"


def month_key(ts: float) -> int:
    """A month as one integer (``year * 12 + month - 1``), from epoch seconds, in UTC.

    >>> month_label(month_key(852120000.0))
    '1997-01'
    """
    when = datetime.fromtimestamp(ts, UTC)
    return when.year * 12 + when.month - 1


def month_label(key: int) -> str:
    """``YYYY-MM`` of a :func:`month_key`.

    >>> month_label(1997 * 12 + 11)
    '1997-12'
    """
    return f"{key // 12:04d}-{key % 12 + 1:02d}"


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Exact ROC AUC (Mann-Whitney, ties count one half); None without both classes.

    >>> roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.1, 0.9])
    0.875
    >>> roc_auc([1, 1], [0.2, 0.3]) is None
    True
    """
    positives = sum(1 for y in labels if y)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average_rank = (i + j) / 2 + 1
        rank_sum += average_rank * sum(1 for k in order[i : j + 1] if labels[k])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def log_loss(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Mean log loss with probabilities clipped to [1e-15, 1 - 1e-15]; None when empty.

    >>> round(log_loss([1, 0], [0.8, 0.4]), 4)
    0.367
    """
    if not labels:
        return None
    total = 0.0
    for y, p in zip(labels, scores, strict=True):
        clipped = min(max(p, EPS), 1 - EPS)
        total -= math.log(clipped) if y else math.log(1 - clipped)
    return total / len(labels)


@dataclass(frozen=True)
class MonthMetrics:
    """Metrics of the examples resolved in one month, and of all resolved up to its end."""

    month: str
    n: int
    base_rate: float
    roc_auc: float | None
    log_loss: float | None
    brier: float | None
    cum_n: int
    cum_roc_auc: float | None
    cum_log_loss: float | None


def monthly_metrics(scored: Iterable[tuple[float, int, float]]) -> list[MonthMetrics]:
    """Per resolved month (UTC): ROC AUC, log loss and Brier of ``(resolved_at, y, p)``.

    The probabilities must be the ones the model gave *before* it learned the example
    (progressive validation); the cumulative columns are the progressive metrics as
    they stood at the end of each month.

    >>> jan, feb = 852120000.0, 854798400.0
    >>> rows = monthly_metrics([(jan, 1, 0.9), (jan, 0, 0.2), (feb, 1, 0.4), (feb, 0, 0.6)])
    >>> [(r.month, r.n, r.roc_auc, r.cum_n, r.cum_roc_auc) for r in rows]
    [('1997-01', 2, 1.0, 2, 1.0), ('1997-02', 2, 0.0, 4, 0.75)]
    """
    by_month: dict[int, list[tuple[int, float]]] = {}
    for resolved_at, y, p in scored:
        value = _finite(p)
        if value is None:
            continue
        by_month.setdefault(month_key(resolved_at), []).append((1 if y else 0, value))
    rows: list[MonthMetrics] = []
    cum_y: list[int] = []
    cum_p: list[float] = []
    for key in sorted(by_month):
        ys = [y for y, _ in by_month[key]]
        ps = [p for _, p in by_month[key]]
        cum_y.extend(ys)
        cum_p.extend(ps)
        rows.append(
            MonthMetrics(
                month=month_label(key),
                n=len(ys),
                base_rate=sum(ys) / len(ys),
                roc_auc=roc_auc(ys, ps),
                log_loss=log_loss(ys, ps),
                brier=sum((p - y) ** 2 for y, p in zip(ys, ps, strict=True)) / len(ys),
                cum_n=len(cum_y),
                cum_roc_auc=roc_auc(cum_y, cum_p),
                cum_log_loss=log_loss(cum_y, cum_p),
            )
        )
    return rows


def gain_curve(scores: Sequence[float], labels: Sequence[int]) -> list[tuple[float, float]]:
    """Cumulative gain: (share of customers targeted, share of churners caught).

    Customers are taken by descending score; customers with equal scores are taken
    together (one point per distinct score), so the curve does not depend on the
    order of ties. Starts at (0, 0) and ends at (1, 1).

    >>> gain_curve([0.5, 0.5, 0.1, 0.9], [1, 0, 0, 1])
    [(0.0, 0.0), (0.25, 0.5), (0.75, 1.0), (1.0, 1.0)]
    >>> gain_curve([0.3], [0])
    Traceback (most recent call last):
    ...
    ValueError: a gain curve needs at least one positive label
    """
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    positives = sum(1 for y in labels if y)
    if positives == 0:
        raise ValueError("a gain curve needs at least one positive label")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    curve = [(0.0, 0.0)]
    taken = caught = 0
    for rank, i in enumerate(order):
        taken += 1
        caught += 1 if labels[i] else 0
        last = rank + 1 == len(order)
        if last or scores[order[rank + 1]] != scores[i]:
            curve.append((taken / len(order), caught / positives))
    return curve


def interpolate(curve: Sequence[tuple[float, float]], x: float) -> float:
    """The piecewise-linear value of ``curve`` (sorted by x) at ``x``.

    >>> interpolate([(0.0, 0.0), (0.5, 0.8), (1.0, 1.0)], 0.25)
    0.4
    """
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]


# ----------------------------------------------------------------------------- cohorts


@dataclass(frozen=True)
class CohortMatrix:
    """Monthly cohorts by first order month; ``shares[i][k]`` is the share of cohort
    ``i`` with an order in its ``k``-th month (``k = 0`` is the first order month, so
    1.0). Rows stop at the last month with any order (later months are not observed).
    """

    cohorts: list[str]
    sizes: list[int]
    shares: list[list[float]]
    active: list[list[int]] = field(default_factory=list)


def order_times(events: Iterable[Any]) -> list[tuple[str, float]]:
    """``(customer key, ts)`` of the placed orders (created or paid) among ``events``.

    The customer key is ``store_id/customer_id`` when the event has a store id.
    """
    out = []
    for event in events:
        if getattr(event, "type", None) not in PLACED_ORDER_TYPES:
            continue
        store = getattr(event, "store_id", None)
        customer = str(event.customer_id)
        out.append((f"{store}/{customer}" if store else customer, float(event.ts)))
    return out


def monthly_cohorts(orders: Iterable[tuple[str, float]]) -> CohortMatrix:
    """Cohort retention from ``(customer, ts)`` orders (UTC months).

    >>> from datetime import datetime
    >>> ts = lambda day: datetime.fromisoformat(day + "T12:00:00+00:00").timestamp()
    >>> m = monthly_cohorts([("a", ts("1997-01-03")), ("b", ts("1997-01-20")),
    ...                      ("a", ts("1997-02-01")), ("c", ts("1997-02-10")),
    ...                      ("b", ts("1997-03-05")), ("b", ts("1997-03-06"))])
    >>> m.cohorts, m.sizes, m.shares
    (['1997-01', '1997-02'], [2, 1], [[1.0, 0.5, 0.5], [1.0, 0.0]])
    """
    months_of: dict[str, set[int]] = {}
    for customer, ts in orders:
        months_of.setdefault(customer, set()).add(month_key(ts))
    if not months_of:
        return CohortMatrix([], [], [], [])
    last = max(max(months) for months in months_of.values())
    members: dict[int, list[set[int]]] = {}
    for months in months_of.values():
        members.setdefault(min(months), []).append(months)
    cohorts, sizes, shares, active = [], [], [], []
    for first in sorted(members):
        group = members[first]
        counts = [sum(1 for m in group if first + k in m) for k in range(last - first + 1)]
        cohorts.append(month_label(first))
        sizes.append(len(group))
        active.append(counts)
        shares.append([c / len(group) for c in counts])
    return CohortMatrix(cohorts, sizes, shares, active)


# ----------------------------------------------------------------------------- SVG


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi].

    >>> nice_ticks(0, 1)
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    >>> nice_ticks(3, 47)
    [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(s * magnitude for s in (1, 2, 2.5, 5, 10) if s * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value < hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi - step * 1e-9:
        ticks.append(round(value, 10))
    return [float(t) for t in ticks]


def _tick_text(value: float) -> str:
    if value == int(value) and abs(value) < 1e9:
        return f"{int(value):,}"
    return f"{value:.3g}"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Series:
    """One line of a line chart; points with a None y break the line."""

    name: str
    points: Sequence[tuple[float, float | None]]
    color: str = PALETTE[0]
    dashed: bool = False
    markers: bool = False


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="15" '
        f'font-weight="600">{_esc(title)}</text>',
    ]


def _axis_labels(
    parts: list[str],
    width: int,
    height: int,
    box: tuple[float, float, float, float],
    x_label: str,
    y_label: str,
) -> None:
    left, top, right, bottom = box
    parts.append(
        f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{_esc(x_label)}</text>"
    )
    parts.append(
        f'<text transform="translate(16,{(top + bottom) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{_esc(y_label)}</text>'
    )
    parts.append(
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" '
        f'height="{bottom - top:.1f}" fill="none" stroke="#444"/>'
    )


def svg_line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    width: int = 720,
    height: int = 340,
) -> str:
    """An SVG line chart with axes, ticks, grid, axis labels, title and legend.

    >>> svg = svg_line_chart([Series("a<b", [(0, 0.1), (1, None), (2, 0.9)], markers=True)],
    ...                      title="AUC & co", x_label="month", y_label="AUC")
    >>> svg.startswith("<svg") and "AUC &amp; co" in svg and "a&lt;b" in svg
    True
    >>> svg.count("<polyline")  # the None breaks the line; single points get markers
    0
    >>> svg.count("<circle")
    2
    """
    finite = [
        (x, y)
        for s in series
        for x, y in s.points
        if _finite(x) is not None and _finite(y) is not None
    ]
    xs = [float(x) for x, _ in finite] or [0.0, 1.0]
    ys = [float(y) for _, y in finite if y is not None] or [0.0, 1.0]
    x0, x1 = x_range if x_range else (min(xs), max(xs))
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y_range:
        y_ticks = nice_ticks(*y_range)
        y0, y1 = y_range
    else:
        y_ticks = nice_ticks(min(ys), max(ys))
        y0, y1 = y_ticks[0], y_ticks[-1]
    y_ticks = [t for t in y_ticks if y0 - 1e-9 <= t <= y1 + 1e-9]
    legend_rows = 1 if len(series) > 1 or (series and series[0].name) else 0
    left, top, right, bottom = 74.0, 34.0 + 18 * legend_rows, width - 20.0, height - 46.0

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y0) / ((y1 - y0) or 1.0) * (bottom - top)

    parts = _svg_open(width, height, title)
    for t in y_ticks:
        parts.append(
            f'<line x1="{left:.1f}" x2="{right:.1f}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            'stroke="#e3e3e3"/>'
        )
        parts.append(
            f'<text x="{left - 6:.1f}" y="{py(t) + 4:.1f}" text-anchor="end">'
            f"{_esc(_tick_text(t))}</text>"
        )
    if x_ticks is None:
        x_ticks = [(t, _tick_text(t)) for t in nice_ticks(x0, x1) if x0 - 1e-9 <= t <= x1 + 1e-9]
    longest = max((len(label) for _, label in x_ticks), default=1)
    spacing = (right - left) / max(len(x_ticks) - 1, 1)
    step = max(1, math.ceil((7 * longest + 10) / spacing))
    for i, (t, label) in enumerate(x_ticks):
        parts.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{bottom:.1f}" y2="{bottom + 5:.1f}" '
            'stroke="#444"/>'
        )
        if i % step == 0:
            parts.append(
                f'<text x="{px(t):.1f}" y="{bottom + 18:.1f}" text-anchor="middle">'
                f"{_esc(label)}</text>"
            )
    _axis_labels(parts, width, height, (left, top, right, bottom), x_label, y_label)
    for s in series:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in s.points:
            fx, fy = _finite(x), _finite(y)
            if fx is None or fy is None:
                runs.append([])
            else:
                runs[-1].append((fx, fy))
        for run in runs:
            if len(run) >= 2:
                coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                parts.append(
                    f'<polyline points="{coords}" fill="none" stroke="{_esc(s.color)}" '
                    f'stroke-width="2"{dash}/>'
                )
            if s.markers or len(run) == 1:
                for x, y in run:
                    parts.append(
                        f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" '
                        f'fill="{_esc(s.color)}">'
                        f"<title>{_esc(s.name)}: {_esc(_tick_text(x))}, "
                        f"{_esc(f'{y:.4g}')}</title></circle>"
                    )
    x_cursor = left
    for s in series if legend_rows else []:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(
            f'<line x1="{x_cursor:.1f}" x2="{x_cursor + 22:.1f}" y1="{top - 12:.1f}" '
            f'y2="{top - 12:.1f}" stroke="{_esc(s.color)}" stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{x_cursor + 27:.1f}" y="{top - 8:.1f}">{_esc(s.name)}</text>')
        x_cursor += 40 + 7 * len(s.name)
    parts.append("</svg>")
    return "\n".join(parts)


def svg_bar_chart(
    categories: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    x_label: str,
    y_label: str,
    color: str = PALETTE[0],
    width: int = 720,
    height: int = 300,
) -> str:
    """An SVG bar chart (one bar per category) with axes, labels, title and tooltips.

    >>> svg = svg_bar_chart(["a", "b"], [3, 1], title="n", x_label="c", y_label="count")
    >>> svg.count("<rect")  # background, two bars, plot frame
    4
    >>> "a: 3" in svg
    True
    """
    clean = [(_finite(v) or 0.0) for v in values]
    y_ticks = nice_ticks(0.0, max(clean, default=0.0) or 1.0, 4)
    y1 = y_ticks[-1]
    left, top, right, bottom = 74.0, 34.0, width - 20.0, height - 46.0
    parts = _svg_open(width, height, title)

    def py(y: float) -> float:
        return bottom - y / y1 * (bottom - top)

    for t in y_ticks:
        parts.append(
            f'<line x1="{left:.1f}" x2="{right:.1f}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            'stroke="#e3e3e3"/>'
        )
        parts.append(
            f'<text x="{left - 6:.1f}" y="{py(t) + 4:.1f}" text-anchor="end">'
            f"{_esc(_tick_text(t))}</text>"
        )
    slot = (right - left) / max(len(categories), 1)
    longest = max((len(c) for c in categories), default=1)
    step = max(1, math.ceil((7 * longest + 10) / slot))
    for i, (category, value) in enumerate(zip(categories, clean, strict=True)):
        x = left + i * slot
        parts.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{py(value):.1f}" width="{slot * 0.8:.1f}" '
            f'height="{bottom - py(value):.1f}" fill="{_esc(color)}">'
            f"<title>{_esc(category)}: {_esc(_tick_text(value))}</title></rect>"
        )
        if i % step == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{bottom + 16:.1f}" text-anchor="middle">'
                f"{_esc(category)}</text>"
            )
    _axis_labels(parts, width, height, (left, top, right, bottom), x_label, y_label)
    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- report

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1120px; margin: 0 auto; padding: 16px 24px 48px; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 150px; }
.card .v { font-size: 1.35em; font-weight: 600; } .card .k { color: #666; font-size: 0.85em; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } svg { max-width: 100%; height: auto; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; }
nav a { margin-right: 12px; }
"""


@dataclass
class _Doc:
    """The report under construction: HTML parts and Markdown lines side by side."""

    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)

    def section(self, anchor: str, title: str) -> None:
        self.html.append(f'<h2 id="{_esc(anchor)}">{_esc(title)}</h2>')
        self.md.extend(["", f"## {title}", ""])

    def note(self, text: str) -> None:
        self.html.append(f'<p class="note">{_esc(text)}</p>')
        self.md.extend([f"> {text}", ""])

    def para(self, text: str) -> None:
        self.html.append(f"<p>{_esc(text)}</p>")
        self.md.extend([text, ""])

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> None:
        """A table in both formats; the first ``left`` columns are left-aligned text."""

        def cls(i: int) -> str:
            return ' class="l"' if i < left else ""

        out = ["<table><thead><tr>"]
        out += [f"<th{cls(i)}>{_esc(h)}</th>" for i, h in enumerate(header)]
        out.append("</tr></thead><tbody>")
        for row in rows:
            out.append("<tr>" + "".join(f"<td{cls(i)}>{_esc(c)}</td>" for i, c in enumerate(row)))
            out.append("</tr>")
        out.append("</tbody></table>")
        self.html.append("".join(out))
        self.md.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
        self.md.append("|" + "|".join(":--" if i < left else "--:" for i in range(len(header))))
        self.md[-1] += "|"
        self.md.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
        self.md.append("")


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _month_ticks(months: Sequence[str]) -> list[tuple[float, str]]:
    return [(float(i), m) for i, m in enumerate(months)]


def _month_range(months: Sequence[Any]) -> tuple[float, float]:
    return (-0.5, len(months) - 0.5)


def _headline(doc: _Doc, result: ReplayResult, horizon_days: int) -> None:
    status = result.model_status or {}
    examples = len(result.examples)
    base_rate = status.get("base_rate")
    if base_rate is None and examples:
        base_rate = sum(e.y for e in result.examples) / examples
    cards = [
        ("events replayed", _int(result.events_in)),
        ("events / s", f"{result.events_per_s:,.0f}"),
        ("replay time", f"{result.elapsed_s:,.1f} s"),
        ("customers scored", _int(len(result.final_scores))),
        ("labelled examples", _int(examples)),
        ("base rate (churned)", _pct(base_rate)),
        ("progressive ROC AUC", _fmt(status.get("roc_auc"))),
        ("progressive log loss", _fmt(status.get("log_loss"))),
        ("progressive Brier", _fmt(status.get("brier"))),
        ("model", f"{status.get('model_version', '—')} (warm: {status.get('model_warm', '—')})"),
        ("dead letters", _int(len(result.dead_letters))),
        ("segment changes", _int(result.segment_changes)),
    ]
    doc.html.append(
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{_esc(v)}</div><div class="k">{_esc(k)}</div></div>'
            for k, v in cards
        )
        + "</div>"
    )
    doc.md.extend(["| headline | value |", "|:--|--:|"])
    doc.md.extend(f"| {k} | {_md_cell(v)} |" for k, v in cards)
    doc.md.append("")
    if not status:
        doc.note("The model emitted no status: no progressive metrics are available.")
    else:
        extra = ", ".join(
            f"{k.replace('_', ' ')}: {status[k]}"
            for k in ("examples_learned", "warm_after", "model_share", "drifts_detected")
            if k in status
        )
        if extra:
            doc.para(f"Model {status.get('model_version', '—')} — {extra}.")
    doc.para(
        f"Churn label: no order within {horizon_days} days of a prediction point. "
        "Progressive metrics score each example with the model as it stood before it "
        "learned that example."
    )


def _over_time(
    doc: _Doc, result: ReplayResult, scored: Sequence[tuple[float, int, float]] | None
) -> None:
    doc.section("over-time", "Metrics over time")
    by_month: dict[int, list[int]] = {}
    for example in result.examples:
        by_month.setdefault(month_key(example.resolved_at), []).append(example.y)
    if by_month:
        keys = sorted(by_month)
        months = [month_label(k) for k in keys]
        doc.html.append('<div class="grid">')
        doc.html.append(
            svg_bar_chart(
                months,
                [len(by_month[k]) for k in keys],
                title="Labelled examples by month resolved",
                x_label="month the label resolved (UTC)",
                y_label="examples",
                width=540,
            )
        )
        doc.html.append(
            svg_line_chart(
                [
                    Series(
                        "churn rate",
                        [(i, sum(by_month[k]) / len(by_month[k])) for i, k in enumerate(keys)],
                        color=PALETTE[1],
                        markers=True,
                    )
                ],
                title="Base rate by month resolved",
                x_label="month the label resolved (UTC)",
                y_label="share churned",
                y_range=(0.0, 1.0),
                x_ticks=_month_ticks(months),
                x_range=_month_range(months),
                width=540,
                height=300,
            )
        )
        doc.html.append("</div>")
        doc.md.extend(["| month resolved | examples | churn rate |", "|:--|--:|--:|"])
        doc.md.extend(
            f"| {month_label(k)} | {len(ys):,} | {_pct(sum(ys) / len(ys))} |"
            for k, ys in sorted(by_month.items())
        )
        doc.md.append("")
    if scored is None:
        doc.note(
            "No per-example probabilities were given (scored_examples), so monthly ROC AUC "
            "and log loss are not shown; the final progressive metrics are in the summary. "
            "Final scores are not used instead: that would be look-ahead."
        )
        return
    rows = monthly_metrics(scored)
    if not rows:
        doc.note("scored_examples is empty: no monthly metrics.")
        return
    months = [r.month for r in rows]
    ticks = _month_ticks(months)
    doc.html.append('<div class="grid">')
    doc.html.append(
        svg_line_chart(
            [
                Series("cumulative", [(i, r.cum_roc_auc) for i, r in enumerate(rows)]),
                Series(
                    "month",
                    [(i, r.roc_auc) for i, r in enumerate(rows)],
                    color=PALETTE[3],
                    markers=True,
                ),
                Series("random (0.5)", [(0, 0.5), (len(rows) - 1, 0.5)], "#999", dashed=True),
            ],
            title="Progressive ROC AUC",
            x_label="month the label resolved (UTC)",
            y_label="ROC AUC",
            y_range=(0.0, 1.0),
            x_ticks=ticks,
            x_range=_month_range(months),
            width=540,
        )
    )
    doc.html.append(
        svg_line_chart(
            [
                Series("cumulative", [(i, r.cum_log_loss) for i, r in enumerate(rows)]),
                Series(
                    "month",
                    [(i, r.log_loss) for i, r in enumerate(rows)],
                    color=PALETTE[3],
                    markers=True,
                ),
            ],
            title="Progressive log loss",
            x_label="month the label resolved (UTC)",
            y_label="log loss",
            x_ticks=ticks,
            x_range=_month_range(months),
            width=540,
        )
    )
    doc.html.append("</div>")
    doc.table(
        [
            "month",
            "examples",
            "base rate",
            "ROC AUC",
            "log loss",
            "Brier",
            "cum. ROC AUC",
            "cum. log loss",
        ],
        [
            [
                r.month,
                f"{r.n:,}",
                _pct(r.base_rate),
                _fmt(r.roc_auc),
                _fmt(r.log_loss),
                _fmt(r.brier),
                _fmt(r.cum_roc_auc),
                _fmt(r.cum_log_loss),
            ]
            for r in rows
        ],
    )


def _calibration(doc: _Doc, result: ReplayResult) -> None:
    doc.section("calibration", "Calibration")
    table = (result.model_status or {}).get("calibration") or []
    bins = [
        b
        for b in table
        if b.get("count")
        and _finite(b.get("mean_predicted")) is not None
        and _finite(b.get("observed_rate")) is not None
    ]
    if not bins:
        doc.note("No calibration table: the model has not been evaluated on any example.")
        return
    doc.html.append(
        svg_line_chart(
            [
                Series(
                    "model",
                    [(b["mean_predicted"], b["observed_rate"]) for b in bins],
                    markers=True,
                ),
                Series("perfect", [(0.0, 0.0), (1.0, 1.0)], "#999", dashed=True),
            ],
            title="Calibration (progressive, all examples)",
            x_label="mean predicted churn probability in bin",
            y_label="observed churn rate",
            x_range=(0.0, 1.0),
            y_range=(0.0, 1.0),
            width=520,
            height=420,
        )
    )
    doc.table(
        ["bin", "examples", "mean predicted", "observed rate"],
        [
            [
                b.get("bin", ""),
                _int(b.get("count")),
                _fmt(b.get("mean_predicted"), 3),
                _fmt(b.get("observed_rate"), 3),
            ]
            for b in table
        ],
    )


def _score_distribution(doc: _Doc, result: ReplayResult) -> None:
    doc.section("scores", "Final score distribution by segment")
    by_segment: dict[str, list[float]] = {}
    for scored in result.final_scores:
        p = _finite(scored.churn_probability)
        if p is not None:
            by_segment.setdefault(scored.request.segment, []).append(p)
    if not by_segment:
        doc.note("No final scores: nobody with an order was scored at the end of the replay.")
        return
    order = [s for s in SEGMENTS if s in by_segment] + sorted(set(by_segment) - set(SEGMENTS))
    labels = [f"{i / HIST_BINS:.2f}" for i in range(HIST_BINS)]
    doc.html.append('<div class="grid">')
    rows = []
    for segment in order:
        values = sorted(by_segment[segment])
        counts = [0] * HIST_BINS
        for p in values:
            counts[min(int(p * HIST_BINS), HIST_BINS - 1)] += 1
        doc.html.append(
            svg_bar_chart(
                labels,
                counts,
                title=f"{segment}: {len(values):,} customers",
                x_label="churn probability (bin start)",
                y_label="customers",
                color=SEGMENT_COLORS.get(segment, PALETTE[-1]),
                width=540,
                height=260,
            )
        )
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
        rows.append(
            [
                segment,
                f"{len(values):,}",
                _fmt(sum(values) / len(values), 3),
                _fmt(median, 3),
                _pct(sum(1 for p in values if p >= 0.5) / len(values)),
            ]
        )
    doc.html.append("</div>")
    doc.table(["segment", "customers", "mean p", "median p", "p ≥ 0.5"], rows)


def _gain_lift(doc: _Doc, result: ReplayResult, labels: Mapping[str, int] | None) -> None:
    doc.section("gain", "Cumulative gain and lift")
    if labels is None:
        doc.note(
            "No outcome labels for the final scores were given (labels: customer_id → 1 if "
            "churned), so the gain and lift charts are omitted."
        )
        return
    pairs = [
        (s.churn_probability, 1 if labels[s.request.customer_id] else 0)
        for s in result.final_scores
        if s.request.customer_id in labels and _finite(s.churn_probability) is not None
    ]
    missing = len(result.final_scores) - len(pairs)
    try:
        curve = gain_curve([p for p, _ in pairs], [y for _, y in pairs])
    except ValueError as exc:
        doc.note(f"No gain curve: {exc} among the {len(pairs):,} labelled final scores.")
        return
    grid = [i / 100 for i in range(101)]
    gains = [(x, interpolate(curve, x)) for x in grid]
    churn_rate = sum(y for _, y in pairs) / len(pairs)
    doc.para(
        f"{len(pairs):,} final scores with a label (churn rate {_pct(churn_rate)}); "
        f"{missing:,} scored customers without a label left out."
    )
    doc.html.append('<div class="grid">')
    doc.html.append(
        svg_line_chart(
            [
                Series("model", gains),
                Series("random", [(0.0, 0.0), (1.0, 1.0)], "#999", dashed=True),
            ],
            title="Cumulative gain",
            x_label="share of customers targeted (highest score first)",
            y_label="share of churners reached",
            x_range=(0.0, 1.0),
            y_range=(0.0, 1.0),
            width=540,
        )
    )
    lifts = [(x, y / x) for x, y in gains if x >= 0.01]
    doc.html.append(
        svg_line_chart(
            [
                Series("model", lifts),
                Series("random (1)", [(0.0, 1.0), (1.0, 1.0)], "#999", dashed=True),
            ],
            title="Lift",
            x_label="share of customers targeted (highest score first)",
            y_label="lift over random",
            x_range=(0.0, 1.0),
            width=540,
        )
    )
    doc.html.append("</div>")
    auc = roc_auc([y for _, y in pairs], [p for p, _ in pairs])
    doc.table(
        ["top share targeted", "churners reached", "lift"],
        [
            [_pct(x, 0), _pct(interpolate(curve, x)), _fmt(interpolate(curve, x) / x, 2)]
            for x in LIFT_AT
        ],
    )
    doc.para(f"ROC AUC of the final scores against these labels: {_fmt(auc)}.")


def _cohort_color(share: float, scale: float) -> str:
    alpha = min(1.0, share / scale) if scale > 0 else 0.0
    text = "#fff" if alpha > 0.55 else "#222"
    return f"background: rgba(31, 119, 180, {alpha:.2f}); color: {text}"


def _cohorts(doc: _Doc, events: Iterable[Any] | None) -> None:
    doc.section("cohorts", "Cohort retention")
    if events is None:
        doc.note("No events were given, so the cohort retention matrix is omitted.")
        return
    matrix = monthly_cohorts(order_times(events))
    if not matrix.cohorts:
        doc.note("The events hold no placed orders: no cohorts.")
        return
    first = max(0, len(matrix.cohorts) - MAX_COHORTS)
    cohorts = matrix.cohorts[first:]
    sizes, shares = matrix.sizes[first:], matrix.shares[first:]
    span = max(len(row) for row in shares)
    later = [s for row in shares for s in row[1:]]
    scale = max(later, default=0.0)
    doc.para(
        "Customers grouped by the month (UTC) of their first order; each cell is the share "
        "of the cohort that ordered in the k-th month after it (month 0 = first order "
        "month). Colour is scaled to the largest share after month 0."
        + (f" Only the last {MAX_COHORTS} cohorts are shown." if first else "")
    )
    head = ["cohort", "customers", *[f"+{k}" for k in range(span)]]
    out = ["<table><thead><tr>"]
    out += [f"<th{' class=l' if i == 0 else ''}>{_esc(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for cohort, size, row in zip(cohorts, sizes, shares, strict=True):
        cells = [f'<td class="l">{_esc(cohort)}</td><td>{size:,}</td>']
        for k in range(span):
            if k >= len(row):
                cells.append("<td></td>")
            elif k == 0:
                cells.append(f"<td>{_pct(row[k])}</td>")
            else:
                cells.append(f'<td style="{_cohort_color(row[k], scale)}">{_pct(row[k])}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    doc.html.append("".join(out))
    doc.md.append("| " + " | ".join(head) + " |")
    doc.md.append("|:--|" + "--:|" * (len(head) - 1))
    for cohort, size, row in zip(cohorts, sizes, shares, strict=True):
        cells = [_pct(row[k]) if k < len(row) else "" for k in range(span)]
        doc.md.append(f"| {cohort} | {size:,} | " + " | ".join(cells) + " |")
    doc.md.append("")


def _counters(doc: _Doc, result: ReplayResult) -> None:
    doc.section("counters", "Stage counters")
    counters = dict(result.counters)
    if not counters:
        doc.note("The customer stage emitted no counters.")
    else:
        first = [
            k
            for k in (
                "events",
                "duplicates",
                "late_events",
                "out_of_order_events",
                "late_label_flips",
                "erased",
            )
            if k in counters
        ]
        names = first + sorted(set(counters) - set(first))
        doc.table(["counter", "value"], [[n.replace("_", " "), _int(counters[n])] for n in names])
    if result.scores_by_cause:
        doc.table(
            ["scores by cause", "count"],
            [[cause, _int(n)] for cause, n in sorted(result.scores_by_cause.items())],
        )


def write_report(
    result: ReplayResult,
    path: Path,
    *,
    horizon_days: int,
    events: Iterable[Any] | None = None,
    labels: Mapping[str, int] | None = None,
    scored_examples: Sequence[tuple[float, int, float]] | None = None,
) -> None:
    """Write the HTML report to ``path`` and a Markdown summary to ``path.with_suffix(".md")``.

    ``events``: the replayed canonical events (for the cohort retention matrix).
    ``labels``: customer_id → 1 if churned after the cut (for gain and lift).
    ``scored_examples``: ``(resolved_at, y, p)`` with ``p`` the model's probability
    before it learned the example (for monthly progressive metrics).
    Sections whose input is missing are replaced by a note.
    """
    path = Path(path)
    md_path = path.with_suffix(".md")
    if md_path == path:
        raise ValueError(f"the report path {path} must not end in .md (the summary goes there)")
    title = f"churnflow replay report — horizon {horizon_days} days"
    doc = _Doc()
    doc.html.append(f"<h1>{_esc(title)}</h1>")
    stores = sorted({s.request.store_id for s in result.final_scores})
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"store(s): {', '.join(stores) or '—'} · generated {generated}"
    doc.html.append(f'<p class="sub">{_esc(subtitle)}</p>')
    sections = [
        ("summary", "Summary"),
        ("over-time", "Metrics over time"),
        ("calibration", "Calibration"),
        ("scores", "Score distribution"),
        ("gain", "Gain and lift"),
        ("cohorts", "Cohort retention"),
        ("counters", "Stage counters"),
    ]
    doc.html.append(
        "<nav>" + "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in sections) + "</nav>"
    )
    doc.md.extend([f"# {title}", "", subtitle])
    doc.section("summary", "Summary")
    _headline(doc, result, horizon_days)
    _over_time(doc, result, scored_examples)
    _calibration(doc, result)
    _score_distribution(doc, result)
    _gain_lift(doc, result, labels)
    _cohorts(doc, events)
    _counters(doc, result)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(doc.html)
        + f'\n<p class="sub">Markdown summary: {_esc(md_path.name)}</p>\n</body></html>\n'
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    md_path.write_text("\n".join(doc.md).rstrip() + "\n", encoding="utf-8")
