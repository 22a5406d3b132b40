"""The shared model, as each store sees it: its own metrics, nobody else's.

One model shard learns the examples of every store; each store's metrics are kept
apart, written by the real Redis sink and served by ``GET /v1/stores/{s}/model`` —
a store's key never sees another store's example counts or rates.
"""

from __future__ import annotations

import random

import pytest
import redis
from fastapi.testclient import TestClient

from api.keys import create_key
from api.main import create_app
from engine.connectors.redis_sink import write_batch
from engine.features.vector import FEATURE_NAMES
from engine.flow import ModelLogic
from engine.messages import Example, ModelStatus
from engine.models.online import ChurnModel
from engine.settings import Settings

pytestmark = pytest.mark.integration


def examples(store: str, n: int, churn_share: float, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = int(rng.random() < churn_share)
        features = {name: rng.uniform(0, 3) for name in FEATURE_NAMES}
        features["days_since_last_order"] = rng.uniform(60, 200) if y else rng.uniform(0, 40)
        out.append(Example(store, f"c{i}", float(i), features, y, float(i + 90)))
    return out


def test_each_store_sees_its_own_metrics(settings: Settings, redis_client: redis.Redis) -> None:
    logic = ModelLogic(ChurnModel(warm_examples=20))
    a, b = examples("shopa", 120, 0.25, 1), examples("shopb", 40, 0.75, 2)
    stream = sorted(a + b, key=lambda e: e.resolved_at)
    outputs = []
    for start in range(0, len(stream), 25):  # several batches: each status names some stores
        out, _ = logic.on_batch(stream[start : start + 25])
        outputs.extend(out)
    statuses = [o for o in outputs if isinstance(o, ModelStatus)]
    assert statuses and all(set(s.stores) <= {"shopa", "shopb"} for s in statuses)
    write_batch(redis_client, settings.key_prefix, outputs)

    key_a = create_key(redis_client, settings.key_prefix, "shopa", ("read",))
    key_c = create_key(redis_client, settings.key_prefix, "shopc", ("read",))
    with TestClient(create_app(settings)) as api:
        mine = api.get("/v1/stores/shopa/model", headers={"Authorization": f"Bearer {key_a}"})
        theirs = api.get("/v1/stores/shopb/model", headers={"Authorization": f"Bearer {key_a}"})
        none_yet = api.get("/v1/stores/shopc/model", headers={"Authorization": f"Bearer {key_c}"})
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["examples"] == len(a)  # not 160: shopb's examples are not in shopa's view
    assert body["base_rate"] == pytest.approx(sum(e.y for e in a) / len(a))
    assert body["model_version"] == logic.model.version and body["model_warm"] is True
    assert theirs.status_code == 403
    assert none_yet.status_code == 404
    # the shard's own status (operators) still counts every store
    assert logic.model.status()["examples"] == len(a) + len(b)


def test_old_snapshots_restore_without_store_metrics() -> None:
    model = ChurnModel(warm_examples=5)
    del model.__dict__["store_metrics"]  # as pickled before per-store metrics existed
    restored = ChurnModel.restore(model.snapshot())
    restored.learn(dict.fromkeys(FEATURE_NAMES, 1.0), 1, "shopa")
    assert restored.store_status("shopa")["examples"] == 1
