"""The dashboard in a real browser (Debian's chromium driven by Playwright).

The app runs under uvicorn on a free loopback port against the real redis-server
and broker of the fixtures; Redis is seeded in the layouts the routes read (the
Redis sink's profiles and segment sets, the customer stage's per-key-group cohort
and lifecycle tables, the model status). The page must draw the fixture's numbers,
follow new data without a reload, and show nothing of a store to another store's key.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from procs import kill9, start_dataflow

from api.keys import create_key
from api.main import create_app
from engine.cli import produce_lines
from engine.connectors.effects_sink import write_snapshots
from engine.connectors.kafka import ensure_topics
from engine.connectors.redis_sink import (
    aggregates_key,
    customer_key,
    segment_key,
    store_model_key,
)
from engine.effects import COUNT_FIELDS, MONEY_UNITS, EffectsSnapshot, RowKey
from engine.events import OrderEvent, encode_event
from engine.services import free_port
from engine.settings import Settings

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STORE = "shopa"
OTHER = "shopb"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install chromium; `make test` does it)",
)


def profile(customer: str, p: float, segment: str, tier: str, spend: float) -> dict[str, Any]:
    return {
        "store_id": STORE,
        "customer_id": customer,
        "churn_probability": p,
        "risk_band": "high" if p >= 0.7 else "low",
        "segment": segment,
        "value_tier": tier,
        "reasons": [
            {
                "feature": "days",
                "contribution": 1.2,
                "direction": "raises",
                "text": f"reason of {customer}",
            }
        ],
        "model_version": "logreg-test",
        "model_warm": True,
        "features": {"order_count": 3.0, "spend_total_base": spend},
        "profile": {},
        "updated_at": "1997-06-01T00:00:00+00:00",
        "cause": "event",
    }


CUSTOMERS = [
    profile("c-hi", 0.91, "silent", "high", 420.0),
    profile("c-mid", 0.75, "active", "mid", 120.0),
    profile("c-low", 0.88, "silent", "low", 10.0),
    profile("c-gone", 0.97, "churned", "high", 900.0),
    profile("c-safe", 0.05, "active", "high", 300.0),
]


def week(day: str, new: int, churned: int) -> dict[str, Any]:
    return {
        "week_start": day,
        "counts": {"new": new, "active": 4, "silent": 2, "churned": churned, "returned": 1},
        "tiers": {"low": 5, "mid": 3, "high": 2},
    }


FUNNEL = ("sent", "delivered", "opened", "clicked", "converted")
WINBACK_A = RowKey("winback", 0, "A", "email")
WINBACK_B = RowKey("winback", 1, "B", "sms")


def counts(**given: float) -> dict[str, int]:
    """A row's counters; money given in currency, stored in units like the effects stage."""
    money = {"revenue", "offer_cost", "holdout_revenue"}
    return {
        name: round(given.get(name, 0) * (MONEY_UNITS if name in money else 1))
        for name in COUNT_FIELDS
    }


# the effects stage's absolute counters of two key groups; winback/0/A is in both
EFFECTS = {
    0: {
        WINBACK_A: counts(
            sent=60,
            delivered=58,
            opened=30,
            clicked=12,
            converted=9,
            revenue=900,
            holdout_intents=20,
            holdout_converted=1,
            holdout_revenue=50,
        ),
    },
    2: {
        WINBACK_A: counts(
            sent=40,
            delivered=40,
            opened=20,
            clicked=8,
            converted=5,
            revenue=500,
            holdout_intents=10,
            holdout_converted=1,
            holdout_revenue=60,
        ),
        WINBACK_B: counts(
            sent=20, delivered=19, clicked=3, converted=2, revenue=150, offer_cost=15
        ),
    },
}


def effects_total(
    groups: dict[int, dict[RowKey, dict[str, int]]], row: RowKey | None = None
) -> dict[str, int]:
    """Counters summed over key groups (one row, or every row)."""
    total = dict.fromkeys(COUNT_FIELDS, 0)
    for rows in groups.values():
        for key, values in rows.items():
            if row is None or key == row:
                for name in COUNT_FIELDS:
                    total[name] += values[name]
    return total


def seed_effects(client: redis.Redis, prefix: str, groups: dict[int, Any]) -> None:
    write_snapshots(
        client,
        prefix,
        [EffectsSnapshot(group, STORE, rows, {}) for group, rows in groups.items()],
    )


def seed(client: redis.Redis, prefix: str) -> None:
    pipe = client.pipeline()
    for doc in CUSTOMERS:
        pipe.set(customer_key(prefix, STORE, doc["customer_id"]), orjson.dumps(doc))
        pipe.zadd(
            segment_key(prefix, STORE, doc["segment"]),
            {doc["customer_id"]: doc["churn_probability"]},
        )
    # two key groups' tables: the routes add them up
    pipe.set(
        aggregates_key(prefix, STORE, "cohorts", 0),
        orjson.dumps({"month": {"1997-01": [30, 6, 3], "1997-02": [10, 2]}, "week": {}}),
    )
    pipe.set(
        aggregates_key(prefix, STORE, "cohorts", 3),
        orjson.dumps({"month": {"1997-01": [10, 4, 1]}, "week": {}}),
    )
    pipe.set(
        aggregates_key(prefix, STORE, "lifecycle", 0),
        orjson.dumps([week("1997-03-24", 5, 1), week("1997-03-31", 7, 2)]),
    )
    calibration = [
        {
            "bin": f"{i / 10:.1f}-{(i + 1) / 10:.1f}",
            "count": 10 * (i + 1),
            "mean_predicted": (i + 0.5) / 10,
            "observed_rate": (i + 0.4) / 10,
        }
        for i in range(10)
    ]
    pipe.set(
        store_model_key(prefix, STORE, 0),
        orjson.dumps(
            {
                "model_version": "logreg-test",
                "model_warm": True,
                "examples": 550,
                "examples_learned": 550,
                "roc_auc": 0.777,
                "log_loss": 0.52,
                "brier": 0.17,
                "base_rate": 0.6,
                "drifts_detected": 2,
                "calibration": calibration,
            }
        ),
    )
    pipe.execute()


@pytest.fixture()
def server(settings: Settings, redis_client: redis.Redis) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture()
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_risk_histogram_counts_segment_sets(settings: Settings, redis_client: redis.Redis) -> None:
    seed(redis_client, settings.key_prefix)
    key = create_key(redis_client, settings.key_prefix, STORE, ("read",))
    other = create_key(redis_client, settings.key_prefix, OTHER, ("read",))
    with TestClient(create_app(settings)) as api:
        body = api.get(
            f"/v1/stores/{STORE}/risk?bins=4", headers={"Authorization": f"Bearer {key}"}
        ).json()
        denied = api.get(f"/v1/stores/{STORE}/risk", headers={"Authorization": f"Bearer {other}"})
        bad = api.get(f"/v1/stores/{STORE}/risk?bins=0", headers={"Authorization": f"Bearer {key}"})
    assert [b["total"] for b in body["bins"]] == [1, 0, 0, 4]
    assert body["bins"][3]["counts"] == {
        "prospect": 0,
        "new": 0,
        "active": 1,
        "silent": 2,
        "churned": 1,
        "returned": 0,
    }
    assert body["total"] == len(CUSTOMERS)
    assert denied.status_code == 403 and bad.status_code == 422


@needs_chromium
def test_dashboard_draws_the_fixture_and_follows_new_data(
    server: str, settings: Settings, redis_client: redis.Redis, browser: Any
) -> None:
    seed(redis_client, settings.key_prefix)
    key = create_key(redis_client, settings.key_prefix, STORE, ("read",))
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        url = (msg.location or {}).get("url", "")
        if msg.type == "error":
            errors.append(f"{msg.text} @ {url}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.goto(f"{server}/dashboard/{STORE}?poll=700#key={key}")

    cell = page.locator('.cell[data-cohort="1997-01"][data-k="1"]')
    cell.wait_for()
    assert cell.get_attribute("data-active") == "10"  # 6 + 4 over two key groups
    assert cell.get_attribute("data-size") == "40"
    assert cell.get_attribute("data-retention") == "0.2500"
    assert cell.text_content() == "25%"
    assert page.locator('.cell[data-cohort="1997-02"]').count() == 2
    assert page.locator('.kpi[data-segment="silent"]').get_attribute("data-count") == "2"
    assert page.locator('.kpi[data-segment="new"] .kpi-foot').inner_text() == "▲ 2 this week"
    assert page.locator("[data-high-risk]").inner_text() == "3"
    rows = page.locator("#atrisk tr[data-customer]")
    assert [rows.nth(i).get_attribute("data-customer") for i in range(rows.count())] == [
        "c-hi",
        "c-mid",
        "c-safe",
    ]
    assert "reason of c-hi" in page.locator('#atrisk tr[data-customer="c-hi"]').inner_text()
    assert page.locator('[data-metric="roc_auc"] b').inner_text() == "0.777"
    assert page.locator(".calibration-point").count() == 10
    # no effect counters seeded: the campaigns route answers with no rows
    assert "No recall messages sent yet" in page.locator("#campaigns").inner_text()
    assert page.evaluate("location.hash") == ""  # the key left the URL

    # new data arrives: the page follows without a reload
    redis_client.set(
        aggregates_key(settings.key_prefix, STORE, "cohorts", 5),
        orjson.dumps({"month": {"1997-01": [20, 5]}}),
    )
    doc = profile("c-new", 0.95, "silent", "high", 800.0)
    redis_client.set(customer_key(settings.key_prefix, STORE, "c-new"), orjson.dumps(doc))
    redis_client.zadd(segment_key(settings.key_prefix, STORE, "silent"), {"c-new": 0.95})
    page.wait_for_function(
        """() => document.querySelector('.cell[data-cohort="1997-01"][data-k="1"]')
                  ?.getAttribute('data-active') === '15'""",
        timeout=20000,
    )
    page.locator('#atrisk tr[data-customer="c-new"]').wait_for(timeout=20000)
    assert page.locator('.kpi[data-segment="silent"]').get_attribute("data-count") == "3"

    # recall results arrive: the funnel and the per-row table show the summed counters
    seed_effects(redis_client, settings.key_prefix, EFFECTS)
    page.locator('#campaigns .funnel .stage[data-stage="sent"]').wait_for(timeout=20000)
    total = effects_total(EFFECTS)
    drawn = {
        stage: page.locator(f'#campaigns .funnel .stage[data-stage="{stage}"]').get_attribute(
            "data-value"
        )
        for stage in FUNNEL
    }
    assert drawn == {stage: str(total[stage]) for stage in FUNNEL}
    row_a = effects_total(EFFECTS, WINBACK_A)
    tr = page.locator('#campaigns tr[data-row="winback/0/A/email"]')
    assert tr.locator('[data-field="sent"]').inner_text() == str(row_a["sent"])
    assert tr.locator('[data-field="converted"]').inner_text() == str(row_a["converted"])
    uplift = row_a["converted"] / row_a["sent"] - (
        row_a["holdout_converted"] / row_a["holdout_intents"]
    )
    assert tr.locator('[data-field="uplift"] .mono').inner_text() == f"+{uplift * 100:.1f} pts"
    assert page.locator("#campaigns tr[data-row]").count() == 2
    assert "no interval yet" in page.locator(
        '#campaigns tr[data-row="winback/1/B/sms"] [data-field="uplift"]'
    ).get_attribute("data-tip")
    assert errors == []


@needs_chromium
def test_another_stores_key_sees_nothing(
    server: str, settings: Settings, redis_client: redis.Redis, browser: Any
) -> None:
    seed(redis_client, settings.key_prefix)
    other = create_key(redis_client, settings.key_prefix, OTHER, ("read",))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server}/dashboard/{STORE}#key={other}")
    error = page.locator("#login-error")
    error.wait_for()
    assert f"not valid for store “{STORE}”" in error.inner_text()
    assert page.locator("#board").is_hidden()
    text = page.locator("body").inner_text()
    assert "c-hi" not in text and "1997-01" not in text
    assert page.evaluate(f"sessionStorage.getItem('churnflow:key:{STORE}')") is None
    # the key still opens its own store's (empty) dashboard
    page.goto(f"{server}/dashboard/{OTHER}#key={other}")
    page.locator('.kpi[data-segment="silent"]').wait_for()
    assert page.locator('.kpi[data-segment="silent"]').get_attribute("data-count") == "0"
    assert "c-hi" not in page.locator("body").inner_text()


def orders(customers: range, day: int) -> list[bytes]:
    """One first order per customer on 1997-01-<day>, in the store the page shows."""
    return [
        encode_event(
            OrderEvent(
                type="order_created",
                event_id=f"o-{c}",
                store_id=STORE,
                customer_id=f"c{c}",
                occurred_at=datetime(1997, 1, day, 12, tzinfo=UTC),
                order_id=f"order-{c}",
                amount="25.00",
                currency="USD",
            )
        )
        for c in customers
    ]


@needs_chromium
def test_dashboard_follows_events_through_the_dataflow(
    server: str, settings: Settings, redis_client: redis.Redis, browser: Any, tmp_path: Path
) -> None:
    """Events produced to the broker reach the open page: broker → dataflow → Redis → page."""
    # the dataflow's own run and recovery directories, not the shared .run/
    settings = settings.model_copy(update={"run_dir": tmp_path, "recovery_dir": tmp_path / "rec"})
    ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
    key = create_key(redis_client, settings.key_prefix, STORE, ("read",))
    produce_lines(settings, iter(orders(range(4), day=2)))
    flow = start_dataflow(settings)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{server}/dashboard/{STORE}?poll=700#key={key}")
        cohort = '.cell[data-cohort="1997-01"][data-k="0"]'
        wait_for = """([selector, size]) =>
            document.querySelector(selector)?.getAttribute('data-size') === size"""
        page.wait_for_function(wait_for, arg=[cohort, "4"], timeout=90_000)
        assert page.locator('.kpi[data-segment="new"]').get_attribute("data-count") == "4"

        produce_lines(settings, iter(orders(range(4, 7), day=9)))
        page.wait_for_function(wait_for, arg=[cohort, "7"], timeout=90_000)
        page.wait_for_function(
            """() => document.querySelector('.kpi[data-segment="new"]')
                      ?.getAttribute('data-count') === '7'""",
            timeout=30_000,
        )
    finally:
        kill9(flow)
