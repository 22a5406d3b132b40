"""The cold-start prior (engine/models/prior.py): exact values, fit, sample, determinism."""

from __future__ import annotations

import math
import pickle
import random
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate

from engine.models.prior import (
    DAY,
    MIN_CUSTOMERS,
    ParetoNBDParams,
    PriorFitter,
    expected_purchases,
    fit_pareto_nbd,
    fit_sample,
    log_likelihood,
    overdue_prior,
    prior_probabilities,
    prior_probability,
    probability_alive,
    summary,
)

PARAMS = ParetoNBDParams(r=0.6, alpha=15.0, s=0.8, beta=40.0)
OTHER_BRANCH = ParetoNBDParams(r=0.6, alpha=50.0, s=0.5, beta=10.0)
"""alpha < beta and alpha >= beta take the two forms of the likelihood's series."""
SUMMARIES = [(0.0, 0.0, 30.0), (1.0, 12.0, 40.0), (4.0, 80.0, 90.0), (7.0, 20.5, 200.0)]
RATE_LIMIT = 3.0
"""Upper end of the rate integrals: both Gammas have a mass below e^-40 above it."""


def mixing_density(params: ParetoNBDParams, lam: float, mu: float) -> float:
    """Gamma(r, alpha) density of the purchase rate times Gamma(s, beta) of the dropout."""
    r, alpha, s, beta = params
    log_density = r * math.log(alpha) + (r - 1) * math.log(lam) - alpha * lam - math.lgamma(r)
    log_density += s * math.log(beta) + (s - 1) * math.log(mu) - beta * mu - math.lgamma(s)
    return math.exp(log_density)


def integrate_rates(function: Callable[[float, float], float]) -> float:
    value, _ = integrate.dblquad(
        function, 0.0, RATE_LIMIT, 0.0, RATE_LIMIT, epsabs=0.0, epsrel=1e-10
    )
    return float(value)


def alive_likelihood(x: float, big_t: float, lam: float, mu: float) -> float:
    """x orders in (0, T] and still alive at T, given the rates."""
    return lam**x * math.exp(-(lam + mu) * big_t)


def brute_force_likelihood(params: ParetoNBDParams, x: float, t_x: float, big_t: float) -> float:
    """The likelihood integrated numerically over both rates: alive at T, or gone at
    some time between the last order and T."""

    def given(mu: float, lam: float) -> float:
        gone = (
            lam**x * mu / (lam + mu) * (math.exp(-(lam + mu) * t_x) - math.exp(-(lam + mu) * big_t))
        )
        return (alive_likelihood(x, big_t, lam, mu) + gone) * mixing_density(params, lam, mu)

    return integrate_rates(given)


@pytest.mark.parametrize("params", [PARAMS, OTHER_BRANCH])
@pytest.mark.parametrize(("x", "t_x", "big_t"), SUMMARIES)
def test_log_likelihood_is_the_integral_over_both_rates(
    params: ParetoNBDParams, x: float, t_x: float, big_t: float
) -> None:
    closed = log_likelihood(params, np.array([x]), np.array([t_x]), np.array([big_t]))[0]
    assert closed == pytest.approx(math.log(brute_force_likelihood(params, x, t_x, big_t)), 1e-6)


def lifetimes_fitter(params: ParetoNBDParams) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lifetimes
    fitter = lifetimes.ParetoNBDFitter()
    fitter.params_ = params._asdict()
    return fitter


@pytest.mark.parametrize(
    ("params", "theirs", "rtol"),
    [
        (PARAMS, PARAMS, 1e-10),
        (OTHER_BRANCH, OTHER_BRANCH, 1e-10),
        (PARAMS._replace(s=1.0), PARAMS._replace(s=1.0 + 1e-6), 1e-5),
    ],
)
def test_alive_and_expected_purchases_equal_lifetimes(
    params: ParetoNBDParams, theirs: ParetoNBDParams, rtol: float
) -> None:
    """s = 1 is the limit of the closed form (lifetimes gives NaN there): vs s = 1 + 1e-6."""
    x, t_x, big_t = (np.array(column) for column in zip(*SUMMARIES, strict=True))
    fitter: object = lifetimes_fitter(theirs)
    for horizon in (30.0, 90.0, 180.0):
        ours = expected_purchases(params, x, t_x, big_t, horizon)
        expected = fitter.conditional_expected_number_of_purchases_up_to_time(  # type: ignore[attr-defined]
            horizon, x, t_x, big_t
        )
        np.testing.assert_allclose(ours, np.asarray(expected, dtype=float), rtol=rtol)
    theirs_alive = fitter.conditional_probability_alive(x, t_x, big_t)  # type: ignore[attr-defined]
    np.testing.assert_allclose(probability_alive(params, x, t_x, big_t), theirs_alive, rtol=rtol)


def test_expected_purchases_is_the_posterior_mean_by_integration() -> None:
    """E[X(H)] = integral of P(data, alive | rates) * lam / mu * (1 - exp(-mu H)) / P(data)."""
    x, t_x, big_t, horizon = 2.0, 50.0, 70.0, 90.0

    def ahead(mu: float, lam: float) -> float:
        alive = alive_likelihood(x, big_t, lam, mu) * mixing_density(PARAMS, lam, mu)
        return alive * lam / mu * -math.expm1(-mu * horizon)

    expected = integrate_rates(ahead) / brute_force_likelihood(PARAMS, x, t_x, big_t)
    one = np.array([1.0])
    closed = expected_purchases(PARAMS, one * x, one * t_x, one * big_t, horizon)[0]
    assert closed == pytest.approx(expected, rel=1e-6)


def simulate_pareto_nbd(
    params: ParetoNBDParams, customers: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summaries (x, t_x, T) of customers drawn from Pareto/NBD itself (first order at 0)."""
    rng = np.random.default_rng(seed)
    r, alpha, s, beta = params
    big_t = rng.uniform(60.0, 360.0, customers)
    lam = rng.gamma(r, 1.0 / alpha, customers)
    lifetime = rng.exponential(1.0 / rng.gamma(s, 1.0 / beta, customers))
    active = np.minimum(lifetime, big_t)
    x = rng.poisson(lam * active).astype(float)
    # the last of x uniform order times on (0, active]: active * U ** (1 / x)
    with np.errstate(divide="ignore"):
        t_x = np.where(x > 0, active * rng.random(customers) ** (1.0 / x), 0.0)
    return x, t_x, big_t


def test_fit_recovers_the_parameters_of_simulated_customers() -> None:
    truth = ParetoNBDParams(r=0.6, alpha=15.0, s=0.8, beta=40.0)
    x, t_x, big_t = simulate_pareto_nbd(truth, 5000, seed=3)
    fitted = fit_pareto_nbd(x, t_x, big_t)
    for name in ParetoNBDParams._fields:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.25), name
    assert float(log_likelihood(fitted, x, t_x, big_t).sum()) >= float(
        log_likelihood(truth, x, t_x, big_t).sum()
    )


def test_fit_does_not_depend_on_the_order_of_the_summaries() -> None:
    x, t_x, big_t = simulate_pareto_nbd(PARAMS, 1500, seed=5)
    order = np.random.default_rng(9).permutation(len(x))
    assert fit_pareto_nbd(x, t_x, big_t) == fit_pareto_nbd(x[order], t_x[order], big_t[order])


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
    """(store, customer, t, features) of the orders of Pareto/NBD customers who start in
    the first 120 days, up to day 200, in event-time order."""
    rng = np.random.default_rng(seed)
    r, alpha, s, beta = PARAMS
    requests = []
    for c in range(customers):
        first = rng.uniform(0.0, 120.0)
        end = min(first + rng.exponential(1.0 / rng.gamma(s, 1.0 / beta)), 200.0)
        rate = rng.gamma(r, 1.0 / alpha)
        times = [first]
        while (t := times[-1] + rng.exponential(1.0 / rate)) <= end:
            times.append(t)
        for n, t in enumerate(times, start=1):
            features = {
                "order_count": float(n),
                "tenure_days": t - first,
                "days_since_last_order": 0.0,
            }
            requests.append(("s", f"c{c}", t * DAY, features))
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


def test_no_look_ahead_a_fit_uses_what_was_observed_up_to_its_time() -> None:
    """Scoring at ``at`` in the middle of the stream gives what a fitter fed only the
    stream up to ``at`` gives; customers first seen later are not fitted."""
    requests = order_requests(600, seed=4)
    at = 90 * DAY
    streaming, prefix_only = PriorFitter(), PriorFitter()
    batch = [features for _, _, _, features in requests[:40]]
    during: list[float] = []
    for store, customer, t, features in requests:
        if t > at and not during:
            during = streaming.probabilities(batch, ["s"] * len(batch), at)
        streaming.observe(store, customer, t, features)
        if t <= at:
            prefix_only.observe(store, customer, t, features)
    assert during == prefix_only.probabilities(batch, ["s"] * len(batch), at)
    rows = prefix_only.stores["s"].rows
    new_later = {key: row for key, row in streaming.stores["s"].rows.items() if row[1] > at}
    assert new_later and fit_sample({**rows, **new_later}, at) == fit_sample(rows, at)


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


def test_fit_on_an_early_cdnow_sample_warns_nothing() -> None:
    """The live demo logged numpy RuntimeWarnings from a fit: L-BFGS-B probes corners
    where the likelihood overflows (mapped to a large loss, not an error). CDNOW's
    2,000 smallest customer hashes as of 1997-02-15 are such a case (1,035 of them
    have ordered by then); the fit stays quiet and finite."""
    from replay.loaders import cdnow_path

    cut = 9_907.0  # 1997-02-15 in days since the epoch
    days: dict[str, list[float]] = {}
    for line in cdnow_path().read_text().splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[1].isdigit():
            ymd = f"{fields[1][:4]}-{fields[1][4:6]}-{fields[1][6:]}"
            day = (np.datetime64(ymd) - np.datetime64("1970-01-01")).astype(int)
            days.setdefault(fields[0], []).append(float(day))
    hashed = sorted(days, key=lambda c: zlib.crc32(f"cdnow:{c}".encode()))[:2000]
    seen = [[d for d in days[c] if d < cut] for c in hashed]
    seen = [ds for ds in seen if ds]
    assert len(seen) == 1035
    x = np.array([len(ds) - 1.0 for ds in seen])
    t_x = np.array([max(ds) - min(ds) for ds in seen])
    big_t = np.array([cut - min(ds) for ds in seen])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = fit_pareto_nbd(x, t_x, big_t)
    assert all(math.isfinite(value) and value > 0 for value in fitted)
