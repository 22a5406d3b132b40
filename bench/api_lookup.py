"""Score-API lookups under load: wrk against GET /v1/stores/{store}/customers/{id}.

    python bench/api_lookup.py [--customers 1000000] [--duration 20] [--connections 64]
                               [--threads 2] [--api-workers 2] [--redis-requests 200000]

Starts its own broker and redis-server (``engine.services``, free loopback ports, a
temporary run directory) and the API (uvicorn, ``--api-workers`` processes). Loads
``--customers`` profiles into Redis in the layout the live dataflow writes: the Redis
sink's own ``profile_document``, ``customer_key`` and ``segment_key`` make the bytes
and keys (profile JSON + segment sorted sets), and customer 0 is rewritten through the
sink's ``write_batch`` and must come out the same. The profiles are realistic:
templates come from the customer stage and the model run on a synthetic stream,
cycled over customer ids ``000000000000``.. (12 digits, the format of
redis-benchmark's ``__rand_int__``). The per-key rate limit is raised so that it does
not cap wrk's single key, but its token bucket is still checked on every request.

Then, on loopback, in this order:

* ``api_lookup_*``: ``wrk`` (Debian's package) with ``bench/wrk_lookup.lua``: random
  ids, a valid key; every response should be 200 (``api_lookup_non2xx`` counts others).
* ``redis_get_*``: ``redis-benchmark`` GETting the same customer keys at random
  (``-r``), for comparison: what Redis alone serves, without HTTP, auth and JSON.
* ``redis_tget_*``: plain ``redis-benchmark -t get`` (its own 3-byte key), Redis' ceiling.
* ``api_lookup_cpu_ms_per_request``: CPU seconds (user + system, ``/proc``) the
  uvicorn processes used during the wrk run, per request served: the API's own cost,
  less sensitive to other load on the machine than requests/s.
* ``redis_bytes_per_customer``: ``INFO memory`` used_memory after loading minus before,
  per customer (profile string + segment sorted-set entry + key overhead).

wrk, redis-benchmark, the API workers and Redis share the machine's cores, so the
figures are for this machine as a whole. Prints ``name value unit``; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from customer_stage import emit, generate, loadavg  # noqa: E402

from api.keys import create_key  # noqa: E402
from engine.cli import child_env  # noqa: E402
from engine.connectors.redis_sink import (  # noqa: E402
    customer_key,
    profile_document,
    segment_key,
    write_batch,
)
from engine.customers import KeyGroupCustomers  # noqa: E402
from engine.events import OrderEvent, decode_event  # noqa: E402
from engine.features.currency import to_base  # noqa: E402
from engine.flow import stage_config  # noqa: E402
from engine.messages import Example, Scored, ScoreRequest  # noqa: E402
from engine.models.online import ChurnModel  # noqa: E402
from engine.segments import SEGMENTS  # noqa: E402
from engine.services import (  # noqa: E402
    LOOPBACK,
    free_port,
    services_down,
    services_up,
    wait_for_port,
)
from engine.settings import Settings  # noqa: E402

STORE = "bench"
LUA = Path(__file__).resolve().parent / "wrk_lookup.lua"


def customer_id(number: int) -> str:
    """Zero-padded like redis-benchmark's ``__rand_int__``.

    >>> customer_id(42)
    '000000000042'
    """
    return f"{number:012d}"


def template_scores(settings: Settings, n_customers: int = 2000, seed: int = 11) -> list[Scored]:
    """Realistic scored profiles: a synthetic stream through the customer stage and model."""
    encoded, _end = generate(n_customers, seed)
    group = KeyGroupCustomers(stage_config(settings))
    group.group_id = 0
    model = ChurnModel(warm_examples=settings.model_warm_examples)
    latest: dict[str, ScoreRequest] = {}
    for raw in encoded:
        event = decode_event(raw)
        amount = (
            to_base(event.amount, event.currency, settings.currency_rates, settings.base_currency)
            if isinstance(event, OrderEvent)
            else 0.0
        )
        for item in group.on_event(event, amount):
            if isinstance(item, Example):
                model.learn(item.features, item.y)
            elif isinstance(item, ScoreRequest):
                latest[item.customer_id] = item
    requests = list(latest.values())
    results = model.score_batch([r.features for r in requests])
    return [
        Scored(request, p, reasons, model.version, model.warm)
        for request, (p, reasons) in zip(requests, results, strict=True)
    ]


def load_customers(
    client: redis.Redis, prefix: str, n: int, templates: list[Scored], batch: int = 10_000
) -> None:
    """Write n fresh customers as the Redis sink does, a batch per pipeline.

    Each template's document comes from the sink's ``profile_document``; a customer's
    document is its template's with the customer id swapped. For customers in no
    segment yet the sink's ZREMs from the other segments are no-ops, so MSET + one
    ZADD per segment leaves the same data (:func:`check_layout` compares customer 0).
    """
    docs = [
        profile_document(replace(t, request=replace(t.request, store_id=STORE))) for t in templates
    ]
    for start in range(0, n, batch):
        profiles: dict[str, bytes] = {}
        members: dict[str, dict[str, float]] = {}
        for number in range(start, min(start + batch, n)):
            cid = customer_id(number)
            doc = docs[number % len(docs)]
            profiles[customer_key(prefix, STORE, cid)] = orjson.dumps({**doc, "customer_id": cid})
            segment = segment_key(prefix, STORE, doc["segment"])
            members.setdefault(segment, {})[cid] = doc["churn_probability"]
        pipe = client.pipeline(transaction=False)
        pipe.mset(profiles)
        for key, scores in members.items():
            pipe.zadd(key, scores)
        pipe.execute()


def check_layout(client: redis.Redis, prefix: str, templates: list[Scored]) -> None:
    """Customer 0 rewritten by the sink's ``write_batch`` must leave the same keys and values."""
    cid = customer_id(0)
    template = templates[0]
    keys = [customer_key(prefix, STORE, cid)] + [
        segment_key(prefix, STORE, segment) for segment in SEGMENTS
    ]

    def snapshot() -> list[object]:
        return [client.get(keys[0])] + [client.zscore(key, cid) for key in keys[1:]]

    before = snapshot()
    request = replace(template.request, store_id=STORE, customer_id=cid)
    write_batch(client, prefix, [replace(template, request=request)])
    if snapshot() != before:
        raise SystemExit("bulk load and the Redis sink disagree on the layout of customer 0")


def start_api(settings: Settings, workers: int) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.main:app",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(argv, env=child_env(settings), stdin=subprocess.DEVNULL)
    wait_for_port(settings.api_host, settings.api_port, proc, timeout_s=60.0)
    return proc


def parse_figures(text: str) -> dict[str, float]:
    """``name value unit`` lines -> {name: value}; other lines are ignored.

    >>> parse_figures("wrk_rps 12.5 requests/s\\nRunning 20s test\\n")
    {'wrk_rps': 12.5}
    """
    figures: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                figures[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return figures


def run_wrk(url: str, key: str, n: int, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, CF_API_KEY=key, CF_STORE=STORE, CF_CUSTOMERS=str(n))
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return parse_figures(done.stdout)


def run_redis_benchmark(port: int, extra: list[str]) -> dict[str, float]:
    """One redis-benchmark test with --csv; returns rps and latency percentiles (ms)."""
    argv = ["redis-benchmark", "-h", LOOPBACK, "-p", str(port), "--csv", *extra]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    row = rows[-1]
    return {name: float(value) for name, value in row.items() if name != "test"}


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (uvicorn's master spawns the workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used (gone ones count 0)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=20, help="wrk seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--redis-requests", type=int, default=200_000)
    parser.add_argument("--redis-clients", type=int, default=50)
    parser.add_argument(
        "--api-only", action="store_true", help="skip the redis-benchmark comparison"
    )
    args = parser.parse_args(argv)
    for tool in ("wrk", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install wrk redis-tools)")

    run_dir = Path(tempfile.mkdtemp(prefix="cf-bench-api-"))
    services = services_up(run_dir)
    api: subprocess.Popen[bytes] | None = None
    try:
        redis_port = services["redis"].port
        settings = Settings(
            kafka_brokers=services["broker"].address,
            redis_url=f"redis://{services['redis'].address}/0",
            key_prefix="cf",
            api_port=free_port(),
            run_dir=run_dir,
            # wrk is one key: lift its per-key limit (the bucket is still checked per request)
            rate_limit_per_s=1e9,
            rate_limit_burst=1_000_000_000,
        )
        client = redis.Redis.from_url(settings.redis_url)
        emit("api_lookup_customers", args.customers, "customers")
        emit("api_lookup_api_workers", args.api_workers, "uvicorn-workers")
        emit("loadavg_before", loadavg(), "1/5/15min")
        templates = template_scores(settings)
        key = create_key(client, settings.key_prefix, STORE, ("read",))
        before = redis_used_memory(client)
        started = time.perf_counter()
        load_customers(client, settings.key_prefix, args.customers, templates)
        load_s = time.perf_counter() - started
        check_layout(client, settings.key_prefix, templates)
        emit("redis_load_s", load_s, "s")
        emit("redis_load_customers_per_s", args.customers / load_s, "customers/s")
        memory = redis_used_memory(client) - before
        emit("redis_bytes_per_customer", memory / args.customers, "B/customer(used_memory)")
        sample = client.get(customer_key(settings.key_prefix, STORE, customer_id(0))) or b""
        emit("profile_json_bytes", len(sample), "B(customer 0)")

        api = start_api(settings, args.api_workers)
        url = f"http://{settings.api_host}:{settings.api_port}"
        api_pids = process_tree(api.pid)
        cpu_before = cpu_seconds(api_pids)
        wrk = run_wrk(url, key, args.customers, args)
        api_cpu_s = cpu_seconds(api_pids) - cpu_before
        emit("loadavg_after_wrk", loadavg(), "1/5/15min")
        emit("api_lookup_rps", wrk["wrk_rps"], "requests/s")
        emit("api_lookup_p50_ms", wrk["wrk_p50_ms"], "ms")
        emit("api_lookup_p90_ms", wrk["wrk_p90_ms"], "ms")
        emit("api_lookup_p99_ms", wrk["wrk_p99_ms"], "ms")
        emit("api_lookup_requests", int(wrk["wrk_requests"]), "requests")
        emit("api_lookup_cpu_s", api_cpu_s, "CPU-s(uvicorn processes, during wrk)")
        emit(
            "api_lookup_cpu_ms_per_request",
            1000 * api_cpu_s / max(1.0, wrk["wrk_requests"]),
            "CPU-ms/request",
        )
        emit("api_lookup_non2xx", int(wrk["wrk_non2xx"]), "responses")
        emit("api_lookup_socket_errors", int(wrk["wrk_socket_errors"]), "errors")
        emit(
            "api_lookup_wrk",
            f"-t{args.threads}/-c{args.connections}/-d{args.duration}s",
            "threads/connections/duration",
        )

        if args.api_only:
            emit("loadavg_after", loadavg(), "1/5/15min")
            return 0
        pattern = f"{settings.key_prefix}:{{{STORE}}}:customer:__rand_int__"
        common = ["-n", str(args.redis_requests), "-c", str(args.redis_clients)]
        real = run_redis_benchmark(redis_port, [*common, "-r", str(args.customers), "GET", pattern])
        emit("redis_get_rps", real["rps"], "requests/s(customer keys)")
        emit("redis_get_p50_ms", real["p50_latency_ms"], "ms")
        emit("redis_get_p99_ms", real["p99_latency_ms"], "ms")
        plain = run_redis_benchmark(redis_port, [*common, "-t", "get"])
        emit("redis_tget_rps", plain["rps"], "requests/s(-t get)")
        emit("redis_tget_p50_ms", plain["p50_latency_ms"], "ms")
        emit("redis_tget_p99_ms", plain["p99_latency_ms"], "ms")
        emit("loadavg_after", loadavg(), "1/5/15min")
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(15)
            except subprocess.TimeoutExpired:
                api.kill()
        services_down(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
