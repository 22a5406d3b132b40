"""The ``churnflow`` command line.

churnflow services up|down|status   start/stop the loopback broker and redis-server
churnflow run                       the live dataflow on Kafka, with Bytewax recovery
churnflow api                       the score API (FastAPI on uvicorn)
churnflow keys create --store S     an API key for one store (printed once)
churnflow produce FILE              send JSONL events to the broker
churnflow demo                      all of the above on the real CDNOW log
churnflow replay ...                backtest the same dataflow on history
churnflow simulate ...              a synthetic event stream with its ground truth
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType

import orjson
from tqdm import tqdm

from engine.clock import wall_now
from engine.connectors.kafka import ensure_topics, idempotent_producer
from engine.events import decode_event
from engine.redis_client import connect
from engine.services import is_alive, read_services, services_down, services_up
from engine.settings import Settings

log = logging.getLogger("churnflow")


def _services_env(settings: Settings) -> Settings:
    """Point settings at the services recorded in the run directory, if any."""
    recorded = read_services(settings.run_dir)
    updates: dict[str, str] = {}
    if "broker" in recorded and "CHURNFLOW_KAFKA_BROKERS" not in os.environ:
        updates["kafka_brokers"] = recorded["broker"].address
    if "redis" in recorded and "CHURNFLOW_REDIS_URL" not in os.environ:
        updates["redis_url"] = f"redis://{recorded['redis'].address}/0"
    return settings.model_copy(update=updates)


def child_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            env.pop(f"CHURNFLOW_{name.upper()}", None)
            continue
        text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
        env[f"CHURNFLOW_{name.upper()}"] = text
    return env


# -- services ---------------------------------------------------------------------


def cmd_services(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "up":
        for service in services_up(settings.run_dir).values():
            print(f"{service.name}\t{service.address}\tpid {service.pid}")
    elif args.action == "down":
        for service in services_down(settings.run_dir):
            print(f"stopped {service.name} (pid {service.pid})")
    else:
        recorded = read_services(settings.run_dir)
        if not recorded:
            print("no services recorded in", settings.run_dir)
            return 1
        for service in recorded.values():
            state = "up" if is_alive(service) else "down"
            print(f"{service.name}\t{service.address}\tpid {service.pid}\t{state}")
    return 0


# -- run --------------------------------------------------------------------------


def dataflow_command(settings: Settings, workers: int = 1) -> list[str]:
    """The ``python -m bytewax.run`` command line of the live dataflow, with recovery."""
    recovery = settings.recovery_dir or settings.run_dir / "recovery"
    if not recovery.exists():
        recovery.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
    return [
        sys.executable,
        "-m",
        "bytewax.run",
        "engine.live:get_flow()",
        "-w",
        str(workers),
        "-r",
        str(recovery),
        "-s",
        str(max(1, int(settings.epoch_interval_s))),
        "-b",
        "0",
    ]


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
    command = dataflow_command(settings, args.workers)
    return subprocess.call(command, env=child_env(settings))


def api_command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.main:app",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        "--log-level",
        "warning",
    ]


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    return subprocess.call(api_command(settings), env=child_env(settings))


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from api.keys import create_key, revoke_key

    client = connect(settings.redis_url)
    if args.action == "create":
        print(create_key(client, settings.key_prefix, args.store, tuple(args.scopes), args.key))
        return 0
    return 0 if revoke_key(client, settings.key_prefix, args.key) else 1


# -- produce ----------------------------------------------------------------------


def produce_pairs(
    settings: Settings, pairs: Iterable[tuple[bytes, bytes]], flush_s: float = 120.0
) -> int:
    """Produce (key, value) pairs to the events topic with the idempotent producer and
    wait for every acknowledgement; raise ``SystemExit`` naming what failed."""
    producer = idempotent_producer(settings.brokers)
    failures: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    sent = 0
    for key, value in pairs:
        while True:
            try:
                producer.produce(
                    settings.events_topic, key=key, value=value, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
    remaining = producer.flush(flush_s)
    if remaining or failures:
        raise SystemExit(
            f"{remaining} messages unacknowledged, {len(failures)} failed: {failures[:3]}"
        )
    return sent


def keyed_lines(lines: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """Non-blank lines keyed ``store:customer``; lines that are not events keyed ``invalid``.

    >>> [key for key, _ in keyed_lines([b"junk", b"", b'{"type": "x"}'])]
    [b'invalid', b'invalid']
    """
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            key = decode_event(line).key.encode()
        except Exception:  # noqa: BLE001 - bad input still goes to the dataflow's dead letters
            key = b"invalid"
        yield key, line


def produce_lines(settings: Settings, lines: Iterable[bytes], total: int | None = None) -> int:
    """Produce raw event lines keyed by store:customer; unparseable lines keyed ``invalid``.

    Lines that are not valid events are produced as they are, so that the dataflow
    dead-letters them with the reason (nothing is dropped at the edge).
    """
    ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
    progress = tqdm(lines, total=total, unit="ev", desc="produce", mininterval=1.0)
    return produce_pairs(settings, keyed_lines(progress), flush_s=60.0)


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    with path.open("rb") as handle:
        sent = produce_lines(settings, handle)
    print(f"produced {sent} events to {settings.events_topic}")
    return 0


# -- demo -------------------------------------------------------------------------


def _cdnow_lines(settings: Settings) -> Iterator[bytes]:
    from replay.loaders import iter_encoded, load_cdnow

    return iter_encoded(load_cdnow(store_id="cdnow"))


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Services, dataflow and API on the real CDNOW log; stops everything on SIGINT/SIGTERM."""
    from api.keys import create_key

    services = services_up(settings.run_dir)
    settings = settings.model_copy(
        update={
            "kafka_brokers": services["broker"].address,
            "redis_url": f"redis://{services['redis'].address}/0",
            "clock": "event",
            "recovery_dir": settings.run_dir / f"recovery-demo-{int(wall_now())}",
        }
    )
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        ensure_topics(settings.brokers, [settings.events_topic, settings.dead_letter_topic])
        client = connect(settings.redis_url)
        key = create_key(
            client, settings.key_prefix, "cdnow", ("read", "ingest"), settings.demo_api_key
        )
        env = child_env(settings)
        children.append(subprocess.Popen(dataflow_command(settings), env=env))
        children.append(subprocess.Popen(api_command(settings), env=env))
        base = f"http://{settings.api_host}:{settings.api_port}"
        print(f"broker {settings.kafka_brokers}  redis {settings.redis_url}", flush=True)
        print(f"API {base}   demo key for store cdnow: {key}", flush=True)
        print(
            f'try: curl -H "Authorization: Bearer {key}" {base}/v1/stores/cdnow/customers/00001',
            flush=True,
        )
        if not stopping:
            produce_lines(settings, _cdnow_lines(settings), total=69659)
            print("CDNOW streamed; serving until interrupted (Ctrl-C)", flush=True)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"child {child.args!r} exited with {child.returncode}", flush=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        services_down(settings.run_dir)
        print("demo stopped", flush=True)
    return 0


# -- main -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churnflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    services = sub.add_parser("services", help="start/stop the loopback broker and redis-server")
    services.add_argument("action", choices=("up", "down", "status"))
    services.set_defaults(func=cmd_services)

    run = sub.add_parser("run", help="run the live dataflow on Kafka with recovery")
    run.add_argument("-w", "--workers", type=int, default=1)
    run.set_defaults(func=cmd_run)

    api = sub.add_parser("api", help="serve the score API")
    api.set_defaults(func=cmd_api)

    keys = sub.add_parser("keys", help="create or revoke API keys")
    keys.add_argument("action", choices=("create", "revoke"))
    keys.add_argument("--store", help="store id the key is for (create)")
    keys.add_argument("--scopes", nargs="+", default=["read"], choices=("read", "ingest", "admin"))
    keys.add_argument("--key", help="register this key instead of a random one / key to revoke")
    keys.set_defaults(func=cmd_keys)

    produce = sub.add_parser("produce", help="send JSONL events to the broker")
    produce.add_argument("file")
    produce.set_defaults(func=cmd_produce)

    demo = sub.add_parser("demo", help="services, dataflow and API on the CDNOW log")
    demo.set_defaults(func=cmd_demo)

    try:
        from replay.cli import add_replay_parser
    except ImportError:  # replay harness not installed in this build
        pass
    else:
        add_replay_parser(sub)
    try:
        from replay.simulate_cli import add_simulate_parser
    except ImportError:  # simulator not installed in this build
        pass
    else:
        add_simulate_parser(sub)
    try:
        from engine.delivery.cli import add_deliver_parser
    except ImportError:  # delivery workers not installed in this build
        pass
    else:
        add_deliver_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    settings = _services_env(Settings())
    result: int = args.func(args, settings)
    return result


if __name__ == "__main__":
    sys.exit(main())
