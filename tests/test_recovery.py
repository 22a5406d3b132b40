"""Crash recovery of the live dataflow: kill -9 mid-stream, resume, same profiles.

The same deterministic stream (~3,000 events for 300 customers over two years,
with webhook retries and a few malformed records) goes

* once through a clean run of the live dataflow, and
* in four chunks through a run that is killed with SIGKILL at a random moment
  (seeded) after each of the first three chunks and restarted from its Bytewax
  recovery store, each time after the next chunk was produced.

Both runs use their own topic, key prefix and recovery store; the clean run goes
on meanwhile. Their final Redis profiles must be equal: features, segment, value
tier, profile attributes and time; and the model must have learned the same
examples. A replayed event after a restart is new to the stage's dedup, but the
dedup was rewound with the rest of the state, so it is applied exactly once to the
resumed state.

A run is finished when every customer has all its orders and Redis has not
changed for 2.5 s (with the event clock the stage's counters are written only at
EOF, which a tailing Kafka source never reaches, so they cannot tell).

Churn probabilities are not equal (xfail below): the single model shard learns the
examples of all key groups, and the order in which different key groups' examples
reach it follows the input batching, so an SGD model that saw the same examples in
another order scores differently. An uninterrupted run fed in the same paced
chunks differs from the clean run just as much, so this is not a recovery loss.

How many records a restart replayed is bounded from the dead letters of the
malformed markers (one every 25 events): ``kills[i]["replayed"]``.
"""

from __future__ import annotations

import pickle
import random
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from procs import DeadLetters, kill9, paced, profiles, start_dataflow

from engine.cli import produce_lines
from engine.events import BrowseEvent, OrderEvent, encode_event
from engine.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261123
CUSTOMERS = 300
BASE = datetime(2023, 1, 2, tzinfo=UTC)
SPAN_DAYS = 730
CHUNKS = 4
MALFORMED_EVERY = 25
WARM_EXAMPLES = 20
KEY_GROUPS = 16
CHUNK_SECONDS = 6.0


def make_stream(seed: int = SEED) -> tuple[list[bytes], int, dict[str, int]]:
    """(lines in topic order, distinct good events, orders per customer)."""
    rng = random.Random(seed)
    events: list[tuple[float, bytes]] = []
    orders: dict[str, int] = {}
    for c in range(CUSTOMERS):
        customer = f"c{c:03d}"
        start = rng.uniform(0, SPAN_DAYS * 0.6)
        n_orders = rng.randint(1, 7)
        orders[customer] = n_orders
        days = sorted(rng.uniform(start, SPAN_DAYS) for _ in range(n_orders))
        for k, day in enumerate(days):
            event = OrderEvent(
                type="order_created",
                event_id=f"o-{customer}-{k}",
                store_id="shop",
                customer_id=customer,
                occurred_at=BASE + timedelta(days=day),
                order_id=f"{customer}-{k}",
                amount=f"{rng.randint(5, 180)}.{rng.randint(0, 99):02d}",
                currency=rng.choice(("USD", "USD", "EUR", "GBP")),
            )
            events.append((day, encode_event(event)))
        for k in range(rng.randint(0, 9)):
            day = rng.uniform(start, SPAN_DAYS)
            view = BrowseEvent(
                type="product_view",
                event_id=f"v-{customer}-{k}",
                store_id="shop",
                customer_id=customer,
                occurred_at=BASE + timedelta(days=day),
                sku=f"sku-{rng.randint(1, 40)}",
            )
            events.append((day, encode_event(view)))
    events.sort(key=lambda pair: pair[0])
    distinct = len(events)
    lines: list[bytes] = []
    for n, (_, line) in enumerate(events):
        lines.append(line)
        if rng.random() < 0.05:  # a webhook retry, delivered a few events later
            lines.insert(len(lines) + rng.randint(0, 3), line)
        if n % MALFORMED_EVERY == 0:
            lines.append(b"malformed " + str(n).encode())
    return lines, distinct, orders


def fresh(settings: Settings, tmp_path: Path, name: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return settings.model_copy(
        update={
            "events_topic": f"events-{name}-{tag}",
            "dead_letter_topic": f"dead-{name}-{tag}",
            "key_prefix": f"t{name}{tag}",
            "run_dir": tmp_path / name,
            "recovery_dir": tmp_path / name / "recovery",
            "epoch_interval_s": 1.0,
            "key_groups": KEY_GROUPS,
            "model_warm_examples": WARM_EXAMPLES,
        }
    )


def model_status(client: redis.Redis, prefix: str) -> dict[str, Any]:
    raw = client.get(f"{prefix}:model:0")
    return orjson.loads(raw) if raw else {}


def stable_view(client: redis.Redis, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return profiles(client, prefix), model_status(client, prefix)


def comparable(profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "features": profile["features"],
        "segment": profile["segment"],
        "value_tier": profile["value_tier"],
        "profile": profile["profile"],
        "updated_at": profile["updated_at"],
        "cause": profile["cause"],
    }


def wait_complete(
    client: redis.Redis,
    prefix: str,
    orders: dict[str, int],
    proc: subprocess.Popen[bytes],
    timeout_s: float = 90.0,
    quiet_s: float = 2.5,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until every customer has all its orders and Redis stopped changing."""
    deadline = time.monotonic() + timeout_s
    last: tuple[dict[str, Any], dict[str, Any]] | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dataflow exited with {proc.returncode}"
        view = stable_view(client, prefix)
        done = len(view[0]) == len(orders) and all(
            view[0][c]["features"]["order_count"] == n for c, n in orders.items()
        )
        if view != last:
            last, since = view, time.monotonic()
        elif done and time.monotonic() - since >= quiet_s:
            return view
        time.sleep(0.25)
    raise AssertionError("the dataflow did not finish the stream in time")


def resume_offset(recovery: Path) -> int | None:
    """The input offset a restart resumes from: the newest input snapshot before the
    frontier of the last execution (None: nothing snapshotted yet)."""
    best: tuple[int, int] | None = None
    for part in recovery.glob("*.sqlite3"):
        with sqlite3.connect(part) as db:
            front = db.execute(
                "SELECT MIN(worker_frontier) FROM fronts"
                " WHERE ex_num = (SELECT MAX(ex_num) FROM fronts)"
            ).fetchone()[0]
            rows = db.execute(
                "SELECT snap_epoch, ser_change FROM snaps WHERE step_id LIKE '%.input'"
            ).fetchall()
        for epoch, blob in rows:
            if blob is None or front is None or epoch >= front:
                continue
            if best is None or epoch > best[0]:
                best = (epoch, pickle.loads(blob))
    return None if best is None else best[1]


def split(lines: list[bytes], rng: random.Random) -> list[list[bytes]]:
    """CHUNKS chunks of seeded random sizes, each ending with a malformed marker."""
    cuts = sorted(rng.sample(range(len(lines) // 8, len(lines) - len(lines) // 8), CHUNKS - 1))
    bounds = [0, *cuts, len(lines)]
    return [
        [*lines[a:b], b"chunk end " + str(i).encode()]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]


@dataclass
class Runs:
    """What the two runs left in Redis, and what happened at each kill."""

    lines: list[bytes]
    distinct: int
    orders: dict[str, int]
    clean: dict[str, dict[str, Any]] = field(default_factory=dict)
    crash: dict[str, dict[str, Any]] = field(default_factory=dict)
    clean_model: dict[str, Any] = field(default_factory=dict)
    crash_model: dict[str, Any] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)
    topic: list[bytes] = field(default_factory=list)
    """The crashed run's topic, in offset order."""
    dead_letter_sources: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_crashing(
    settings: Settings, client: redis.Redis, runs: Runs, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Produce chunk, run 0.5-3 s (seeded), kill -9, produce next chunk, restart, ..."""
    rng = random.Random(SEED + 1)
    chunks = split(runs.lines, rng)
    letters = DeadLetters(settings)
    try:
        procs.append(start_dataflow(settings))
        # a malformed probe first: its dead letter says the dataflow is up and reading
        runs.topic.append(b"probe")
        produced = produce_lines(settings, iter(runs.topic))
        letters.wait_new()
        for i, chunk in enumerate(chunks):
            if i > 0:
                procs.append(start_dataflow(settings))
            runs.topic.extend(chunk)
            producer = threading.Thread(
                target=produce_lines, args=(settings, paced(chunk, CHUNK_SECONDS))
            )
            producer.start()
            if i == len(chunks) - 1:
                producer.join()
                produced += len(chunk)
                break
            run_for = rng.uniform(0.5, 3.0)
            before = len(letters.sources)
            letters.wait_new()  # the (re)started dataflow is processing
            time.sleep(run_for)
            kill9(procs[-1])
            producer.join()  # the rest of the chunk arrives while the dataflow is down
            produced += len(chunk)
            letters.drain()
            written = letters.sources[before:]
            resume = resume_offset(settings.recovery_dir or Path()) or 0
            # how far the killed run got, to within the markers' spacing: the newest
            # marker it dead-lettered, and the first one after that it did not
            reached = max(written) + 1
            markers = [n for n, line in enumerate(runs.topic) if not line.startswith(b"{")]
            not_reached = min((n for n in markers if n >= reached), default=produced)
            runs.kills.append(
                {
                    "after_chunk": i,
                    "ran_s": round(run_for, 2),
                    "produced": produced,
                    "resume_offset": resume,
                    "reached": (reached, not_reached),
                    "replayed": (max(0, reached - resume), max(0, not_reached - resume)),
                }
            )
        runs.crash, runs.crash_model = wait_complete(
            client, settings.key_prefix, runs.orders, procs[-1]
        )
        letters.drain()
        runs.dead_letter_sources = letters.sources
    finally:
        kill9(procs[-1])
        letters.close()


@pytest.fixture(scope="module")
def runs(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    base = Settings(
        kafka_brokers=services["broker"].address,
        redis_url=f"redis://{services['redis'].address}/0",
    )
    tmp_path = tmp_path_factory.mktemp("recovery")
    clean, crash = fresh(base, tmp_path, "clean"), fresh(base, tmp_path, "crash")
    client = redis.Redis.from_url(base.redis_url)
    lines, distinct, orders = make_stream()
    result = Runs(lines, distinct, orders)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        began = time.monotonic()
        produce_lines(clean, iter(lines))
        procs.append(start_dataflow(clean))  # the clean run goes on meanwhile, uninterrupted
        run_crashing(crash, client, result, procs)
        result.timings["crash_run_s"] = round(time.monotonic() - began, 1)
        result.clean, result.clean_model = wait_complete(client, clean.key_prefix, orders, procs[0])
        result.timings["both_runs_s"] = round(time.monotonic() - began, 1)
        yield result
    finally:
        for proc in procs:
            kill9(proc)
        for prefix in (clean.key_prefix, crash.key_prefix):
            keys = list(client.scan_iter(f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()


def test_profiles_after_three_kill9_equal_a_clean_run(runs: Runs) -> None:
    """Features, segment, tier and profile of every customer, and the model's examples."""
    kills = runs.kills
    replayed_letters = len(runs.dead_letter_sources) - len(set(runs.dead_letter_sources))
    print(
        f"{len(runs.topic)} records ({runs.distinct} distinct good events); kills: {kills};"
        f" dead letters replayed: {replayed_letters}; {runs.timings}"
    )
    assert len(kills) == 3
    # the kills hit a running dataflow mid-stream, and restarts resumed from snapshots
    assert any(0 < k["resume_offset"] < k["produced"] for k in kills), kills

    assert set(runs.clean) == set(runs.crash) == set(runs.orders)
    assert all(runs.crash[c]["features"]["order_count"] == n for c, n in runs.orders.items())
    different = [c for c in runs.clean if comparable(runs.clean[c]) != comparable(runs.crash[c])]
    assert not different, (different[:5], kills)
    segments = {p["segment"] for p in runs.crash.values()}
    assert len(segments) > 1, segments

    # the model learned the same labelled examples, each once (none lost, none doubled)
    for name in ("examples_learned", "examples", "base_rate", "model_version", "model_warm"):
        assert runs.crash_model[name] == runs.clean_model[name], name

    # every malformed record was dead-lettered; records replayed after a restart may be
    # dead-lettered twice (the dead-letter topic is at least once)
    malformed = {n for n, line in enumerate(runs.topic) if not line.startswith(b"{")}
    assert set(runs.dead_letter_sources) == malformed


@pytest.mark.xfail(
    strict=True,
    reason="churn probabilities depend on the order in which the single model shard learns "
    "examples of different key groups, and that order follows the input batching (Kafka "
    "fetch timing), not recovery: an uninterrupted run fed the same chunks differs from the "
    "clean run as much; features, segments and the learned examples are equal",
)
def test_churn_probabilities_equal_a_clean_run(runs: Runs) -> None:
    different = [
        c
        for c in runs.clean
        if runs.clean[c]["churn_probability"] != runs.crash[c]["churn_probability"]
    ]
    assert not different
