"""Tenancy: every route the app serves, found by walking it, keeps each store to itself.

The routes are enumerated from the app (:func:`api.routes.app_routes`, included
routers expanded), never listed here, and each falls in one of three classes:

* public by design (health, metrics, the API docs, the dashboard's static page
  shell, which holds no store data) — named in ``PUBLIC``; they must not show a
  store's data;
* signed webhooks (``/v1/stores/{store_id}/webhooks/...``): an API key is no
  credential there, and one store's signature does not open another store;
* everything else needs an API key: none, an unknown or a revoked key gets 401;
  store A's key (even admin) gets 403/404 and nothing of store B; a key without
  the route's scope (``x-required-scope`` in its OpenAPI extras, ``read`` for a
  GET; a write route must declare one) gets 403; B's key with the scope gets
  through (so the refusals above are about the key, not a broken request).

A route added later without authentication fails ``test_every_route_...``, and
``test_a_route_without_auth_is_caught`` shows that it does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_api_routes import canonical

from api.deps import ApiKeyDep
from api.keys import create_key, revoke_key
from api.main import create_app
from api.routes import REQUIRED_SCOPE, ServedRoute, app_routes
from api.webhook_secrets import PLATFORMS, set_secret
from api.webhooks import sign_generic, sign_shopify, sign_woocommerce
from engine.connectors.redis_sink import customer_key, segment_key, store_model_key
from engine.settings import Settings

pytestmark = pytest.mark.integration

STORE_A, STORE_B = "store-a", "store-b"
MARKER = "b-only-7f3e9c"  # in store B's data, and nowhere else
PUBLIC = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/dashboard/static/{name}",
        "/dashboard/{store_id}",
    }
)
WEBHOOKS = "/v1/stores/{store_id}/webhooks/"
PATH_VALUES = {"customer_id": "c1", "segment": "silent", "name": "dashboard.js"}
SCOPES = ("read", "ingest", "admin")


# ------------------------------------------------------------------ request building


def fill(path: str, store: str) -> str:
    values = {**PATH_VALUES, "store_id": store}
    out = path
    while "{" in out:
        name = out[out.index("{") + 1 : out.index("}")]
        assert name in values, f"{path}: add a test value for the path parameter {name!r}"
        out = out.replace("{" + name + "}", values[name], 1)
    return out


def example(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A minimal valid instance of an OpenAPI (JSON) schema, for request bodies.

    >>> example({"type": "object", "required": ["ids"], "properties": {"ids": {
    ...     "type": "array", "minItems": 1, "items": {"type": "string"}}}}, {})
    {'ids': ['c1']}
    """
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return example(spec["components"]["schemas"][name], spec)
    for combined in ("anyOf", "oneOf", "allOf"):
        if combined in schema:
            return example(schema[combined][0], spec)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example(props[k], spec) for k in schema.get("required", [])}
    if kind == "array":
        return [example(schema.get("items", {}), spec)] * max(1, schema.get("minItems", 1))
    return {"string": "c1", "integer": 1, "number": 1.0, "boolean": True, "null": None}.get(
        str(kind), "c1"
    )


def request_body(path: str, method: str, spec: dict[str, Any]) -> bytes | None:
    operation = spec["paths"].get(path, {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        return orjson.dumps(example(content["application/json"]["schema"], spec))
    return None if method in ("GET", "DELETE") else b"{}"


def required_scope(served: ServedRoute, method: str) -> str:
    extra = getattr(served.route, "openapi_extra", None) or {}
    declared = extra.get(REQUIRED_SCOPE)
    if declared is None:
        assert method == "GET", (
            f"{method} {served.path}: a write route must declare openapi_extra"
            f"={{{REQUIRED_SCOPE!r}: 'ingest'|'admin'|'read'}}"
        )
        return "read"
    assert declared in SCOPES, f"{served.path}: unknown scope {declared!r}"
    return str(declared)


# ------------------------------------------------------------------ the checks


class Keys:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        def make(store: str, *scopes: str) -> str:
            return create_key(client, prefix, store, scopes)

        self.a_admin = make(STORE_A, "read", "ingest", "admin")
        self.b = {scope: make(STORE_B, scope) for scope in SCOPES}
        self.revoked = make(STORE_B, "read", "ingest", "admin")
        assert revoke_key(client, prefix, self.revoked)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyed_violations(api: TestClient, served: ServedRoute, method: str, keys: Keys) -> list[str]:
    spec = api.app.openapi()  # type: ignore[attr-defined]
    where = f"{method} {served.path}"
    body = request_body(served.path, method, spec)
    url_b = fill(served.path, STORE_B)
    found: list[str] = []

    def call(headers: dict[str, str]) -> Any:
        return api.request(
            method, url_b, content=body, headers={"Content-Type": "application/json", **headers}
        )

    for label, headers in (
        ("no key", {}),
        ("not a bearer", {"Authorization": f"Basic {keys.b['admin']}"}),
        ("unknown key", bearer("cfk_unknown")),
        ("revoked key", bearer(keys.revoked)),
    ):
        answer = call(headers)
        if answer.status_code != 401 or MARKER in answer.text:
            found.append(f"{where}: {label} got {answer.status_code}, not 401")
    foreign = call(bearer(keys.a_admin))
    if foreign.status_code not in (403, 404) or MARKER in foreign.text:
        found.append(f"{where}: store A's admin key on store B got {foreign.status_code}")
    need = required_scope(served, method)
    for scope, key in keys.b.items():
        answer = call(bearer(key))
        allowed = scope in (need, "admin")  # scopes are not nested; admin holds all
        if not allowed and (answer.status_code != 403 or MARKER in answer.text):
            found.append(f"{where}: a {scope!r} key got {answer.status_code}, not 403")
        if allowed and answer.status_code in (401, 403):
            found.append(f"{where}: B's own {scope!r} key was refused ({answer.status_code})")
    return found


def signed_violations(api: TestClient, served: ServedRoute, keys: Keys) -> list[str]:
    """A webhook of store B: API keys are no credential, store A's signature opens nothing."""
    raw = orjson.dumps({"events": [canonical("c1", store=STORE_B)]})
    a_signed = {  # signed with store A's real secrets
        "X-Churnflow-Signature": sign_generic(raw, secret_of(STORE_A, "events")),
        "X-Shopify-Hmac-Sha256": sign_shopify(raw, secret_of(STORE_A, "shopify")),
        "X-WC-Webhook-Signature": sign_woocommerce(raw, secret_of(STORE_A, "woocommerce")),
        "X-Shopify-Topic": "orders/create",
        "X-WC-Webhook-Topic": "order.created",
    }
    found = []
    for label, headers in (
        ("store B's admin API key", bearer(keys.b["admin"])),
        ("store A's signature", a_signed),
        ("nothing", {}),
    ):
        answer = api.post(fill(served.path, STORE_B), content=raw, headers=headers)
        if answer.status_code != 401:
            found.append(f"POST {served.path}: {label} got {answer.status_code}, not 401")
    # the same signature opens store A's own webhook: the refusal above is about the store
    own = api.post(fill(served.path, STORE_A), content=raw, headers=a_signed)
    if own.status_code == 401:
        found.append(f"POST {served.path}: store A's signature refused on store A")
    return found


def violations(api: TestClient, keys: Keys) -> tuple[list[str], int]:
    """Every tenancy violation of the app's routes, and how many (route, method) were checked."""
    found: list[str] = []
    checked = 0
    for served in app_routes(api.app.routes):  # type: ignore[attr-defined]
        for method in sorted(served.methods):
            checked += 1
            if served.path in PUBLIC:
                if "{store_id}" in served.path:
                    answer = api.request(method, fill(served.path, STORE_B))
                    if MARKER in answer.text:
                        found.append(f"{method} {served.path}: public, yet shows B's data")
            elif served.path.startswith(WEBHOOKS):
                found += signed_violations(api, served, keys)
            else:
                found += keyed_violations(api, served, method, keys)
    return found, checked


# ------------------------------------------------------------------ fixtures and tests


def secret_of(store: str, platform: str) -> str:
    return f"{store}-{platform}-secret"


def seed_store_b(client: redis.Redis, prefix: str) -> None:
    doc = {
        "store_id": STORE_B,
        "customer_id": "c1",
        "churn_probability": 0.8,
        "risk_band": "high",
        "segment": "silent",
        "value_tier": "high",
        "reasons": [{"feature": "x", "contribution": 1.0, "direction": "up", "text": MARKER}],
        "model_version": "v",
        "model_warm": True,
        "features": {"order_count": 3.0},
        "profile": {"note": MARKER},
        "updated_at": "2026-11-23T10:00:00+00:00",
    }
    client.set(customer_key(prefix, STORE_B, "c1"), orjson.dumps(doc))
    client.zadd(segment_key(prefix, STORE_B, "silent"), {"c1": 0.8})
    client.set(store_model_key(prefix, STORE_B, 0), orjson.dumps({"version": "v", "examples": 9}))
    for platform in PLATFORMS:  # store A has its own secrets; B's are different
        for store in (STORE_A, STORE_B):
            set_secret(client, prefix, store, platform, secret_of(store, platform))


@pytest.fixture()
def tenancy(settings: Settings, redis_client: redis.Redis) -> Iterator[tuple[TestClient, Keys]]:
    roomy = settings.model_copy(update={"rate_limit_per_s": 10_000.0, "rate_limit_burst": 10_000})
    seed_store_b(redis_client, settings.key_prefix)
    keys = Keys(redis_client, settings.key_prefix)
    with TestClient(create_app(roomy)) as api:
        yield api, keys


def test_every_route_keeps_each_store_to_itself(tenancy: tuple[TestClient, Keys]) -> None:
    api, keys = tenancy
    # B's own key sees B's data: the marker is reachable, so its absence below means something
    own = api.get(f"/v1/stores/{STORE_B}/customers/c1", headers=bearer(keys.b["read"]))
    assert own.status_code == 200 and MARKER in own.text
    found, checked = violations(api, keys)
    assert found == []
    keyed = [r for r in app_routes(api.app.routes) if r.path.startswith("/v1/")]  # type: ignore[attr-defined]
    assert checked >= len(keyed) >= 14  # the walk found the routers' routes


def test_a_route_without_auth_is_caught(tenancy: tuple[TestClient, Keys]) -> None:
    api, keys = tenancy
    app: FastAPI = api.app  # type: ignore[assignment]

    @app.get("/v1/stores/{store_id}/leak")
    def leak(store_id: str) -> dict[str, str]:
        return {"store_id": store_id, "note": MARKER}

    found, _ = violations(api, keys)
    assert any(v.startswith("GET /v1/stores/{store_id}/leak: no key got 200") for v in found)
    assert any("store A's admin key on store B got 200" in v and "leak" in v for v in found)

    @app.post("/v1/stores/{store_id}/undeclared")
    def undeclared(store_id: str, key: ApiKeyDep) -> dict[str, str]:
        return {"store_id": store_id}  # authenticated, but no store check and no scope

    with pytest.raises(AssertionError, match="must declare"):
        violations(api, keys)
