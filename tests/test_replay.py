"""Replay through the real dataflow (``replay.harness.run_replay``) on a small CDNOW subset.

The subset is the first ``N_CUSTOMERS`` customers of the CDNOW master file (it is
sorted by customer id), read through ``load_cdnow`` from a truncated copy, so the
event ids are the ones of the full file.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from engine.events import OrderEvent, encode_event
from engine.flow import FlowSinks, build_flow
from engine.messages import DeadLetter, Scored
from engine.settings import Settings
from replay.harness import ReplayResult, end_of_day_ts, run_replay, write_scores_csv
from replay.loaders import cdnow_path, load_cdnow

N_CUSTOMERS = 300
UNTIL = date(1997, 9, 30)
SETTINGS = Settings(key_groups=8, model_warm_examples=50)


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> list[OrderEvent]:
    src = cdnow_path()
    dst = tmp_path_factory.mktemp("cdnow") / "CDNOW_subset.txt"
    kept = []
    with src.open() as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if number > 1 and fields and int(fields[0]) > N_CUSTOMERS:
                break
            kept.append(line)
    dst.write_text("".join(kept))
    events = load_cdnow(dst)
    assert len({e.customer_id for e in events}) == N_CUSTOMERS
    return events


@pytest.fixture(scope="module")
def base_run(subset: list[OrderEvent]) -> ReplayResult:
    return run_replay(subset, SETTINGS)


def csv_bytes(result: ReplayResult, path: Path) -> bytes:
    write_scores_csv(result, path)
    return path.read_bytes()


def test_replay_is_deterministic(
    subset: list[OrderEvent], base_run: ReplayResult, tmp_path: Path
) -> None:
    again = run_replay(subset, SETTINGS)
    first = csv_bytes(base_run, tmp_path / "a.csv")
    second = csv_bytes(again, tmp_path / "b.csv")
    assert first == second
    assert len(base_run.final_scores) == N_CUSTOMERS
    assert [(e.customer_id, e.t0, e.y) for e in base_run.examples] == [
        (e.customer_id, e.t0, e.y) for e in again.examples
    ]
    assert base_run.counters == again.counters
    assert base_run.counters["events"] == len(subset)
    assert base_run.dead_letters == []


def final_view(result: ReplayResult) -> dict[str, tuple[Any, ...]]:
    return {
        s.request.customer_id: (
            s.request.t,
            tuple(s.request.features.items()),
            s.request.segment,
            s.request.value_tier,
        )
        for s in result.final_scores
    }


def example_multiset(result: ReplayResult) -> Counter[tuple[Any, ...]]:
    return Counter(
        (e.store_id, e.customer_id, e.t0, e.y, tuple(e.features.items())) for e in result.examples
    )


def test_two_workers_same_features_labels_segments_and_scores(
    subset: list[OrderEvent], base_run: ReplayResult, tmp_path: Path
) -> None:
    # With two workers the examples reach the model in another interleaving; in a
    # replay the model learns them in event-time order, so even the scores are equal.
    two = run_replay(subset, SETTINGS, workers=2)
    assert csv_bytes(two, tmp_path / "two.csv") == csv_bytes(base_run, tmp_path / "one.csv")
    assert [(x.resolved_at, x.y, x.p) for x in two.learned] == [
        (x.resolved_at, x.y, x.p) for x in base_run.learned
    ]
    assert final_view(two) == final_view(base_run)
    assert example_multiset(two) == example_multiset(base_run)
    assert two.counters == base_run.counters
    assert [s.request.customer_id for s in two.final_scores] == [
        s.request.customer_id for s in base_run.final_scores
    ]


def test_no_look_ahead(subset: list[OrderEvent], tmp_path: Path) -> None:
    cut = end_of_day_ts(UNTIL)
    full = run_replay(subset, SETTINGS, until=UNTIL)
    truncated = run_replay([e for e in subset if e.ts <= cut], SETTINGS, until=UNTIL)
    extra_day = datetime(1997, 10, 1, 0, 0, tzinfo=UTC)  # the first instant after UNTIL
    extras = [
        OrderEvent(
            type="order_created",
            event_id=f"extra-{i}",
            store_id="cdnow",
            customer_id=customer,
            order_id=f"extra-{i}",
            amount=Decimal("999.99"),
            currency="USD",
            occurred_at=extra_day + timedelta(days=i),
        )
        for i, customer in enumerate(["00001", "00002", "00150", "99999"])
    ]
    appended = run_replay(subset + extras, SETTINGS, until=UNTIL)
    reference = csv_bytes(truncated, tmp_path / "truncated.csv")
    assert csv_bytes(full, tmp_path / "full.csv") == reference
    assert csv_bytes(appended, tmp_path / "appended.csv") == reference
    assert example_multiset(full) == example_multiset(truncated) == example_multiset(appended)
    assert all(s.request.t == cut for s in full.final_scores)
    # nothing after the cut leaks into features or labels
    assert all(e.resolved_at <= cut for e in full.examples)
    assert all(e.t0 + SETTINGS.horizon_days * 86400.0 <= cut for e in full.examples)
    with_orders = {e.customer_id for e in subset if e.ts <= cut}
    assert [s.request.customer_id for s in full.final_scores] == sorted(with_orders, key=int)


def test_dead_letters_through_build_flow() -> None:
    good = OrderEvent(
        type="order_created",
        event_id="g1",
        store_id="s",
        customer_id="c",
        order_id="1",
        amount=Decimal("5"),
        currency="USD",
        occurred_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    redis_items: list[Any] = []
    dead: list[Any] = []
    scores: list[Any] = []
    sinks = FlowSinks(
        redis=TestingSink(redis_items), dead_letter=TestingSink(dead), scores=TestingSink(scores)
    )
    items = [b"{bad", encode_event(good), ("kafka/0/7", b"[1, 2]"), None]
    flow = build_flow(TestingSource(items), sinks, SETTINGS.model_copy(update={"clock": "event"}))
    run_main(flow)
    assert len(dead) == 3
    assert all(isinstance(d, DeadLetter) and d.error and d.step == "decode" for d in dead)
    by_raw = {d.raw: d for d in dead}
    assert by_raw[b"{bad"].error.startswith("not JSON")
    assert by_raw[b"{bad"].source == "input"
    assert by_raw[b"[1, 2]"].error == "not a JSON object but list"
    assert by_raw[b"[1, 2]"].source == "kafka/0/7"
    assert by_raw[b""].error == "empty message value"
    # the good event still went through
    assert [s.request.customer_id for s in scores if isinstance(s, Scored)] == ["c"]


def test_cli_scores_csv_contract(subset: list[OrderEvent], tmp_path: Path) -> None:
    table = tmp_path / "events.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cust", "ts", "amount"])
        for e in subset:
            writer.writerow([e.customer_id, e.occurred_at.isoformat(), str(e.amount)])
    out = tmp_path / "scores.csv"
    churnflow = Path(sys.executable).parent / "churnflow"
    env = {**os.environ, "CHURNFLOW_KEY_GROUPS": "8", "CHURNFLOW_MODEL_WARM_EXAMPLES": "50"}
    env["CHURNFLOW_RUN_DIR"] = str(tmp_path / ".run")
    proc = subprocess.run(
        [
            str(churnflow),
            "replay",
            "--source",
            "table",
            "--file",
            str(table),
            "--map",
            "customer_id=cust,occurred_at=ts,amount=amount,default_currency=USD",
            "--until",
            UNTIL.isoformat(),
            "--scores-out",
            str(out),
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "customer_id,churn_probability"
    rows = list(csv.reader(lines[1:]))
    ids = [r[0] for r in rows]
    cut = end_of_day_ts(UNTIL)
    assert sorted(ids) == sorted({e.customer_id for e in subset if e.ts <= cut})
    assert len(ids) == len(set(ids))
    assert all(0.0 <= float(r[1]) <= 1.0 and len(r[1].split(".")[1]) == 6 for r in rows)


def test_write_scores_csv_header_and_rows(base_run: ReplayResult, tmp_path: Path) -> None:
    path = tmp_path / "nested" / "scores.csv"
    assert write_scores_csv(base_run, path) == N_CUSTOMERS
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b"customer_id,churn_probability"
    assert lines[-1] == b""
    assert len(lines) == N_CUSTOMERS + 2
    assert [line.split(b",")[0].decode() for line in lines[1:-1]] == [
        f"{i:05d}" for i in range(1, N_CUSTOMERS + 1)
    ]
