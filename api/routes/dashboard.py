"""The seller's dashboard: one page per store, and the one data route it adds.

``GET /dashboard/{store_id}`` serves a static page (``api/dashboard/static/``,
vanilla JS drawing inline SVG, nothing fetched from elsewhere). The page holds no
data: it asks for the store's API key, keeps it in the tab's ``sessionStorage``
and reads every number from the authenticated ``/v1/stores/{store_id}/...``
routes with ``Authorization: Bearer <key>``, so a key of store B gets 403 there
and the page shows nothing of store A.

``GET /v1/stores/{store_id}/risk`` is the churn-probability histogram: one
``ZCOUNT`` per (segment, bin) of the segment sorted sets (customer -> churn
probability), in one pipeline, so it never reads a profile.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from api.deps import ApiKeyDep, RedisDep, SettingsDep, require_store
from api.errors import ApiError, ErrorBody
from engine.connectors.redis_sink import segment_key
from engine.segments import SEGMENTS

router = APIRouter(tags=["dashboard"])

STATIC_DIR = Path(__file__).resolve().parents[1] / "dashboard" / "static"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
NO_CACHE = {"Cache-Control": "no-cache"}
# Everything comes from this origin; nothing inline, nothing from elsewhere.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "the key belongs to another store"},
}


class RiskBin(BaseModel):
    lower: float
    upper: float
    """Exclusive, but for the last bin, which holds probability 1.0 too."""
    counts: dict[str, int]
    """Customers per lifecycle segment whose churn probability falls in the bin."""
    total: int


class RiskHistogram(BaseModel):
    store_id: str
    bins: list[RiskBin]
    total: int


def bin_edges(bins: int) -> list[tuple[float, float]]:
    """``bins`` equal-width bins over [0, 1].

    >>> bin_edges(4)
    [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    """
    return [(round(i / bins, 6), round((i + 1) / bins, 6)) for i in range(bins)]


def zcount_bounds(lower: float, upper: float, last: bool) -> tuple[str, str]:
    """ZCOUNT bounds of a bin: lower inclusive, upper exclusive except for the last bin.

    >>> zcount_bounds(0.0, 0.5, last=False), zcount_bounds(0.5, 1.0, last=True)
    (('0.0', '(0.5'), ('0.5', '+inf'))
    """
    return repr(lower), "+inf" if last else f"({upper!r}"


@router.get(
    "/v1/stores/{store_id}/risk",
    response_model=RiskHistogram,
    responses=ERRORS,
)
def risk_histogram(
    store_id: str,
    key: ApiKeyDep,
    client: RedisDep,
    settings: SettingsDep,
    bins: Annotated[int, Query(ge=1, le=100)] = 10,
) -> RiskHistogram:
    """Customers per churn-probability bin and lifecycle segment (``ZCOUNT``s, one pipeline)."""
    require_store(store_id, key, "read")
    edges = bin_edges(bins)
    pipe = client.pipeline(transaction=False)
    for segment in SEGMENTS:
        members = segment_key(settings.key_prefix, store_id, segment)
        for i, (lower, upper) in enumerate(edges):
            pipe.zcount(members, *zcount_bounds(lower, upper, last=i == bins - 1))
    found = [int(n) for n in pipe.execute()]
    rows = []
    for i, (lower, upper) in enumerate(edges):
        counts = {segment: found[s * bins + i] for s, segment in enumerate(SEGMENTS)}
        rows.append(RiskBin(lower=lower, upper=upper, counts=counts, total=sum(counts.values())))
    return RiskHistogram(store_id=store_id, bins=rows, total=sum(r.total for r in rows))


def _static_files() -> dict[str, Path]:
    """The files the page may load, by name (nothing else under the directory is served)."""
    return {
        path.name: path
        for path in sorted(STATIC_DIR.iterdir())
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


STATIC_FILES = _static_files()


@router.get("/dashboard/static/{name}", include_in_schema=False)
def dashboard_static(name: str) -> FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        raise ApiError(404, "not_found", f"no dashboard file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=NO_CACHE)


@router.get("/dashboard/{store_id}", response_class=HTMLResponse, include_in_schema=False)
def dashboard_page(store_id: str, settings: SettingsDep) -> HTMLResponse:
    """The page (the same for every store; it reads the store from its URL)."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{currency}}", html.escape(settings.base_currency, quote=True))
    return HTMLResponse(page, headers=PAGE_HEADERS)
