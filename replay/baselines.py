"""Batch churn baselines and ranking metrics for the quality benchmark.

Conventions shared by every function here:

* A *purchase* is an ``order_created`` event; other event types are ignored (a paid or
  refunded order is the same purchase, not another one).
* ``cut`` is a timezone-aware datetime. History is ``occurred_at <= cut``; the label
  window is ``(cut, cut + horizon_days]``. For a day-granular log such as CDNOW pass
  the end of the cut day (:func:`end_of_day`), so that orders of the cut day are history.
* The population is the customers with at least one purchase on or before ``cut``.
* Customers are keyed by ``customer_id``; mixing stores in one call raises
  ``ValueError`` (ids are only unique within a store).
* Churn is the positive class (label 1) and every score is "higher = more likely to
  churn", which is what :func:`roc_auc` and :func:`pr_auc` expect.
* Day-granular quantities (``rfm_summary``, the BTYD models) use UTC calendar days.

>>> from decimal import Decimal
>>> from engine.events import OrderEvent
>>> def order(customer: str, day: int) -> OrderEvent:
...     return OrderEvent(type="order_created", event_id=f"{customer}{day}", store_id="s",
...                       customer_id=customer, occurred_at=datetime(2026, 1, day, 12, tzinfo=UTC),
...                       order_id=f"{customer}{day}", amount=Decimal(10), currency="EUR")
>>> history = [order("a", 1), order("a", 5), order("b", 2), order("c", 20), order("a", 25)]
>>> cut = end_of_day(date(2026, 1, 5))
>>> churn_labels(history, cut, horizon_days=30)  # c is not a customer yet at the cut
{'a': 0, 'b': 1}
>>> {c: round(days, 3) for c, days in recency_scores(history, cut).items()}
{'a': 0.5, 'b': 3.5}
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from engine.events import OrderEvent

__all__ = [
    "DEFAULT_PENALIZER",
    "RFM_COLUMNS",
    "aligned",
    "batch_logreg_rfm_scores",
    "bgnbd_scores",
    "churn_labels",
    "end_of_day",
    "fit_logistic",
    "pareto_nbd_scores",
    "pr_auc",
    "recency_scores",
    "rfm_summary",
    "roc_auc",
]

DEFAULT_PENALIZER = 0.001
"""L2 penalizer for the BTYD fits. A small value keeps the optimiser away from
degenerate parameters (e.g. alpha -> inf) on small or odd histories, while being far
too small to move the fit on data the size of CDNOW."""

RFM_COLUMNS = ("frequency", "recency", "T", "monetary_value")

_DAY = timedelta(days=1)


def _lifetimes() -> Any:
    """Import ``lifetimes`` quietly: on pandas 3 its import sets a deprecated pandas option."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*chained_assignment.*")
        import lifetimes
        import lifetimes.utils
    return lifetimes


def end_of_day(day: date) -> datetime:
    """The last representable instant of ``day`` in UTC: the cut that keeps that day in history.

    >>> end_of_day(date(1997, 9, 30)).isoformat()
    '1997-09-30T23:59:59.999999+00:00'
    """
    return datetime.combine(day, time.max, tzinfo=UTC)


def _check_cut(cut: datetime) -> None:
    if cut.tzinfo is None or cut.utcoffset() is None:
        raise ValueError(f"cut must be timezone-aware, got naive {cut.isoformat()}")


def _purchases(events: Iterable[OrderEvent]) -> list[OrderEvent]:
    orders = [e for e in events if e.type == "order_created"]
    stores = {e.store_id for e in orders}
    if len(stores) > 1:
        raise ValueError(f"events of {len(stores)} stores mixed; pass one store at a time")
    return orders


def rfm_summary(events: Iterable[OrderEvent], cut: datetime) -> pd.DataFrame:
    """Per-customer RFM in days at ``cut``, in the ``lifetimes`` convention.

    Computed by ``lifetimes.utils.summary_data_from_transaction_data(freq="D")`` on the
    purchases up to ``cut``, with the observation end = ``cut``'s UTC date. Columns:

    * ``frequency``: number of *days* with a purchase after the first purchase day;
    * ``recency``: days between the first and the last purchase day;
    * ``T``: days between the first purchase day and the cut day;
    * ``monetary_value``: mean of the per-day order totals over the repeat days
      (0 without repeat days).

    Indexed by ``customer_id`` (sorted), float columns; empty frame if nobody bought.

    >>> from decimal import Decimal
    >>> from engine.events import OrderEvent
    >>> def order(customer: str, day: int, amount: str) -> OrderEvent:
    ...     return OrderEvent(type="order_created", event_id=f"{customer}{day}{amount}",
    ...                       store_id="s", customer_id=customer, order_id="o",
    ...                       occurred_at=datetime(2026, 1, day, 12, tzinfo=UTC),
    ...                       amount=Decimal(amount), currency="EUR")
    >>> events = [order("a", 1, "5"), order("a", 3, "10"), order("a", 3, "2"),
    ...           order("a", 6, "30"), order("b", 4, "7"), order("a", 20, "99")]
    >>> rfm_summary(events, end_of_day(date(2026, 1, 10))).to_dict("index")
    {'a': {'frequency': 2.0, 'recency': 5.0, 'T': 9.0, 'monetary_value': 21.0}, \
'b': {'frequency': 0.0, 'recency': 0.0, 'T': 6.0, 'monetary_value': 0.0}}
    """
    summary_data_from_transaction_data = _lifetimes().utils.summary_data_from_transaction_data
    _check_cut(cut)
    orders = [e for e in _purchases(events) if e.occurred_at <= cut]
    if not orders:
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in RFM_COLUMNS})
        empty.index.name = "customer_id"
        return empty
    frame = pd.DataFrame(
        {
            "customer_id": [e.customer_id for e in orders],
            # day-granular: the UTC date, as a naive timestamp (lifetimes works naive)
            "day": pd.to_datetime([e.occurred_at.astimezone(UTC).date() for e in orders]),
            "amount": [float(e.amount) for e in orders],
        }
    )
    cut_day = pd.Timestamp(cut.astimezone(UTC).date())
    summary = summary_data_from_transaction_data(
        frame,
        "customer_id",
        "day",
        monetary_value_col="amount",
        observation_period_end=cut_day,
        freq="D",
    )
    summary.index.name = "customer_id"
    return summary.sort_index()


def _horizon(horizon_days: int) -> timedelta:
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be > 0, got {horizon_days}")
    return timedelta(days=horizon_days)


def churn_labels(events: Iterable[OrderEvent], cut: datetime, horizon_days: int) -> dict[str, int]:
    """``{customer_id: 1 if no purchase in (cut, cut + H] else 0}``.

    Only customers with at least one purchase on or before ``cut`` are labelled.
    Keys are sorted. See the module docstring for an example.
    """
    _check_cut(cut)
    end = cut + _horizon(horizon_days)
    seen: set[str] = set()
    returned: set[str] = set()
    for e in _purchases(events):
        if e.occurred_at <= cut:
            seen.add(e.customer_id)
        elif e.occurred_at <= end:
            returned.add(e.customer_id)
    return {c: 0 if c in returned else 1 for c in sorted(seen)}


def recency_scores(events: Iterable[OrderEvent], cut: datetime) -> dict[str, float]:
    """Days (fractional) from each customer's last purchase to ``cut``; longer = more churn."""
    _check_cut(cut)
    last: dict[str, datetime] = {}
    for e in _purchases(events):
        if e.occurred_at <= cut and (
            e.customer_id not in last or e.occurred_at > last[e.customer_id]
        ):
            last[e.customer_id] = e.occurred_at
    return {c: (cut - last[c]) / _DAY for c in sorted(last)}


def _btyd_scores(
    fitter: Any, events: Iterable[OrderEvent], cut: datetime, horizon_days: int
) -> dict[str, float]:
    _horizon(horizon_days)
    summary = rfm_summary(events, cut)
    if summary.empty:
        return {}
    fitter.fit(summary["frequency"], summary["recency"], summary["T"])
    expected = fitter.conditional_expected_number_of_purchases_up_to_time(
        horizon_days, summary["frequency"], summary["recency"], summary["T"]
    )
    values = -np.asarray(expected, dtype=float)
    return dict(zip(summary.index.astype(str), values.tolist(), strict=True))


def bgnbd_scores(
    events: Iterable[OrderEvent],
    cut: datetime,
    horizon_days: int,
    *,
    penalizer: float = DEFAULT_PENALIZER,
) -> dict[str, float]:
    """BG/NBD churn score: minus the expected purchases in the next ``horizon_days`` days.

    A ``lifetimes.BetaGeoFitter`` (time unit: days) is fitted on :func:`rfm_summary` at
    ``cut``, i.e. on history only.
    """
    fitter = _lifetimes().BetaGeoFitter(penalizer_coef=penalizer)
    return _btyd_scores(fitter, events, cut, horizon_days)


def pareto_nbd_scores(
    events: Iterable[OrderEvent],
    cut: datetime,
    horizon_days: int,
    *,
    penalizer: float = DEFAULT_PENALIZER,
) -> dict[str, float]:
    """Pareto/NBD churn score: minus the expected purchases in the next ``horizon_days`` days.

    Like :func:`bgnbd_scores` with ``lifetimes.ParetoNBDFitter``; the fit is the slow
    one (about 10-15 s on the whole of CDNOW).
    """
    fitter = _lifetimes().ParetoNBDFitter(penalizer_coef=penalizer)
    return _btyd_scores(fitter, events, cut, horizon_days)


# ------------------------------------------------------------ logistic regression


def _rfm_features(summary: pd.DataFrame) -> npt.NDArray[np.float64]:
    """log1p(frequency), days since last purchase, log1p of it, T, log1p(monetary)."""
    frequency = summary["frequency"].to_numpy(dtype=float)
    since_last = (summary["T"] - summary["recency"]).to_numpy(dtype=float)
    return np.column_stack(
        [
            np.log1p(frequency),
            since_last,
            np.log1p(since_last),
            summary["T"].to_numpy(dtype=float),
            np.log1p(summary["monetary_value"].to_numpy(dtype=float)),
        ]
    )


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free
    return out


def fit_logistic(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    *,
    l2: float = 1e-3,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> npt.NDArray[np.float64]:
    """L2-regularised logistic regression by Newton's method (IRLS).

    ``x`` has no intercept column; one is added and not penalised. Returns the weights,
    intercept first. The small ridge keeps the Hessian invertible (separable or collinear
    data) without noticeably shrinking a fit on thousands of rows.

    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> w = fit_logistic(x, np.array([0.0, 1.0, 0.0, 1.0]))
    >>> bool(w[1] > 0)
    True
    """
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError("x must be 2-D with one row per label")
    z = np.column_stack([np.ones(len(x)), x])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0
    w = np.zeros(z.shape[1])
    for _ in range(max_iter):
        p = _sigmoid(z @ w)
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1.0 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        w = w - step
        if float(np.max(np.abs(step))) < tol:
            break
    return w


def batch_logreg_rfm_scores(
    events: Iterable[OrderEvent], cut: datetime, horizon_days: int
) -> dict[str, float]:
    """Churn probability from a logistic regression on RFM features, trained one window back.

    Training: features :func:`rfm_summary` at ``cut - H`` and labels :func:`churn_labels`
    of the window ``(cut - H, cut]`` — both known at ``cut``, so nothing after ``cut`` is
    used. Features (``_rfm_features``) are standardised with the training mean and std.
    The model is then applied to the RFM features at ``cut``.
    """
    _check_cut(cut)
    orders = [e for e in _purchases(events) if e.occurred_at <= cut]
    train_cut = cut - _horizon(horizon_days)
    train = rfm_summary(orders, train_cut)
    apply = rfm_summary(orders, cut)
    if apply.empty:
        return {}
    if train.empty:
        raise ValueError(f"no purchases on or before {train_cut.isoformat()} to train on")
    labels = churn_labels(orders, train_cut, horizon_days)
    y = np.array([labels[c] for c in train.index], dtype=float)
    x_train = _rfm_features(train)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    w = fit_logistic((x_train - mean) / std, y)
    x_apply = (_rfm_features(apply) - mean) / std
    p = _sigmoid(w[0] + x_apply @ w[1:])
    return dict(zip(apply.index.astype(str), p.tolist(), strict=True))


# ------------------------------------------------------------------------ metrics


def _as_arrays(
    labels: Sequence[int] | npt.ArrayLike, scores: Sequence[float] | npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape}, {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise ValueError("labels need both classes (0 and 1)")
    return y.astype(bool), s


def _average_ranks(s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # first index of each run of equal values, and run ends
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(
    labels: Sequence[int] | npt.ArrayLike, scores: Sequence[float] | npt.ArrayLike
) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted one half.

    = P(score of a random positive > score of a random negative) + P(tie) / 2.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> roc_auc([0, 1, 0, 1], [1, 1, 0, 0])
    0.5
    """
    y, s = _as_arrays(labels, scores)
    ranks = _average_ranks(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def pr_auc(labels: Sequence[int] | npt.ArrayLike, scores: Sequence[float] | npt.ArrayLike) -> float:
    """Average precision: sum over thresholds of (recall gain) x precision.

    Tied scores form one threshold (as in scikit-learn's ``average_precision_score``),
    which equals the mean over positives of the precision among all items scored at
    least as high as that positive.

    >>> pr_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])  # (1/1 + 2/3) / 2
    0.8333333333333333
    """
    y, s = _as_arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    sorted_s = s[order]
    sorted_y = y[order]
    true_pos = np.cumsum(sorted_y)
    # last position of every run of equal scores: one threshold per distinct score
    last = np.flatnonzero(np.r_[sorted_s[1:] != sorted_s[:-1], True])
    tp = true_pos[last].astype(float)
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / tp[-1]
    return float(np.sum(recall_gain * precision))


def aligned(
    labels: Mapping[str, int], scores: Mapping[str, float]
) -> tuple[list[int], list[float], list[str]]:
    """Labels and scores of the customers present in both, and the labelled ones missing.

    >>> aligned({"a": 1, "b": 0, "c": 1}, {"b": 0.2, "a": 0.9, "z": 0.5})
    ([1, 0], [0.9, 0.2], ['c'])
    """
    ys: list[int] = []
    ss: list[float] = []
    missing: list[str] = []
    for customer in sorted(labels):
        if customer in scores:
            ys.append(labels[customer])
            ss.append(float(scores[customer]))
        else:
            missing.append(customer)
    return ys, ss, missing
