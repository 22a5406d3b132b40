"""GET /campaigns over snapshots written by the effects sink to the real redis-server."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from api.keys import create_key
from api.main import create_app
from engine.connectors.effects_sink import write_snapshots
from engine.effects import COUNT_FIELDS, EffectsSnapshot, RowKey
from engine.settings import Settings

ROW = RowKey("winback", 0, None, "email")


def counts(**values: int) -> dict[str, int]:
    return dict.fromkeys(COUNT_FIELDS, 0) | values


def test_campaigns_sum_key_groups(settings: Settings, redis_client: redis.Redis) -> None:
    prefix = settings.key_prefix
    meta = {"late": 0}
    write_snapshots(
        redis_client,
        prefix,
        [
            EffectsSnapshot(1, "s1", {ROW: counts(sent=5)}, meta),  # superseded below
            EffectsSnapshot(1, "s1", {ROW: counts(sent=10, converted=2, revenue=500_000)}, meta),
            EffectsSnapshot(
                3,
                "s1",
                {ROW: counts(holdout_intents=4, holdout_converted=1, holdout_revenue=100_000)},
                meta,
            ),
        ],
    )
    key = create_key(redis_client, prefix, "s1", ("read",))
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/stores/s1/campaigns", headers={"Authorization": f"Bearer {key}"})
        other = client.get("/v1/stores/s2/campaigns", headers={"Authorization": f"Bearer {key}"})
    assert other.status_code == 403
    assert body.status_code == 200
    doc = body.json()
    assert doc["attribution_window_days"] == 7
    (row,) = doc["rows"]
    assert (row["sent"], row["converted"], row["revenue"]) == (10, 2, 50.0)
    assert row["holdout"] == {"intents": 4, "converted": 1, "revenue": 10.0}
    assert row["conversion_rate"] == 0.2 and row["holdout_conversion_rate"] == 0.25
    assert row["uplift"] == -0.05
    assert row["incremental_revenue"] == 50.0 - 10 * 2.5
    assert row["roi"] is None  # no offer, no send cost
