"""The warm model's scores blended with the store's fitted Pareto/NBD prior
(engine/models/online.py ``blend``, ``ChurnModel.model_weight``)."""

from __future__ import annotations

import copy
import math
import pickle
import random

import pytest

from engine.models.online import PRIOR_WEIGHT_EXAMPLES, ChurnModel, blend
from engine.models.prior import DAY, ParetoNBDParams, PriorFitter, prior_probabilities

PARAMS = ParetoNBDParams(r=0.6, alpha=40.0, s=0.5, beta=30.0)


def features(rng: random.Random, churn: int) -> dict[str, float]:
    """A feature vector whose recency and order count depend on the label."""
    orders = float(rng.randint(1, 3) if churn else rng.randint(2, 9))
    tenure = rng.uniform(60.0, 300.0)
    recency = min(rng.uniform(60.0, 200.0) if churn else rng.uniform(0.0, 50.0), tenure)
    return {
        "days_since_last_order": recency,
        "tenure_days": tenure,
        "order_count": orders,
        "overdue_ratio": recency / 30.0,
        "spend_total_base": rng.uniform(5.0, 300.0),
    }


def examples(seed: int, n: int) -> list[tuple[dict[str, float], int, str | None]]:
    rng = random.Random(seed)
    out: list[tuple[dict[str, float], int, str | None]] = []
    for _ in range(n):
        y = int(rng.random() < 0.6)
        out.append((features(rng, y), y, "s"))
    return out


def with_fit(model: ChurnModel, store_id: str = "s") -> ChurnModel:
    """``model`` with a fitted prior for ``store_id`` (as a fit at day 100 leaves it)."""
    fitter = model.priors
    fitter.observe(store_id, "c0", 100 * DAY, features(random.Random(0), 0))
    sample = fitter.stores[store_id]
    sample.params, sample.fitted_at = PARAMS, 100 * DAY
    return model


def test_blend_moves_from_the_prior_to_the_model() -> None:
    model_p, prior_p = 0.9, 0.3
    shares = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    blended = [blend(model_p, prior_p, w) for w in shares]
    assert blended[0] == pytest.approx(prior_p) and blended[-1] == model_p
    assert blended == sorted(blended)  # more weight on the model: closer to it
    logit = math.log(blended[3] / (1 - blended[3]))
    assert logit == pytest.approx(0.5 * math.log(9.0) + 0.5 * math.log(3 / 7))
    assert blend(0.2, None, 0.1) == 0.2  # no prior: the model alone
    assert 0.0 < blend(1.0, 0.0, 0.5) < 1.0  # certain inputs stay finite


def test_the_model_weight_grows_with_the_examples_learned() -> None:
    model = ChurnModel(warm_examples=10, prior_weight_examples=100.0)
    shares = []
    for x, y, store_id in examples(1, 300):
        model.learn(x, y, store_id)
        shares.append(model.model_weight)
    assert shares == sorted(shares) and shares[-1] == pytest.approx(300 / 400)
    assert model.status()["model_share"] == 0.75  # what operators see
    assert ChurnModel(prior_weight_examples=0.0).model_weight == 1.0
    assert ChurnModel().prior_weight_examples == PRIOR_WEIGHT_EXAMPLES


def test_warm_scores_blend_the_model_with_the_stores_fitted_prior() -> None:
    trained = ChurnModel(warm_examples=10, prior_weight_examples=200.0)
    trained.learn_many(examples(2, 400))
    blended = with_fit(copy.deepcopy(trained))
    alone = copy.deepcopy(trained)
    alone.prior_weight_examples = 0.0  # the same model, without the prior

    rng = random.Random(3)
    batch = [features(rng, i % 2) for i in range(30)]
    batch.append({**batch[0], "order_count": 0.0})  # no order: no Pareto/NBD score
    stores = ["s"] * 30 + ["s"]
    at = 101 * DAY  # within the refit interval: the fit above is used as it is
    got = blended.score_batch(batch, store_ids=stores, at=at)
    model_only = alone.score_batch(batch, store_ids=stores, at=at)
    priors = prior_probabilities(batch, PARAMS, blended.priors.horizon_days)
    share = 400 / 600
    for i, ((p, _), (q, _)) in enumerate(zip(got, model_only, strict=True)):
        if i < 30:
            assert p == pytest.approx(blend(q, priors[i], share), abs=1e-12)
            assert p != q
        else:
            assert p == q
    # another store (no fit) and no store ids: the model alone
    other = blended.score_batch(batch, store_ids=["t"] * len(batch), at=at)
    assert [p for p, _ in other] == [q for q, _ in model_only]
    assert [p for p, _ in blended.score_batch(batch)] == [q for q, _ in model_only]
    # the reasons are the model's own either way
    assert [r for _, r in got] == [r for _, r in model_only]


def test_learning_in_runs_equals_one_by_one_with_a_fitted_prior() -> None:
    start = ChurnModel(warm_examples=50, prior_weight_examples=300.0)
    start.learn_many(examples(4, 20))  # still cold
    one, many = with_fit(copy.deepcopy(start)), with_fit(copy.deepcopy(start))
    batch = examples(5, 250)
    ps_one = [one.learn(*item) for item in batch]
    ps_many = many.learn_many(batch)
    assert ps_one == ps_many
    assert one.status() == many.status()
    # the warm examples' progressive scores include the prior
    alone = copy.deepcopy(start)
    alone.prior_weight_examples = 0.0
    with_fit(alone)
    ps_alone = alone.learn_many(batch)
    warm_from = 50 - 20
    assert ps_many[:warm_from] == ps_alone[:warm_from]  # cold: the fitted prior alone
    assert all(a != b for a, b in zip(ps_many[warm_from:], ps_alone[warm_from:], strict=True))


def test_a_snapshot_from_before_the_blend_restores_with_the_default_weight() -> None:
    model = ChurnModel(warm_examples=5)
    model.learn_many(examples(6, 20))
    state = model.__dict__.copy()
    del state["prior_weight_examples"]
    old = ChurnModel.__new__(ChurnModel)
    old.__setstate__(state)
    assert old.prior_weight_examples == PRIOR_WEIGHT_EXAMPLES
    restored = ChurnModel.restore(pickle.dumps(with_fit(old)))
    assert isinstance(restored.priors, PriorFitter)
    assert restored.score_batch([features(random.Random(7), 1)], store_ids=["s"], at=100 * DAY)


def test_a_warm_model_refits_its_prior_at_most_every_warm_refit_days() -> None:
    from engine.models.online import WARM_REFIT_DAYS

    rng = random.Random(8)
    model = ChurnModel(warm_examples=5, prior_weight_examples=100.0)
    model.learn_many(examples(9, 20))  # warm
    for c in range(150):  # a sample large enough to fit: 150 buyers, a third repeaters
        orders = 1.0 + (c % 3 == 0) * rng.randint(1, 4)
        tenure = rng.uniform(30.0, 200.0)
        x = {
            "order_count": orders,
            "tenure_days": tenure,
            "days_since_last_order": rng.uniform(0.0, tenure) if orders > 1 else tenure,
        }
        model.priors.observe("s", f"c{c}", 200 * DAY, x)
    x = features(rng, 1)
    fits = []
    for day in range(200, 300, 2):
        model.score_batch([x], store_ids=["s"], at=day * DAY)
        fitted_at = model.priors.stores["s"].fitted_at / DAY
        if not fits or fits[-1] != fitted_at:
            fits.append(fitted_at)
    assert len(fits) >= 3
    assert all(b - a >= WARM_REFIT_DAYS for a, b in zip(fits, fits[1:], strict=False))
    assert model.priors.latest("s") is not None
