"""Kafka I/O: topic set-up, the live source, the dead-letter sink and the producer.

The dead-letter topic keeps the raw bytes as the message value, and the reason,
step and source offset as headers, so a bad record can be inspected and replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from engine.errors import ServiceError
from engine.messages import DeadLetter

log = logging.getLogger(__name__)

# Tansu returns only settings given at topic creation; set retention explicitly.
TOPIC_CONFIG = {"retention.ms": "-1", "cleanup.policy": "delete"}


def ensure_topics(brokers: list[str], topics: Iterable[str], partitions: int = 1) -> None:
    """Create the topics that do not exist yet."""
    admin = AdminClient({"bootstrap.servers": ",".join(brokers)})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(t, num_partitions=partitions, replication_factor=1, config=TOPIC_CONFIG)
        for t in topics
        if t not in existing
    ]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ServiceError(f"cannot create topic {topic!r}: {exc}") from exc


def idempotent_producer(brokers: list[str], **extra: Any) -> Producer:
    """A producer that writes each message once even when it retries."""
    config = {
        "bootstrap.servers": ",".join(brokers),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        **extra,
    }
    return Producer(config)


def events_source(brokers: list[str], topic: str) -> KafkaSource:
    """The live event source: every partition from the beginning, resumed by recovery."""
    return KafkaSource(
        brokers,
        [topic],
        tail=True,
        add_config={"fetch.wait.max.ms": "100"},
        batch_size=1000,
        raise_on_errors=False,
    )


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, brokers: list[str], topic: str) -> None:
        self.topic = topic
        self.producer = idempotent_producer(brokers)

    def write_batch(self, items: list[DeadLetter]) -> None:
        for item in items:
            log.warning(
                "dead letter step=%s source=%s error=%s", item.step, item.source, item.error
            )
            self.producer.produce(
                self.topic,
                key=item.source.encode(),
                value=item.raw,
                headers=[
                    ("error", item.error.encode()),
                    ("step", item.step.encode()),
                    ("source", item.source.encode()),
                ],
            )
        remaining = self.producer.flush(30)
        if remaining:
            raise ServiceError(f"{remaining} dead letters not acknowledged by the broker")

    def close(self) -> None:
        self.producer.flush(30)


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Produces dead letters to a Kafka topic: raw bytes + error, step, source headers."""

    def __init__(self, brokers: list[str], topic: str) -> None:
        self.brokers = brokers
        self.topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.brokers, self.topic)
