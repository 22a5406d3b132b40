"""ProgressiveMetrics against direct formulas, and ChurnModel's cold/warm contract."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.features.vector import FEATURE_NAMES
from engine.models.metrics import EPS, ProgressiveMetrics
from engine.models.online import ChurnModel, model_inputs
from engine.models.reasons import RECENCY_INPUTS

# scores k/1000 + 0.0005 sit in the middle of histogram bin k, so binning is exact and
# two scores share a bin iff they are equal (ties)
scored_pairs = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 999).map(lambda k: k / 1000 + 0.0005)),
    min_size=1,
    max_size=200,
)


def brute_auc(pairs: list[tuple[int, float]]) -> float | None:
    pos = [p for y, p in pairs if y]
    neg = [p for y, p in pairs if not y]
    if not pos or not neg:
        return None
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(pairs=scored_pairs)
def test_auc_log_loss_brier_match_direct_formulas(pairs: list[tuple[int, float]]) -> None:
    m = ProgressiveMetrics()
    for y, p in pairs:
        m.update(y, p)
    want_auc = brute_auc(pairs)
    got_auc = m.roc_auc()
    if want_auc is None:
        assert got_auc is None
    else:
        assert got_auc == pytest.approx(want_auc, abs=1e-12)
    n = len(pairs)
    log_loss = -sum(math.log(p) if y else math.log(1 - p) for y, p in pairs) / n
    brier = sum((p - y) ** 2 for y, p in pairs) / n
    s = m.summary()
    assert s["examples"] == n
    assert s["base_rate"] == pytest.approx(sum(y for y, _ in pairs) / n)
    assert s["log_loss"] == pytest.approx(log_loss, rel=1e-12)
    assert s["brier"] == pytest.approx(brier, rel=1e-12)
    y, p = pairs[-1]
    assert m.last_log_loss == pytest.approx(-math.log(p if y else 1 - p))
    table = s["calibration"]
    assert sum(row["count"] for row in table) == n
    for i, row in enumerate(table):
        members = [(y, p) for y, p in pairs if int(p * 10) == i]
        assert row["count"] == len(members)
        if members:
            assert row["mean_predicted"] == pytest.approx(sum(p for _, p in members) / len(members))
            assert row["observed_rate"] == pytest.approx(sum(y for y, _ in members) / len(members))


def test_auc_extremes_and_clipping() -> None:
    m = ProgressiveMetrics()
    for y, p in [(1, 1.0), (0, 0.0), (1, 0.9995), (0, 0.0004)]:
        m.update(y, p)
    assert m.roc_auc() == 1.0
    inverted = ProgressiveMetrics()
    for y, p in [(0, 1.0), (1, 0.0)]:
        inverted.update(y, p)
    assert inverted.roc_auc() == 0.0
    # p is clipped to [EPS, 1 - EPS]: both examples cost about -log(EPS), not infinity
    want = (-math.log(1 - (1 - EPS)) - math.log(EPS)) / 2
    assert inverted.summary()["log_loss"] == pytest.approx(want)
    assert inverted.summary()["brier"] == 1.0
    empty = ProgressiveMetrics().summary()
    assert empty["roc_auc"] is None and empty["log_loss"] is None and empty["brier"] is None


# -- ChurnModel -------------------------------------------------------------------


def random_features(rng: random.Random, churn: int) -> dict[str, float]:
    x = {name: rng.uniform(0, 5) for name in FEATURE_NAMES}
    x["days_since_last_order"] = rng.uniform(60, 200) if churn else rng.uniform(0, 40)
    x["order_count"] = float(rng.randint(1, 3) if churn else rng.randint(2, 12))
    x["overdue_ratio"] = x["days_since_last_order"] / 30.0
    x["open_cart"] = 0.0
    return x


def test_cold_model_scores_the_prior_then_warms() -> None:
    rng = random.Random(7)
    model = ChurnModel(warm_examples=20)
    batch = [random_features(rng, i % 2) for i in range(5)]
    for i in range(20):
        assert not model.warm
        assert model.status()["model_warm"] is False
        for x in batch:
            prior = x["overdue_ratio"] / (1 + x["overdue_ratio"])
            assert model.predict(x) == pytest.approx(prior)
        results = model.score_batch(batch)
        assert [p for p, _ in results] == [model.prior(x) for x in batch]
        assert all(r[0]["feature"] == "overdue_ratio" for _, r in results)
        y = i % 2
        x = random_features(rng, y)
        assert model.learn(x, y) == pytest.approx(model.prior(x))
    assert model.warm and model.learned == 20
    assert model.status()["model_warm"] is True
    assert model.metrics.n == 20  # every example was scored before it was learned


def test_learn_scores_with_the_prior_while_cold() -> None:
    rng = random.Random(3)
    model = ChurnModel(warm_examples=5)
    for i in range(5):
        x = random_features(rng, i % 2)
        assert model.learn(x, i % 2) == pytest.approx(ChurnModel.prior(x))


@pytest.fixture(scope="module")
def warm_model() -> ChurnModel:
    rng = random.Random(11)
    model = ChurnModel(warm_examples=50)
    for _ in range(300):
        y = int(rng.random() < 0.4)
        model.learn(random_features(rng, y), y)
    assert model.warm
    return model


def test_score_batch_equals_predict(warm_model: ChurnModel) -> None:
    rng = random.Random(5)
    batch = [random_features(rng, i % 2) for i in range(40)]
    batch[3] = dict.fromkeys(FEATURE_NAMES, 0.0)  # zeros: log1p(0)
    results = warm_model.score_batch(batch)
    assert len(results) == len(batch)
    for x, (p, _) in zip(batch, results, strict=True):
        assert p == pytest.approx(warm_model.predict(x), abs=1e-9)
    # the model learned something: churners score higher on average
    churn = np.mean([p for i, (p, _) in enumerate(results) if i % 2 and i != 3])
    stay = np.mean([p for i, (p, _) in enumerate(results) if not i % 2 and i != 3])
    assert churn > stay


def test_reasons_are_top3_by_absolute_contribution(warm_model: ChurnModel) -> None:
    scaler = warm_model.pipeline["StandardScaler"]
    lr = warm_model.pipeline["LogisticRegression"]
    rng = random.Random(9)
    for _ in range(20):
        x = random_features(rng, rng.randint(0, 1))
        inputs = model_inputs(x)
        contrib = {}
        for name in inputs:  # the features and the derived inputs
            std = math.sqrt(scaler.vars.get(name, 0.0))
            scaled = (inputs[name] - scaler.means.get(name, 0.0)) / std if std > 0 else 0.0
            contrib[name] = scaled * lr.weights.get(name, 0.0)
        logit = sum(contrib.values()) + lr.intercept
        # the recency inputs are one reason: their contributions added up
        contrib["recency"] = sum(contrib.pop(n) for n in RECENCY_INPUTS)
        ranked = sorted(contrib, key=lambda n: (-abs(contrib[n]), n))[:3]
        (_, reasons), *_ = warm_model.score_batch([x])
        assert [r["feature"] for r in reasons] == ranked
        for r in reasons:
            assert r["contribution"] == pytest.approx(round(contrib[r["feature"]], 4), abs=1e-4)
            assert r["direction"] == ("raises" if contrib[r["feature"]] > 0 else "lowers")
            assert r["text"]
        assert warm_model.predict(x) == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-9)


def test_model_snapshot_round_trip(warm_model: ChurnModel) -> None:
    copy = ChurnModel.restore(warm_model.snapshot())
    rng = random.Random(1)
    batch = [random_features(rng, i % 2) for i in range(10)]
    assert copy.score_batch(batch) == warm_model.score_batch(batch)
    assert copy.version == warm_model.version == "lr-0"
