"""How much churn signal CDNOW's purchase history holds at one cut: offline batch learners.

    pip install scikit-learn        # not a churnflow dependency; this probe only
    python bench/quality_ceiling.py [--cut 1997-09-30] [--horizon-days 90] [--pooled]

Per customer, 14 features from the raw log up to a time: distinct order days, tenure T,
recency, t_x, mean and total spend, CDs bought, orders in the last 30/90/180 days, gap
mean and standard deviation (distinct days), an overdue ratio and a dropout term. Every
learner is trained one horizon before the cut, on the labels that resolved by the cut,
and scored at the cut (no look-ahead), like ``bench/quality.py``'s batch LR. Prints
``name value unit`` lines (ROC AUC, churn = 1):

- ``ceiling_lr_roc_auc``: logistic regression on standardised log1p features;
- ``ceiling_lr_records_roc_auc``: the same with order records instead of order days;
- ``ceiling_gbm_roc_auc``: histogram gradient-boosted trees on the raw features
  (seeded: their early stopping holds out a random tenth, and the AUC moves by ~0.005
  between seeds);
- ``ceiling_lr_pnbd_roc_auc``: the logistic regression plus Pareto/NBD's log expected
  purchases (``lifetimes``, fitted at each time) as one more input;
- with ``--pooled``, ``ceiling_pooled_{lr,gbm}_roc_auc``: trained on cuts every 14
  days back from one horizon before the cut (to 1997-02-01), labels resolved by the cut.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replay.baselines import churn_labels, end_of_day, pareto_nbd_scores, roc_auc  # noqa: E402
from replay.loaders import load_cdnow  # noqa: E402

DAY = 86_400.0


def emit(name: str, value: float, unit: str) -> None:
    print(f"{name} {value:.4f} {unit}", flush=True)


def features(orders: list[Any], at: datetime, by_days: bool = True) -> tuple[list[str], np.ndarray]:
    """The customers with an order by ``at`` and their 14 features (see the docstring);
    ``by_days=False`` counts order records instead of distinct order days."""
    per: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for e in orders:
        if e.occurred_at <= at:
            quantity = sum(item.quantity for item in e.line_items)
            per[e.customer_id].append((e.ts / DAY, float(e.amount), float(quantity)))
    now = at.timestamp() / DAY
    ids = sorted(per)
    rows = []
    for customer in ids:
        history = sorted(per[customer])
        times = [t for t, _, _ in history]
        days = sorted({int(t) for t in times})
        n = len(days) if by_days else len(times)
        tenure, recency, t_x = now - times[0], now - times[-1], times[-1] - times[0]
        gaps = np.diff(days) if len(days) > 1 else np.array([0.0])
        rows.append(
            [
                n,
                tenure,
                recency,
                t_x,
                np.mean([a for _, a, _ in history]),
                sum(a for _, a, _ in history),
                sum(q for _, _, q in history),
                sum(1 for t in times if now - t < 30),
                sum(1 for t in times if now - t < 90),
                sum(1 for t in times if now - t < 180),
                gaps.mean(),
                gaps.std(),
                recency / (gaps.mean() + 30.0),
                np.log1p(n) * np.log((30.0 + tenure) / (30.0 + t_x)),
            ]
        )
    return ids, np.array(rows, dtype=float)


def log_expected(orders: list[Any], at: datetime, ids: list[str], horizon: int) -> np.ndarray:
    """log of Pareto/NBD's expected purchases in the horizon (fitted on history to ``at``)."""
    minus_expected = pareto_nbd_scores([e for e in orders if e.occurred_at <= at], at, horizon)
    return np.log(np.maximum([-minus_expected[c] for c in ids], 1e-6))


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    train, test = np.log1p(np.maximum(train, 0.0)), np.log1p(np.maximum(test, 0.0))
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-9
    return (train - mean) / std, (test - mean) / std


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut", type=date.fromisoformat, default=date(1997, 9, 30))
    parser.add_argument("--horizon-days", type=int, default=90)
    parser.add_argument("--pooled", action="store_true")
    args = parser.parse_args(argv)
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        print("this probe needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 2

    events = load_cdnow()
    orders = [e for e in events if e.type == "order_created"]
    horizon = args.horizon_days
    cut = end_of_day(args.cut)
    train_at = cut - timedelta(days=horizon)
    known = [e for e in events if e.occurred_at <= cut]  # labels resolved by the cut
    test_labels = churn_labels(events, cut, horizon)
    train_labels = churn_labels(known, train_at, horizon)

    def fitted_lr(x_train: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
        a, b = standardised(x_train, x_test)
        return LogisticRegression(max_iter=3000).fit(a, y).predict_proba(b)[:, 1]

    def gbm() -> Any:
        return HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=100,
            random_state=0,  # its early stopping holds out a random tenth
        )

    for by_days, name in ((True, "lr"), (False, "lr_records")):
        train_ids, x_train = features(orders, train_at, by_days)
        test_ids, x_test = features(orders, cut, by_days)
        y_train = np.array([train_labels[c] for c in train_ids])
        y_test = np.array([test_labels[c] for c in test_ids])
        emit(f"ceiling_{name}_roc_auc", roc_auc(y_test, fitted_lr(x_train, y_train, x_test)), "auc")

    train_ids, x_train = features(orders, train_at)
    test_ids, x_test = features(orders, cut)
    y_train = np.array([train_labels[c] for c in train_ids])
    y_test = np.array([test_labels[c] for c in test_ids])
    p = gbm().fit(x_train, y_train).predict_proba(x_test)[:, 1]
    emit("ceiling_gbm_roc_auc", roc_auc(y_test, p), "auc")
    a, b = standardised(x_train, x_test)
    a = np.column_stack([a, log_expected(orders, train_at, train_ids, horizon)])
    b = np.column_stack([b, log_expected(orders, cut, test_ids, horizon)])
    mean, std = a[:, -1].mean(), a[:, -1].std() + 1e-9
    a[:, -1], b[:, -1] = (a[:, -1] - mean) / std, (b[:, -1] - mean) / std
    p = LogisticRegression(max_iter=3000).fit(a, y_train).predict_proba(b)[:, 1]
    emit("ceiling_lr_pnbd_roc_auc", roc_auc(y_test, p), "auc")

    if args.pooled:
        xs, ys = [], []
        at = train_at
        while at > end_of_day(date(1997, 2, 1)):
            ids, x = features(orders, at)
            labels = churn_labels(known, at, horizon)
            xs.append(x)
            ys.append(np.array([labels[c] for c in ids]))
            at -= timedelta(days=14)
        x_pool, y_pool = np.vstack(xs), np.concatenate(ys)
        emit("ceiling_pooled_rows", float(len(y_pool)), "rows")
        p = fitted_lr(x_pool, y_pool, x_test)
        emit("ceiling_pooled_lr_roc_auc", roc_auc(y_test, p), "auc")
        p = gbm().fit(x_pool, y_pool).predict_proba(x_test)[:, 1]
        emit("ceiling_pooled_gbm_roc_auc", roc_auc(y_test, p), "auc")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
