"""Many ``learn_one`` calls of ``StandardScaler | LogisticRegression`` at once, exactly.

:func:`learn_sequence` leaves the River pipeline in the state that calling
``pipeline.learn_one`` on each example in turn would (the same floats, bit for bit,
in the same dict order), and returns the probability the pipeline gave each example
just before learning it (``predict_proba_one``). It does the same IEEE operations in
the same order as River, only with less Python work per example:

1. the scaler's running means and variances do not depend on the weights, so they
   are run first, one numpy row per example (Welford's update, as River writes it);
   the standard deviations are ``v ** 0.5`` (C ``pow``, as River), in one pass;
2. every example is then scaled twice in one vectorised step: with the statistics
   before it (what ``predict_proba_one`` sees) and after it (what ``learn_one``
   hands the regression);
3. the SGD loop runs on plain lists: dot products summed left to right in feature
   order, River's own loss gradient and sigmoid, ``w - lr * (x * g + w * l2)``;
   features whose variance stays 0 (and weight +0.0) are left out of it, as they
   change nothing there (CDNOW has no browsing, messages or refunds).

:func:`supports` says whether a pipeline is of the one configuration this mirrors;
callers fall back to ``learn_one`` otherwise (and for rows whose keys differ).

>>> from river import compose, linear_model, optim, preprocessing
>>> def make():
...     return compose.Pipeline(
...         preprocessing.StandardScaler(),
...         linear_model.LogisticRegression(optimizer=optim.SGD(0.01), l2=1e-4),
...     )
>>> rows = [{"a": float(i % 7), "b": float(i % 3) - 1.0} for i in range(50)]
>>> ys = [i % 7 > 3 for i in range(50)]
>>> one, many = make(), make()
>>> expected = []
>>> for x, y in zip(rows, ys):
...     expected.append(one.predict_proba_one(x)[True])
...     one.learn_one(x, y)
>>> supports(many)
True
>>> got = learn_sequence(many, ["a", "b"], [[x["a"], x["b"]] for x in rows], ys)
>>> got == expected, many["LogisticRegression"].weights == one["LogisticRegression"].weights
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import repeat
from operator import mul
from typing import Any

import numpy as np
from river import compose, linear_model, optim, preprocessing


def supports(pipeline: compose.Pipeline) -> bool:
    """True when ``pipeline`` is exactly what :func:`learn_sequence` reproduces."""
    steps = list(pipeline.steps.values())
    if len(steps) != 2 or compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
        return False
    scaler, lr = steps
    return (
        type(scaler) is preprocessing.StandardScaler
        and scaler.with_std
        and scaler.window_size is None
        and type(lr) is linear_model.LogisticRegression
        and type(lr.optimizer) is optim.SGD
        and type(lr.optimizer.lr) is optim.schedulers.Constant
        and type(lr.intercept_lr) is optim.schedulers.Constant
        and type(lr.loss) is optim.losses.Log
        and type(lr.initializer) is optim.initializers.Zeros
        and lr.l1 == 0
    )


def _scaler_path(
    scaler: preprocessing.StandardScaler, names: Sequence[str], x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, means and variances before the first row and after each one.

    Returns ``(counts, means, variances)``; the last two have ``len(x) + 1`` rows.
    """
    n, width = x.shape
    counts = np.array([float(scaler.counts.get(name, 0)) for name in names])
    mean = np.array([scaler.means.get(name, 0.0) for name in names])
    var = np.array([scaler.vars.get(name, 0.0) for name in names])
    means = np.empty((n + 1, width))
    variances = np.empty((n + 1, width))
    means[0], variances[0] = mean, var
    for k in range(n):
        row = x[k]
        counts += 1.0
        delta = row - mean
        mean = mean + delta / counts
        var = var + (delta * (row - mean) - var) / counts
        means[k + 1], variances[k + 1] = mean, var
    return counts, means, variances


def _std(variances: np.ndarray) -> np.ndarray:
    """``var ** 0.5`` with Python's (C) ``pow``, as River takes it (not ``sqrt``)."""
    flat = variances.ravel().tolist()
    return np.array(list(map(pow, flat, repeat(0.5)))).reshape(variances.shape)


def _scaled(
    x: np.ndarray, means: np.ndarray, variances: np.ndarray, stds: np.ndarray
) -> np.ndarray:
    """``(x - mean) / std`` where the variance is not 0, else 0 (River's rule)."""
    out = np.zeros_like(x)
    np.divide(x - means, stds, out=out, where=variances != 0.0)
    return out


def learn_sequence(
    pipeline: compose.Pipeline,
    names: Sequence[str],
    rows: Sequence[Sequence[float]] | np.ndarray,
    ys: Any,
) -> list[float]:
    """Learn ``rows`` (values in ``names`` order) with labels ``ys``, in order.

    Returns each row's probability of ``True`` before it was learned. The pipeline
    must pass :func:`supports`.
    """
    if len(rows) == 0:
        return []
    scaler: preprocessing.StandardScaler = pipeline.steps[list(pipeline.steps)[0]]
    lr: linear_model.LogisticRegression = pipeline.steps[list(pipeline.steps)[1]]
    x = np.array(rows, dtype=float).reshape(len(rows), len(names))
    counts, means, variances = _scaler_path(scaler, names, x)
    last_mean, last_var = means[-1].tolist(), variances[-1].tolist()
    weights_now = lr.weights
    start = [weights_now.get(name, 0.0) for name in names]
    # A feature whose variance stays 0 scales to 0.0 throughout: with a weight of +0.0
    # its weight stays +0.0 and its products add +0.0 to the dot products, so it is left
    # out of the loop (its mean and variance are still followed above).
    active = [
        j
        for j, varies in enumerate((variances != 0.0).any(axis=0).tolist())
        if varies or start[j] != 0.0 or math.copysign(1.0, start[j]) < 0
    ]
    x, means, variances = x[:, active], means[:, active], variances[:, active]
    stds = _std(variances)
    before = _scaled(x, means[:-1], variances[:-1], stds[:-1]).tolist()
    after = _scaled(x, means[1:], variances[1:], stds[1:]).tolist()

    w = [start[j] for j in active]
    intercept = lr.intercept
    step = lr.optimizer.lr.learning_rate
    intercept_step = lr.intercept_lr.learning_rate
    l2, clip = lr.l2, lr.clip_gradient
    gradient, sigmoid = lr.loss.gradient, lr.loss.mean_func
    probabilities = []
    for seen, xs, y in zip(before, after, ys, strict=True):
        probabilities.append(float(sigmoid(sum(map(mul, w, seen)) + intercept)))
        loss_gradient = gradient(y_true=bool(y), y_pred=sum(map(mul, w, xs)) + intercept)
        loss_gradient = float(max(min(loss_gradient * 1.0, clip), -clip))
        intercept -= intercept_step * loss_gradient
        w = [wi - step * (xi * loss_gradient + wi * l2) for wi, xi in zip(w, xs, strict=True)]

    for name, count, mean, var in zip(names, counts.tolist(), last_mean, last_var, strict=True):
        scaler.counts[name] = int(count)
        scaler.means[name] = mean
        scaler.vars[name] = var
    for j, weight in zip(active, w, strict=True):
        start[j] = weight
    for name, weight in zip(names, start, strict=True):
        lr._weights[name] = weight
    lr.intercept = intercept
    lr.optimizer.n_iterations += len(rows)
    return probabilities
