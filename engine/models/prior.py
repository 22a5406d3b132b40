"""The cold-start prior: a Pareto/NBD model fitted online to the customers seen so far.

Until the churn model has learned enough labelled examples, a customer is scored by
how few orders a Pareto/NBD model (Schmittlein, Morrison and Colombo 1987; time unit:
days) expects of them in the next ``horizon_days`` days. Its four parameters are not
set by hand: :class:`PriorFitter` keeps the latest purchase summary of a bounded,
hash-chosen sample of each store's customers and fits them by maximum likelihood when
a score needs them (at most once every ``refit_days`` of event time). Before a store
has enough customers the transparent :func:`overdue_prior` is used.

A customer's summary comes from the feature vector alone (:func:`summary`):

- ``x`` repeat purchases = ``order_days - 1`` (distinct order days, as BTYD models count
  purchases; ``order_count - 1`` for a vector without it);
- ``T`` = ``tenure_days`` (days since the first order);
- ``t_x`` = ``T - days_since_last_order`` (first to last order).

The score is ``exp(-E[orders in the horizon])``, the chance of none if the expected
count were Poisson: it ranks exactly as minus the expected count (the batch BTYD
baselines' score) and is a probability. On CDNOW, BG/NBD's exact P(no order in the
horizon) ranked below its ``exp(-E)`` at every cut and horizon tried (BENCHMARKS.md).

>>> params = ParetoNBDParams(r=0.6, alpha=60.0, s=0.4, beta=20.0)
>>> x = {"order_count": 3.0, "tenure_days": 120.0, "days_since_last_order": 10.0}
>>> round(prior_probability(x, params, horizon_days=90), 4)
0.3222
>>> round(prior_probability({**x, "days_since_last_order": 100.0}, params, 90), 4)
0.7223
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

DAY = 86_400.0

SAMPLE_SIZE = 2000
"""Customers a store's sample keeps (the smallest hashes): enough for four parameters."""

MIN_CUSTOMERS = 100
"""A store's prior is fitted once its sample holds this many customers ..."""

MIN_REPEATERS = 20
"""... of whom this many have ordered more than once (else the rates are unknown)."""

REFIT_DAYS = 7.0
"""Fitted parameters are reused for this many days of event time."""

LOG_BOUNDS = (-8.0, 8.0)
"""Each parameter's logarithm stays in this box (keeps the fit off degenerate edges)."""

Floats = npt.NDArray[np.float64]


class ParetoNBDParams(NamedTuple):
    """Pareto/NBD parameters: purchase rates ~ Gamma(r, alpha) and dropout rates
    ~ Gamma(s, beta) (alpha and beta in days)."""

    r: float
    alpha: float
    s: float
    beta: float


def overdue_prior(features: dict[str, float]) -> float:
    """The transparent fallback: ``overdue / (1 + overdue)``.

    >>> overdue_prior({"overdue_ratio": 1.0}), overdue_prior({})
    (0.5, 0.0)
    """
    overdue = max(features.get("overdue_ratio", 0.0), 0.0)
    return overdue / (1.0 + overdue)


def occasions(features: dict[str, float]) -> float:
    """Purchase occasions: ``order_days`` (distinct order days), else ``order_count``.

    >>> occasions({"order_count": 3.0, "order_days": 2.0}), occasions({"order_count": 3.0})
    (2.0, 3.0)
    """
    days = features.get("order_days")
    return features.get("order_count", 0.0) if days is None else days


def summary(features: dict[str, float]) -> tuple[float, float, float]:
    """``(x, t_x, T)`` in days from a feature vector (see the module docstring).

    >>> summary({"order_count": 3.0, "tenure_days": 120.5, "days_since_last_order": 10.5})
    (2.0, 110.0, 120.5)
    >>> summary({"order_count": 3.0, "order_days": 1.0, "tenure_days": 5.0})[0]
    0.0
    """
    x = max(occasions(features) - 1.0, 0.0)
    big_t = max(features.get("tenure_days", 0.0), 0.0)
    t_x = min(max(big_t - features.get("days_since_last_order", 0.0), 0.0), big_t)
    return x, t_x, big_t


def _log_a0(params: ParetoNBDParams, x: Floats, t_x: Floats, big_t: Floats) -> Floats:
    """log of the likelihood's dropout term ``A0`` (Fader and Hardie 2005, eq. 19-20)."""
    r, alpha, s, beta = params
    rsx = r + s + x
    second: float | Floats = s + 1.0
    shift, base = alpha - beta, alpha
    if alpha < beta:  # the series in the other variable, so that it converges
        second, shift, base = r + x, beta - alpha, beta

    def term(t: Floats) -> Floats:
        hyp = special.hyp2f1(rsx, second, rsx + 1.0, shift / (base + t))
        return np.asarray(np.log(hyp) - rsx * np.log(base + t))

    at_last, at_end = term(t_x), term(big_t)
    with np.errstate(divide="ignore"):  # t_x == T: no time to drop out, log 0
        return np.asarray(at_last + np.log1p(-np.exp(np.minimum(at_end - at_last, 0.0))))


def _log_dropout_odds(params: ParetoNBDParams, x: Floats, t_x: Floats, big_t: Floats) -> Floats:
    """log of (P(dropped out after the last order) / P(alive)) given the summary."""
    r, alpha, s, beta = params
    return np.asarray(
        np.log(s / (r + s + x))
        + _log_a0(params, x, t_x, big_t)
        + (r + x) * np.log(alpha + big_t)
        + s * np.log(beta + big_t)
    )


def log_likelihood(params: ParetoNBDParams, x: Floats, t_x: Floats, big_t: Floats) -> Floats:
    """Each customer's Pareto/NBD log-likelihood of ``(x, t_x, T)``.

    With every parameter 1, no order in the first day has probability 5/8:

    >>> p = ParetoNBDParams(1.0, 1.0, 1.0, 1.0)
    >>> ll = log_likelihood(p, np.array([0.0]), np.array([0.0]), np.array([1.0]))
    >>> round(float(np.exp(ll[0])), 12)
    0.625
    """
    r, alpha, s, beta = params
    alive = (
        special.gammaln(r + x)
        - special.gammaln(r)
        + r * math.log(alpha)
        + s * math.log(beta)
        - (r + x) * np.log(alpha + big_t)
        - s * np.log(beta + big_t)
    )
    return np.asarray(alive + np.logaddexp(0.0, _log_dropout_odds(params, x, t_x, big_t)))


def probability_alive(params: ParetoNBDParams, x: Floats, t_x: Floats, big_t: Floats) -> Floats:
    """P(still a customer at ``T``) given the summary.

    >>> p = ParetoNBDParams(0.6, 60.0, 0.4, 20.0)
    >>> x, t_x, big_t = np.array([0.0, 2.0]), np.array([0.0, 20.0]), np.array([0.0, 50.0])
    >>> [round(v, 4) for v in probability_alive(p, x, t_x, big_t).tolist()]
    [1.0, 0.7128]
    """
    return np.asarray(1.0 / (1.0 + np.exp(_log_dropout_odds(params, x, t_x, big_t))))


def expected_purchases(
    params: ParetoNBDParams, x: Floats, t_x: Floats, big_t: Floats, horizon_days: float
) -> Floats:
    """E[orders in (T, T + horizon] | summary] (Schmittlein, Morrison and Colombo 1987).

    >>> p = ParetoNBDParams(0.6, 60.0, 0.4, 20.0)
    >>> one = np.array([1.0])
    >>> round(float(expected_purchases(p, one, one * 40, one * 50, 90.0)[0]), 4)
    1.0196
    """
    r, alpha, s, beta = params
    rate = (r + x) / (alpha + big_t)  # the posterior mean purchase rate while alive
    start = beta + big_t
    if abs(s - 1.0) < 1e-9:
        lifetime = start * np.log((start + horizon_days) / start)
    else:  # the expected time alive in the horizon
        lifetime = start * (1.0 - (start / (start + horizon_days)) ** (s - 1.0)) / (s - 1.0)
    return np.asarray(probability_alive(params, x, t_x, big_t) * rate * lifetime)


def _unique_rows(x: Floats, t_x: Floats, big_t: Floats) -> tuple[Floats, Floats, Floats, Floats]:
    """Distinct summaries and how many customers share each (for a faster fit).

    >>> _unique_rows(np.array([1.0, 0.0, 1.0]), np.array([5.0, 0.0, 5.0]), np.ones(3) * 9)[3]
    array([1., 2.])
    """
    rows, counts = np.unique(np.column_stack([x, t_x, big_t]), axis=0, return_counts=True)
    return rows[:, 0], rows[:, 1], rows[:, 2], counts.astype(float)


def fit_pareto_nbd(x: Floats, t_x: Floats, big_t: Floats) -> ParetoNBDParams:
    """Maximum-likelihood Pareto/NBD parameters of the summaries (days).

    Deterministic: the result depends on the multiset of summaries, not their order.
    """
    ux, ut, uT, weight = _unique_rows(
        np.asarray(x, float), np.asarray(t_x, float), np.asarray(big_t, float)
    )
    total = weight.sum()

    def mean_negative_ll(log_params: Floats) -> float:
        params = ParetoNBDParams(*np.exp(log_params).tolist())
        with np.errstate(all="ignore"):  # where the optimiser probes overflowing corners
            value = float(-(log_likelihood(params, ux, ut, uT) * weight).sum() / total)
        return value if math.isfinite(value) else 1e300  # the optimiser needs a number

    scale = max(float(np.mean(big_t)), 1.0)
    start = np.log([1.0, scale, 1.0, scale])
    # L-BFGS-B alone: ~100 evaluations. A Nelder-Mead search before it (2,000
    # iterations) reached the same likelihood within 6e-5 on simulated stores but took
    # ~10 s a fit, since the hypergeometric terms are slow where it wanders, and a fit
    # holds up the model stage.
    found = optimize.minimize(mean_negative_ll, start, method="L-BFGS-B", bounds=[LOG_BOUNDS] * 4)
    return ParetoNBDParams(*np.exp(found.x).tolist())


def prior_probabilities(
    batch: list[dict[str, float]], params: ParetoNBDParams | None, horizon_days: float
) -> list[float]:
    """:func:`prior_probability` of many feature vectors at once (one numpy pass).

    >>> prior_probabilities([{"overdue_ratio": 3.0}], None, 90.0)
    [0.75]
    """
    if params is None:
        return [overdue_prior(features) for features in batch]
    x, t_x, big_t = np.array([summary(features) for features in batch], dtype=float).T
    expected = expected_purchases(params, x, t_x, big_t, horizon_days)
    scores = np.exp(-np.maximum(expected, 0.0)).tolist()
    return [
        score if features.get("order_count", 0.0) >= 1.0 else overdue_prior(features)
        for features, score in zip(batch, scores, strict=True)
    ]


def prior_probability(
    features: dict[str, float], params: ParetoNBDParams | None, horizon_days: float
) -> float:
    """``exp(-E[orders in the horizon])`` under ``params``; :func:`overdue_prior`
    without parameters or without orders (Pareto/NBD describes customers who bought)."""
    return prior_probabilities([features], params, horizon_days)[0]


@dataclass
class _StoreSample:
    """The bottom-``SAMPLE_SIZE`` customers of one store by hash, and the last fit."""

    rows: dict[int, tuple[float, float, float]]
    """hash -> (orders, first order ts, last order ts), the latest seen."""
    largest: int = -1
    """The largest hash in ``rows`` (-1 while empty)."""
    params: ParetoNBDParams | None = None
    fitted_at: float = -math.inf


class PriorFitter:
    """Each store's Pareto/NBD prior, fitted online from a hash sample of its customers.

    ``observe`` every score request (its event time and features) in event order;
    ``probabilities`` scores a batch of one or more stores at event time ``t``. Only
    what was observed is used (no look-ahead), the sample is the customers with the
    smallest hashes of ``store:customer`` (independent of arrival order and of the
    number of workers) and a fit is a pure function of the sample and ``t``.
    Plain data: it pickles with the model.

    >>> fitter = PriorFitter(horizon_days=90.0)
    >>> fitter.observe("s", "c1", 10 * DAY, {"order_count": 1.0, "tenure_days": 0.0,
    ...                                      "days_since_last_order": 0.0})
    >>> fitter.probabilities([{"overdue_ratio": 1.0, "order_count": 1.0}], ["s"], 11 * DAY)
    [0.5]
    """

    def __init__(
        self,
        horizon_days: float = 90.0,
        sample_size: int = SAMPLE_SIZE,
        refit_days: float = REFIT_DAYS,
    ) -> None:
        self.horizon_days = horizon_days
        self.sample_size = sample_size
        self.refit_days = refit_days
        self.stores: dict[str, _StoreSample] = {}

    def observe(
        self, store_id: str, customer_id: str, t: float, features: dict[str, float]
    ) -> None:
        """Keep the customer's purchase summary at event time ``t`` if it is sampled."""
        if features.get("order_count", 0.0) < 1.0:
            return
        orders = occasions(features)
        sample = self.stores.get(store_id)
        if sample is None:
            sample = self.stores[store_id] = _StoreSample({})
        key = zlib.crc32(f"{store_id}:{customer_id}".encode())
        row = (
            orders,
            t - features.get("tenure_days", 0.0) * DAY,
            t - features.get("days_since_last_order", 0.0) * DAY,
        )
        rows = sample.rows
        known = rows.get(key)
        if known is not None:  # keep the latest summary: the most orders, then last order
            if (orders, row[2]) >= (known[0], known[2]):
                rows[key] = row
        elif len(rows) < self.sample_size:
            rows[key] = row
            sample.largest = max(sample.largest, key)
        elif key < sample.largest:  # bottom-k: evict the largest hash
            del rows[sample.largest]
            rows[key] = row
            sample.largest = max(rows)

    def latest(self, store_id: str) -> ParetoNBDParams | None:
        """The store's last fitted parameters, without refitting."""
        sample = self.stores.get(store_id)
        return None if sample is None else sample.params

    def params(
        self, store_id: str, t: float, refit_days: float | None = None
    ) -> ParetoNBDParams | None:
        """The store's parameters at event time ``t``: refitted when older than
        ``refit_days`` (default: the fitter's); None while the sample is too small."""
        sample = self.stores.get(store_id)
        if sample is None:
            return None
        max_age = (self.refit_days if refit_days is None else refit_days) * DAY
        if sample.params is not None and t - sample.fitted_at < max_age:
            return sample.params  # also for a late request: a fit never goes back in time
        sample.params, sample.fitted_at = fit_sample(sample.rows, t), t
        return sample.params

    def probabilities(
        self, batch: list[dict[str, float]], store_ids: list[str], t: float
    ) -> list[float]:
        """The prior of each feature vector (of the store beside it) at event time ``t``:
        the store's fitted one (:meth:`fitted`), else :func:`overdue_prior`."""
        fitted = self.fitted(batch, store_ids, t)
        return [
            overdue_prior(features) if p is None else p
            for features, p in zip(batch, fitted, strict=True)
        ]

    def fitted(
        self,
        batch: list[dict[str, float]],
        store_ids: list[str],
        t: float | None,
        refit_days: float | None = None,
    ) -> list[float | None]:
        """Each vector's fitted Pareto/NBD score, None where its store has no fit or
        the customer no order (no fallback). ``t``: as :meth:`params` at ``t`` (refit
        when older than ``refit_days``); None: the last fits, never refitting.

        >>> fitter = PriorFitter()
        >>> fitter.stores["s"] = _StoreSample({}, params=ParetoNBDParams(0.6, 60.0, 0.4, 20.0))
        >>> x = {"order_count": 3.0, "tenure_days": 120.0, "days_since_last_order": 10.0}
        >>> [None if p is None else round(p, 4) for p in fitter.fitted(
        ...     [x, {**x, "order_count": 0.0}, x], ["s", "s", "other"], None)]
        [0.3222, None, None]
        """
        out: list[float | None] = [None] * len(batch)
        for store_id, where in _by_store(store_ids):
            params = self.latest(store_id) if t is None else self.params(store_id, t, refit_days)
            if params is None:
                continue
            buyers = [i for i in where if batch[i].get("order_count", 0.0) >= 1.0]
            if not buyers:
                continue
            scores = prior_probabilities([batch[i] for i in buyers], params, self.horizon_days)
            for i, score in zip(buyers, scores, strict=True):
                out[i] = score
        return out


def _by_store(store_ids: list[str]) -> list[tuple[str, list[int]]]:
    """Each store (sorted) with the positions of its entries.

    >>> _by_store(["b", "a", "b"])
    [('a', [1]), ('b', [0, 2])]
    """
    where: dict[str, list[int]] = {}
    for i, store_id in enumerate(store_ids):
        where.setdefault(store_id, []).append(i)
    return sorted(where.items())


def fit_sample(rows: dict[int, tuple[float, float, float]], t: float) -> ParetoNBDParams | None:
    """Pareto/NBD parameters of the sampled summaries as of ``t``; None if too few.

    Customers whose first order is after ``t`` are left out (no look-ahead).
    """
    kept = [row for _, row in sorted(rows.items()) if row[1] <= t]
    if len(kept) < MIN_CUSTOMERS or sum(row[0] > 1.0 for row in kept) < MIN_REPEATERS:
        return None
    table = np.array(kept)
    x = table[:, 0] - 1.0
    first, last = table[:, 1], np.minimum(table[:, 2], t)
    return fit_pareto_nbd(x, (last - first) / DAY, (t - first) / DAY)
