"""``churnflow deliver``: a delivery worker for one channel.

churnflow deliver --channel email|sms|push|social|webhook [--store S | --all-stores]
                  [--consumer NAME] [--max-attempts N] [--claim-min-idle-s S] [--once]

Provider settings come from the environment (``CHURNFLOW_`` prefix, see
:class:`DeliverySettings`); per-store endpoints, secrets and addresses from
Redis (:mod:`engine.delivery.providers`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from types import FrameType
from typing import Any

import redis
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.connectors.kafka import ensure_topics, idempotent_producer
from engine.delivery.providers import Provider, RedisDirectory, SmtpProvider, WebhookProvider
from engine.delivery.worker import DeliveryWorker, WorkerConfig
from engine.events import CHANNELS
from engine.redis_client import connect
from engine.settings import Settings

__all__ = ["DeliverySettings", "add_deliver_parser", "build_provider", "cmd_deliver"]


class DeliverySettings(BaseSettings):
    """Provider and retry settings of the delivery workers (env prefix ``CHURNFLOW_``)."""

    model_config = SettingsConfigDict(env_prefix="CHURNFLOW_", extra="ignore")

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_sender: str = "noreply@churnflow.invalid"
    smtp_timeout_s: float = 10.0
    webhook_url: str | None = None
    """Endpoint for stores that configured none for the channel."""
    webhook_timeout_s: float = 10.0
    delivery_max_attempts: int = 5
    delivery_backoff_base_s: float = 30.0
    delivery_backoff_max_s: float = 3600.0
    delivery_claim_min_idle_s: float = 300.0
    delivery_send_lease_s: float = 300.0
    delivery_resend_unknown: bool = False


def build_provider(
    channel: str, client: redis.Redis, prefix: str, conf: DeliverySettings
) -> Provider:
    directory = RedisDirectory(client, prefix, default_endpoint=conf.webhook_url)
    if channel == "email":
        return SmtpProvider(
            conf.smtp_host,
            conf.smtp_port,
            sender=conf.smtp_sender,
            address_for=lambda store, customer: directory.address(store, customer, "email"),
            timeout_s=conf.smtp_timeout_s,
        )
    return WebhookProvider(
        endpoint_for=directory.endpoint,
        secret_for=directory.secret,
        timeout_s=conf.webhook_timeout_s,
    )


def add_deliver_parser(sub: Any) -> None:
    deliver = sub.add_parser("deliver", help="send queued recall messages for one channel")
    deliver.add_argument("--channel", required=True, choices=CHANNELS)
    where = deliver.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="serve this store's queue only")
    where.add_argument("--all-stores", action="store_true", help="serve every store's queue")
    deliver.add_argument("--consumer", help="consumer name in the group (default: host-pid)")
    deliver.add_argument("--max-attempts", type=int)
    deliver.add_argument("--claim-min-idle-s", type=float)
    deliver.add_argument("--once", action="store_true", help="one pass, then exit")
    deliver.set_defaults(func=cmd_deliver)


def cmd_deliver(args: argparse.Namespace, settings: Settings) -> int:
    conf = DeliverySettings()
    client = connect(settings.redis_url, socket_timeout=30)
    ensure_topics(settings.brokers, [settings.events_topic])
    producer = idempotent_producer(settings.brokers)
    config = WorkerConfig(
        consumer=args.consumer or f"{socket.gethostname()}-{os.getpid()}",
        max_attempts=args.max_attempts or conf.delivery_max_attempts,
        backoff_base_s=conf.delivery_backoff_base_s,
        backoff_max_s=conf.delivery_backoff_max_s,
        claim_min_idle_ms=int(1000 * (args.claim_min_idle_s or conf.delivery_claim_min_idle_s)),
        send_lease_s=conf.delivery_send_lease_s,
        resend_unknown=conf.delivery_resend_unknown,
    )
    worker = DeliveryWorker(
        client,
        settings.key_prefix,
        args.channel,
        build_provider(args.channel, client, settings.key_prefix, conf),
        producer=producer,
        events_topic=settings.events_topic,
        stores=None if args.all_stores else [args.store],
        config=config,
    )
    if args.once:
        print(worker.run_once())
        producer.flush(30)
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    worker.run(stop)
    producer.flush(30)
    return 0
