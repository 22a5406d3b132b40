"""churnflow on a real Redis Cluster: three redis-server primaries on loopback.

The same simulated stream goes through the real ``build_flow`` with the real Redis
sinks twice — into the session's single redis-server and into a three-node cluster
(``redis+cluster://`` URL, ``engine.redis_client``) — and both must hold the same
keys with the same values (profiles, segments, contacts, aggregates, model status,
recall queues and logs, effect counters). A delivery worker then drains the
cluster's email queues into a real SMTP server, each entry exactly once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from aiosmtpd.controller import Controller
from bytewax.testing import TestingSink, TestingSource, run_main
from fastapi.testclient import TestClient
from recall_events import smtp_provider
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from api.keys import create_key
from api.main import create_app
from engine import redis_client as redis_client_module
from engine.connectors.effects_sink import effects_sink
from engine.connectors.recall_sink import RecallSink
from engine.connectors.redis_sink import RedisSink, customer_key
from engine.delivery.providers import RedisDirectory
from engine.delivery.worker import DeliveryWorker, WorkerConfig
from engine.flow import FlowSinks, build_flow
from engine.redis_client import RetryingClient, connect, is_cluster
from engine.services import Service, free_port, start_redis_cluster, stop_service
from engine.settings import Settings
from replay.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SIMULATION = SimulationConfig(stores=3, customers=240, days=240, seed=11)
STREAM_END_TS = 4_102_444_800.0
"""2100-01-01: the delivery worker's clock, so every queued message is due."""


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    nodes = start_redis_cluster(tmp_path_factory.mktemp("cluster"), nodes=3)
    try:
        yield f"redis+cluster://{nodes[0].address}"
    finally:
        for node in nodes:
            stop_service(node)


@pytest.fixture(scope="module")
def stream_lines() -> list[bytes]:
    with simulate(SIMULATION) as run:
        return list(run.lines())


def rules_for_simulated_stores(rules_dir: Path) -> None:
    """The default rules file, once per simulated store (rules are per store)."""
    template = (ROOT / "rules" / "default.yaml").read_text()
    for n in range(1, SIMULATION.stores + 1):
        text = template.replace("store_id: demo-store", f"store_id: sim-{n}", 1)
        (rules_dir / f"sim-{n}.yaml").write_text(text)


def run_flow(settings: Settings, url: str, lines: list[bytes]) -> list[Any]:
    dead: list[Any] = []
    sinks = FlowSinks(
        redis=RedisSink(url, settings.key_prefix),
        dead_letter=TestingSink(dead),
        recalls=RecallSink(url, settings.key_prefix),
        effects=effects_sink(url, settings.key_prefix),
    )
    run_main(build_flow(TestingSource(lines, batch_size=500), sinks, settings))
    return dead


def _text(raw: bytes) -> str:
    return raw.decode()


def dump(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` (prefix removed) with its value, comparable across servers.

    Stream entry ids are assigned by each server's clock, so streams compare by their
    entries' fields in order (less a log entry's ``entry``, the id of the queue entry
    it reports), and the idempotency markers (which hold an entry id) by existence.
    """
    out: dict[str, Any] = {}
    for raw_key in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = _text(raw_key)
        name = key[len(prefix) :]
        kind = _text(client.type(key))  # type: ignore[arg-type]
        value: Any
        if kind == "string":
            value = None if ":recall-key:" in key else client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(cast(set[bytes], client.smembers(key)))
        elif kind == "stream":
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))
            value = [{f: v for f, v in fields.items() if f != b"entry"} for _, fields in entries]
        else:
            value = kind
        out[name] = value
    return out


@dataclass
class Written:
    """The same stream written by the dataflow to one server and to the cluster."""

    settings: Settings
    single: redis.Redis
    cluster: redis.Redis
    dead_single: list[Any]
    dead_cluster: list[Any]


@pytest.fixture(scope="module")
def written(
    services: dict[str, Service],
    cluster_url: str,
    stream_lines: list[bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Written]:
    rules_dir = tmp_path_factory.mktemp("rules")
    rules_for_simulated_stores(rules_dir)
    settings = Settings(
        kafka_brokers=services["broker"].address,
        redis_url=f"redis://{services['redis'].address}/0",
        events_topic=f"events-{uuid.uuid4().hex[:10]}",
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        key_groups=16,
        model_warm_examples=5,
        rules_dir=rules_dir,
    )
    single, cluster = connect(settings.redis_url), connect(cluster_url)
    dead_single = run_flow(settings, settings.redis_url, stream_lines)
    dead_cluster = run_flow(settings, cluster_url, stream_lines)
    yield Written(settings, single, cluster, dead_single, dead_cluster)
    for client in (single, cluster):
        _delete(client, settings.key_prefix)
        client.close()


def test_flow_writes_to_a_cluster_what_it_writes_to_one_server(written: Written) -> None:
    prefix, cluster = written.settings.key_prefix, written.cluster
    assert is_cluster(cluster) and not is_cluster(written.single)
    single = dump(written.single, prefix)
    clustered = dump(cluster, prefix)
    kinds = Counter(name.split(":")[2] for name in single if name.count(":") >= 2)
    assert kinds["customer"] == SIMULATION.customers and kinds["effects"] > 0, kinds
    queued = [len(v) for k, v in single.items() if k.endswith((":recall:email", ":recall-log"))]
    assert len(queued) >= 2 and all(queued), queued
    assert written.dead_cluster == written.dead_single
    assert clustered.keys() == single.keys()
    different = [name for name in single if clustered[name] != single[name]]
    assert not different, different[:5]
    # the keys really are spread: every primary holds some of them
    nodes = cast(RedisCluster, cluster).get_primaries()
    per_node = [
        len(list(cast(RedisCluster, cluster).scan_iter(match=f"{prefix}:*", target_nodes=node)))
        for node in nodes
    ]
    assert len(per_node) == 3 and all(n > 0 for n in per_node), per_node


def read_routes(api: TestClient, headers: dict[str, str], store: str, ids: list[str]) -> dict:
    """The answers of every read route of one store (the score lookups of ``ids``)."""
    base = f"/v1/stores/{store}"
    paths = [f"{base}/customers/{c}" for c in ids]
    paths += [f"{base}/segments", f"{base}/segments/silent/customers?limit=50"]
    paths += [f"{base}/{name}" for name in ("cohorts", "lifecycle", "campaigns", "model")]
    paths += [f"{base}/customers/{ids[0]}/export", f"/v1/stores/{store}/risk"]
    answers = {path: api.get(path, headers=headers) for path in paths}
    batch = api.post(f"{base}/customers:batchGet", json={"customer_ids": ids}, headers=headers)
    answers["batchGet"] = batch
    assert all(r.status_code == 200 for r in answers.values()), {
        path: (r.status_code, r.text[:200]) for path, r in answers.items() if r.status_code != 200
    }
    return {path: without_entry_ids(r.json()) for path, r in answers.items()}


def without_entry_ids(doc: Any) -> Any:
    """``doc`` less the stream entry ids (``entry``, ``entry_id``: each server's clock).

    >>> without_entry_ids({"log": [{"entry": "1-0", "entry_id": "1-1", "rule_id": "w"}]})
    {'log': [{'rule_id': 'w'}]}
    """
    if isinstance(doc, dict):
        return {k: without_entry_ids(v) for k, v in doc.items() if k not in ("entry", "entry_id")}
    if isinstance(doc, list):
        return [without_entry_ids(v) for v in doc]
    return doc


def test_api_answers_from_a_cluster_what_it_answers_from_one_server(
    written: Written, cluster_url: str
) -> None:
    settings, store = written.settings, "sim-1"
    pattern = f"{settings.key_prefix}:{{{store}}}:customer:*"
    ids = sorted(_text(k).rsplit(":", 1)[1] for k in written.single.scan_iter(match=pattern))
    assert len(ids) >= 20
    answers: dict[str, dict[str, Any]] = {}
    for name, client, url in (
        ("single", written.single, settings.redis_url),
        ("cluster", written.cluster, cluster_url),
    ):
        key = create_key(client, settings.key_prefix, store, ("read", "admin"))
        headers = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(settings.model_copy(update={"redis_url": url}))) as api:
            answers[name] = read_routes(api, headers, store, ids[:20])
            if name == "cluster":  # then erase one customer from the cluster
                erased = api.delete(f"/v1/stores/{store}/customers/{ids[0]}", headers=headers)
                assert erased.status_code == 202, erased.text
                gone = api.get(f"/v1/stores/{store}/customers/{ids[0]}", headers=headers)
                assert gone.status_code == 404
                assert api.get("/readyz").status_code == 200
    assert answers["cluster"] == answers["single"]
    assert written.cluster.get(customer_key(settings.key_prefix, store, ids[0])) is None
    assert written.single.get(customer_key(settings.key_prefix, store, ids[0])) is not None


class Inbox:
    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.recipients.extend(envelope.rcpt_tos)
        return "250 OK"


def test_delivery_worker_drains_the_cluster_queues_exactly_once(
    settings: Settings, cluster_url: str, stream_lines: list[bytes], tmp_path: Path
) -> None:
    rules_for_simulated_stores(tmp_path)
    settings = settings.model_copy(update={"rules_dir": tmp_path})
    run_flow(settings, cluster_url, stream_lines)
    cluster = connect(cluster_url)
    queued = {
        _text(key): cluster.xlen(key)
        for key in cluster.scan_iter(match=f"{settings.key_prefix}:*:recall:email", count=1000)
    }
    assert sum(queued.values()) > 0, queued
    directory = RedisDirectory(cluster, settings.key_prefix)
    for stream in queued:  # addresses come from the seller, not from the events
        for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], cluster.xrange(stream)):
            store, customer = _text(fields[b"store_id"]), _text(fields[b"customer_id"])
            directory.set_address(store, customer, f"{customer}@{store}.example.org")

    inbox = Inbox()
    port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        worker = DeliveryWorker(
            cluster,
            settings.key_prefix,
            "email",
            smtp_provider(cluster, settings.key_prefix, port),
            config=WorkerConfig(consumer="cluster-w1"),
            clock=lambda: STREAM_END_TS,
        )
        passes = [worker.run_once()]
        while passes[-1].sent and len(passes) < 50:
            passes.append(worker.run_once())
    finally:
        smtp.stop()
    delivered = sum(p.sent for p in passes)
    assert delivered == sum(queued.values()), (passes, queued)
    assert len(inbox.recipients) == delivered
    assert passes[-1].sent == 0 and worker.run_once().sent == 0
    _delete(cluster, settings.key_prefix)


def _delete(client: redis.Redis, prefix: str) -> None:
    for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(key)


def test_an_unreachable_cluster_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster client connects eagerly: making it is part of the retried call."""
    connects: list[str] = []

    def counting_connect(url: str, **options: Any) -> redis.Redis:
        connects.append(url)
        return connect(url, **options)

    monkeypatch.setattr(redis_client_module, "connect", counting_connect)
    sink_client = RetryingClient(
        f"redis+cluster://127.0.0.1:{free_port()}", max_retry_s=0.5, socket_connect_timeout=0.2
    )
    with pytest.raises(RedisClusterException, match="cannot be connected"):
        sink_client.call(lambda client: client.ping())
    assert len(connects) >= 2
