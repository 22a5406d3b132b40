"""The effects stage: :class:`engine.effects.EffectsGroup` adapted to Bytewax.

Keyed by the customer's key group (the same :func:`engine.keygroups.key_group`
as the customer stage). Input: decoded orders, message events and erasures
``(event, amount in base currency)``, and holdout :class:`RecallIntent`\\ s and
:class:`TriggerProgress` marks from the trigger stage. Output: an
:class:`EffectsSnapshot` (absolute counters) of each store whose counters an
item changed, and of every store at EOF.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bytewax.operators import StatefulLogic

from engine.effects import (
    DAY,
    EffectsConfig,
    EffectsGroup,
    EffectsSnapshot,
    EffectsState,
    to_units,
)
from engine.events import EraseRequest, MessageEvent, OrderEvent
from engine.keygroups import key_group
from engine.settings import Settings
from engine.triggers.intent import RecallIntent
from engine.triggers.stage import TriggerProgress

__all__ = [
    "EffectsLogic",
    "build_effects_logic",
    "effects_config",
    "effects_key",
    "is_effect_input",
]


def effects_config(settings: Settings, gated: bool = False) -> EffectsConfig:
    """``gated``: holdout intents come from a trigger stage that reports its progress."""
    return EffectsConfig(
        window_s=settings.attribution_window_days * DAY,
        lateness_s=settings.allowed_lateness_s,
        dedup_retention_s=settings.dedup_retention_s,
        free_shipping_cost_units=to_units(settings.free_shipping_cost),
        gated=gated,
    )


def is_effect_input(item: Any) -> bool:
    """A decoded ``(event, amount)`` the effects stage uses, a holdout intent or progress."""
    if isinstance(item, RecallIntent):
        return item.holdout
    if isinstance(item, TriggerProgress):
        return True
    return isinstance(item[0], (OrderEvent, MessageEvent, EraseRequest))


def effects_key(item: Any, key_groups: int) -> str:
    """The key group string of a holdout intent, progress or an ``(event, amount)`` pair."""
    if isinstance(item, TriggerProgress):
        return str(item.key_group)
    target = item if isinstance(item, RecallIntent) else item[0]
    return str(key_group(target.store_id, target.customer_id, key_groups))


class EffectsLogic(StatefulLogic[Any, EffectsSnapshot, EffectsState | bytes]):
    def __init__(self, group: EffectsGroup, key_groups: int) -> None:
        self.group = group
        self.key_groups = key_groups

    def on_item(self, value: Any) -> tuple[list[EffectsSnapshot], bool]:
        if self.group.group_id < 0:  # builders get no key: learn it from an item
            self.group.group_id = int(effects_key(value, self.key_groups))
        if isinstance(value, RecallIntent):
            stores = self.group.on_holdout(value)
        elif isinstance(value, TriggerProgress):
            stores = self.group.on_progress(value.t)
        else:
            stores = self.group.on_event(*value)
        return (self.group.snapshots(stores) if stores else []), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[EffectsSnapshot], bool]:
        return self.group.snapshots(), StatefulLogic.RETAIN

    def snapshot(self) -> EffectsState:
        """Taken at every epoch close (see :meth:`EffectsGroup.epoch_snapshot`)."""
        return self.group.epoch_snapshot()


def build_effects_logic(
    settings: Settings, gated: bool = False
) -> Callable[[EffectsState | bytes | None], EffectsLogic]:
    config, groups = effects_config(settings, gated), settings.key_groups

    def build(resume: EffectsState | bytes | None) -> EffectsLogic:
        """``resume``: an epoch snapshot, or a whole-group pickle of an older version."""
        group = EffectsGroup.restore(resume, config) if resume is not None else EffectsGroup(config)
        return EffectsLogic(group, groups)

    return build
