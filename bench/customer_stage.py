"""Customer-stage throughput and state size on synthetic streams: Bytewax vs plain Python.

    python bench/customer_stage.py [--sizes 10000 100000 1000000] [--seed 7]
                                   [--skip-e2e]
                                   [--profile]

Prints one figure per line, ``name value unit``; never asserts timings. Suffixes:
``10k``, ``100k``, ``1m`` (the number of customers).

Stream (per size N, generated once, deterministic, *not* timed): N customers of store
``bench``, 1 + Binomial(4, 0.5) events each (mean 3), every event an ``order_created``
(p = 0.4; one line item, 5-200 USD, 10% of them in EUR) or a ``product_view`` (p = 0.6),
at uniform random seconds over two years, sorted by event time, encoded to wire bytes
(orjson, as :func:`engine.events.encode_event` produces).

Per size, in this order, in one process:

* ``plain_loop_*``: no framework. For each raw event: ``decode_event`` + ``to_base``
  (orders) + ``key_group`` + ``KeyGroupCustomers.on_event`` on a dict of key groups;
  then ``final(end_ts)`` on every group. Outputs are counted, then dropped.
* ``state_*``: after the plain loop's events, before its ``final``: ``pickle.dumps``
  of each group's ``customers`` dict (bytes per customer), the whole-group snapshot
  (customers + timers + dedup), the tracemalloc'ed size of ``pickle.loads`` of the
  customers dicts (live Python objects per customer), and the process RSS delta
  across the plain loop's events (everything the groups hold plus allocator slack;
  noisy, and lower after an earlier size freed memory).
* ``customer_stage_*``: the customer stage alone through Bytewax — a small flow built
  here from ``engine.flow`` pieces: ``TestingSource(bytes, batch_size=1000)`` ->
  ``op.map(decode_item)`` -> ``op.key_on(key group)`` -> ``op.stateful(KeyGroupLogic,
  final_ts)`` -> a counting sink (no list of outputs is kept). ``run_main`` with the
  harness' epoch (``REPLAY_EPOCH``). Same work as the plain loop, ``final`` included.
* ``e2e_replay_*``: ``replay.harness.run_replay(events, Settings(), score_all=True)`` —
  the full ``build_flow`` (decode, customers, model learn + score of every request,
  sinks). Its timed region also encodes every event (``encode_event`` runs lazily
  inside ``run_main``), so ``encode_events_per_s`` is reported separately to show that
  share.

``customer_stage_ratio`` = Bytewax stage events/s / plain loop events/s (1.0 = no
framework overhead). Every timed part also reports process CPU seconds
(``time.process_time``, all threads): on a shared, oversubscribed machine the
``*_per_cpu_s`` figures are the steadier ones. ``--profile`` prints cProfile tables
of the plain-loop customer stage (and of the Bytewax stage flow) of the first size
to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pickle
import platform
import pstats
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bytewax.operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import TestingSource, run_main  # noqa: E402

from engine.customers import KeyGroupCustomers  # noqa: E402
from engine.events import OrderEvent, decode_event  # noqa: E402
from engine.features.currency import to_base  # noqa: E402
from engine.flow import KeyGroupLogic, decode_item, stage_config  # noqa: E402
from engine.keygroups import key_group  # noqa: E402
from engine.settings import Settings  # noqa: E402
from replay.harness import REPLAY_EPOCH, SOURCE_BATCH, end_of_day_ts, run_replay  # noqa: E402

STORE = "bench"
START = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
SPAN_S = 730 * 86400
CATEGORIES = ("books", "music", "garden", "toys", "kitchen", "sports", "beauty", "tools")


def emit(name: str, value: float | int | str, unit: str) -> None:
    if isinstance(value, float):
        value = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    print(f"{name} {value} {unit}", flush=True)


def suffix(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the synthetic stream ------------------------------------------------------------


def generate(n_customers: int, seed: int) -> tuple[list[bytes], float]:
    """Encoded events sorted by time, and the replay's end (end of the last day)."""
    rng = np.random.default_rng(seed + n_customers)
    per_customer = 1 + rng.binomial(4, 0.5, size=n_customers)
    customers = np.repeat(np.arange(n_customers, dtype=np.int64), per_customer)
    n = len(customers)
    ts = START + rng.integers(0, SPAN_S, size=n)
    order = np.argsort(ts, kind="stable")
    customers, ts = customers[order], ts[order]
    is_order = rng.random(n) < 0.4
    amounts = np.round(rng.uniform(5.0, 200.0, size=n), 2)
    eur = rng.random(n) < 0.1
    cats = rng.integers(0, len(CATEGORIES), size=n)
    skus = rng.integers(0, 5000, size=n)
    stamps = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
    encoded: list[bytes] = []
    dumps = orjson.dumps
    for i in range(n):
        cid = str(int(customers[i]))
        when = f"{stamps[i]}Z"
        category = CATEGORIES[int(cats[i])]
        sku = f"sku-{int(skus[i])}"
        if is_order[i]:
            amount = f"{amounts[i]:.2f}"
            obj: dict[str, Any] = {
                "schema_version": 1,
                "type": "order_created",
                "event_id": f"bench:{i}",
                "store_id": STORE,
                "customer_id": cid,
                "occurred_at": when,
                "source": "bench",
                "order_id": f"o{i}",
                "amount": amount,
                "currency": "EUR" if eur[i] else "USD",
                "line_items": [{"sku": sku, "category": category, "quantity": 1, "price": amount}],
                "discount_codes": [],
            }
        else:
            obj = {
                "schema_version": 1,
                "type": "product_view",
                "event_id": f"bench:{i}",
                "store_id": STORE,
                "customer_id": cid,
                "occurred_at": when,
                "source": "bench",
                "sku": sku,
                "category": category,
            }
        encoded.append(dumps(obj))
    last_day = datetime.fromtimestamp(float(ts[-1]), UTC).date()
    return encoded, end_of_day_ts(last_day)


# -- plain Python ---------------------------------------------------------------------


def plain_events(
    encoded: list[bytes], settings: Settings
) -> tuple[dict[int, KeyGroupCustomers], int]:
    """The customer stage with no framework: decode + on_event per key group dict."""
    config = stage_config(settings)
    groups: dict[int, KeyGroupCustomers] = {}
    n_groups = settings.key_groups
    rates, base = settings.currency_rates, settings.base_currency
    outputs = 0
    for raw in encoded:
        event = decode_event(raw)
        amount = (
            to_base(event.amount, event.currency, rates, base)
            if isinstance(event, OrderEvent)
            else 0.0
        )
        g = key_group(event.store_id, event.customer_id, n_groups)
        group = groups.get(g)
        if group is None:
            group = groups[g] = KeyGroupCustomers(config)
            group.group_id = g
        outputs += len(group.on_event(event, amount))
    return groups, outputs


def plain_final(groups: dict[int, KeyGroupCustomers], end_ts: float) -> int:
    return sum(len(group.final(end_ts)) for group in groups.values())


def state_sizes(groups: dict[int, KeyGroupCustomers]) -> dict[str, float]:
    customers = sum(len(g.customers) for g in groups.values())
    blobs = [pickle.dumps(g.customers, protocol=pickle.HIGHEST_PROTOCOL) for g in groups.values()]
    pickled = sum(len(b) for b in blobs)
    snapshots = sum(len(pickle.dumps(g.snapshot())) for g in groups.values())
    gc.collect()
    tracemalloc.start()
    loaded = [pickle.loads(b) for b in blobs]
    live, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del loaded, blobs
    return {
        "customers": customers,
        "pickle": pickled / customers,
        "snapshot": snapshots / customers,
        "tracemalloc": live / customers,
    }


# -- Bytewax, customer stage only ------------------------------------------------------


class _CountingPartition(StatelessSinkPartition[Any]):
    def __init__(self, counter: list[int]) -> None:
        self.counter = counter

    def write_batch(self, items: list[Any]) -> None:
        self.counter[0] += len(items)


class CountingSink(DynamicSink[Any]):
    """Counts what reaches it; keeps nothing (a TestingSink would hold every output)."""

    def __init__(self) -> None:
        self.counter = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPartition:
        return _CountingPartition(self.counter)


def stage_flow(encoded: list[bytes], settings: Settings, end_ts: float, sink: CountingSink):
    groups = settings.key_groups
    flow = Dataflow("bench_customer_stage")
    raw = op.input("input", flow, TestingSource(encoded, batch_size=SOURCE_BATCH))
    decoded = op.map("decode", raw, lambda item: decode_item(item, settings))
    keyed = op.key_on(
        "key_group", decoded, lambda ev: str(key_group(ev[0].store_id, ev[0].customer_id, groups))
    )

    def build_group(resume: Any) -> KeyGroupLogic:
        return KeyGroupLogic(KeyGroupCustomers(stage_config(settings)), "event", end_ts, groups)

    customers = op.stateful("customers", keyed, build_group)
    op.output("out", op.key_rm("customers_out", customers), sink)
    return flow


def run_stage_flow(
    encoded: list[bytes], settings: Settings, end_ts: float
) -> tuple[float, float, int]:
    """(wall s, process CPU s, outputs) of the Bytewax customer-stage flow."""
    sink = CountingSink()
    flow = stage_flow(encoded, settings, end_ts, sink)
    cpu = time.process_time()
    started = time.perf_counter()
    run_main(flow, epoch_interval=REPLAY_EPOCH)
    return time.perf_counter() - started, time.process_time() - cpu, sink.counter[0]


# -- profiles ------------------------------------------------------------------------


def print_profile(title: str, prof: cProfile.Profile) -> None:
    for sort, limit in (("tottime", 15), ("cumulative", 15)):
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats(sort).print_stats(limit)
        print(f"=== cProfile: {title}, top {limit} by {sort} ===", file=sys.stderr)
        print(buf.getvalue(), file=sys.stderr)


def profile_stage(encoded: list[bytes], settings: Settings, end_ts: float) -> None:
    prof = cProfile.Profile()
    prof.enable()
    groups, _ = plain_events(encoded, settings)
    plain_final(groups, end_ts)
    prof.disable()
    print_profile(f"plain-loop customer stage, {len(encoded)} events", prof)
    del groups
    prof = cProfile.Profile()
    sink = CountingSink()
    flow = stage_flow(encoded, settings, end_ts, sink)
    prof.enable()
    run_main(flow, epoch_interval=REPLAY_EPOCH)
    prof.disable()
    print_profile(f"Bytewax customer-stage flow, {len(encoded)} events", prof)


# -- one size -------------------------------------------------------------------------


def bench_size(n_customers: int, args: argparse.Namespace, settings: Settings) -> None:
    tag = suffix(n_customers)
    started = time.perf_counter()
    encoded, end_ts = generate(n_customers, args.seed)
    n = len(encoded)
    emit(f"events_{tag}", n, "events")
    emit(f"generate_s_{tag}", time.perf_counter() - started, "s(untimed)")
    emit(f"loadavg_before_{tag}", loadavg(), "1/5/15min")

    if args.profile and not getattr(args, "_profiled", False):
        args._profiled = True
        profile_stage(encoded, settings, end_ts)

    # (b) plain Python loop
    gc.collect()
    rss0 = rss_bytes()
    c0 = time.process_time()
    t0 = time.perf_counter()
    groups, outputs = plain_events(encoded, settings)
    t_events = time.perf_counter() - t0
    cpu_events = time.process_time() - c0
    gc.collect()
    rss1 = rss_bytes()
    sizes = state_sizes(groups)
    c1 = time.process_time()
    t1 = time.perf_counter()
    outputs += plain_final(groups, end_ts)
    t_final = time.perf_counter() - t1
    plain_cpu = cpu_events + time.process_time() - c1
    plain_s = t_events + t_final
    plain_eps = n / plain_s
    customers = int(sizes["customers"])
    emit(f"plain_loop_s_{tag}", plain_s, "s")
    emit(f"plain_loop_final_s_{tag}", t_final, "s")
    emit(f"plain_loop_events_per_s_{tag}", plain_eps, "events/s")
    emit(f"plain_loop_cpu_s_{tag}", plain_cpu, "s(cpu)")
    emit(f"plain_loop_events_per_cpu_s_{tag}", n / plain_cpu, "events/cpu-s")
    emit(f"plain_loop_outputs_{tag}", outputs, "items")
    emit(f"customers_{tag}", customers, "customers")
    emit(f"state_bytes_per_customer_{tag}", sizes["pickle"], "B/customer(pickle)")
    emit(f"snapshot_bytes_per_customer_{tag}", sizes["snapshot"], "B/customer(pickle,group)")
    emit(f"state_mem_bytes_per_customer_{tag}", sizes["tracemalloc"], "B/customer(tracemalloc)")
    emit(f"rss_delta_bytes_per_customer_{tag}", (rss1 - rss0) / customers, "B/customer(RSS)")
    del groups
    gc.collect()

    # (a) Bytewax, customer stage only
    stage_s, stage_cpu, stage_outputs = run_stage_flow(encoded, settings, end_ts)
    stage_eps = n / stage_s
    emit(f"customer_stage_s_{tag}", stage_s, "s")
    emit(f"customer_stage_events_per_s_{tag}", stage_eps, "events/s")
    emit(f"customer_stage_cpu_s_{tag}", stage_cpu, "s(cpu)")
    emit(f"customer_stage_events_per_cpu_s_{tag}", n / stage_cpu, "events/cpu-s")
    emit(f"customer_stage_outputs_{tag}", stage_outputs, "items")
    # (c)
    emit(f"customer_stage_ratio_{tag}", stage_eps / plain_eps, "x(bytewax/plain)")
    emit(f"customer_stage_cpu_ratio_{tag}", plain_cpu / stage_cpu, "x(plain cpu/bytewax cpu)")
    gc.collect()

    # (a) the whole dataflow through the replay harness
    if not args.skip_e2e:
        events = [decode_event(raw) for raw in encoded]  # untimed
        from engine.events import encode_event

        t2 = time.perf_counter()
        for event in events:
            encode_event(event)
        encode_s = time.perf_counter() - t2
        emit(f"encode_events_per_s_{tag}", n / encode_s, "events/s")
        cpu = time.process_time()
        result = run_replay(events, settings, until=None, score_all=True)
        e2e_cpu = time.process_time() - cpu
        emit(f"e2e_replay_s_{tag}", result.elapsed_s, "s")
        emit(f"e2e_replay_events_per_cpu_s_{tag}", n / e2e_cpu, "events/cpu-s")
        emit(f"e2e_replay_events_per_s_{tag}", result.events_per_s, "events/s")
        emit(f"e2e_replay_ratio_{tag}", result.events_per_s / plain_eps, "x(e2e/plain)")
        emit(f"e2e_examples_learned_{tag}", len(result.examples), "examples")
        emit(f"e2e_final_scores_{tag}", len(result.final_scores), "scores")
        del events, result
        gc.collect()
    emit(f"loadavg_after_{tag}", loadavg(), "1/5/15min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-e2e", action="store_true", help="skip run_replay (full flow)")
    parser.add_argument("--profile", action="store_true", help="cProfile tables to stderr")
    args = parser.parse_args(argv)
    settings = Settings()
    emit("date", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "utc")
    emit("nproc", os.cpu_count() or 0, "cpus")
    emit("python", platform.python_version(), "version")
    emit("loadavg_start", loadavg(), "1/5/15min")
    emit("key_groups", settings.key_groups, "groups")
    for n in args.sizes:
        bench_size(n, args, settings)
    emit("loadavg_end", loadavg(), "1/5/15min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
