"""The online churn model of one shard: score first, then learn (progressive validation).

A River pipeline (``StandardScaler | LogisticRegression``) learns every resolved
prediction point. Every example is scored before it is learned, which gives
honest running metrics. Until ``warm_examples`` examples are learned,
``model_warm`` is false and a prior scores customers: each store's Pareto/NBD
model, fitted by maximum likelihood on a hash sample of its customers as seen so
far (:mod:`engine.models.prior`; ``exp(-expected orders in the horizon)``), and,
before a store has enough customers to fit, ``overdue / (1 + overdue)`` where
``overdue = days since last order / usual gap`` (0.5 when a customer is exactly
one usual gap late).

Once warm, the prior does not vanish at once: a score is the model's and the store's
fitted prior's log-odds, weighted ``n : prior_weight_examples`` after ``n`` learned
examples (:func:`blend`). The model takes over gradually, as a posterior outweighs its
prior: while few labels have resolved (early in a store's life, or at long horizons,
where every label is old) the Pareto/NBD model, which needs none, still carries weight.

Score requests are scored as a batch: the scaled features times the weights give,
in one matrix product, both the probabilities and each feature's signed
contribution, from which the reasons are read.

>>> model = ChurnModel(warm_examples=2)
>>> x = {"days_since_last_order": 80.0, "overdue_ratio": 2.7, "order_count": 1.0}
>>> round(model.prior(x), 3), model.warm
(0.73, False)
>>> for y in (1, 0, 1):
...     _ = model.learn({**x, "days_since_last_order": 40.0 + 40 * y}, y)
>>> model.warm, model.version
(True, 'lr-0')
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
from river import compose, drift, ensemble, linear_model, optim, preprocessing, tree

from engine.errors import ConfigError
from engine.models.batch_learn import learn_sequence, supports
from engine.models.metrics import ProgressiveMetrics
from engine.models.prior import PriorFitter, overdue_prior, prior_probability
from engine.models.reasons import describe_reasons, describe_reasons_batch

VERSION_EVERY = 1000
"""The model version increases every this many learned examples."""


DROPOUT_SCALE_DAYS = 30.0
"""The time scale of :func:`dropout_evidence` (BG/NBD's alpha; the results hardly
move between 15 and 120 days on CDNOW, so this is a unit, not a tuned constant)."""


def dropout_evidence(days_since_last_order: float, tenure_days: float, orders: float) -> float:
    """How strongly a silence argues that a customer has dropped out.

    BG/NBD's odds that a customer with ``x`` purchases, the last at ``t_x``, is
    gone by ``T`` grow with ``((alpha + T) / (alpha + t_x)) ** (r + x)``; this is
    its logarithm with ``r + x`` read as the order count: a long silence weighs
    more after many orders than after one.

    >>> dropout_evidence(0.0, 100.0, 4.0), round(dropout_evidence(60.0, 100.0, 4.0), 3)
    (0.0, 2.476)
    >>> round(dropout_evidence(60.0, 100.0, 1.0), 3)
    0.619
    """
    age = DROPOUT_SCALE_DAYS + max(tenure_days, 0.0)
    at_last = DROPOUT_SCALE_DAYS + max(tenure_days - days_since_last_order, 0.0)
    return orders * math.log(age / at_last)


DERIVED = "dropout_evidence"


def _input_matrix(batch: Sequence[dict[str, float]]) -> np.ndarray:
    """:func:`model_inputs` of feature vectors with the same keys in the same order, as
    the rows of a matrix (the same floats: ``math.log1p`` and :func:`dropout_evidence`
    on each value, only not one dict at a time).

    >>> x = {"order_count": 2.0, "days_since_last_order": 10.0, "tenure_days": 40.0}
    >>> y = {"order_count": 0.0, "days_since_last_order": -1.0, "tenure_days": 3.0}
    >>> _input_matrix([x, y]).tolist() == [list(model_inputs(v).values()) for v in (x, y)]
    True
    """
    names = list(batch[0])
    raw = np.array([list(features.values()) for features in batch], dtype=float)
    inputs = np.zeros((len(batch), len(names) + 1))
    positive = raw > 0
    inputs[:, :-1][positive] = list(map(math.log1p, raw[positive].tolist()))

    def column(name: str) -> list[float]:
        return raw[:, names.index(name)].tolist() if name in names else [0.0] * len(batch)

    inputs[:, -1] = list(
        map(
            dropout_evidence,
            column("days_since_last_order"),
            column("tenure_days"),
            column("order_count"),
        )
    )
    return inputs


def model_inputs(features: dict[str, float]) -> dict[str, float]:
    """What the model sees of a feature vector: log1p of each non-negative value,
    plus :func:`dropout_evidence`.

    Counts, spend and days are heavy-tailed; their logarithm is closer to linear in
    the churn log-odds.

    >>> model_inputs({"order_count": 0.0, "spend_total_base": math.e - 1})
    {'order_count': 0.0, 'spend_total_base': 1.0, 'dropout_evidence': 0.0}
    """
    inputs = {name: math.log1p(value) if value > 0 else 0.0 for name, value in features.items()}
    inputs[DERIVED] = dropout_evidence(
        features.get("days_since_last_order", 0.0),
        features.get("tenure_days", 0.0),
        features.get("order_count", 0.0),
    )
    return inputs


def _rows(batch: list[dict[str, float]], names: list[str]) -> list[Any]:
    """The batch as rows of values in ``names`` order (0.0 where a name is missing).

    >>> _rows([{"b": 2.0, "a": 1.0}, {"b": 4.0, "a": 3.0}], ["a", "b"])
    [(1.0, 2.0), (3.0, 4.0)]
    >>> _rows([{"b": 2.0, "a": 1.0}, {"a": 3.0}], ["a", "b"])
    [[1.0, 2.0], [3.0, 0.0]]
    """
    if len(names) > 1:
        values = itemgetter(*names)
        try:
            return [values(x) for x in batch]  # the usual case: every vector is complete
        except KeyError:
            pass
    return [[x.get(n, 0.0) for n in names] for x in batch]


LEARNING_RATE = 0.001
"""SGD step of the logistic regression on standardised inputs: small, because the
examples of one customer come in correlated runs and the last ones learned should not
outweigh the rest. Chosen on CDNOW across three cuts (1997-06-30, -09-30, -12-31) and
three horizons (60, 90, 180 days): 0.001 scored at or above 0.003 in every warm setting
but one (-0.0003), and well above it where few examples had resolved (cut 1997-09-30,
H = 180: 0.7711 vs 0.7620); 0.0005 was no better (BENCHMARKS.md)."""

MODEL_KINDS = ("logreg", "hoeffding_tree", "bagging")

PRIOR_WEIGHT_EXAMPLES = 10_000.0
"""How many learned examples the fitted prior is worth in a warm score (:func:`blend`).
Measured on CDNOW at six warm cut/horizon settings (BENCHMARKS.md, "Warm scores blended
with the fitted prior"): 10,000 scored at or above the model alone at all six, 20,000
lowered one and 50,000 two. It is an absolute count (CDNOW has 23,570 customers; a much
larger store's model outweighs its prior sooner), set per deployment with
``CHURNFLOW_MODEL_PRIOR_WEIGHT_EXAMPLES``."""


WARM_REFIT_DAYS = 28.0
"""A warm model's prior is refitted at most this often (event time; while cold the
fitter's own 7 days): it carries a shrinking share of the score, and a fit costs
~0.2 s, which a replay scoring every request would pay once a week of its history
(60 fits, 10 s of the CDNOW replay with the default rules)."""


def blend(model_p: float, prior_p: float | None, model_weight: float) -> float:
    """The warm score: ``sigmoid(w * logit(model_p) + (1 - w) * logit(prior_p))``,
    ``w = model_weight``; the model alone without a prior.

    >>> blend(0.8, None, 0.5), blend(0.8, 0.2, 1.0)
    (0.8, 0.8)
    >>> round(blend(0.8, 0.2, 0.5), 6), round(blend(0.9, 0.5, 0.75), 4)
    (0.5, 0.8386)
    """
    if prior_p is None or model_weight >= 1.0:
        return model_p
    z = model_weight * _logit(model_p) + (1.0 - model_weight) * _logit(prior_p)
    return 1.0 / (1.0 + math.exp(-z))


def _logit(p: float) -> float:
    """log(p / (1 - p)), p clipped to [1e-12, 1 - 1e-12].

    >>> _logit(0.5), round(_logit(1.0))
    (0.0, 28)
    """
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return math.log(p / (1.0 - p))


def build_pipeline(kind: str = "logreg") -> compose.Pipeline:
    """The River pipeline of a model kind (``CHURNFLOW_MODEL``).

    >>> [type(build_pipeline(k)[-1]).__name__ for k in MODEL_KINDS]
    ['LogisticRegression', 'HoeffdingAdaptiveTreeClassifier', 'BaggingClassifier']
    """
    if kind == "logreg":
        estimator: Any = linear_model.LogisticRegression(
            optimizer=optim.SGD(LEARNING_RATE), l2=1e-4
        )
    elif kind == "hoeffding_tree":
        estimator = tree.HoeffdingAdaptiveTreeClassifier(grace_period=200, seed=7)
    elif kind == "bagging":
        estimator = ensemble.BaggingClassifier(
            linear_model.LogisticRegression(optimizer=optim.SGD(LEARNING_RATE), l2=1e-4),
            n_models=5,
            seed=7,
        )
    else:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    return compose.Pipeline(preprocessing.StandardScaler(), estimator)


class ChurnModel:
    """One model shard: a River pipeline, its prior, metrics and version."""

    def __init__(
        self,
        warm_examples: int = 500,
        shard: int = 0,
        kind: str = "logreg",
        horizon_days: float = 90.0,
        prior_weight_examples: float = PRIOR_WEIGHT_EXAMPLES,
    ) -> None:
        self.warm_examples = warm_examples
        self.prior_weight_examples = prior_weight_examples
        """What the fitted prior is worth, in learned examples, in a warm score."""
        self.shard = shard
        self.kind = kind
        self.pipeline = build_pipeline(kind)
        self.learned = 0
        self.metrics = ProgressiveMetrics()
        self.drift = drift.ADWIN()
        self.drifts_detected = 0
        self.store_metrics: dict[str, ProgressiveMetrics] = {}
        """Each store's progressive metrics on its own examples."""
        self.priors = PriorFitter(horizon_days)
        """The cold-start prior of each store (see :mod:`engine.models.prior`)."""

    @property
    def warm(self) -> bool:
        return self.learned >= self.warm_examples

    @property
    def model_weight(self) -> float:
        """The model's share of a warm score's log-odds (:func:`blend`).

        >>> m = ChurnModel(prior_weight_examples=100.0)
        >>> m.learned = 300
        >>> m.model_weight, ChurnModel(prior_weight_examples=0.0).model_weight
        (0.75, 1.0)
        """
        k = self.prior_weight_examples
        return 1.0 if k <= 0.0 else self.learned / (self.learned + k)

    def _blended(
        self,
        model_ps: list[float],
        batch: Sequence[dict[str, float]],
        store_ids: Sequence[str | None],
        at: float | None,
        weights: Sequence[float],
    ) -> list[float]:
        """Warm scores: each model probability blended, with its model weight, with its
        store's fitted prior (as of ``at``, refitting when stale; None: the last fits)."""
        if not self.priors.stores or all(w >= 1.0 for w in weights):
            return model_ps
        known = [i for i, s in enumerate(store_ids) if s is not None]
        fitted = self.priors.fitted(
            [batch[i] for i in known], [str(store_ids[i]) for i in known], at, WARM_REFIT_DAYS
        )
        out = list(model_ps)
        for i, prior_p in zip(known, fitted, strict=True):
            out[i] = blend(out[i], prior_p, weights[i])
        return out

    @property
    def version(self) -> str:
        prefix = {"logreg": "lr", "hoeffding_tree": "hat", "bagging": "bag"}[self.kind]
        return f"{prefix}-{self.learned // VERSION_EVERY}"

    @staticmethod
    def prior(features: dict[str, float]) -> float:
        """The transparent fallback score: overdue / (1 + overdue)."""
        return overdue_prior(features)

    def cold_prior(self, features: dict[str, float], store_id: str | None = None) -> float:
        """The cold score: the store's last fitted Pareto/NBD prior, else :meth:`prior`."""
        params = None if store_id is None else self.priors.latest(store_id)
        return prior_probability(features, params, self.priors.horizon_days)

    def predict(self, features: dict[str, float]) -> float:
        """The probability the model (or, while cold, the prior) gives."""
        if not self.warm:
            return self.prior(features)
        return float(self.pipeline.predict_proba_one(model_inputs(features)).get(True, 0.0))

    def learn(self, features: dict[str, float], y: int, store_id: str | None = None) -> float:
        """Score the example first (progressive validation), then learn it.

        With ``store_id`` the example also counts in that store's own metrics (the
        model is shared; each store sees how it does on its own customers).
        """
        inputs = model_inputs(features)  # read, never modified, by both calls below
        if self.warm:
            p = float(self.pipeline.predict_proba_one(inputs).get(True, 0.0))
            p = self._blended([p], [features], [store_id], None, [self.model_weight])[0]
        else:
            p = self.cold_prior(features, store_id)
        self._count(y, p, store_id)
        self.pipeline.learn_one(inputs, bool(y))
        self.learned += 1
        return p

    def _count(self, y: int, p: float, store_id: str | None) -> None:
        """The running metrics and drift detector after an example scored ``p``."""
        self._count_many([y], [p], [store_id])

    def learn_many(self, batch: Sequence[tuple[dict[str, float], int, str | None]]) -> list[float]:
        """``[self.learn(features, y, store_id) for ...]``, with the same result bit for
        bit, several times faster for the logistic regression (:mod:`.batch_learn`).

        >>> x = {"days_since_last_order": 80.0, "overdue_ratio": 2.7, "order_count": 1.0}
        >>> batch = [({**x, "order_count": float(i % 5)}, i % 3 == 0, "s") for i in range(40)]
        >>> one, many = ChurnModel(warm_examples=10), ChurnModel(warm_examples=10)
        >>> [one.learn(*item) for item in batch] == many.learn_many(batch)
        True
        >>> weights = [m.pipeline["LogisticRegression"].weights for m in (one, many)]
        >>> weights[0] == weights[1], one.status() == many.status()
        (True, True)
        """
        names = list(batch[0][0]) if batch else []
        if (
            self.kind != "logreg"
            or len(batch) < 2
            or not supports(self.pipeline)
            or any(list(features) != names for features, _, _ in batch)
        ):
            return [self.learn(features, y, store_id) for features, y, store_id in batch]
        rows = _input_matrix([features for features, _, _ in batch])
        model_p = learn_sequence(
            self.pipeline, [*names, DERIVED], rows, [bool(y) for _, y, _ in batch]
        )
        out = []
        weights = []  # the model's weight in each example's score (1: scored cold)
        for (features, _, store_id), p in zip(batch, model_p, strict=True):
            if self.warm:
                weights.append(self.model_weight)
            else:
                p = self.cold_prior(features, store_id)
                weights.append(1.0)
            self.learned += 1
            out.append(p)
        out = self._blended(
            out, [x for x, _, _ in batch], [store_id for _, _, store_id in batch], None, weights
        )
        self._count_many([y for _, y, _ in batch], out, [store_id for _, _, store_id in batch])
        return out

    def _count_many(self, ys: list[int], ps: list[float], stores: list[str | None]) -> None:
        """:meth:`_count` of each example in order (metrics per store in order too)."""
        losses = self.metrics.update_many(ys, ps)
        for store_id in dict.fromkeys(stores):  # in order of first appearance, like _count
            if store_id is None:
                continue
            mine = [i for i, s in enumerate(stores) if s == store_id]
            store = self.store_metrics.get(store_id)
            if store is None:  # not setdefault: a new ProgressiveMetrics is two 1,000-lists
                store = self.store_metrics[store_id] = ProgressiveMetrics()
            store.update_many([ys[i] for i in mine], [ps[i] for i in mine])
        drift = self.drift
        for loss in losses:
            drift.update(loss)
            if drift.drift_detected:
                self.drifts_detected += 1

    def score_batch(
        self,
        batch: list[dict[str, float]],
        top_reasons: int = 3,
        store_ids: list[str] | None = None,
        at: float | None = None,
    ) -> list[tuple[float, list[dict[str, Any]]]]:
        """Probabilities and reasons for many feature vectors at once.

        While cold, with ``store_ids`` (one per vector) and the event time ``at``, each
        store's fitted prior scores (:class:`PriorFitter`); else the overdue prior. Once
        warm, the model's probability is blended with that fitted prior (:func:`blend`;
        ``at`` None: the last fits); the reasons are the model's own contributions.
        """
        if not batch:
            return []
        if not self.warm:
            if store_ids is None or at is None:
                priors = [overdue_prior(x) for x in batch]
            else:
                priors = self.priors.probabilities(batch, store_ids, at)
            return [
                (p, describe_reasons(x, None, top_reasons))
                for x, p in zip(batch, priors, strict=True)
            ]
        ids: list[str | None] = [None] * len(batch) if store_ids is None else list(store_ids)
        shares = [self.model_weight] * len(batch)  # the model's share of each score
        if self.kind != "logreg":
            model_ps = self._blended([self.predict(x) for x in batch], batch, ids, at, shares)
            return [
                (p, describe_reasons(x, None, top_reasons))
                for x, p in zip(batch, model_ps, strict=True)
            ]
        scaler: preprocessing.StandardScaler = self.pipeline["StandardScaler"]
        lr: linear_model.LogisticRegression = self.pipeline["LogisticRegression"]
        names = sorted(batch[0])
        raw = np.array(_rows(batch, names))
        logged = np.log1p(np.maximum(raw, 0.0))
        derived = np.array(
            [
                dropout_evidence(
                    x.get("days_since_last_order", 0.0),
                    x.get("tenure_days", 0.0),
                    x.get("order_count", 0.0),
                )
                for x in batch
            ]
        )
        logged = np.column_stack([logged, derived])
        names.append(DERIVED)
        scaler_means, scaler_vars, lr_weights = scaler.means, scaler.vars, lr.weights
        means = np.array([scaler_means.get(n, 0.0) for n in names])
        stds = np.sqrt(np.array([scaler_vars.get(n, 0.0) for n in names]))
        weights = np.array([lr_weights.get(n, 0.0) for n in names])
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(stds > 0, (logged - means) / stds, 0.0)
        contributions = scaled * weights
        logits = contributions.sum(axis=1) + lr.intercept
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(logits, -35, 35)))
        blended = self._blended(probabilities.tolist(), batch, ids, at, shares)
        reasons = describe_reasons_batch(batch, contributions, names, top_reasons)
        return list(zip(blended, reasons, strict=True))

    def status(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "model_version": self.version,
            "model_warm": self.warm,
            "examples_learned": self.learned,
            "warm_after": self.warm_examples,
            "model_share": round(self.model_weight, 4),  # of a warm score's log-odds
            "drifts_detected": self.drifts_detected,
            **self.metrics.summary(),
        }

    def store_status(self, store_id: str) -> dict[str, Any]:
        """What one store may see: the shared model's version and warmth, and the
        metrics on its own examples only (no other store's counts or rates)."""
        metrics = self.store_metrics.get(store_id, ProgressiveMetrics())
        return {
            "model_version": self.version,
            "model_warm": self.warm,
            "drifts_detected": self.drifts_detected,
            **metrics.summary(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("store_metrics", {})  # snapshots from before per-store metrics
        state.setdefault("priors", PriorFitter())  # ... and before the fitted prior
        state.setdefault("prior_weight_examples", PRIOR_WEIGHT_EXAMPLES)  # ... and the blend
        self.__dict__.update(state)

    def snapshot(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def restore(blob: bytes) -> ChurnModel:
        model = pickle.loads(blob)
        assert isinstance(model, ChurnModel)
        return model
