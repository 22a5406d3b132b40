"""The API's routers; :func:`app_routes` lists every route an app serves.

FastAPI (0.16x) includes routers lazily: ``app.routes`` holds one entry per
``include_router`` whose ``original_router`` keeps the routes. The security and
tenancy tests and the Schemathesis script walk the app with :func:`app_routes`,
so a route added later is checked without anyone listing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from starlette.routing import BaseRoute

__all__ = ["REQUIRED_SCOPE", "ServedRoute", "app_routes"]

REQUIRED_SCOPE = "x-required-scope"
"""OpenAPI extension naming the key scope a non-GET route needs (``read``, ``ingest``,
``admin``); GET routes need ``read`` unless they say otherwise."""


class ServedRoute(NamedTuple):
    path: str
    """The full path template, include prefixes applied."""
    methods: frozenset[str]
    route: BaseRoute


def _walk(routes: Iterable[BaseRoute], prefix: str) -> Iterator[ServedRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:  # fastapi.routing._IncludedRouter
            context = getattr(route, "include_context", None)
            yield from _walk(included.routes, prefix + str(getattr(context, "prefix", "")))
            continue
        nested = getattr(route, "routes", None)  # a Mount
        path = str(getattr(route, "path", ""))
        if nested is not None and getattr(route, "methods", None) is None:
            yield from _walk(nested, prefix + path)
            continue
        methods = frozenset(getattr(route, "methods", None) or ()) - {"HEAD"}
        yield ServedRoute(prefix + path, methods, route)


def app_routes(routes: Iterable[BaseRoute]) -> list[ServedRoute]:
    """Every (path template, methods, route) of ``app.routes``, included routers expanded.

    >>> from fastapi import APIRouter, FastAPI
    >>> inner = APIRouter(prefix="/v1")
    >>> _ = inner.get("/a")(lambda: 1)
    >>> app = FastAPI()
    >>> app.include_router(inner, prefix="/x")
    >>> [(r.path, sorted(r.methods)) for r in app_routes(app.routes) if r.path.startswith("/x")]
    [('/x/v1/a', ['GET'])]
    """
    return list(_walk(routes, ""))
