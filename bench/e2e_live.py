"""End to end on real services: broker -> live dataflow -> Redis, beside a plain loop.

    python bench/e2e_live.py [--events 20000] [--customers 2000] [--seed 7]
                             [--latency-rate 100] [--latency-seconds 15]
                             [--no-recovery] [--skip-plain]

Prints one figure per line, ``name value unit``; asserts nothing about timings.

Starts its own Tansu broker and redis-server (``engine.services``, free loopback
ports, a temporary run directory). The stream is the simulator's
(``replay.simulate``: several stores, profiles, browsing, carts, orders, refunds,
newsletters), with its window chosen so that ``--customers`` customers make about
``--events`` events (the exact count is printed). All of it is produced to a real
topic before the dataflow starts (not timed; ``produce_events_per_s`` is printed),
followed by one sentinel event of a fresh customer.

* ``e2e_*``: the live dataflow as the demo runs it — ``python -m bytewax.run
  "engine.live:get_flow()"`` with Bytewax recovery (``engine.cli.dataflow_command``),
  i.e. ``engine.flow.build_flow`` with scoring, the default recall rules, effect
  tracking and the Redis sinks. Timed from the process launch until the sentinel's
  profile is in Redis and then every customer has a profile (one process, one Kafka
  partition, one model shard: the sentinel comes out last; the check of all profiles
  confirms it). ``e2e_events_per_s`` counts from the first profile in Redis on
  (the process start, imports and the consumer's start, ``e2e_startup_s``, left
  out); ``e2e_launch_events_per_s`` from the launch. ``e2e_cpu_s`` is the
  dataflow process' CPU time (user + system) while the stream was processed.
* ``score_latency_*``: then, with the dataflow still running and its state warm,
  events of fresh customers are produced at ``--latency-rate`` per second for
  ``--latency-seconds``, each stamped with an event time that moves on from the
  stream's end as the wall clock does. The latency of one event is the wall time
  from just before ``produce()`` to Redis' keyspace notification of its customer's
  profile ``SET`` (received by a subscriber in this process): produce, broker,
  Kafka source, decode, customer stage, model, rules, the Redis sink's pipeline.
* ``plain_loop_*``: after the dataflow is stopped, the same events in this process
  with no framework: ``decode_item`` (decode + currency) + ``key_group`` +
  ``KeyGroupCustomers.on_event`` on a dict of key groups, and every 1,000 events
  (the Kafka source's batch) the score requests and examples through the model
  stage's own logic (``engine.flow.ModelLogic.on_batch``: score, then learn). No
  rules, no effect tracking, no Redis, no Kafka. (``bench/customer_stage.py``'s
  plain loop drops the stage's outputs, so it cannot feed the model.)
* ``e2e_plain_ratio`` = ``e2e_events_per_s`` / ``plain_loop_events_per_s``.

The machine's cores are shared by the broker, Redis, the dataflow and this script
(and, on a shared machine, by everyone else): ``loadavg_*`` lines say how busy it was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from customer_stage import emit, loadavg  # noqa: E402

from engine.cli import child_env, dataflow_command, produce_pairs  # noqa: E402
from engine.connectors.kafka import ensure_topics, idempotent_producer  # noqa: E402
from engine.connectors.redis_sink import customer_key  # noqa: E402
from engine.customers import KeyGroupCustomers  # noqa: E402
from engine.events import BrowseEvent, OrderEvent, encode_event  # noqa: E402
from engine.flow import ModelLogic, decode_item, stage_config  # noqa: E402
from engine.keygroups import key_group  # noqa: E402
from engine.messages import DeadLetter, Example, Scored, ScoreRequest  # noqa: E402
from engine.models.online import ChurnModel  # noqa: E402
from engine.services import services_down, services_up  # noqa: E402
from engine.settings import Settings  # noqa: E402
from replay.harness import SOURCE_BATCH  # noqa: E402
from replay.simulate import SimulationConfig, simulate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PILOT_CUSTOMERS = 300
PILOT_DAYS = (30, 120)
SENTINEL = "zz-sentinel"
PROBE_PREFIX = "lat-"


# -- the stream ---------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    lines: list[bytes]
    keys: list[bytes]
    """Each line's Kafka key, ``store:customer``."""
    last_ts: dict[tuple[str, str], float]
    """(store, customer) -> the customer's latest event time."""
    end_ts: float
    store: str
    """The store of the sentinel and the latency probes (the stream's first)."""
    days: int
    """The simulated window: customers arrive over it, so a short one is mostly new
    customers (10 events per customer is about 6 days of the simulator's activity)."""


def days_for(per_customer: float, intercept: float, slope: float) -> int:
    """Window (days) at which events per customer = intercept + slope * days reach the target.

    >>> days_for(10.0, 4.0, 0.1)
    60
    >>> days_for(2.0, 4.0, 0.1)
    1
    """
    return max(1, round((per_customer - intercept) / slope))


def window_days(events: int, customers: int, seed: int) -> int:
    """Days of simulated window that give about ``events`` events for ``customers``.

    Events per customer grow about linearly with the window (a profile and the first
    sessions up front, then browsing, orders and newsletters): two small pilot runs
    give the line.
    """
    per_customer = []
    for days in PILOT_DAYS:
        config = SimulationConfig(customers=PILOT_CUSTOMERS, days=days, seed=seed)
        with simulate(config) as run:
            per_customer.append(sum(1 for _ in run.lines()) / PILOT_CUSTOMERS)
    slope = (per_customer[1] - per_customer[0]) / (PILOT_DAYS[1] - PILOT_DAYS[0])
    intercept = per_customer[0] - slope * PILOT_DAYS[0]
    return days_for(events / customers, intercept, slope)


def event_ts(text: str) -> float:
    """Seconds since the epoch of an ISO-8601 timestamp with an offset.

    >>> event_ts("1970-01-01T01:00:10+01:00")
    10.0
    """
    return datetime.fromisoformat(text).timestamp()


def make_stream(events: int, customers: int, seed: int) -> Stream:
    days = window_days(events, customers, seed)
    config = SimulationConfig(customers=customers, days=days, seed=seed)
    lines: list[bytes] = []
    keys: list[bytes] = []
    last_ts: dict[tuple[str, str], float] = {}
    with simulate(config) as run:
        for line in run.lines():
            doc = orjson.loads(line)
            who = (doc["store_id"], doc["customer_id"])
            ts = event_ts(doc["occurred_at"])
            last_ts[who] = max(ts, last_ts.get(who, ts))
            lines.append(line)
            keys.append(f"{who[0]}:{who[1]}".encode())
    end_ts = max(last_ts.values())
    return Stream(lines, keys, last_ts, end_ts, orjson.loads(lines[0])["store_id"], days)


def probe_event(store: str, customer: str, ts: float, n: int) -> bytes:
    """A fresh customer's first event (orders and views alternate)."""
    when = datetime.fromtimestamp(ts, UTC)
    if n % 2:
        return encode_event(
            OrderEvent(
                type="order_created",
                event_id=f"{customer}-o",
                store_id=store,
                customer_id=customer,
                occurred_at=when,
                order_id=f"{customer}-o",
                amount="25.00",
                currency="USD",
            )
        )
    return encode_event(
        BrowseEvent(
            type="product_view",
            event_id=f"{customer}-v",
            store_id=store,
            customer_id=customer,
            occurred_at=when,
            sku="sku-1",
        )
    )


# -- the live dataflow ----------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_check(client: redis.Redis, prefix: str, stream: Stream) -> tuple[int, int]:
    """(customers without a profile, customers whose profile is older than their last event).

    The second can be non-zero once all is done: a segment timer that fires when the
    watermark passes it rescored the customer as of the timer's time, after a later
    non-order event of theirs had been scored.
    """
    absent = behind = 0
    items = list(stream.last_ts.items())
    for start in range(0, len(items), 5000):
        chunk = items[start : start + 5000]
        docs = client.mget([customer_key(prefix, s, c) for (s, c), _ in chunk])
        for (_, ts), doc in zip(chunk, docs, strict=True):
            if doc is None:
                absent += 1
            elif event_ts(orjson.loads(doc)["updated_at"]) < ts - 1e-6:
                behind += 1
    return absent, behind


def wait_for(check: Any, proc: subprocess.Popen[bytes], every_s: float, what: str) -> float:
    """Poll ``check()`` until true; the time it became true. Fails if the dataflow died."""
    while not check():
        if proc.poll() is not None:
            raise SystemExit(f"the dataflow exited with {proc.returncode} while waiting for {what}")
        time.sleep(every_s)
    return time.perf_counter()


class ProfileWatch:
    """Keyspace notifications of profile SETs of the latency probes: first time each."""

    def __init__(self, client: redis.Redis, prefix: str, store: str) -> None:
        client.config_set("notify-keyspace-events", "K$")
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        db = client.connection_pool.connection_kwargs.get("db", 0)
        channel = f"__keyspace@{db}__:{customer_key(prefix, store, PROBE_PREFIX)}*"
        self.pubsub.psubscribe(channel)
        self.seen: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stopping = False
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            message = self.pubsub.get_message(timeout=0.2)
            if message is None or message["data"] != b"set":
                continue
            now = time.perf_counter()
            customer = message["channel"].decode().rsplit(":", 1)[1]
            self.seen.setdefault(customer, now)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.pubsub.close()


def measure_latency(
    settings: Settings, client: redis.Redis, stream: Stream, rate: float, seconds: float
) -> dict[str, float]:
    watch = ProfileWatch(client, settings.key_prefix, stream.store)
    producer = idempotent_producer(settings.brokers)
    count = max(1, int(rate * seconds))
    produced: dict[str, float] = {}
    began = time.perf_counter()
    for n in range(count):
        time.sleep(max(0.0, began + n / rate - time.perf_counter()))
        customer = f"{PROBE_PREFIX}{n:07d}"
        line = probe_event(stream.store, customer, stream.end_ts + 1.0 + n / rate, n)
        produced[customer] = time.perf_counter()
        producer.produce(
            settings.events_topic, key=f"{stream.store}:{customer}".encode(), value=line
        )
        producer.poll(0)
    producer.flush(60)
    produce_s = time.perf_counter() - began
    deadline = time.perf_counter() + 120
    while len(watch.seen) < count and time.perf_counter() < deadline:
        time.sleep(0.2)
    watch.close()
    latencies = np.array(
        [(watch.seen[c] - t) * 1000 for c, t in produced.items() if c in watch.seen]
    )
    return {
        "count": count,
        "rate": count / produce_s,
        "seen": len(latencies),
        "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "p90": float(np.percentile(latencies, 90)) if len(latencies) else float("nan"),
        "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        "max": float(latencies.max()) if len(latencies) else float("nan"),
    }


def run_live(args: argparse.Namespace, stream: Stream, settings: Settings, log: Path) -> float:
    """Run the live dataflow over the produced stream, then the latency probes; events/s."""
    client = redis.Redis.from_url(settings.redis_url)
    command = dataflow_command(settings)
    if not args.recovery:
        at = command.index("-r")
        del command[at : at + 2]
    first = customer_key(settings.key_prefix, *next(iter(stream.last_ts)))
    sentinel = customer_key(settings.key_prefix, stream.store, SENTINEL)
    emit("loadavg_before_e2e", loadavg(), "1/5/15min")
    with log.open("ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, env=child_env(settings), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        t_first = wait_for(lambda: client.exists(first), proc, 0.02, "the first profile")
        t_done = wait_for(lambda: client.exists(sentinel), proc, 0.1, "the sentinel")
        while profile_check(client, settings.key_prefix, stream)[0]:  # not all there yet
            time.sleep(0.5)
            if proc.poll() is not None:
                raise SystemExit(f"the dataflow exited with {proc.returncode}")
            t_done = time.perf_counter()  # the start of the check that may pass
        cpu = process_cpu_s(proc.pid)
        n = len(stream.lines)
        e2e_s = t_done - started
        emit("e2e_s", e2e_s, "s(launch to all profiles)")
        emit("e2e_startup_s", t_first - started, "s(launch to first profile)")
        steady_eps = n / (t_done - t_first)
        emit("e2e_events_per_s", steady_eps, "events/s(first profile to all)")
        emit("e2e_launch_events_per_s", n / e2e_s, "events/s(launch to all)")
        emit("e2e_cpu_s", cpu, "s(cpu, dataflow process)")
        emit("e2e_events_per_cpu_s", n / cpu, "events/cpu-s")
        absent, behind = profile_check(client, settings.key_prefix, stream)
        emit("e2e_profiles", len(stream.last_ts) - absent, "customers")
        emit("e2e_profiles_older_than_last_event", behind, "customers")
        emit("loadavg_after_e2e", loadavg(), "1/5/15min")
        if args.latency_seconds > 0:
            lat = measure_latency(settings, client, stream, args.latency_rate, args.latency_seconds)
            emit("score_latency_events", int(lat["count"]), "events")
            emit("score_latency_rate", lat["rate"], "events/s(produced)")
            emit("score_latency_seen", int(lat["seen"]), "events(profile SET observed)")
            emit("score_latency_p50_ms", lat["p50"], "ms")
            emit("score_latency_p90_ms", lat["p90"], "ms")
            emit("score_latency_p99_ms", lat["p99"], "ms")
            emit("score_latency_max_ms", lat["max"], "ms")
            emit("loadavg_after_latency", loadavg(), "1/5/15min")
        return steady_eps
    finally:
        proc.kill()
        proc.wait(30)
        client.close()


# -- plain Python ---------------------------------------------------------------------


def plain_loop(lines: list[bytes], settings: Settings) -> tuple[int, int]:
    """Features + scoring with no framework; (scores, dead letters)."""
    config = stage_config(settings)
    groups: dict[int, KeyGroupCustomers] = {}
    n_groups = settings.key_groups
    model = ModelLogic(ChurnModel(settings.model_warm_examples, kind=settings.model))
    to_model: list[Any] = []
    scores = dead = 0
    for n, raw in enumerate(lines, 1):
        item = decode_item(raw, settings)
        if isinstance(item, DeadLetter):
            dead += 1
            continue
        event, amount = item
        g = key_group(event.store_id, event.customer_id, n_groups)
        group = groups.get(g)
        if group is None:
            group = groups[g] = KeyGroupCustomers(config)
            group.group_id = g
        to_model.extend(
            x for x in group.on_event(event, amount) if isinstance(x, ScoreRequest | Example)
        )
        if n % SOURCE_BATCH == 0 or n == len(lines):
            out, _ = model.on_batch(to_model)
            scores += sum(1 for x in out if isinstance(x, Scored))
            to_model = []
    return scores, dead


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-rate", type=float, default=100.0, help="events/s")
    parser.add_argument("--latency-seconds", type=float, default=15.0, help="0: skip")
    parser.add_argument("--no-recovery", dest="recovery", action="store_false")
    parser.add_argument("--skip-plain", action="store_true")
    args = parser.parse_args(argv)
    # stopped with SIGTERM (or SIGINT in a background job): still stop what we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    emit("date", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "utc")
    emit("nproc", os.cpu_count() or 0, "cpus")
    emit("loadavg_start", loadavg(), "1/5/15min")
    started = time.perf_counter()
    stream = make_stream(args.events, args.customers, args.seed)
    emit("e2e_events", len(stream.lines), "events")
    emit("e2e_customers", len(stream.last_ts), "customers")
    emit("simulate_days", stream.days, "days(window)")
    emit("simulate_s", time.perf_counter() - started, "s(untimed)")

    run_dir = Path(tempfile.mkdtemp(prefix="cf-bench-e2e-"))
    services = services_up(run_dir)
    try:
        settings = Settings(
            kafka_brokers=services["broker"].address,
            redis_url=f"redis://{services['redis'].address}/0",
            events_topic="bench-events",
            dead_letter_topic="bench-events.dead-letter",
            key_prefix="cf",
            run_dir=run_dir,
            recovery_dir=run_dir / "recovery",
            rules_dir=ROOT / "rules",
            clock="event",
        )
        emit("key_groups", settings.key_groups, "groups")
        emit("recovery", "on" if args.recovery else "off", f"epoch {settings.epoch_interval_s}s")
        ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
        sentinel = probe_event(stream.store, SENTINEL, stream.end_ts, 0)
        t0 = time.perf_counter()
        sent = produce_pairs(
            settings,
            iter(
                [
                    *zip(stream.keys, stream.lines, strict=True),
                    (f"{stream.store}:{SENTINEL}".encode(), sentinel),
                ]
            ),
        )
        emit("produce_events_per_s", sent / (time.perf_counter() - t0), "events/s(untimed)")
        e2e_eps = run_live(args, stream, settings, run_dir / "dataflow.log")
    finally:
        services_down(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)

    if not args.skip_plain:
        settings = Settings(clock="event")
        emit("loadavg_before_plain", loadavg(), "1/5/15min")
        cpu = time.process_time()
        t0 = time.perf_counter()
        scores, dead = plain_loop(stream.lines, settings)
        plain_s = time.perf_counter() - t0
        cpu = time.process_time() - cpu
        emit("plain_loop_s", plain_s, "s")
        emit("plain_loop_events_per_s", len(stream.lines) / plain_s, "events/s")
        emit("plain_loop_events_per_cpu_s", len(stream.lines) / cpu, "events/cpu-s")
        emit("plain_loop_scores", scores, "scores")
        emit("plain_loop_dead_letters", dead, "events")
        emit("e2e_plain_ratio", e2e_eps / (len(stream.lines) / plain_s), "x(e2e/plain)")
    emit("loadavg_end", loadavg(), "1/5/15min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
