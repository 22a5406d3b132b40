"""Reasons of a batch at once, and of one vector, equal a plainly written ranking
(engine/models/reasons.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from engine.features.vector import FEATURE_NAMES
from engine.models.online import DERIVED, ChurnModel
from engine.models.reasons import (
    RECENCY_INPUTS,
    _phrase,
    describe_reasons,
    describe_reasons_batch,
)


def reference_reasons(
    x: dict[str, float], contributions: dict[str, float], top: int
) -> list[dict[str, Any]]:
    """The ranking written plainly (the engine's one-by-one code before the batch
    version): recency inputs summed in a dict, sorted by (-|value|, name)."""
    merged: dict[str, float] = {}
    for name, value in contributions.items():
        key = "recency" if name in RECENCY_INPUTS else name
        merged[key] = merged.get(key, 0.0) + value
    ranked = sorted(merged.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
    return [
        {
            "feature": name,
            "contribution": round(value, 4),
            "direction": "raises" if value > 0 else "lowers",
            "text": _phrase(name, x),
        }
        for name, value in ranked
    ]


def random_contributions(rng: random.Random, rows: int, width: int) -> np.ndarray:
    """Contributions with ties, exact zeros, negative zeros and opposite signs."""
    pool = [0.0, -0.0, 0.25, -0.25, 1e-9, -3.0, 3.0]
    out = np.empty((rows, width))
    for i in range(rows):
        for j in range(width):
            out[i, j] = rng.choice(pool) if rng.random() < 0.4 else rng.gauss(0.0, 1.0)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("top", [1, 3, 40])
def test_batch_reasons_equal_one_by_one(seed: int, top: int) -> None:
    rng = random.Random(seed)
    names = sorted(FEATURE_NAMES) + [DERIVED]
    batch = [
        {name: rng.choice([0.0, 1.0, rng.uniform(0, 300)]) for name in FEATURE_NAMES}
        for _ in range(200)
    ]
    contributions = random_contributions(rng, len(batch), len(names))
    expected = [
        reference_reasons(x, dict(zip(names, row, strict=True)), top)
        for x, row in zip(batch, contributions.tolist(), strict=True)
    ]
    assert describe_reasons_batch(batch, contributions, names, top) == expected
    one_by_one = [
        describe_reasons(x, dict(zip(names, row, strict=True)), top)
        for x, row in zip(batch, contributions.tolist(), strict=True)
    ]
    assert one_by_one == expected


def test_batch_reasons_without_recency_inputs_and_in_any_column_order() -> None:
    rng = random.Random(4)
    names = ["order_count", "spend_total_base", "gap_mean_days"]  # not sorted
    batch = [{"order_count": 2.0, "spend_total_base": 10.0, "gap_mean_days": 5.0}] * 30
    contributions = random_contributions(rng, 30, 3)
    expected = [
        reference_reasons(x, dict(zip(names, row, strict=True)), 2)
        for x, row in zip(batch, contributions.tolist(), strict=True)
    ]
    assert describe_reasons_batch(batch, contributions, names, 2) == expected
    assert describe_reasons_batch([], contributions[:0], names) == []


def test_the_warm_model_scores_with_the_reasons_it_gave_one_by_one() -> None:
    rng = random.Random(5)
    model = ChurnModel(warm_examples=5, prior_weight_examples=0.0)
    for i in range(60):
        x = {name: rng.uniform(0, 50) for name in FEATURE_NAMES}
        model.learn(x, i % 2)
    batch = [{name: rng.uniform(0, 50) for name in FEATURE_NAMES} for _ in range(25)]
    together = model.score_batch(batch)
    alone = [model.score_batch([x])[0] for x in batch]
    assert [r for _, r in together] == [r for _, r in alone]
    assert all(len(r) == 3 and r[0]["contribution"] is not None for _, r in together)
