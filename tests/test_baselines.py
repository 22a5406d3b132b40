"""Batch baselines and ranking metrics: brute-force metric checks, hand-made histories."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from engine.events import OrderEvent
from replay.baselines import (
    aligned,
    batch_logreg_rfm_scores,
    bgnbd_scores,
    churn_labels,
    end_of_day,
    fit_logistic,
    pareto_nbd_scores,
    pr_auc,
    recency_scores,
    rfm_summary,
    roc_auc,
)

# ----------------------------------------------------------------------- metrics


def brute_roc_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_pr_auc(labels: list[int], scores: list[float]) -> float:
    """Mean over positives of the precision among everything scored >= that positive."""
    pairs = list(zip(labels, scores, strict=True))
    precisions = []
    for y, s in pairs:
        if y == 1:
            above = [yy for yy, ss in pairs if ss >= s]
            precisions.append(sum(above) / len(above))
    return sum(precisions) / len(precisions)


def random_case(rng: random.Random) -> tuple[list[int], list[float]]:
    n = rng.randint(2, 40)
    labels = [rng.randint(0, 1) for _ in range(n)]
    labels[0], labels[1] = 0, 1
    levels = rng.choice([2, 3, 5, 1000])  # few levels -> many ties
    scores = [float(rng.randrange(levels)) for _ in range(n)]
    return labels, scores


def test_metrics_against_brute_force_with_ties() -> None:
    rng = random.Random(7)
    for _ in range(300):
        labels, scores = random_case(rng)
        assert roc_auc(labels, scores) == pytest.approx(brute_roc_auc(labels, scores), abs=1e-12)
        assert pr_auc(labels, scores) == pytest.approx(brute_pr_auc(labels, scores), abs=1e-12)


def test_metric_edge_cases() -> None:
    assert roc_auc([0, 1], [0.0, 1.0]) == 1.0
    assert roc_auc([0, 1], [1.0, 0.0]) == 0.0
    assert roc_auc([0, 1, 0, 1], [3.0, 3.0, 3.0, 3.0]) == 0.5
    assert pr_auc([0, 1, 0, 1], [3.0, 3.0, 3.0, 3.0]) == 0.5  # all tied: precision = base rate
    assert pr_auc([1, 0, 0], [0.9, 0.1, 0.2]) == 1.0
    assert pr_auc(np.array([0, 1]), np.array([0.9, 0.1])) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="one length"):
        pr_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [0.1, 0.2])


def test_aligned_reports_missing() -> None:
    ys, ss, missing = aligned({"b": 0, "a": 1, "c": 1}, {"a": 0.5, "b": 0.1, "x": 9.0})
    assert (ys, ss, missing) == ([1, 0], [0.5, 0.1], ["c"])


# -------------------------------------------------------------- hand histories


def order(customer: str, when: datetime, amount: str = "10", *, kind: str = "order_created"):
    return OrderEvent(
        type=kind,  # type: ignore[arg-type]
        event_id=f"{customer}-{when.isoformat()}-{amount}-{kind}",
        store_id="s",
        customer_id=customer,
        occurred_at=when,
        order_id=f"{customer}-{when.isoformat()}",
        amount=Decimal(amount),
        currency="EUR",
    )


def day(d: int, hour: int = 12) -> datetime:
    return datetime(2026, 1, 1, hour, tzinfo=UTC) + timedelta(days=d - 1)


CUT = end_of_day(date(2026, 1, 10))

HISTORY = [
    order("a", day(1), "5"),
    order("a", day(3, 9), "10"),
    order("a", day(3, 18), "2"),  # same day: one purchase day of 12
    order("a", day(6), "30"),
    order("a", day(6), "30", kind="order_paid"),  # not a purchase
    order("a", day(25), "99"),  # after the cut, inside the horizon
    order("b", day(4), "7"),
    order("b", day(45), "7"),  # after the horizon
    order("c", day(10, 23)),  # last moment of the cut day: history
    order("c", day(11, 0)),  # first moment after: label window
    order("d", day(2)),
    order("e", day(12)),  # first order after the cut: not in the population
]


def test_churn_labels_on_hand_history() -> None:
    labels = churn_labels(HISTORY, CUT, horizon_days=30)
    assert labels == {"a": 0, "b": 1, "c": 0, "d": 1}
    # the window is (cut, cut + H]: a's order on day 25 is 14.5 days after the cut
    assert churn_labels(HISTORY, CUT, horizon_days=14)["a"] == 1
    assert churn_labels(HISTORY, CUT, horizon_days=15)["a"] == 0
    assert churn_labels(HISTORY, end_of_day(date(2025, 12, 31)), 30) == {}


def test_rfm_summary_on_hand_history() -> None:
    summary = rfm_summary(HISTORY, CUT)
    assert list(summary.index) == ["a", "b", "c", "d"]
    assert summary.loc["a"].to_dict() == {
        "frequency": 2.0,  # purchase days 3 and 6 after the first day 1
        "recency": 5.0,
        "T": 9.0,
        "monetary_value": 21.0,  # mean of the repeat days' totals 12 and 30
    }
    assert summary.loc["b"].to_dict() == {
        "frequency": 0.0,
        "recency": 0.0,
        "T": 6.0,
        "monetary_value": 0.0,
    }
    assert summary.loc["c", "T"] == 0.0 and summary.loc["d", "T"] == 8.0
    assert rfm_summary([], CUT).empty


def test_recency_scores_on_hand_history() -> None:
    scores = recency_scores(HISTORY, CUT)
    assert set(scores) == {"a", "b", "c", "d"}
    assert scores["a"] == pytest.approx(4.5, abs=1e-9)
    assert scores["c"] == pytest.approx(1 / 24, abs=1e-9)
    assert scores["d"] > scores["b"] > scores["a"] > scores["c"]


def test_naive_cut_and_mixed_stores_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        churn_labels(HISTORY, datetime(2026, 1, 10), 30)
    other = HISTORY[0].model_copy(update={"store_id": "t"})
    with pytest.raises(ValueError, match="stores"):
        recency_scores([*HISTORY, other], CUT)


# ------------------------------------------------------------- model baselines


def simulated_history(n_customers: int = 300, seed: int = 3) -> list[OrderEvent]:
    """Customers who buy at their own rate until they silently leave (BG-like)."""
    rng = np.random.default_rng(seed)
    events = []
    start = datetime(2025, 1, 1, 12, tzinfo=UTC)
    for i in range(n_customers):
        rate = rng.gamma(2.0, 1 / 40)  # purchases per day
        life = rng.exponential(200.0)
        t = float(rng.uniform(0, 60))
        while t < min(life, 400):
            events.append(order(f"c{i:04d}", start + timedelta(days=int(t)), "20"))
            t += rng.exponential(1 / rate)
    return events


@pytest.fixture(scope="module")
def simulated() -> list[OrderEvent]:
    return simulated_history()


def test_btyd_and_logreg_scores_rank_churners(simulated: list[OrderEvent]) -> None:
    cut = end_of_day(date(2025, 9, 1))
    labels = churn_labels(simulated, cut, 60)
    history = [e for e in simulated if e.occurred_at <= cut]
    for method in (bgnbd_scores, pareto_nbd_scores, batch_logreg_rfm_scores):
        scores = method(history, cut, 60)
        assert set(scores) == set(labels)
        ys, ss, missing = aligned(labels, scores)
        assert not missing
        assert roc_auc(ys, ss) > 0.8, method.__name__
    probabilities = batch_logreg_rfm_scores(history, cut, 60).values()
    assert all(0.0 < p < 1.0 for p in probabilities)
    ys, ss, _ = aligned(labels, recency_scores(history, cut))
    assert roc_auc(ys, ss) > 0.8


def test_bgnbd_score_is_minus_expected_purchases(simulated: list[OrderEvent]) -> None:
    cut = end_of_day(date(2025, 9, 1))
    scores = bgnbd_scores(simulated, cut, 30)
    assert all(s <= 0 for s in scores.values())
    longer = bgnbd_scores(simulated, cut, 60)
    assert all(longer[c] <= scores[c] for c in scores)  # more days, more expected purchases


def test_fit_logistic_recovers_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    true = np.array([-0.5, 1.5, -2.0])
    p = 1 / (1 + np.exp(-(true[0] + x @ true[1:])))
    y = (rng.uniform(size=len(p)) < p).astype(float)
    w = fit_logistic(x, y)
    assert np.allclose(w, true, atol=0.2)
    # separable data: the ridge keeps the weights finite
    w_sep = fit_logistic(np.array([[-1.0], [-0.5], [0.5], [1.0]]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert np.all(np.isfinite(w_sep))
