"""Schemathesis against the API's own OpenAPI schema, on real services.

Starts a fresh Tansu broker and redis-server on free loopback ports (the same
code as ``churnflow demo``: :func:`engine.services.services_up`), seeds one store
(profiles, segment sets, the model document, recall entries, webhook secrets) and
an admin API key, runs the API with uvicorn in a child process, then runs
``schemathesis run`` on ``/openapi.json`` with the key, the store fixed in every
path (``path.store_id``; other parameters and bodies are generated, valid and
invalid), and these checks: no server error, status codes, content types,
response headers and bodies that match the schema. The webhook routes are
signed by a ``before_call`` hook (this module, loaded by Schemathesis through
``SCHEMATHESIS_HOOKS``) with the seeded store's secrets, over the exact bytes
sent, so generated bodies reach the normalisers instead of stopping at 401.
Exits with Schemathesis' status (non-zero on any failure) and stops everything
it started; the API's log is kept in the run directory.

    .venv/bin/python scripts/schemathesis_run.py [--max-examples 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import redis

from api.keys import create_key
from api.webhook_secrets import PLATFORMS, set_secret
from api.webhooks import sign_generic, sign_shopify, sign_woocommerce
from engine.cli import api_command, child_env
from engine.connectors.kafka import ensure_topics
from engine.connectors.recall_sink import enqueue_intents
from engine.connectors.redis_sink import customer_key, segment_key, store_model_key
from engine.delivery.providers import contact_key
from engine.services import free_port, services_down, services_up
from engine.settings import Settings
from engine.triggers.intent import RecallIntent

STORE = "demo"
SECRETS_ENV = "CHURNFLOW_SCHEMATHESIS_SECRETS"
WEBHOOKS = "/v1/stores/{store_id}/webhooks/"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def signature_headers(platform: str, raw: bytes, store_secrets: dict[str, str]) -> dict[str, str]:
    """The header a platform signs ``raw`` with, under the store's secret."""
    secret = store_secrets[platform]
    if platform == "shopify":
        return {"X-Shopify-Hmac-Sha256": sign_shopify(raw, secret)}
    if platform == "woocommerce":
        return {"X-WC-Webhook-Signature": sign_woocommerce(raw, secret)}
    return {"X-Churnflow-Signature": sign_generic(raw, secret)}


def body_bytes(body: object, not_set: type) -> bytes:
    """The bytes Schemathesis would send for a generated body (negative cases may be bytes).

    >>> body_bytes({"a": [1]}, type(None)), body_bytes(b"\\x00", type(None))
    (b'{"a": [1]}', b'\\x00')
    """
    if isinstance(body, not_set):
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return json.dumps(body).encode()


def register_signing_hook() -> None:
    """Sign every webhook call Schemathesis makes (runs inside the Schemathesis process)."""
    import schemathesis
    from schemathesis.core import NotSet

    store_secrets: dict[str, str] = json.loads(os.environ[SECRETS_ENV])

    @schemathesis.hook
    def before_call(context: object, case: schemathesis.Case, kwargs: dict[str, object]) -> None:
        path = case.operation.path
        if not path.startswith(WEBHOOKS):
            return
        raw = body_bytes(case.body, NotSet)
        kwargs["data"] = raw
        signed = signature_headers(path.removeprefix(WEBHOOKS), raw, store_secrets)
        case.headers = {**(case.headers or {}), **signed}


if os.environ.get(SECRETS_ENV) and __name__ != "__main__":
    register_signing_hook()


def seed_store(client: redis.Redis, prefix: str, customers: int = 20) -> dict[str, str]:
    """Profiles in the Redis sink's layout, segments, the model, contacts and recalls."""
    segments = ("new", "active", "silent", "churned", "returned")
    pipe = client.pipeline()
    for n in range(customers):
        customer = f"c{n}"
        probability = round((n % 10) / 10 + 0.05, 2)
        segment = segments[n % len(segments)]
        doc = {
            "store_id": STORE,
            "customer_id": customer,
            "churn_probability": probability,
            "risk_band": "high" if probability >= 0.7 else "low",
            "segment": segment,
            "value_tier": "mid",
            "reasons": [
                {
                    "feature": "days_since_last_order",
                    "contribution": 0.4,
                    "direction": "up",
                    "text": "82 days since last order",
                }
            ],
            "model_version": "logreg-1",
            "model_warm": True,
            "features": {"order_count": float(n), "spend_total_base": 10.0 * n},
            "profile": {"country": "DE"},
            "updated_at": "2026-11-23T10:00:00+00:00",
        }
        pipe.set(customer_key(prefix, STORE, customer), orjson.dumps(doc))
        pipe.zadd(segment_key(prefix, STORE, segment), {customer: probability})
        pipe.hset(contact_key(prefix, STORE, "email"), customer, f"{customer}@example.com")
    model = {"version": "logreg-1", "warm": True, "examples": 120, "roc_auc": 0.77}
    pipe.set(store_model_key(prefix, STORE, 0), orjson.dumps(model))
    pipe.execute()
    due = 1_790_000_000.0
    intents = [
        RecallIntent(STORE, f"c{n}", "winback", 0, due, due, "email", "winback", "en")
        for n in range(3)
    ]
    enqueue_intents(client, prefix, intents)
    store_secrets = {platform: secrets.token_hex(16) for platform in PLATFORMS}
    for platform, secret in store_secrets.items():
        set_secret(client, prefix, STORE, platform, secret)
    return store_secrets


def schemathesis_config() -> str:
    """The store fixed in every path (and mostly in batch events); seeded ids, segments and
    real topics half the time."""
    customers = ", ".join(f'"c{n}"' for n in range(20))
    topics = '"orders/create", "customers/redact", "checkouts/update", "refunds/create"'
    return f"""
[dictionaries.customers]
values = [{customers}]
[dictionaries.segments]
values = ["new", "active", "silent", "churned", "returned"]
[dictionaries.shopify_topics]
values = [{topics}]
[dictionaries.stores]
values = ["{STORE}"]

[parameters]
"path.store_id" = "{STORE}"
"path.customer_id" = {{ dictionary = "customers", probability = 0.5 }}
"path.segment" = {{ dictionary = "segments", probability = 0.5 }}
"header.x-shopify-topic" = {{ dictionary = "shopify_topics", probability = 0.5 }}
"body.events[*].store_id" = {{ dictionary = "stores", probability = 0.9 }}
"""


def wait_ready(base: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {base} did not become ready in {timeout_s:.0f} s")


def schemathesis_command(base: str, key: str, config: Path, args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        args.checks,
        "--max-examples",
        str(args.max_examples),
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-dir",
        str((args.work_dir / "report").resolve()),
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100, help="per operation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checks", default=",".join(CHECKS), help="Schemathesis' --checks")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(".run/schemathesis"),
        help="where Schemathesis keeps its reports and failure database (replayed next time)",
    )
    args = parser.parse_args(argv)

    run_dir = Path(tempfile.mkdtemp(prefix="churnflow-schemathesis-"))
    services = services_up(run_dir)
    api: subprocess.Popen[bytes] | None = None
    try:
        settings = Settings(
            kafka_brokers=services["broker"].address,
            redis_url=f"redis://{services['redis'].address}/0",
            run_dir=run_dir,
            api_port=free_port(),
            rate_limit_per_s=1e6,
            rate_limit_burst=1_000_000,
            webhook_rate_limit_per_s=1e6,
            webhook_rate_limit_burst=1_000_000,
        )
        ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
        client = redis.Redis.from_url(settings.redis_url)
        store_secrets = seed_store(client, settings.key_prefix)
        key = create_key(client, settings.key_prefix, STORE, ("read", "ingest", "admin"))
        api_log = (run_dir / "api.log").open("wb")
        api = subprocess.Popen(
            api_command(settings), env=child_env(settings), stdout=api_log, stderr=api_log
        )
        base = f"http://{settings.api_host}:{settings.api_port}"
        wait_ready(base)
        config = run_dir / "schemathesis.toml"
        config.write_text(schemathesis_config())
        print(f"API {base}, store {STORE!r}, log {run_dir / 'api.log'}", flush=True)
        env = {
            **os.environ,
            SECRETS_ENV: json.dumps(store_secrets),
            "SCHEMATHESIS_HOOKS": Path(__file__).stem,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
        }
        args.work_dir.mkdir(parents=True, exist_ok=True)
        command = schemathesis_command(base, key, config, args)
        return subprocess.call(command, env=env, cwd=args.work_dir)
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(10)
            except subprocess.TimeoutExpired:
                api.kill()
        services_down(run_dir)


if __name__ == "__main__":
    sys.exit(main())
