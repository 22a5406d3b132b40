"""``churnflow simulate --kafka`` against the real Tansu broker.

The command runs in-process (:func:`engine.cli.main`) twice with one seed: once
``--kafka`` only, once ``--out`` only. The topic is made with three partitions
first, so the message key decides where each event goes; read back, the topic
holds exactly the JSONL's lines (same count, same bytes), every message is keyed
``store:customer`` of its event, each key lives in one partition, and each
customer's events keep the order they have in the JSONL.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from engine.cli import main
from engine.connectors.kafka import ensure_topics
from engine.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 3
SIMULATION = ["--stores", "2", "--customers", "40", "--days", "120", "--seed", "13"]
IDLE_S = 3.0  # after the expected count, poll this long more to see that nothing else came


def read_all(
    settings: Settings, expected: int, timeout_s: float = 60.0
) -> list[tuple[int, bytes, bytes]]:
    """Every message of the events topic as ``(partition, key, value)``: ``expected`` of
    them, then ``IDLE_S`` more of polling."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"simulate-{settings.key_prefix}",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.assign([TopicPartition(settings.events_topic, p, 0) for p in range(PARTITIONS)])
    found: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                found.append(msg)
        idle_until = time.monotonic() + IDLE_S
        while time.monotonic() < idle_until:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                found.append(msg)
    finally:
        consumer.close()
    return [triple(msg) for msg in found]


def triple(msg: Message) -> tuple[int, bytes, bytes]:
    partition, key, value = msg.partition(), msg.key(), msg.value()
    assert partition is not None and key is not None and value is not None
    return partition, key, value


def key_of(line: bytes) -> bytes:
    doc = orjson.loads(line)
    return f"{doc['store_id']}:{doc['customer_id']}".encode()


def by_key(lines: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    grouped: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in lines:
        grouped[key].append(value)
    return dict(grouped)


def test_simulate_kafka_produces_the_jsonl_lines_keyed_by_customer(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (
        ("KAFKA_BROKERS", settings.kafka_brokers),
        ("EVENTS_TOPIC", settings.events_topic),
        ("DEAD_LETTER_TOPIC", settings.dead_letter_topic),
        ("RUN_DIR", str(tmp_path / "run")),
    ):
        monkeypatch.setenv(f"CHURNFLOW_{name}", value)
    ensure_topics(settings.brokers, [settings.events_topic], partitions=PARTITIONS)

    assert main(["simulate", *SIMULATION, "--kafka", "--no-progress"]) == 0
    out = tmp_path / "sim.jsonl"
    assert main(["simulate", *SIMULATION, "--out", str(out), "--no-progress"]) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) > 100 and len({key_of(line) for line in lines}) > 20

    messages = read_all(settings, expected=len(lines))
    produced = [(key, value) for _, key, value in messages]
    assert len(produced) == len(lines)
    assert sorted(value for _, value in produced) == sorted(lines)  # same bytes
    assert all(key == key_of(value) for key, value in produced)
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for partition, key, _ in messages:
        partitions_of_key[key].add(partition)
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1  # keys spread out
    assert by_key(produced) == by_key([(key_of(line), line) for line in lines])
