"""The API's error body: ``{"error": {"code": "...", "message": "..."}}``, always JSON."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, compile_path

from api.routes import app_routes

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An error with an HTTP status, a stable code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def allowed_methods(routes: Iterable[BaseRoute], path: str) -> list[str]:
    """Every method some route serves at ``path`` (routers split one path's methods, and
    Starlette's ``Allow`` names only the first router's).

    >>> from fastapi import APIRouter, FastAPI
    >>> app, one, two = FastAPI(), APIRouter(), APIRouter()
    >>> _ = one.delete("/c/{cid}")(lambda cid: 1)
    >>> _ = two.get("/c/{cid}")(lambda cid: 1)
    >>> app.include_router(one); app.include_router(two)
    >>> allowed_methods(app.routes, "/c/7")
    ['DELETE', 'GET', 'HEAD']
    """
    methods: set[str] = set()
    for served in app_routes(routes):
        regex, _, _ = compile_path(served.path)
        if regex.match(path):
            methods |= served.methods | ({"HEAD"} if "GET" in served.methods else set())
    return sorted(methods)


def _body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        headers.update(exc.headers or {})
        return JSONResponse(_body(exc.code, exc.message), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx")
            detail = ctx.get("error", "") if isinstance(ctx, dict) else ""
            return JSONResponse(
                _body("malformed_json", f"the body is not JSON: {detail}"), status_code=400
            )
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(_body("invalid_request", f"{where}: {first['msg']}"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app.routes, request.url.path))
        return JSONResponse(
            _body(code, str(exc.detail)), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis error on %s: %s", request.url.path, exc)
        return JSONResponse(_body("unavailable", "the store is unavailable"), status_code=503)
