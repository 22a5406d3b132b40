"""Segments: member counts, and members paged by churn probability.

Counts are ``ZCARD`` of each segment's sorted set (customer -> churn
probability, written by the Redis sink). Counts per **value tier** are not
given: the tier lives only inside each profile document, with no index, so
counting it would mean reading every profile of the store.

Members are read with ``ZRANGE ... REV LIMIT`` and their profiles with one
``MGET``. The cursor is an opaque token (today an offset into the sorted set):
the set changes while customers are rescored, so a customer can move between
pages or segments while a client pages. ``min_spend`` is applied to the fetched
page (``features.spend_total_base``), so a page can hold fewer than ``limit``
customers, or none, while ``next_cursor`` is still set; a customer whose profile
vanished between the two reads is left out the same way.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import ApiKeyDep, RedisDep, SettingsDep, require_store
from api.errors import ApiError, ErrorBody
from engine.connectors.redis_sink import customer_key, segment_key
from engine.segments import SEGMENTS

router = APIRouter(prefix="/v1/stores/{store_id}", tags=["segments"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "the key belongs to another store"},
    429: {"model": ErrorBody, "description": "rate limited (Retry-After)"},
}


class SegmentCounts(BaseModel):
    store_id: str
    segments: dict[str, int]
    """Members per lifecycle segment (every segment, zeros included)."""
    total: int


class SegmentPage(BaseModel):
    store_id: str
    segment: str
    order: Literal["desc", "asc"]
    customers: list[dict[str, Any]]
    """Profiles in churn-probability order; filtered, so possibly fewer than ``limit``."""
    next_cursor: str | None


def encode_cursor(offset: int) -> str:
    """An opaque cursor for an offset.

    >>> decode_cursor(encode_cursor(150))
    150
    """
    return base64.urlsafe_b64encode(orjson.dumps({"o": offset})).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = doc["o"]
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise ApiError(422, "invalid_request", "cursor: not a cursor from this API") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ApiError(422, "invalid_request", "cursor: not a cursor from this API")
    return offset


@router.get("/segments", response_model=SegmentCounts, responses=ERRORS)
def segment_counts(
    store_id: str, key: ApiKeyDep, client: RedisDep, settings: SettingsDep
) -> SegmentCounts:
    """Members per lifecycle segment (``ZCARD``s in one pipeline); no per-value-tier counts."""
    require_store(store_id, key, "read")
    pipe = client.pipeline(transaction=False)
    for segment in SEGMENTS:
        pipe.zcard(segment_key(settings.key_prefix, store_id, segment))
    counts = {segment: int(n) for segment, n in zip(SEGMENTS, pipe.execute(), strict=True)}
    return SegmentCounts(store_id=store_id, segments=counts, total=sum(counts.values()))


@router.get(
    "/segments/{segment}/customers",
    response_model=SegmentPage,
    responses={**ERRORS, 404: {"model": ErrorBody, "description": "unknown segment"}},
)
def segment_customers(
    store_id: str,
    segment: str,
    key: ApiKeyDep,
    client: RedisDep,
    settings: SettingsDep,
    min_spend: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    order: Literal["desc", "asc"] = "desc",
) -> SegmentPage:
    """One page of a segment's members by churn probability (``desc``: riskiest first).

    ``min_spend`` keeps customers whose ``features.spend_total_base`` is at least
    that much; it filters the fetched page, so pages may be short (even empty)
    while ``next_cursor`` is set. Follow ``next_cursor`` until it is ``null``.
    """
    require_store(store_id, key, "read")
    if segment not in SEGMENTS:
        raise ApiError(404, "not_found", f"no segment {segment!r}; known: {', '.join(SEGMENTS)}")
    offset = decode_cursor(cursor) if cursor else 0
    members = client.zrange(
        segment_key(settings.key_prefix, store_id, segment),
        "+inf" if order == "desc" else "-inf",
        "-inf" if order == "desc" else "+inf",
        byscore=True,
        desc=order == "desc",
        offset=offset,
        num=limit,
    )
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    raws = client.mget([customer_key(settings.key_prefix, store_id, c) for c in ids]) if ids else []
    customers = []
    for raw in raws:
        if raw is None:
            continue
        doc = orjson.loads(raw)
        if min_spend is not None:
            spend = (doc.get("features") or {}).get("spend_total_base", 0.0)
            if not isinstance(spend, int | float) or spend < min_spend:
                continue
        customers.append(doc)
    next_cursor = encode_cursor(offset + limit) if len(ids) == limit else None
    return SegmentPage(
        store_id=store_id,
        segment=segment,
        order=order,
        customers=customers,
        next_cursor=next_cursor,
    )
