"""Subprocess helpers shared by the crash and fault-injection tests.

The live dataflow, the delivery workers and the API run as real child processes
(the same command lines as ``churnflow run`` / ``deliver`` / ``api``) so that a
test can ``kill -9`` them; the dead-letter topic and Redis are read from the test.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, TopicPartition

from engine.cli import child_env, dataflow_command
from engine.settings import Settings


def start_dataflow(settings: Settings) -> subprocess.Popen[bytes]:
    """The live dataflow with Bytewax recovery, as ``churnflow run`` starts it."""
    return subprocess.Popen(
        dataflow_command(settings),
        env=child_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_deliver(
    settings: Settings, channel: str, consumer: str, store: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``churnflow deliver --channel C --store S --consumer NAME`` as a child process."""
    command = [sys.executable, "-m", "engine.cli", "deliver", "--channel", channel]
    command += ["--store", store, "--consumer", consumer]
    return subprocess.Popen(
        command,
        env={**child_env(settings), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a direct child (no chance to flush or clean up) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def profiles(client: redis.Redis, prefix: str, store: str = "shop") -> dict[str, dict[str, Any]]:
    """Every customer profile of ``store`` in Redis, by customer id."""
    keys = list(client.scan_iter(f"{prefix}:{{{store}}}:customer:*", count=1000))
    values = client.mget(keys) if keys else []
    return {
        k.decode().rsplit(":", 1)[1]: orjson.loads(v)
        for k, v in zip(keys, values, strict=True)
        if v
    }


def paced(lines: list[bytes], seconds: float) -> Iterator[bytes]:
    """The lines spread over ``seconds``, so that a kill lands mid-stream."""
    began = time.monotonic()
    for n, line in enumerate(lines):
        if n % 10 == 0:
            time.sleep(max(0.0, began + seconds * n / len(lines) - time.monotonic()))
        yield line


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


class TopicReader:
    """Reads partition 0 of a topic as it grows (Tansu's high watermark is not reliable)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_brokers,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.records: list[Any] = []

    def poll(self, timeout_s: float) -> bool:
        """One record more (True), or nothing within ``timeout_s``."""
        msg = self.consumer.poll(timeout_s)
        if msg is None or msg.error():
            return False
        self.records.append(msg)
        return True

    def drain(self, idle_s: float = 1.0) -> list[Any]:
        """Everything until nothing arrived for ``idle_s``."""
        idle = time.monotonic()
        while time.monotonic() - idle < idle_s:
            if self.poll(0.05):
                idle = time.monotonic()
        return self.records

    def close(self) -> None:
        self.consumer.close()


class DeadLetters(TopicReader):
    """The dead-letter topic; ``sources`` holds the input offset of each dead letter."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.dead_letter_topic)
        self.sources: list[int] = []

    def poll(self, timeout_s: float) -> bool:
        if not super().poll(timeout_s):
            return False
        source = dict(self.records[-1].headers() or [])["source"].decode()
        self.sources.append(int(source.rsplit("/", 1)[1]))
        return True

    def wait_new(self, timeout_s: float = 60.0) -> None:
        """Until one more dead letter arrives (the dataflow is processing)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.poll(0.05):
                return
        raise AssertionError("the dataflow wrote no dead letter in time")
