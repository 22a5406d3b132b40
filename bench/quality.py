"""Churn-prediction quality on CDNOW: batch baselines (and churnflow) at one cut.

    python bench/quality.py [--cut 1997-09-30] [--horizon-days 90]
                            [--churnflow-scores FILE.csv]

Labels: a customer with a purchase on or before the cut day churns (1) if they make no
purchase in the ``horizon_days`` days after it. Every method scores "higher = more
likely to churn" and sees only the history up to the end of the cut day — the loader's
events are filtered before any scorer runs, so no method can peek at the label window.

Methods: BG/NBD and Pareto/NBD (minus expected purchases in the horizon), recency (days
since the last order), a logistic regression on RFM trained one horizon earlier, and
optionally churnflow: either a CSV (``customer_id,churn_probability``) or, from code, a
scoring function passed to :func:`run_quality` as ``churnflow=``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from engine.events import OrderEvent
from replay.baselines import (
    aligned,
    batch_logreg_rfm_scores,
    bgnbd_scores,
    churn_labels,
    end_of_day,
    pareto_nbd_scores,
    pr_auc,
    recency_scores,
    rfm_summary,
    roc_auc,
)
from replay.loaders import load_cdnow

ScoreFn = Callable[[Sequence[OrderEvent], datetime, int], Mapping[str, float]]
"""(history up to the cut, cut, horizon_days) -> {customer_id: churn score}."""

BASELINES: dict[str, ScoreFn] = {
    "BG/NBD": bgnbd_scores,
    "Pareto/NBD": pareto_nbd_scores,
    "recency": lambda history, cut, _horizon: recency_scores(history, cut),
    "batch LR (RFM)": batch_logreg_rfm_scores,
}


@dataclass(frozen=True)
class QualityRow:
    method: str
    roc_auc: float
    pr_auc: float
    n_customers: int
    base_rate: float
    missing: int
    """Labelled customers the method gave no score (left out of its metrics)."""
    seconds: float


def evaluate(
    method: str, labels: Mapping[str, int], scores: Mapping[str, float], seconds: float = 0.0
) -> QualityRow:
    """Metrics of ``scores`` on the labelled customers that have a score."""
    ys, ss, missing = aligned(labels, scores)
    return QualityRow(
        method=method,
        roc_auc=roc_auc(ys, ss),
        pr_auc=pr_auc(ys, ss),
        n_customers=len(ys),
        base_rate=sum(ys) / len(ys),
        missing=len(missing),
        seconds=seconds,
    )


def read_scores_csv(path: Path) -> dict[str, float]:
    """``customer_id,churn_probability`` CSV -> {customer_id: probability}."""
    scores: dict[str, float] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if not {"customer_id", "churn_probability"} <= fields:
            raise SystemExit(f"{path}: header must be customer_id,churn_probability")
        for row in reader:
            try:
                scores[row["customer_id"].strip()] = float(row["churn_probability"])
            except (TypeError, ValueError):
                raise SystemExit(f"{path}:{reader.line_num}: bad row {row}") from None
    return scores


def run_quality(
    cut: date,
    horizon_days: int,
    *,
    events: Sequence[OrderEvent] | None = None,
    churnflow: ScoreFn | Mapping[str, float] | None = None,
    methods: Mapping[str, ScoreFn] = BASELINES,
) -> list[QualityRow]:
    """Evaluate every method at ``cut`` (a day; history = up to its end, UTC).

    ``events`` defaults to the whole CDNOW log. ``churnflow`` is either precomputed
    scores or a :data:`ScoreFn`, which receives only the history up to the cut.
    """
    all_events = list(load_cdnow() if events is None else events)
    cut_at = end_of_day(cut)
    history = [e for e in all_events if e.occurred_at <= cut_at]
    labels = churn_labels(all_events, cut_at, horizon_days)
    if not labels:
        raise SystemExit(f"no customer has a purchase on or before {cut}")
    rfm_summary([], cut_at)  # import lifetimes now, so no method's time includes it
    rows = []
    todo: dict[str, ScoreFn | Mapping[str, float]] = dict(methods)
    if churnflow is not None:
        todo["churnflow"] = churnflow
    for name, method in todo.items():
        started = time.perf_counter()
        scores = method if isinstance(method, Mapping) else method(history, cut_at, horizon_days)
        rows.append(evaluate(name, labels, scores, time.perf_counter() - started))
    return rows


def format_table(rows: Sequence[QualityRow]) -> str:
    lines = [
        f"{'method':<16} {'ROC AUC':>8} {'PR AUC':>8} {'n':>7} {'base rate':>9} "
        f"{'missing':>7} {'seconds':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r.method:<16} {r.roc_auc:>8.4f} {r.pr_auc:>8.4f} {r.n_customers:>7} "
            f"{r.base_rate:>9.4f} {r.missing:>7} {r.seconds:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cut", type=date.fromisoformat, default=date(1997, 9, 30))
    parser.add_argument("--horizon-days", type=int, default=90)
    parser.add_argument("--churnflow-scores", type=Path, default=None, metavar="FILE.csv")
    args = parser.parse_args(argv)
    churnflow = read_scores_csv(args.churnflow_scores) if args.churnflow_scores else None
    rows = run_quality(args.cut, args.horizon_days, churnflow=churnflow)
    print(f"CDNOW, cut {args.cut} (end of day UTC), horizon {args.horizon_days} days, churn = 1")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
