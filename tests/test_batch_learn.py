"""``ChurnModel.learn_many`` / ``batch_learn.learn_sequence`` against River's ``learn_one``.

The batch path must leave the model exactly as one ``learn`` per example would: the
same probabilities (compared with ``==``, not approximately), weights, intercept,
scaler statistics, metrics and drift counts.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
from river import compose, linear_model, optim, preprocessing

from engine.features.vector import FEATURE_NAMES
from engine.models.batch_learn import learn_sequence, supports
from engine.models.online import ChurnModel, build_pipeline


def features(rng: random.Random, churn: int) -> dict[str, float]:
    x = {name: rng.choice([0.0, -1.0, rng.uniform(0, 400)]) for name in FEATURE_NAMES}
    x["days_since_last_order"] = rng.uniform(60, 300) if churn else rng.uniform(0, 40)
    x["order_count"] = float(rng.randint(1, 3) if churn else rng.randint(2, 12))
    x["overdue_ratio"] = x["days_since_last_order"] / 30.0
    x["open_cart"] = 0.0  # a feature that never varies: its variance stays 0
    return x


def learned_state(model: ChurnModel) -> bytes:
    """Everything learning changes, pickled (the pipeline without River's plan caches)."""
    scaler = model.pipeline["StandardScaler"]
    lr = model.pipeline["LogisticRegression"]
    return pickle.dumps(
        (
            scaler.counts,
            scaler.means,
            scaler.vars,
            lr.weights,
            lr.intercept,
            lr.optimizer.n_iterations,
            model.learned,
            model.metrics.__dict__,
            {k: v.__dict__ for k, v in model.store_metrics.items()},
            model.drifts_detected,
            model.status(),
        )
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_learn_many_equals_learn_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    batches = [
        [
            (features(rng, y), y, rng.choice(["a", "b", None]))
            for y in (int(rng.random() < 0.6) for _ in range(rng.randint(1, 400)))
        ]
        for _ in range(6)
    ]
    one, many = ChurnModel(warm_examples=150), ChurnModel(warm_examples=150)
    for batch in batches:  # warmth switches inside a batch; a batch of 1 falls back
        expected = [one.learn(x, y, store) for x, y, store in batch]
        assert many.learn_many(batch) == expected
        assert learned_state(many) == learned_state(one)
    assert one.warm and many.warm
    probe = [features(rng, i % 2) for i in range(20)]
    assert many.score_batch(probe) == one.score_batch(probe)


def test_learn_many_falls_back_when_keys_differ() -> None:
    rng = random.Random(9)
    batch = [(features(rng, i % 2), i % 2, "s") for i in range(30)]
    shuffled = dict(reversed(list(batch[7][0].items())))  # same keys, other order
    batch[7] = (shuffled, batch[7][1], "s")
    one, many = ChurnModel(warm_examples=5), ChurnModel(warm_examples=5)
    assert many.learn_many(batch) == [one.learn(x, y, s) for x, y, s in batch]
    assert learned_state(many) == learned_state(one)


def test_learn_sequence_continues_a_trained_pipeline() -> None:
    """Starting from learned state (and a restored snapshot) gives the same as River."""
    rng = random.Random(4)
    names = ["a", "b", "c"]
    rows = [[rng.gauss(0, 3), rng.choice([0.0, 1.0]), 5.0] for _ in range(500)]
    ys = [rng.random() < 0.3 for _ in rows]
    river_model, ours = build_pipeline(), build_pipeline()
    expected = []
    for row, y in zip(rows, ys, strict=True):
        x = dict(zip(names, row, strict=True))
        expected.append(river_model.predict_proba_one(x)[True])
        river_model.learn_one(x, y)
    got = learn_sequence(ours, names, rows[:200], ys[:200])
    ours = pickle.loads(pickle.dumps(ours))
    got += learn_sequence(ours, names, rows[200:], ys[200:])
    assert got == expected
    assert ours["LogisticRegression"].weights == river_model["LogisticRegression"].weights
    assert ours["StandardScaler"].vars == river_model["StandardScaler"].vars


def test_supports_only_the_mirrored_configuration() -> None:
    assert supports(build_pipeline("logreg"))
    assert not supports(build_pipeline("hoeffding_tree"))
    adam = compose.Pipeline(
        preprocessing.StandardScaler(), linear_model.LogisticRegression(optim.Adam())
    )
    assert not supports(adam)
    assert not supports(compose.Pipeline(linear_model.LogisticRegression()))


# -- the customer stage's end-only publication (replays) ------------------------------


def test_end_only_publication_keeps_every_other_output_and_the_newest_tables() -> None:
    """``publish_daily=False`` drops only superseded tables and counters."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from engine.customers import KeyGroupCustomers, StageConfig
    from engine.events import EraseRequest, OrderEvent, decode_event
    from engine.messages import GroupAggregates, StageCounters
    from replay.simulate import SimulationConfig, simulate

    with simulate(SimulationConfig(stores=2, customers=150, days=200, seed=8)) as run:
        events = [decode_event(line) for line in run.lines()]
    customers = sorted({(e.store_id, e.customer_id) for e in events})
    erased_at = events[len(events) // 2].ts
    for number, (store, customer) in enumerate(customers[::9]):  # some leave midway
        events.append(
            EraseRequest(
                type="erase_request",
                event_id=f"erase-{number}",
                store_id=store,
                customer_id=customer,
                occurred_at=datetime.fromtimestamp(erased_at + number, UTC),
            )
        )
    events.sort(key=lambda e: e.ts)
    outputs = []
    for daily in (True, False):
        group = KeyGroupCustomers(replace(StageConfig(), publish_daily=daily))
        out = []
        for event in events:
            amount = float(event.amount) if isinstance(event, OrderEvent) else 0.0
            out.extend(group.on_event(event, amount))
        out.extend(group.final(max(e.ts for e in events) + 86_400.0))
        outputs.append(out)
    daily_out, end_out = outputs
    tables = (GroupAggregates, StageCounters)
    assert [x for x in daily_out if not isinstance(x, tables)] == [
        x for x in end_out if not isinstance(x, tables)
    ]
    assert sum(isinstance(x, GroupAggregates) for x in daily_out) > 2 * sum(
        isinstance(x, GroupAggregates) for x in end_out
    )

    def newest(out: list[Any]) -> tuple[dict[str, GroupAggregates], StageCounters]:
        aggregates = {x.store_id: x for x in out if isinstance(x, GroupAggregates)}
        counters = [x for x in out if isinstance(x, StageCounters)][-1]
        return aggregates, counters

    assert newest(daily_out) == newest(end_out)
    assert len(newest(end_out)[0]) == 2


# -- the model stage learns runs of examples as it learned them one by one -----------


def test_model_stage_runs_match_learning_one_by_one() -> None:
    """Runs of examples learned together give the same outputs and model state, also
    for the fitted prior's sample, which observes every request the stage keeps (the
    run before a request is learned first while the model may still warm up), and the
    final requests' scores, blended with that prior."""
    from engine.flow import ModelLogic, event_order_key
    from engine.messages import Example, Learned, Scored, ScoreRequest

    rng = random.Random(12)
    items: list[Any] = []
    for i in range(600):
        customer = f"c{rng.randrange(80)}"
        x = features(rng, i % 2)
        t = 1_000.0 * i
        if rng.random() < 0.5:
            items.append(Example("s", customer, t - 90.0, x, i % 2, t))
        else:
            cause = rng.choice(["event", "checkpoint", "final"])
            items.append(ScoreRequest("s", customer, t, x, "active", "low", {}, cause))
    for score_causes in (frozenset(), None, frozenset({"event"})):
        runs = ModelLogic(ChurnModel(warm_examples=40), True, 1, score_causes, True, 90.0)
        out, _ = runs.on_batch(items)
        more, _ = runs.on_eof()

        # the stage as it was: every example learned as soon as it is reached
        one = ModelLogic(ChurnModel(warm_examples=40), True, 1, score_causes, True, 90.0)
        reference = one.model
        expected: list[Any] = []
        pending: list[ScoreRequest] = []
        for item in sorted(items, key=lambda i: event_order_key(i, 90.0)):
            if isinstance(item, ScoreRequest):
                scored = score_causes is None or item.cause in score_causes
                if not reference.warm or scored or item.cause == "final":
                    # the prior observes what the stage keeps (a warm model's unscored
                    # requests are passed over)
                    reference.priors.observe(item.store_id, item.customer_id, item.t, item.features)
                if item.cause != "final" and scored:
                    pending.append(item)
            else:
                if pending:
                    expected.extend(s.churn_probability for s in one._score(pending))
                    pending = []
                expected.append(reference.learn(item.features, item.y, item.store_id))
        if pending:
            expected.extend(s.churn_probability for s in one._score(pending))
        finals = [i for i in items if isinstance(i, ScoreRequest) and i.cause == "final"]
        finals.sort(key=lambda r: (r.store_id, r.customer_id))  # scored last, as at EOF
        expected.extend(s.churn_probability for s in one._score(finals))
        learned: list[float] = []
        for o in out + more:
            if isinstance(o, Learned):
                learned.append(o.p)
            elif isinstance(o, Scored):
                learned.append(o.churn_probability)
        assert learned == expected
        assert learned_state(runs.model) == learned_state(reference)
        assert pickle.dumps(runs.model.priors) == pickle.dumps(reference.priors)
