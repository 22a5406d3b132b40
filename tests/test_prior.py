"""The cold-start prior (engine/models/prior.py): exact values, fit, sample, determinism."""

from __future__ import annotations

import math
import pickle
import random
import warnings
import zlib

import numpy as np
import pytest
from scipy import integrate

from engine.models.prior import (
    DAY,
    MIN_CUSTOMERS,
    BGNBDParams,
    PriorFitter,
    expected_purchases,
    fit_bgnbd,
    fit_sample,
    log_likelihood,
    overdue_prior,
    prior_probabilities,
    prior_probability,
    probability_alive,
    summary,
)

PARAMS = BGNBDParams(r=0.5, alpha=20.0, a=0.8, b=3.0)
SUMMARIES = [(0.0, 0.0, 30.0), (1.0, 12.0, 40.0), (4.0, 80.0, 90.0), (7.0, 20.5, 200.0)]
RATE_LIMIT = 3.0
"""Upper end of the rate integrals: Gamma(0.5, 20) has a mass of about e^-60 above it."""


def mixing_density(params: BGNBDParams, lam: float, p: float) -> float:
    """Gamma(r, alpha) density of the rate times Beta(a, b) density of the dropout."""
    r, alpha, a, b = params
    log_gamma = r * math.log(alpha) + (r - 1) * math.log(lam) - alpha * lam - math.lgamma(r)
    log_beta = (a - 1) * math.log(p) + (b - 1) * math.log1p(-p)
    log_beta -= math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return math.exp(log_gamma + log_beta)


def brute_force_likelihood(params: BGNBDParams, x: float, t_x: float, big_t: float) -> float:
    """The BG/NBD likelihood integrated numerically over lambda ~ Gamma and p ~ Beta."""

    def given(lam: float, p: float) -> float:
        alive = (1 - p) ** x * lam**x * math.exp(-lam * big_t)
        dead = p * (1 - p) ** (x - 1) * lam**x * math.exp(-lam * t_x) if x > 0 else 0.0
        return (alive + dead) * mixing_density(params, lam, p)

    value, _ = integrate.dblquad(given, 0.0, 1.0, 0.0, RATE_LIMIT, epsabs=1e-14, epsrel=1e-8)
    return float(value)


@pytest.mark.parametrize(("x", "t_x", "big_t"), SUMMARIES)
def test_log_likelihood_is_the_integral_over_rates_and_dropout(
    x: float, t_x: float, big_t: float
) -> None:
    closed = log_likelihood(PARAMS, np.array([x]), np.array([t_x]), np.array([big_t]))[0]
    assert closed == pytest.approx(math.log(brute_force_likelihood(PARAMS, x, t_x, big_t)), 1e-5)


def lifetimes_fitter(params: BGNBDParams) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lifetimes
    fitter = lifetimes.BetaGeoFitter()
    fitter.params_ = params._asdict()
    return fitter


def test_alive_and_expected_purchases_equal_lifetimes_closed_forms() -> None:
    x, t_x, big_t = (np.array(column) for column in zip(*SUMMARIES, strict=True))
    fitter: object = lifetimes_fitter(PARAMS)
    for horizon in (30.0, 90.0, 180.0):
        ours = expected_purchases(PARAMS, x, t_x, big_t, horizon)
        theirs = fitter.conditional_expected_number_of_purchases_up_to_time(  # type: ignore[attr-defined]
            horizon, x, t_x, big_t
        )
        np.testing.assert_allclose(ours, np.asarray(theirs, dtype=float), rtol=1e-10)
    theirs_alive = fitter.conditional_probability_alive(x, t_x, big_t)  # type: ignore[attr-defined]
    np.testing.assert_allclose(probability_alive(PARAMS, x, t_x, big_t), theirs_alive, rtol=1e-12)


def test_expected_purchases_is_the_posterior_mean_by_integration() -> None:
    """E[X(H)] = integral of P(alive | lam, p) * (1 - exp(-lam p H)) / p over the posterior."""
    x, t_x, big_t, horizon = 2.0, 50.0, 70.0, 90.0

    def ahead(lam: float, p: float) -> float:
        alive = (1 - p) ** x * lam**x * math.exp(-lam * big_t) * mixing_density(PARAMS, lam, p)
        return alive * (1 - math.exp(-lam * p * horizon)) / p

    numerator, _ = integrate.dblquad(ahead, 0.0, 1.0, 0.0, RATE_LIMIT, epsabs=1e-14, epsrel=1e-8)
    evidence = brute_force_likelihood(PARAMS, x, t_x, big_t)
    one = np.array([1.0])
    closed = expected_purchases(PARAMS, one * x, one * t_x, one * big_t, horizon)[0]
    assert closed == pytest.approx(numerator / evidence, rel=1e-5)


def simulate_bgnbd(
    params: BGNBDParams, customers: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summaries (x, t_x, T) of customers drawn from BG/NBD itself (first order at 0)."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = params
    big_t = rng.uniform(60.0, 360.0, customers)
    lam = rng.gamma(r, 1.0 / alpha, customers)
    drop = rng.beta(a, b, customers)
    x, t_x, now = np.zeros(customers), np.zeros(customers), np.zeros(customers)
    active = np.ones(customers, dtype=bool)
    while active.any():
        now[active] += rng.exponential(1.0 / lam[active])
        bought = active & (now <= big_t)
        x[bought] += 1.0
        t_x[bought] = now[bought]
        active = bought & (rng.random(customers) >= drop)
    return x, t_x, big_t


def test_fit_recovers_the_parameters_of_simulated_customers() -> None:
    truth = BGNBDParams(r=0.6, alpha=15.0, a=0.8, b=2.5)
    x, t_x, big_t = simulate_bgnbd(truth, 20_000, seed=3)
    fitted = fit_bgnbd(x, t_x, big_t)
    for name in BGNBDParams._fields:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.2), name
    assert float(log_likelihood(fitted, x, t_x, big_t).sum()) >= float(
        log_likelihood(truth, x, t_x, big_t).sum()
    )


def test_fit_does_not_depend_on_the_order_of_the_summaries() -> None:
    x, t_x, big_t = simulate_bgnbd(PARAMS, 1500, seed=5)
    order = np.random.default_rng(9).permutation(len(x))
    assert fit_bgnbd(x, t_x, big_t) == fit_bgnbd(x[order], t_x[order], big_t[order])


def test_summary_and_prior_from_features() -> None:
    features = {"order_count": 3.0, "tenure_days": 120.5, "days_since_last_order": 10.5}
    assert summary(features) == (2.0, 110.0, 120.5)
    one = np.array([1.0])
    expected = expected_purchases(PARAMS, one * 2.0, one * 110.0, one * 120.5, 60.0)[0]
    assert prior_probability(features, PARAMS, 60.0) == pytest.approx(math.exp(-expected), 1e-15)
    longer = prior_probability({**features, "days_since_last_order": 100.0}, PARAMS, 60.0)
    assert longer > prior_probability(features, PARAMS, 60.0)  # a longer silence: more risk


def test_fallbacks_are_the_overdue_prior() -> None:
    browsing_only = {"order_count": 0.0, "overdue_ratio": 0.0, "tenure_days": 5.0}
    late = {"order_count": 2.0, "overdue_ratio": 3.0, "tenure_days": 50.0}
    assert prior_probabilities([browsing_only, late], None, 90.0) == [0.0, 0.75]
    assert prior_probabilities([browsing_only], PARAMS, 90.0) == [overdue_prior(browsing_only)]


def order_requests(customers: int, seed: int) -> list[tuple[str, str, float, dict[str, float]]]:
    """(store, customer, t, features) of simulated orders, in event-time order."""
    rng = random.Random(seed)
    requests = []
    for c in range(customers):
        first = rng.uniform(0.0, 60.0) * DAY
        times = [first]
        while rng.random() < 0.6:
            times.append(times[-1] + rng.expovariate(1 / 20) * DAY)
        for n, t in enumerate(times, start=1):
            features = {
                "order_count": float(n),
                "tenure_days": (t - first) / DAY,
                "days_since_last_order": 0.0,
            }
            requests.append(("s", f"c{c}", t, features))
    requests.sort(key=lambda item: item[2])
    return requests


def test_sample_is_the_smallest_hashes_whatever_the_arrival_order() -> None:
    requests = order_requests(400, seed=1)
    shuffled = list(requests)
    random.Random(2).shuffle(shuffled)
    fitters = [PriorFitter(sample_size=150), PriorFitter(sample_size=150)]
    for fitter, stream in zip(fitters, (requests, shuffled), strict=True):
        for store, customer, t, features in stream:
            fitter.observe(store, customer, t, features)
    rows = fitters[0].stores["s"].rows
    assert rows == fitters[1].stores["s"].rows  # the latest summary is kept either way
    hashes = sorted({zlib.crc32(f"s:{customer}".encode()) for _, customer, _, _ in requests})
    assert sorted(rows) == hashes[:150]
    assert fitters[0].stores["s"].largest == hashes[149]
    at = 200 * DAY
    batch = [features for _, _, _, features in requests[:50]]
    assert fitters[0].probabilities(batch, ["s"] * 50, at) == fitters[1].probabilities(
        batch, ["s"] * 50, at
    )


def test_no_look_ahead_customers_after_the_fit_time_are_left_out() -> None:
    fitter = PriorFitter()
    for store, customer, t, features in order_requests(600, seed=4):
        fitter.observe(store, customer, t, features)
    rows = fitter.stores["s"].rows
    at = 30 * DAY
    before = {key: row for key, row in rows.items() if row[1] <= at}
    assert len(before) < len(rows)
    assert fit_sample(rows, at) == fit_sample(before, at)


def test_refit_cadence_store_separation_and_pickle() -> None:
    fitter = PriorFitter(horizon_days=60.0, refit_days=7.0)
    assert fitter.params("s", 10 * DAY) is None  # nothing seen
    requests = order_requests(400, seed=6)
    for store, customer, t, features in requests:
        fitter.observe(store, customer, t, features)
        fitter.observe("other", customer, t, {**features, "order_count": 1.0})
    assert len(fitter.stores["s"].rows) >= MIN_CUSTOMERS
    first = fitter.params("s", 100 * DAY)
    assert first is not None and fitter.latest("s") == first
    assert fitter.params("other", 100 * DAY) is None  # nobody ordered twice there
    assert fitter.params("s", 106 * DAY) is first  # reused within refit_days
    assert fitter.params("s", 90 * DAY) is first  # a late request never refits backwards
    later = fitter.params("s", 108 * DAY)
    assert later is not first and later is not None
    features = {"order_count": 2.0, "tenure_days": 40.0, "days_since_last_order": 30.0}
    batch = [features, {**features, "overdue_ratio": 1.0}]
    scores = fitter.probabilities(batch, ["s", "other"], 108 * DAY)
    assert scores == [prior_probability(features, later, 60.0), 0.5]
    restored = pickle.loads(pickle.dumps(fitter))
    assert restored.probabilities(batch, ["s", "other"], 108 * DAY) == scores
