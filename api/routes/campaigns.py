"""Effect tracking per rule, step, arm and channel (CONTRACTS.md ``/campaigns``).

The effects stage writes each key group's absolute counters to
``{prefix}:{<store>}:effects:<group>``; this route sums the key groups
(``settings.key_groups`` of them, one pipeline) and derives rates, the uplift
over the holdout with its 95% CI (Newcombe's hybrid score interval), the
incremental revenue and ROI (send cost from ``settings.send_cost``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ApiKeyDep, RedisDep, SettingsDep, require_store
from api.errors import ErrorBody
from engine.connectors.effects_sink import read_effects
from engine.effects import summarize

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["campaigns"])


class Campaigns(BaseModel):
    store_id: str
    attribution_window_days: int
    rows: list[dict[str, Any]]


@router.get(
    "/campaigns",
    response_model=Campaigns,
    responses={
        401: {"model": ErrorBody, "description": "missing or unknown API key"},
        403: {"model": ErrorBody, "description": "the key belongs to another store"},
    },
)
def campaigns(store_id: str, key: ApiKeyDep, client: RedisDep, settings: SettingsDep) -> Campaigns:
    """Sent, engagement, conversions, revenue and offer cost vs the holdout, per row."""
    require_store(store_id, key, "read")
    rows, _meta = read_effects(client, settings.key_prefix, store_id, settings.key_groups)
    out = [
        summarize(row, rows[row], settings.send_cost.get(row.channel, 0.0))
        for row in sorted(rows, key=lambda r: (r.rule_id, r.step or 0, r.arm or "", r.channel))
    ]
    return Campaigns(
        store_id=store_id, attribution_window_days=settings.attribution_window_days, rows=out
    )
