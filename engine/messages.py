"""The items that flow between the dataflow's stages (plain, picklable dataclasses).

decode ─► Event | DeadLetter
customer stage ─► ScoreRequest, Example, SegmentChange, Erased, StageCounters,
                   GroupAggregates
model stage ─► Scored, ModelStatus
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be used, with the reason and where it came from."""

    raw: bytes
    error: str
    step: str
    source: str
    """``topic/partition/offset`` for Kafka input, ``input/<n>`` otherwise."""


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Score this customer as of event time ``t``."""

    store_id: str
    customer_id: str
    t: float
    features: dict[str, float]
    segment: str
    value_tier: str
    profile: dict[str, Any]
    cause: str
    """``event`` (the customer changed), ``checkpoint`` (silence), ``cart`` (a cart check,
    see :mod:`engine.customers`) or ``final`` (replay end)."""


@dataclass(frozen=True, slots=True)
class Example:
    """A resolved prediction point: features at ``t0`` and the churn label."""

    store_id: str
    customer_id: str
    t0: float
    features: dict[str, float]
    y: int
    resolved_at: float


@dataclass(frozen=True, slots=True)
class SegmentChange:
    store_id: str
    customer_id: str
    t: float
    old: str | None
    new: str


@dataclass(frozen=True, slots=True)
class Erased:
    """The engine forgot this customer; sinks must delete what they hold of it."""

    store_id: str
    customer_id: str
    t: float


@dataclass(frozen=True, slots=True)
class StageCounters:
    """Counters of one key group, emitted when they change at a watermark step."""

    key_group: int
    counts: dict[str, int]
    watermark: float


@dataclass(frozen=True, slots=True)
class GroupAggregates:
    """One key group's cohort table and weekly lifecycle counts of one store (absolute)."""

    key_group: int
    store_id: str
    cohorts: dict[str, dict[str, list[int]]]
    lifecycle: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Scored:
    """A customer's churn probability with its reasons, as the model saw it at ``t``."""

    request: ScoreRequest
    churn_probability: float
    reasons: list[dict[str, Any]]
    model_version: str
    model_warm: bool


@dataclass(frozen=True, slots=True)
class Learned:
    """An example as the model scored it just before learning it (progressive validation)."""

    resolved_at: float
    y: int
    p: float


@dataclass(frozen=True, slots=True)
class ModelStatus:
    shard: int
    model_version: str
    model_warm: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per store whose examples were learned since the last status: its own view."""
